//! Hostile and malformed input: each case gives its own typed error at the right byte
//! offset, the same error however the input is split into reads, and nothing is allocated
//! for lengths the peer declared but has not sent.

mod common;

use bytes::{Bytes, BytesMut};
use common::oracle::{decode_all_bytes_fed, decode_all_fed, decode_all_whole};
use ringq_resp::{DecodeError, DecodeErrorKind as K, Decoder, Limits, Reader};

/// The first error decoding `wire` gives; panics if it decodes or waits for more bytes.
/// Also checks that feeding it one byte at a time, through either entry point, stops with
/// the very same error.
fn error_of(wire: &[u8], limits: Limits) -> DecodeError {
    let whole = decode_all_whole(wire, limits);
    let Err(e) = whole.end else {
        panic!(
            "{:?}: expected an error, got {whole:?}",
            String::from_utf8_lossy(wire)
        );
    };
    assert_eq!(
        decode_all_fed(wire, limits).end,
        Err(e),
        "{:?}: byte by byte",
        String::from_utf8_lossy(wire)
    );
    assert_eq!(
        decode_all_bytes_fed(&Bytes::copy_from_slice(wire), limits).end,
        Err(e),
        "{:?}: decode_bytes byte by byte",
        String::from_utf8_lossy(wire)
    );
    e
}

fn assert_error(wire: &[u8], kind: K, offset: usize) {
    let e = error_of(wire, Limits::default());
    assert_eq!(
        (e.kind(), e.offset()),
        (kind, offset),
        "{:?}: {e}",
        String::from_utf8_lossy(wire)
    );
}

const MAX_BULK: u64 = 512 * 1024 * 1024;
const MAX_AGGREGATE: u64 = i32::MAX as u64;

#[test]
fn bulk_length_of_i64_max_is_rejected_by_the_bulk_limit() {
    assert_error(
        b"$9223372036854775807\r\n",
        K::BulkTooLong {
            len: i64::MAX as u64,
            max: MAX_BULK,
        },
        1,
    );
}

#[test]
fn bulk_length_one_past_the_default_limit_is_rejected_and_the_limit_itself_waits() {
    assert_error(
        b"$536870913\r\n",
        K::BulkTooLong {
            len: MAX_BULK + 1,
            max: MAX_BULK,
        },
        1,
    );
    assert_eq!(Decoder::new().scan(b"$536870912\r\n"), Ok(None));
}

#[test]
fn lengths_that_overflow_i64_are_invalid_integers() {
    assert_error(b"$9223372036854775808\r\n", K::InvalidInteger, 1);
    assert_error(b"*99999999999999999999999\r\n", K::InvalidInteger, 1);
    assert_error(b":9223372036854775808\r\n", K::InvalidInteger, 1);
    assert_error(b":-9223372036854775809\r\n", K::InvalidInteger, 1);
}

#[test]
fn a_length_line_too_long_for_any_i64_fails_before_its_crlf_arrives() {
    let wire = [b"$".as_slice(), &[b'1'; 25]].concat();
    assert_error(&wire, K::InvalidInteger, 1);
}

#[test]
fn aggregate_of_two_to_the_31_elements_is_rejected_by_the_aggregate_limit() {
    for tag in ["*", "~", ">", "%", "|"] {
        let wire = format!("{tag}2147483648\r\n");
        assert_error(
            wire.as_bytes(),
            K::AggregateTooLong {
                len: 1 << 31,
                max: MAX_AGGREGATE,
            },
            1,
        );
    }
}

#[test]
fn a_hundred_thousand_levels_of_nesting_stop_at_the_depth_limit() {
    for level in ["*1\r\n", "~1\r\n", ">1\r\n", "%1\r\n", "|1\r\n"] {
        let mut wire = level.repeat(100_000).into_bytes();
        wire.extend_from_slice(b":1\r\n");
        let e = error_of(&wire, Limits::default());
        assert_eq!(e.kind(), K::TooDeep { max: 64 }, "{level:?}");
        assert_eq!(e.offset(), 64 * level.len(), "{level:?}");
    }
}

#[test]
fn the_depth_limit_is_capped_so_building_cannot_overflow_the_stack() {
    let limits = Limits {
        max_depth: usize::MAX,
        ..Limits::default()
    };
    assert_eq!(Decoder::with_limits(limits).limits().max_depth, 256);
    let deep = |levels: usize| {
        let mut wire = "*1\r\n".repeat(levels).into_bytes();
        wire.extend_from_slice(b":1\r\n");
        wire
    };
    let e = error_of(&deep(100_000), limits);
    assert_eq!((e.kind(), e.offset()), (K::TooDeep { max: 256 }, 1024));
    // The deepest frame allowed builds, through both entry points, on this test's
    // thread (2 MiB stack, debug build).
    let wire = deep(256);
    let whole = decode_all_whole(&wire, limits);
    assert_eq!((whole.frames.len(), whole.end), (1, Ok(())));
    let (frame, n) = Decoder::with_limits(limits)
        .decode_bytes(&Bytes::from(wire.clone()))
        .expect("valid")
        .expect("complete");
    assert_eq!(n, wire.len());
    assert!(matches!(frame, ringq_resp::Frame::Array(_)));
}

#[test]
fn reader_skips_a_hundred_thousand_levels_without_recursing() {
    let mut wire = "*1\r\n".repeat(100_000).into_bytes();
    wire.extend_from_slice(b":1\r\n");
    let mut r = Reader::new(Bytes::from(wire));
    r.skip_value().expect("well formed");
    assert!(r.is_empty());
}

#[test]
fn negative_lengths_other_than_minus_one_are_rejected() {
    assert_error(b"$-2\r\n", K::NegativeLength(-2), 1);
    assert_error(b"*-2\r\n", K::NegativeLength(-2), 1);
    assert_error(b"$-9223372036854775808\r\n", K::NegativeLength(i64::MIN), 1);
    assert_error(b"*1\r\n$-5\r\n", K::NegativeLength(-5), 5);
    // -1 means null only for `$` and `*` (RESP2); the RESP3 types have `_` instead.
    for tag in ["!", "=", "~", ">", "%", "|"] {
        let wire = format!("{tag}-1\r\n");
        assert_error(wire.as_bytes(), K::NegativeLength(-1), 1);
    }
}

#[test]
fn a_missing_crlf_is_reported_where_it_should_be() {
    assert_error(b"+OK\rX", K::MissingCrlf, 3);
    assert_error(b":12\rX", K::MissingCrlf, 3);
    assert_error(b"$3\r\nfoo\rX", K::MissingCrlf, 7);
    assert_error(b"_X\r\n", K::MissingCrlf, 1);
    assert_error(b"*2\r\n:1\r\n$1\r\nabc", K::MissingCrlf, 13);
}

#[test]
fn a_non_digit_in_a_length_is_an_invalid_integer() {
    assert_error(b"$1x\r\n", K::InvalidInteger, 1);
    assert_error(b"*1 \r\n", K::InvalidInteger, 1);
    assert_error(b"$ 3\r\n", K::InvalidInteger, 1);
    assert_error(b"*+1\r\n", K::InvalidInteger, 1);
    assert_error(b"%\r\n", K::InvalidInteger, 1);
    assert_error(b"*1\r\n$0x10\r\n", K::InvalidInteger, 5);
    assert_error(b":1.5\r\n", K::InvalidInteger, 1);
}

#[test]
fn a_bulk_body_longer_than_declared_is_missing_its_crlf() {
    assert_error(b"$3\r\nhello\r\n", K::MissingCrlf, 7);
    assert_error(b"!2\r\nERR\r\n", K::MissingCrlf, 6);
}

#[test]
fn other_malformed_frames_get_their_own_kinds() {
    assert_error(b"?\r\n", K::InvalidTypeByte(b'?'), 0);
    assert_error(b"*1\r\nX", K::InvalidTypeByte(b'X'), 4);
    assert_error(b"#x\r\n", K::InvalidBoolean, 1);
    assert_error(b"#tt\r\n", K::InvalidBoolean, 1);
    assert_error(b",1.2.3\r\n", K::InvalidDouble, 1);
    assert_error(b",infinity\r\n", K::InvalidDouble, 1);
    assert_error(b",\r\n", K::InvalidDouble, 1);
    assert_error(b"(12a\r\n", K::InvalidBigNumber, 1);
    assert_error(b"(\r\n", K::InvalidBigNumber, 1);
    assert_error(b"=3\r\ntxt\r\n", K::InvalidVerbatim, 1);
    assert_error(b"=5\r\ntxt-x\r\n", K::InvalidVerbatim, 7);
}

#[test]
fn lines_longer_than_the_line_limit_fail_without_waiting_for_their_crlf() {
    let limits = Limits {
        max_line_len: 8,
        ..Limits::default()
    };
    let e = error_of(b"+123456789", limits);
    assert_eq!((e.kind(), e.offset()), (K::LineTooLong { max: 8 }, 1));
    let e = error_of(b"*1\r\n-ERR too long\r\n", limits);
    assert_eq!((e.kind(), e.offset()), (K::LineTooLong { max: 8 }, 5));
}

#[test]
fn configured_limits_apply_to_bulk_and_aggregate_lengths() {
    let limits = Limits {
        max_bulk_len: 4,
        max_aggregate_len: 2,
        ..Limits::default()
    };
    let e = error_of(b"*1\r\n$5\r\nhello\r\n", limits);
    assert_eq!(
        (e.kind(), e.offset()),
        (K::BulkTooLong { len: 5, max: 4 }, 5)
    );
    let e = error_of(b"%3\r\n", limits);
    assert_eq!(
        (e.kind(), e.offset()),
        (K::AggregateTooLong { len: 3, max: 2 }, 1)
    );
    assert!(e.is_limit());
    assert!(!error_of(b"$-2\r\n", limits).is_limit());
}

#[test]
fn errors_say_what_went_wrong_and_where() {
    let e = error_of(b"$9223372036854775807\r\n", Limits::default());
    let text = e.to_string();
    assert!(text.contains("offset 1"), "{text}");
    assert!(text.contains("max_bulk_len"), "{text}");
}

#[test]
fn after_an_error_the_bytes_stay_in_the_buffer() {
    // The stream is unusable after an error; the decoder must not have eaten half a frame.
    let mut dec = Decoder::new();
    let wire = b"*2\r\n:1\r\n$-7\r\n";
    let mut buf = BytesMut::from(&wire[..]);
    assert!(dec.decode(&mut buf).is_err());
    assert_eq!(&buf[..], wire);
}
