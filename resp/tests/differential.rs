//! Differential tests against an independent decoder, the `redis-protocol` crate: on
//! generated RESP2 and RESP3 frames both decoders must agree on the value, the attributes
//! in front of it and the number of bytes it took, and both must ask for more bytes on every
//! strict prefix.
//!
//! `redis-protocol` decodes maps and sets into hash containers and attaches attributes to
//! every value, so the generators keep to what it represents faithfully (scalar, distinct
//! map keys and set members; no attribute in front of a null; UTF-8 simple errors; `txt`
//! and `mkd` verbatim formats), and the comparison sorts map pairs and set members by their
//! wire form and looks at top-level attributes only (ringq drops nested ones).

mod common;

use bytes::{Bytes, BytesMut};
use common::{
    big_number, blob_bytes, double_not_nan, line_bytes, same, same_pairs, write_attribute,
    write_with_before_elements,
};
use proptest::collection::vec;
use proptest::prelude::*;
use redis_protocol::resp2::types::BytesFrame as R2;
use redis_protocol::resp3::types::{BytesFrame as R3, VerbatimStringFormat};
use redis_protocol::{resp2, resp3};
use ringq_resp::{Decoder, Frame};

// ---- RESP2 ----

/// A RESP2 value. Null keeps which wire form it has (`$-1` or `*-1`); both decode to
/// [`Frame::Null`].
#[derive(Debug, Clone)]
enum V2 {
    Simple(Bytes),
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    NullBulk,
    NullArray,
    Array(Vec<V2>),
}

fn printable(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[ -~]{{0,{max}}}")).expect("a valid regex")
}

fn v2() -> impl Strategy<Value = V2> {
    let scalar = prop_oneof![
        line_bytes(24).prop_map(V2::Simple),
        printable(24).prop_map(V2::Error),
        any::<i64>().prop_map(V2::Integer),
        blob_bytes(48).prop_map(V2::Bulk),
        Just(V2::NullBulk),
        Just(V2::NullArray),
    ];
    scalar.prop_recursive(4, 64, 8, |inner| vec(inner, 0..8).prop_map(V2::Array))
}

fn write_v2(v: &V2, out: &mut Vec<u8>) {
    match v {
        V2::Simple(b) => Frame::SimpleString(b.clone()).write_to(out),
        V2::Error(s) => Frame::SimpleError(Bytes::from(s.clone())).write_to(out),
        V2::Integer(i) => Frame::Integer(*i).write_to(out),
        V2::Bulk(b) => Frame::BulkString(b.clone()).write_to(out),
        V2::NullBulk => out.extend_from_slice(b"$-1\r\n"),
        V2::NullArray => out.extend_from_slice(b"*-1\r\n"),
        V2::Array(items) => {
            ringq_resp::write_len_line(out, b'*', items.len() as i64);
            for item in items {
                write_v2(item, out);
            }
        }
    }
}

fn from_r2(f: R2) -> Frame {
    match f {
        R2::SimpleString(b) => Frame::SimpleString(b),
        R2::Error(s) => Frame::SimpleError(Bytes::copy_from_slice(s.as_bytes())),
        R2::Integer(i) => Frame::Integer(i),
        R2::BulkString(b) => Frame::BulkString(b),
        R2::Array(items) => Frame::Array(items.into_iter().map(from_r2).collect()),
        R2::Null => Frame::Null,
    }
}

// ---- RESP3 ----

/// Scalars that may be map keys or set members: hashable by `redis-protocol`, and equal
/// there exactly when their wire forms are equal.
fn key_scalar() -> impl Strategy<Value = Frame> {
    prop_oneof![
        line_bytes(12).prop_map(Frame::SimpleString),
        blob_bytes(12).prop_map(Frame::BulkString),
        any::<i64>().prop_map(Frame::Integer),
        any::<bool>().prop_map(Frame::Boolean),
        big_number().prop_map(Frame::BigNumber),
        blob_bytes(12).prop_map(Frame::BulkError),
        (verbatim_format(), blob_bytes(12))
            .prop_map(|(format, text)| Frame::VerbatimString { format, text }),
    ]
}

fn verbatim_format() -> impl Strategy<Value = [u8; 3]> {
    prop_oneof![Just(*b"txt"), Just(*b"mkd")]
}

fn scalar3() -> impl Strategy<Value = Frame> {
    prop_oneof![
        6 => key_scalar(),
        1 => printable(24).prop_map(|s| Frame::SimpleError(Bytes::from(s))),
        1 => Just(Frame::Null),
        1 => double_not_nan().prop_map(Frame::Double),
    ]
}

/// Distinct by wire form, in generation order.
fn distinct<T>(items: Vec<T>, key: impl Fn(&T) -> &Frame) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .filter(|t| seen.insert(key(t).to_bytes()))
        .collect()
}

fn v3() -> impl Strategy<Value = Frame> {
    scalar3().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Frame::Array),
            vec(inner.clone(), 0..6).prop_map(Frame::Push),
            vec(key_scalar(), 0..6).prop_map(|v| Frame::Set(distinct(v, |f| f))),
            vec((key_scalar(), inner), 0..5)
                .prop_map(|pairs| Frame::Map(distinct(pairs, |(k, _)| k))),
        ]
    })
}

type Pairs = Vec<(Frame, Frame)>;

fn attribute_pairs() -> impl Strategy<Value = Pairs> {
    vec((key_scalar(), v3()), 1..3).prop_map(|pairs| distinct(pairs, |(k, _)| k))
}

/// Writes `frame`, with `attribute` in front of some of its non-null elements (chosen by
/// the bits of `seed`).
fn write_v3(frame: &Frame, attribute: &Pairs, seed: &mut u64, out: &mut Vec<u8>) {
    write_with_before_elements(frame, out, &mut |f, out| {
        *seed = seed.rotate_left(7) ^ 0x9e37_79b9_7f4a_7c15;
        if *seed & 3 == 0 && *f != Frame::Null {
            write_attribute(attribute, out);
        }
    });
}

/// `redis-protocol`'s value as a [`Frame`], attributes dropped, maps and sets sorted.
fn from_r3(f: R3) -> Frame {
    match f {
        R3::BlobString { data, .. } => Frame::BulkString(data),
        R3::BlobError { data, .. } => Frame::BulkError(data),
        R3::SimpleString { data, .. } => Frame::SimpleString(data),
        R3::SimpleError { data, .. } => Frame::SimpleError(Bytes::copy_from_slice(data.as_bytes())),
        R3::Boolean { data, .. } => Frame::Boolean(data),
        R3::Null => Frame::Null,
        R3::Number { data, .. } => Frame::Integer(data),
        R3::Double { data, .. } => Frame::Double(data),
        R3::BigNumber { data, .. } => Frame::BigNumber(data),
        R3::VerbatimString { data, format, .. } => Frame::VerbatimString {
            format: match format {
                VerbatimStringFormat::Text => *b"txt",
                VerbatimStringFormat::Markdown => *b"mkd",
            },
            text: data,
        },
        R3::Array { data, .. } => Frame::Array(data.into_iter().map(from_r3).collect()),
        R3::Push { data, .. } => Frame::Push(data.into_iter().map(from_r3).collect()),
        R3::Set { data, .. } => Frame::Set(data.into_iter().map(from_r3).collect()),
        R3::Map { data, .. } => Frame::Map(
            data.into_iter()
                .map(|(k, v)| (from_r3(k), from_r3(v)))
                .collect(),
        ),
        other => panic!("redis-protocol returned {other:?} for a generated frame"),
    }
}

fn r3_attributes(f: &R3) -> Option<Pairs> {
    let attributes = match f {
        R3::BlobString { attributes, .. }
        | R3::BlobError { attributes, .. }
        | R3::SimpleString { attributes, .. }
        | R3::SimpleError { attributes, .. }
        | R3::Boolean { attributes, .. }
        | R3::Number { attributes, .. }
        | R3::Double { attributes, .. }
        | R3::BigNumber { attributes, .. }
        | R3::VerbatimString { attributes, .. }
        | R3::Array { attributes, .. }
        | R3::Push { attributes, .. }
        | R3::Set { attributes, .. }
        | R3::Map { attributes, .. } => attributes.clone(),
        _ => None,
    };
    attributes.map(|map| {
        sorted_pairs(
            map.into_iter()
                .map(|(k, v)| (from_r3(k), from_r3(v)))
                .collect(),
        )
    })
}

/// Sorts map pairs and set members (recursively) by wire form, so hash order is gone.
fn canonical(f: Frame) -> Frame {
    match f {
        Frame::Array(v) => Frame::Array(v.into_iter().map(canonical).collect()),
        Frame::Push(v) => Frame::Push(v.into_iter().map(canonical).collect()),
        Frame::Set(v) => {
            let mut v: Vec<Frame> = v.into_iter().map(canonical).collect();
            v.sort_by_cached_key(Frame::to_bytes);
            Frame::Set(v)
        }
        Frame::Map(pairs) => Frame::Map(sorted_pairs(pairs)),
        scalar => scalar,
    }
}

fn sorted_pairs(pairs: Pairs) -> Pairs {
    let mut pairs: Pairs = pairs
        .into_iter()
        .map(|(k, v)| (canonical(k), canonical(v)))
        .collect();
    pairs.sort_by_cached_key(|(k, _)| k.to_bytes());
    pairs
}

/// Both decoders on every strict prefix of `wire` (both must wait) and on all of it.
fn ringq_whole(wire: &Bytes) -> (Frame, Option<Pairs>, usize) {
    let mut dec = Decoder::new();
    let (frame, n) = dec
        .decode_bytes(wire)
        .expect("ringq accepts a generated frame")
        .expect("complete");
    let attributes = dec.take_attributes().map(sorted_pairs);
    (canonical(frame), attributes, n)
}

fn ringq_waits_on_every_prefix(wire: &[u8]) -> bool {
    let mut resumed = Decoder::new();
    let mut buf = BytesMut::new();
    (0..wire.len()).all(|k| {
        buf.extend_from_slice(&wire[buf.len()..k]);
        matches!(resumed.decode(&mut buf), Ok(None))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn resp2_frames_decode_like_redis_protocol(v in v2()) {
        let mut wire = Vec::new();
        write_v2(&v, &mut wire);
        let wire = Bytes::from(wire);
        let (theirs, their_n) = resp2::decode::decode_bytes(&wire)
            .expect("redis-protocol accepts a generated frame")
            .expect("complete");
        let (ours, attributes, our_n) = ringq_whole(&wire);
        prop_assert!(same(&ours, &from_r2(theirs)), "{:?}", wire);
        prop_assert_eq!(attributes, None);
        prop_assert_eq!(our_n, their_n);
        prop_assert_eq!(our_n, wire.len());
        for k in 0..wire.len() {
            prop_assert!(
                matches!(resp2::decode::decode_bytes(&wire.slice(..k)), Ok(None)),
                "redis-protocol did not wait on a {}-byte prefix", k
            );
        }
        prop_assert!(ringq_waits_on_every_prefix(&wire));
    }

    #[test]
    fn resp3_frames_with_attributes_decode_like_redis_protocol(
        frame in v3(),
        top in proptest::option::of(attribute_pairs()),
        nested in attribute_pairs(),
        mut seed in any::<u64>(),
    ) {
        let mut wire = Vec::new();
        let top = top.filter(|_| frame != Frame::Null);
        if let Some(pairs) = &top {
            write_attribute(pairs, &mut wire);
        }
        write_v3(&frame, &nested, &mut seed, &mut wire);
        let wire = Bytes::from(wire);
        let (theirs, their_n) = resp3::decode::complete::decode_bytes(&wire)
            .expect("redis-protocol accepts a generated frame")
            .expect("complete");
        let their_attributes = r3_attributes(&theirs);
        let theirs = canonical(from_r3(theirs));
        let (ours, our_attributes, our_n) = ringq_whole(&wire);
        prop_assert!(same(&ours, &theirs), "{:?}\nours   {:?}\ntheirs {:?}", wire, ours, theirs);
        prop_assert!(same(&ours, &canonical(frame.clone())), "{:?}", wire);
        match (&our_attributes, &their_attributes) {
            (None, None) => {}
            (Some(a), Some(b)) => prop_assert!(same_pairs(a, b), "{:?} vs {:?}", a, b),
            _ => prop_assert!(false, "attributes {:?} vs {:?}", our_attributes, their_attributes),
        }
        prop_assert_eq!(our_n, their_n);
        prop_assert_eq!(our_n, wire.len());
        for k in 0..wire.len() {
            prop_assert!(
                matches!(resp3::decode::complete::decode_bytes(&wire.slice(..k)), Ok(None)),
                "redis-protocol did not wait on a {}-byte prefix", k
            );
        }
        prop_assert!(ringq_waits_on_every_prefix(&wire));
    }
}
