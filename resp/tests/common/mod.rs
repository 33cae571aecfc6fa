//! Helpers shared by the codec's integration tests: NaN-aware frame comparison and the
//! decoding oracle (in `oracle`, shared with the fuzz target), feeding a decoder in pieces,
//! and proptest strategies for frames and for their wire form with attributes sprinkled in.
//!
//! Each test binary uses a different subset, hence the module-wide `dead_code` allowance.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use ringq_resp::{DecodeError, Decoder, Frame};

pub mod oracle;

#[allow(unused_imports, reason = "each test binary uses a different subset")]
pub use oracle::{same, same_attributes, same_list, same_pairs, Attributes};

/// One decoded frame, its top-level attributes and how many bytes it took.
pub type Decoded = (Frame, Attributes, usize);

pub fn same_decoded(
    x: &Result<Option<Decoded>, DecodeError>,
    y: &Result<Option<Decoded>, DecodeError>,
) -> bool {
    match (x, y) {
        (Ok(None), Ok(None)) => true,
        (Ok(Some((f1, a1, n1))), Ok(Some((f2, a2, n2)))) => {
            n1 == n2 && same(f1, f2) && same_attributes(a1, a2)
        }
        (Err(e1), Err(e2)) => e1 == e2,
        _ => false,
    }
}

/// Decodes the first frame of `wire` from one buffer with [`Decoder::decode`].
pub fn decode_whole(wire: &[u8]) -> Result<Option<Decoded>, DecodeError> {
    let mut dec = Decoder::new();
    let mut buf = BytesMut::from(wire);
    let before = buf.len();
    Ok(dec
        .decode(&mut buf)?
        .map(|f| (f, dec.take_attributes(), before - buf.len())))
}

/// Feeds `wire` to one decoder through a growing `BytesMut`, one piece per entry of
/// `cuts` (ascending offsets; the rest of `wire` is the last piece), calling
/// [`Decoder::decode`] after each piece. Stops at the first frame or error.
///
/// Also returns how many bytes had been fed when the frame came out.
pub fn decode_fed(wire: &[u8], cuts: &[usize]) -> (Result<Option<Decoded>, DecodeError>, usize) {
    let mut dec = Decoder::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    for end in cuts.iter().copied().chain([wire.len()]) {
        let end = end.clamp(fed, wire.len());
        buf.extend_from_slice(&wire[fed..end]);
        fed = end;
        let before = buf.len();
        match dec.decode(&mut buf) {
            Ok(None) => {}
            Ok(Some(f)) => {
                return (
                    Ok(Some((f, dec.take_attributes(), before - buf.len()))),
                    fed,
                )
            }
            Err(e) => return (Err(e), fed),
        }
    }
    (Ok(None), fed)
}

/// As [`decode_fed`], with [`Decoder::decode_bytes`] over a growing `Bytes` (each call
/// sees a new `Bytes` that extends the previous one).
pub fn decode_bytes_fed(
    wire: &[u8],
    cuts: &[usize],
) -> (Result<Option<Decoded>, DecodeError>, usize) {
    let mut dec = Decoder::new();
    let mut fed = 0;
    for end in cuts.iter().copied().chain([wire.len()]) {
        fed = end.clamp(fed, wire.len());
        let src = Bytes::copy_from_slice(&wire[..fed]);
        match dec.decode_bytes(&src) {
            Ok(None) => {}
            Ok(Some((f, n))) => return (Ok(Some((f, dec.take_attributes(), n))), fed),
            Err(e) => return (Err(e), fed),
        }
    }
    (Ok(None), fed)
}

/// Every offset from 1 to `len - 1`: feeding one byte at a time.
pub fn every_byte(len: usize) -> Vec<usize> {
    (1..len).collect()
}

/// Bytes with no CR or LF, for simple strings and simple errors.
pub fn line_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(|v| {
        Bytes::from(
            v.into_iter()
                .filter(|b| *b != b'\r' && *b != b'\n')
                .collect::<Vec<_>>(),
        )
    })
}

/// Any bytes, CR and LF included, for blobs.
pub fn blob_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

/// An optional sign and 1 to 40 digits.
pub fn big_number() -> impl Strategy<Value = Bytes> {
    (
        prop_oneof![Just(""), Just("-"), Just("+")],
        vec(0u8..10, 1..40),
    )
        .prop_map(|(sign, digits)| {
            let mut s = sign.as_bytes().to_vec();
            s.extend(digits.into_iter().map(|d| b'0' + d));
            Bytes::from(s)
        })
}

/// Any double but NaN (which never equals itself; it has its own tests).
pub fn double_not_nan() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => any::<f64>().prop_filter("NaN is tested separately", |d| !d.is_nan()),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(-0.0),
    ]
}

/// Every scalar frame type.
pub fn scalar_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        line_bytes(24).prop_map(Frame::SimpleString),
        line_bytes(24).prop_map(Frame::SimpleError),
        any::<i64>().prop_map(Frame::Integer),
        blob_bytes(48).prop_map(Frame::BulkString),
        Just(Frame::Null),
        any::<bool>().prop_map(Frame::Boolean),
        double_not_nan().prop_map(Frame::Double),
        big_number().prop_map(Frame::BigNumber),
        blob_bytes(24).prop_map(Frame::BulkError),
        (any::<[u8; 3]>(), blob_bytes(24))
            .prop_map(|(format, text)| Frame::VerbatimString { format, text }),
    ]
}

/// Any frame: scalars, and arrays, sets, pushes and maps nested up to four deep.
pub fn any_frame() -> impl Strategy<Value = Frame> {
    scalar_frame().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Frame::Array),
            vec(inner.clone(), 0..6).prop_map(Frame::Set),
            vec(inner.clone(), 0..6).prop_map(Frame::Push),
            vec((inner.clone(), inner), 0..4).prop_map(Frame::Map),
        ]
    })
}

/// Writes `frame` like [`Frame::write_to`], calling `before` ahead of every element of every
/// aggregate (depth first, map keys before their values) so it can put something — a
/// nested attribute — in front of it.
pub fn write_with_before_elements(
    frame: &Frame,
    out: &mut Vec<u8>,
    before: &mut dyn FnMut(&Frame, &mut Vec<u8>),
) {
    let mut element = |f: &Frame, out: &mut Vec<u8>| {
        before(f, out);
        write_with_before_elements(f, out, before);
    };
    match frame {
        Frame::Array(v) | Frame::Set(v) | Frame::Push(v) => {
            let tag = match frame {
                Frame::Array(_) => b'*',
                Frame::Set(_) => b'~',
                _ => b'>',
            };
            ringq_resp::write_len_line(out, tag, v.len() as i64);
            for f in v {
                element(f, out);
            }
        }
        Frame::Map(pairs) => {
            ringq_resp::write_len_line(out, b'%', pairs.len() as i64);
            for (k, v) in pairs {
                element(k, out);
                element(v, out);
            }
        }
        scalar => scalar.write_to(out),
    }
}

/// Writes `frame` like [`Frame::write_to`], and puts an attribute in front of some of its
/// elements, chosen by the bits of `seed`. The decoder drops those: they are nested.
pub fn write_with_nested_attributes(frame: &Frame, seed: &mut u64, out: &mut Vec<u8>) {
    write_with_before_elements(frame, out, &mut |_, out| {
        // A small LCG step; the top bit decides.
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if *seed >> 62 == 0 {
            out.extend_from_slice(b"|1\r\n+ttl\r\n:3600\r\n");
        }
    });
}

/// Writes a top-level attribute of `pairs` (`|n` then each key and value).
pub fn write_attribute(pairs: &[(Frame, Frame)], out: &mut Vec<u8>) {
    ringq_resp::write_len_line(out, b'|', pairs.len() as i64);
    for (k, v) in pairs {
        k.write_to(out);
        v.write_to(out);
    }
}

/// A frame's wire form with attributes: an optional top-level attribute (which
/// [`Decoder::take_attributes`] must return) and nested ones (which it must drop).
/// Yields `(wire, frame, top-level attributes)`.
pub fn wire_with_attributes() -> impl Strategy<Value = (Vec<u8>, Frame, Attributes)> {
    (
        any_frame(),
        proptest::option::of(vec((scalar_frame(), any_frame()), 0..3)),
        any::<u64>(),
    )
        .prop_map(|(frame, top, mut seed)| {
            let mut wire = Vec::new();
            if let Some(pairs) = &top {
                write_attribute(pairs, &mut wire);
            }
            write_with_nested_attributes(&frame, &mut seed, &mut wire);
            (wire, frame, top)
        })
}

/// Ascending cut points inside `0..=len`, from arbitrary fractions.
pub fn cuts_from(len: usize, fractions: &[u16]) -> Vec<usize> {
    let mut cuts: Vec<usize> = fractions
        .iter()
        .map(|&f| len * usize::from(f) / usize::from(u16::MAX))
        .collect();
    cuts.sort_unstable();
    cuts
}
