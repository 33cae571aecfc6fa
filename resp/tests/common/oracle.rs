//! The decoding oracle shared by the fuzz target (`resp/fuzz`, which includes this file by
//! path) and the regular tests (`tests/fuzz_corpus.rs` replays the seed corpus through it,
//! `tests/properties.rs` feeds it arbitrary and mutated bytes).
//!
//! For any input it checks that:
//! - decoding never panics, and errors are typed with an offset inside the input;
//! - the input decodes to the same sequence of frames, attributes and final verdict whether
//!   it arrives in one read or one byte at a time, through [`Decoder::decode`] or
//!   [`Decoder::decode_bytes`], under the default limits and under tight ones;
//! - every decoded frame re-encodes to bytes that decode to the same frame, and a
//!   [`Reader`] walking the frame's bytes sees the same tree.
//!
//! It depends only on `ringq-resp` and `bytes`, so the fuzz crate can include it as is.

use bytes::{Bytes, BytesMut};
use ringq_resp::{DecodeError, Decoder, Frame, Limits, Reader, ServerError, Token};

/// Top-level attributes as [`Decoder::take_attributes`] returns them.
pub type Attributes = Option<Vec<(Frame, Frame)>>;

/// Limits small enough that short inputs hit every one of them.
pub fn tight_limits() -> Limits {
    Limits {
        max_bulk_len: 16,
        max_aggregate_len: 4,
        max_depth: 3,
        max_line_len: 12,
    }
}

/// Runs every check on `data`; panics with a description on the first violation.
pub fn check(data: &[u8]) {
    let input = Bytes::copy_from_slice(data);
    for limits in [Limits::default(), tight_limits()] {
        let whole = decode_all_whole(&input, limits);
        let fed = decode_all_fed(&input, limits);
        assert_same_outcome(&whole, &fed, "one read vs one byte per read");
        let via_bytes = decode_all_bytes_fed(&input, limits);
        assert_same_outcome(&whole, &via_bytes, "decode vs decode_bytes byte by byte");
        if let Err(e) = &whole.end {
            assert!(
                e.offset() <= data.len(),
                "error offset {} past the input's {} bytes: {e}",
                e.offset(),
                data.len()
            );
            // Display must not panic either.
            let _ = e.to_string();
        }
        for (frame, attributes, _) in &whole.frames {
            check_frame(frame, attributes);
        }
    }
    // The token reader over raw input: any outcome but a panic.
    let mut reader = Reader::new(input);
    while !reader.is_empty() {
        if reader.skip_value().is_err() {
            break;
        }
    }
}

/// Every frame decoded from an input, then how the input ended: `Ok(())` when the rest
/// was an incomplete frame (or nothing), or the error that stopped decoding.
#[derive(Debug)]
pub struct Outcome {
    /// Each frame, its top-level attributes and its length in bytes.
    pub frames: Vec<(Frame, Attributes, usize)>,
    /// `Ok` for "need more bytes", else the error.
    pub end: Result<(), DecodeError>,
}

/// [`Decoder::decode`] over the whole input in one `BytesMut`.
pub fn decode_all_whole(input: &[u8], limits: Limits) -> Outcome {
    let mut dec = Decoder::with_limits(limits);
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    loop {
        let before = buf.len();
        match dec.decode(&mut buf) {
            Ok(Some(f)) => frames.push((f, dec.take_attributes(), before - buf.len())),
            Ok(None) => {
                return Outcome {
                    frames,
                    end: Ok(()),
                }
            }
            Err(e) => {
                return Outcome {
                    frames,
                    end: Err(e),
                }
            }
        }
    }
}

/// [`Decoder::decode`] with the input appended one byte at a time, decoding after each.
pub fn decode_all_fed(input: &[u8], limits: Limits) -> Outcome {
    let mut dec = Decoder::with_limits(limits);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for &b in input {
        buf.extend_from_slice(&[b]);
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Ok(Some(f)) => frames.push((f, dec.take_attributes(), before - buf.len())),
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        frames,
                        end: Err(e),
                    }
                }
            }
        }
    }
    Outcome {
        frames,
        end: Ok(()),
    }
}

/// [`Decoder::decode_bytes`] over ever longer slices of one `Bytes`, one byte more each
/// time, starting each frame where the previous one ended.
pub fn decode_all_bytes_fed(input: &Bytes, limits: Limits) -> Outcome {
    let mut dec = Decoder::with_limits(limits);
    let mut frames = Vec::new();
    let mut start = 0;
    for fed in 1..=input.len() {
        loop {
            match dec.decode_bytes(&input.slice(start..fed)) {
                Ok(Some((f, n))) => {
                    assert!(n > 0 && start + n <= fed, "decode_bytes consumed {n} bytes");
                    frames.push((f, dec.take_attributes(), n));
                    start += n;
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        frames,
                        end: Err(e),
                    }
                }
            }
        }
    }
    Outcome {
        frames,
        end: Ok(()),
    }
}

fn assert_same_outcome(a: &Outcome, b: &Outcome, how: &str) {
    assert_eq!(
        a.frames.len(),
        b.frames.len(),
        "{how}: frame counts differ\n{a:?}\n{b:?}"
    );
    for (i, ((f1, a1, n1), (f2, a2, n2))) in a.frames.iter().zip(&b.frames).enumerate() {
        assert!(
            n1 == n2 && same(f1, f2) && same_attributes(a1, a2),
            "{how}: frame {i} differs\n{f1:?} {a1:?} ({n1} bytes)\n{f2:?} {a2:?} ({n2} bytes)"
        );
    }
    assert_eq!(a.end, b.end, "{how}: the input ends differently");
}

/// Round trip and token walk of one decoded frame.
fn check_frame(frame: &Frame, attributes: &Attributes) {
    let mut wire = Vec::new();
    if let Some(pairs) = attributes {
        ringq_resp::write_len_line(&mut wire, b'|', pairs.len() as i64);
        for (k, v) in pairs {
            k.write_to(&mut wire);
            v.write_to(&mut wire);
        }
    }
    frame.write_to(&mut wire);
    let mut dec = Decoder::new();
    let mut buf = BytesMut::from(&wire[..]);
    let back = dec.decode(&mut buf);
    let Ok(Some(back)) = back else {
        panic!("{frame:?} re-encoded as {wire:?} does not decode: {back:?}");
    };
    assert!(buf.is_empty(), "{frame:?}: {} bytes left over", buf.len());
    assert!(
        same(frame, &back),
        "round trip: {frame:?} came back as {back:?}"
    );
    assert!(
        same_attributes(attributes, &dec.take_attributes()),
        "round trip: the attributes of {frame:?} changed"
    );

    let wire = Bytes::from(wire);
    let mut reader = Reader::new(wire.clone());
    let walked = frame_from_reader(&mut reader);
    assert!(
        same(frame, &walked),
        "Reader saw {walked:?}, Decoder built {frame:?}"
    );
    assert!(reader.is_empty(), "Reader left bytes after {frame:?}");
    check_string_reads(frame, wire);

    if let Some(err) = frame.to_server_error() {
        let _ = (err.kind(), err.code(), err.to_string());
    }
    if let Frame::SimpleString(b) | Frame::BulkString(b) = frame {
        let _ = ServerError::parse(b.clone()).kind();
    }
}

/// Reads the frame's strings with [`Reader::next_bytes`] and [`Reader::next_slice`]: each
/// must return a bulk or simple string's bytes, and any other value as the token
/// [`Reader::next_value_token`] gives.
fn check_string_reads(frame: &Frame, wire: Bytes) {
    let mut by_bytes = Reader::new(wire.clone());
    let mut by_slice = Reader::new(wire);
    let elements: Vec<&Frame> = match frame {
        Frame::Array(v) | Frame::Set(v) | Frame::Push(v) => v.iter().collect(),
        Frame::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => vec![frame],
    };
    if elements.len() != 1 || !std::ptr::eq(elements[0], frame) {
        let head = by_bytes.next_value_token().expect("a valid frame");
        let again = by_slice.next_value_token().expect("a valid frame");
        assert!(tokens_agree(&head, &again), "{head:?} vs {again:?}");
    }
    for element in elements {
        expect_string(element, &mut by_bytes, &mut by_slice);
    }
    assert!(
        by_bytes.is_empty() && by_slice.is_empty(),
        "{frame:?}: bytes left"
    );
}

fn expect_string(element: &Frame, by_bytes: &mut Reader, by_slice: &mut Reader) {
    let got_bytes = by_bytes.next_bytes().expect("a valid frame");
    let got_slice = by_slice.next_slice().expect("a valid frame");
    match element {
        Frame::BulkString(b) | Frame::SimpleString(b) => {
            assert_eq!(
                got_bytes.as_ref().ok(),
                Some(b),
                "next_bytes on {element:?}"
            );
            assert_eq!(got_slice.ok(), Some(&b[..]), "next_slice on {element:?}");
        }
        _ => {
            let (Err(t1), Err(t2)) = (&got_bytes, &got_slice) else {
                panic!("{element:?} read as a string: {got_bytes:?} / {got_slice:?}");
            };
            assert!(tokens_agree(t1, t2), "{t1:?} vs {t2:?}");
            // The token is the element's header: skip its contents in both readers.
            let children = match t1 {
                Token::Array(n) | Token::Set(n) | Token::Push(n) => *n,
                Token::Map(n) => n * 2,
                _ => 0,
            };
            for _ in 0..children {
                by_bytes.skip_value().expect("a valid frame");
                by_slice.skip_value().expect("a valid frame");
            }
        }
    }
}

fn tokens_agree(a: &Token, b: &Token) -> bool {
    match (a, b) {
        (Token::Double(x), Token::Double(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// Rebuilds a frame from [`Reader`] tokens (attributes skipped, as the decoder drops
/// nested ones). Recursion is bounded by the decoder's depth limit on the frames we pass.
fn frame_from_reader(r: &mut Reader) -> Frame {
    let token = r
        .next_value_token()
        .expect("the Reader accepts what the Decoder accepted");
    let mut items = |n: usize| (0..n).map(|_| frame_from_reader(r)).collect::<Vec<_>>();
    match token {
        Token::SimpleString(b) => Frame::SimpleString(b),
        Token::SimpleError(b) => Frame::SimpleError(b),
        Token::Integer(i) => Frame::Integer(i),
        Token::BulkString(b) => Frame::BulkString(b),
        Token::Null => Frame::Null,
        Token::Boolean(b) => Frame::Boolean(b),
        Token::Double(d) => Frame::Double(d),
        Token::BigNumber(b) => Frame::BigNumber(b),
        Token::BulkError(b) => Frame::BulkError(b),
        Token::VerbatimString(format, text) => Frame::VerbatimString { format, text },
        Token::Array(n) => Frame::Array(items(n)),
        Token::Set(n) => Frame::Set(items(n)),
        Token::Push(n) => Frame::Push(items(n)),
        Token::Map(n) => {
            let flat = items(n.saturating_mul(2));
            let mut it = flat.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            Frame::Map(pairs)
        }
        Token::Attribute(_) => unreachable!("next_value_token skips attributes"),
    }
}

/// Structural equality in which every NaN equals every NaN; any other double must match
/// bit for bit (so `-0.0` and `0.0` differ).
pub fn same(a: &Frame, b: &Frame) -> bool {
    match (a, b) {
        (Frame::Double(x), Frame::Double(y)) => {
            (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits()
        }
        (Frame::Array(x), Frame::Array(y))
        | (Frame::Set(x), Frame::Set(y))
        | (Frame::Push(x), Frame::Push(y)) => same_list(x, y),
        (Frame::Map(x), Frame::Map(y)) => same_pairs(x, y),
        _ => a == b,
    }
}

/// [`same`] element by element.
pub fn same_list(x: &[Frame], y: &[Frame]) -> bool {
    x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
}

/// [`same`] pair by pair.
pub fn same_pairs(x: &[(Frame, Frame)], y: &[(Frame, Frame)]) -> bool {
    x.len() == y.len()
        && x.iter()
            .zip(y)
            .all(|((k1, v1), (k2, v2))| same(k1, k2) && same(v1, v2))
}

/// [`same_pairs`] on optional attributes.
pub fn same_attributes(x: &Attributes, y: &Attributes) -> bool {
    match (x, y) {
        (None, None) => true,
        (Some(x), Some(y)) => same_pairs(x, y),
        _ => false,
    }
}
