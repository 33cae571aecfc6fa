//! Vectors from the RESP2 and RESP3 specifications, one or more per type, each decoded
//! from one buffer, from every split into two reads, one byte at a time, and pipelined
//! behind another reply.

mod common;

use bytes::{Bytes, BytesMut};
use common::{
    decode_bytes_fed, decode_fed, decode_whole, every_byte, same, same_attributes, Attributes,
};
use ringq_resp::{Decoder, Frame, ServerErrorKind};

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn bulk(s: &'static str) -> Frame {
    Frame::BulkString(b(s))
}

fn simple(s: &'static str) -> Frame {
    Frame::SimpleString(b(s))
}

struct Vector {
    name: &'static str,
    wire: &'static [u8],
    frame: Frame,
    attributes: Attributes,
}

fn v(name: &'static str, wire: &'static [u8], frame: Frame) -> Vector {
    Vector {
        name,
        wire,
        frame,
        attributes: None,
    }
}

fn vectors() -> Vec<Vector> {
    vec![
        // RESP2
        v("simple string", b"+OK\r\n", simple("OK")),
        v("empty simple string", b"+\r\n", simple("")),
        v("simple error", b"-ERR unknown command 'foobar'\r\n", Frame::SimpleError(b("ERR unknown command 'foobar'"))),
        v("integer zero", b":0\r\n", Frame::Integer(0)),
        v("integer", b":1000\r\n", Frame::Integer(1000)),
        v("negative integer", b":-1000\r\n", Frame::Integer(-1000)),
        v("integer with plus sign", b":+42\r\n", Frame::Integer(42)),
        v("largest integer", b":9223372036854775807\r\n", Frame::Integer(i64::MAX)),
        v("smallest integer", b":-9223372036854775808\r\n", Frame::Integer(i64::MIN)),
        v("bulk string", b"$5\r\nhello\r\n", bulk("hello")),
        v("empty bulk string", b"$0\r\n\r\n", bulk("")),
        v("binary bulk string with CRLF inside", b"$6\r\n\r\n\x00\xff\r\n\r\n", Frame::BulkString(Bytes::from_static(b"\r\n\x00\xff\r\n"))),
        v("null bulk string", b"$-1\r\n", Frame::Null),
        v("empty array", b"*0\r\n", Frame::Array(vec![])),
        v("null array", b"*-1\r\n", Frame::Null),
        v("array of bulk strings", b"*2\r\n$5\r\nhello\r\n$5\r\nworld\r\n", Frame::Array(vec![bulk("hello"), bulk("world")])),
        v("array of integers", b"*3\r\n:1\r\n:2\r\n:3\r\n", Frame::Array(vec![Frame::Integer(1), Frame::Integer(2), Frame::Integer(3)])),
        v(
            "mixed array",
            b"*5\r\n:1\r\n:2\r\n:3\r\n:4\r\n$5\r\nhello\r\n",
            Frame::Array(vec![Frame::Integer(1), Frame::Integer(2), Frame::Integer(3), Frame::Integer(4), bulk("hello")]),
        ),
        v(
            "nested array",
            b"*2\r\n*3\r\n:1\r\n:2\r\n:3\r\n*2\r\n+Hello\r\n-World\r\n",
            Frame::Array(vec![
                Frame::Array(vec![Frame::Integer(1), Frame::Integer(2), Frame::Integer(3)]),
                Frame::Array(vec![simple("Hello"), Frame::SimpleError(b("World"))]),
            ]),
        ),
        v(
            "array with null elements",
            b"*3\r\n$5\r\nhello\r\n$-1\r\n$5\r\nworld\r\n",
            Frame::Array(vec![bulk("hello"), Frame::Null, bulk("world")]),
        ),
        // RESP3
        v("null", b"_\r\n", Frame::Null),
        v("true", b"#t\r\n", Frame::Boolean(true)),
        v("false", b"#f\r\n", Frame::Boolean(false)),
        v("double", b",1.23\r\n", Frame::Double(1.23)),
        v("integral double", b",10\r\n", Frame::Double(10.0)),
        v("negative double", b",-0.5\r\n", Frame::Double(-0.5)),
        v("double with exponent", b",1.5e3\r\n", Frame::Double(1500.0)),
        v("double with signed exponent", b",-2.5E-2\r\n", Frame::Double(-0.025)),
        v("positive infinity", b",inf\r\n", Frame::Double(f64::INFINITY)),
        v("negative infinity", b",-inf\r\n", Frame::Double(f64::NEG_INFINITY)),
        v("not a number", b",nan\r\n", Frame::Double(f64::NAN)),
        v(
            "big number",
            b"(3492890328409238509324850943850943825024385\r\n",
            Frame::BigNumber(b("3492890328409238509324850943850943825024385")),
        ),
        v(
            "negative big number",
            b"(-3492890328409238509324850943850943825024385\r\n",
            Frame::BigNumber(b("-3492890328409238509324850943850943825024385")),
        ),
        v("bulk error", b"!21\r\nSYNTAX invalid syntax\r\n", Frame::BulkError(b("SYNTAX invalid syntax"))),
        v(
            "verbatim string",
            b"=15\r\ntxt:Some string\r\n",
            Frame::VerbatimString { format: *b"txt", text: b("Some string") },
        ),
        v("empty verbatim string", b"=4\r\nmkd:\r\n", Frame::VerbatimString { format: *b"mkd", text: b("") }),
        v(
            "map",
            b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n",
            Frame::Map(vec![(simple("first"), Frame::Integer(1)), (simple("second"), Frame::Integer(2))]),
        ),
        v("empty map", b"%0\r\n", Frame::Map(vec![])),
        v(
            "set",
            b"~5\r\n+orange\r\n+apple\r\n#t\r\n:100\r\n:999\r\n",
            Frame::Set(vec![simple("orange"), simple("apple"), Frame::Boolean(true), Frame::Integer(100), Frame::Integer(999)]),
        ),
        v(
            "push",
            b">4\r\n+pubsub\r\n+message\r\n+somechannel\r\n+this is the message\r\n",
            Frame::Push(vec![simple("pubsub"), simple("message"), simple("somechannel"), simple("this is the message")]),
        ),
        v(
            "pub/sub message push",
            b">3\r\n$7\r\nmessage\r\n$8\r\nevents:1\r\n$5\r\nhello\r\n",
            Frame::Push(vec![bulk("message"), bulk("events:1"), bulk("hello")]),
        ),
        Vector {
            name: "attribute before a reply",
            wire: b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n",
            frame: Frame::Array(vec![Frame::Integer(2039123), Frame::Integer(9543892)]),
            attributes: Some(vec![(
                simple("key-popularity"),
                Frame::Map(vec![(bulk("a"), Frame::Double(0.1923)), (bulk("b"), Frame::Double(0.0012))]),
            )]),
        },
        v(
            "attribute nested in an array is dropped",
            b"*3\r\n:1\r\n:2\r\n|1\r\n+ttl\r\n:3600\r\n:3\r\n",
            Frame::Array(vec![Frame::Integer(1), Frame::Integer(2), Frame::Integer(3)]),
        ),
        v(
            "attribute nested in a map key and value is dropped",
            b"%1\r\n|1\r\n+a\r\n:1\r\n+k\r\n|1\r\n+b\r\n*1\r\n:2\r\n+v\r\n",
            Frame::Map(vec![(simple("k"), simple("v"))]),
        ),
        v(
            "attribute nested inside an attribute is dropped",
            b"*1\r\n|1\r\n+outer\r\n|1\r\n+inner\r\n:0\r\n:1\r\n:2\r\n",
            Frame::Array(vec![Frame::Integer(2)]),
        ),
        Vector {
            name: "attribute before a scalar",
            wire: b"|1\r\n+ttl\r\n:10\r\n$3\r\nbar\r\n",
            frame: bulk("bar"),
            attributes: Some(vec![(simple("ttl"), Frame::Integer(10))]),
        },
    ]
}

fn check(
    vector: &Vector,
    got: &Result<Option<common::Decoded>, ringq_resp::DecodeError>,
    how: &str,
) {
    let Ok(Some((frame, attributes, consumed))) = got else {
        panic!("{} ({how}): expected a frame, got {got:?}", vector.name);
    };
    assert!(
        same(frame, &vector.frame),
        "{} ({how}): decoded {frame:?}, expected {:?}",
        vector.name,
        vector.frame
    );
    assert!(
        same_attributes(attributes, &vector.attributes),
        "{} ({how}): attributes {attributes:?}, expected {:?}",
        vector.name,
        vector.attributes
    );
    assert_eq!(
        *consumed,
        vector.wire.len(),
        "{} ({how}): consumed",
        vector.name
    );
}

#[test]
fn every_spec_vector_decodes_from_one_buffer() {
    for vector in vectors() {
        check(&vector, &decode_whole(vector.wire), "whole");
    }
}

#[test]
fn every_spec_vector_decodes_identically_when_split_into_two_reads_at_every_byte() {
    for vector in vectors() {
        for k in 0..=vector.wire.len() {
            let (got, fed) = decode_fed(vector.wire, &[k]);
            check(&vector, &got, &format!("decode, split at {k}"));
            assert_eq!(
                fed,
                vector.wire.len(),
                "{}: a frame came out before its last byte",
                vector.name
            );
            let (got, fed) = decode_bytes_fed(vector.wire, &[k]);
            check(&vector, &got, &format!("decode_bytes, split at {k}"));
            assert_eq!(
                fed,
                vector.wire.len(),
                "{}: decode_bytes finished early",
                vector.name
            );
        }
    }
}

#[test]
fn every_spec_vector_decodes_identically_when_fed_one_byte_at_a_time() {
    for vector in vectors() {
        let cuts = every_byte(vector.wire.len());
        let (got, fed) = decode_fed(vector.wire, &cuts);
        check(&vector, &got, "decode, byte by byte");
        assert_eq!(fed, vector.wire.len());
        let (got, fed) = decode_bytes_fed(vector.wire, &cuts);
        check(&vector, &got, "decode_bytes, byte by byte");
        assert_eq!(fed, vector.wire.len());
    }
}

#[test]
fn resumable_scan_returns_none_for_every_strict_prefix_and_the_length_at_the_end() {
    for vector in vectors() {
        let mut resumed = Decoder::new();
        for k in 0..vector.wire.len() {
            let prefix = &vector.wire[..k];
            assert_eq!(
                resumed.scan(prefix),
                Ok(None),
                "{}: resumed scan of {k} bytes",
                vector.name
            );
            assert_eq!(
                Decoder::new().scan(prefix),
                Ok(None),
                "{}: fresh scan of {k} bytes",
                vector.name
            );
        }
        assert_eq!(
            resumed.scan(vector.wire),
            Ok(Some(vector.wire.len())),
            "{}",
            vector.name
        );
        assert_eq!(
            resumed.scanned(),
            0,
            "{}: the scanner restarts after a frame",
            vector.name
        );
    }
}

#[test]
fn every_spec_vector_decodes_when_pipelined_between_two_other_replies() {
    for vector in vectors() {
        let mut wire = b"+first\r\n".to_vec();
        wire.extend_from_slice(vector.wire);
        wire.extend_from_slice(b":7\r\n");
        let mut dec = Decoder::new();
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Some(simple("first"))),
            "{}",
            vector.name
        );
        assert_eq!(dec.take_attributes(), None);
        let frame = dec.decode(&mut buf).expect("valid").expect("complete");
        assert!(same(&frame, &vector.frame), "{}: {frame:?}", vector.name);
        assert!(
            same_attributes(&dec.take_attributes(), &vector.attributes),
            "{}",
            vector.name
        );
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Some(Frame::Integer(7))),
            "{}",
            vector.name
        );
        assert_eq!(
            dec.take_attributes(),
            None,
            "{}: attributes leaked to the next reply",
            vector.name
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn nan_double_decodes_to_nan() {
    let (frame, _, _) = decode_whole(b",nan\r\n").expect("valid").expect("complete");
    assert!(matches!(frame, Frame::Double(d) if d.is_nan()), "{frame:?}");
}

#[test]
fn nan_and_infinities_encode_in_resp3_spelling_and_round_trip() {
    for (d, wire) in [
        (f64::NAN, &b",nan\r\n"[..]),
        (f64::INFINITY, b",inf\r\n"),
        (f64::NEG_INFINITY, b",-inf\r\n"),
    ] {
        let encoded = Frame::Double(d).to_bytes();
        assert_eq!(&encoded[..], wire);
        let (back, _, _) = decode_whole(&encoded).expect("valid").expect("complete");
        assert!(same(&back, &Frame::Double(d)), "{back:?}");
    }
}

#[test]
fn null_encodes_as_resp3_null_whatever_form_it_was_decoded_from() {
    for wire in [&b"$-1\r\n"[..], b"*-1\r\n", b"_\r\n"] {
        let (frame, _, _) = decode_whole(wire).expect("valid").expect("complete");
        assert_eq!(&frame.to_bytes()[..], b"_\r\n");
    }
}

#[test]
fn attributes_are_taken_once_and_never_returned_as_a_reply() {
    let wire = b"|1\r\n+ttl\r\n:10\r\n+OK\r\n";
    let mut dec = Decoder::new();
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(dec.decode(&mut buf), Ok(Some(simple("OK"))));
    assert_eq!(
        dec.take_attributes(),
        Some(vec![(simple("ttl"), Frame::Integer(10))])
    );
    assert_eq!(
        dec.take_attributes(),
        None,
        "taking attributes empties them"
    );
    assert_eq!(dec.decode(&mut buf), Ok(None), "nothing follows the reply");
}

#[test]
fn an_attribute_alone_is_not_a_complete_reply() {
    let wire = b"|1\r\n+ttl\r\n:10\r\n";
    assert_eq!(Decoder::new().scan(wire), Ok(None));
    assert_eq!(decode_whole(wire), Ok(None));
}

#[test]
fn reset_forgets_a_partial_frame() {
    let mut dec = Decoder::new();
    assert_eq!(dec.scan(b"*2\r\n:1\r\n"), Ok(None));
    assert!(dec.scanned() > 0);
    dec.reset();
    assert_eq!(dec.scanned(), 0);
    assert_eq!(
        dec.scan(b"+OK\r\n"),
        Ok(Some(5)),
        "a new connection starts at a new frame"
    );
}

#[test]
fn build_decodes_the_first_frame_of_complete_bytes() {
    let mut dec = Decoder::new();
    assert_eq!(
        dec.build(&b("*1\r\n$2\r\nhi\r\n+next\r\n")),
        Ok(Frame::Array(vec![bulk("hi")]))
    );
    let err = dec
        .build(&b("*2\r\n$2\r\nhi\r\n"))
        .expect_err("one element is missing");
    assert_eq!(err.kind(), ringq_resp::DecodeErrorKind::Truncated);
}

#[test]
fn decoded_payloads_share_the_input_buffer() {
    let input = Bytes::from(b"*1\r\n$5\r\nhello\r\n".to_vec());
    let (frame, n) = Decoder::new()
        .decode_bytes(&input)
        .expect("valid")
        .expect("complete");
    assert_eq!(n, input.len());
    let payload = frame
        .as_elements()
        .and_then(|e| e[0].as_bytes())
        .expect("a bulk string")
        .clone();
    assert_eq!(
        payload.as_ptr(),
        input[8..].as_ptr(),
        "the payload is a slice, not a copy"
    );
}

#[test]
fn error_frames_parse_into_server_error_kinds() {
    let (frame, _, _) = decode_whole(b"-MOVED 3999 127.0.0.1:6381\r\n")
        .expect("valid")
        .expect("complete");
    assert!(frame.is_error());
    let err = frame.to_server_error().expect("an error frame");
    assert_eq!(
        err.kind(),
        &ServerErrorKind::Moved {
            slot: 3999,
            addr: "127.0.0.1:6381".into()
        }
    );
    let wire = Frame::BulkError(b("NOGROUP No such consumer group")).to_bytes();
    let (frame, _, _) = decode_whole(&wire).expect("valid").expect("complete");
    assert_eq!(
        frame.to_server_error().map(|e| e.kind().clone()),
        Some(ServerErrorKind::NoGroup)
    );
    assert_eq!(simple("OK").to_server_error(), None);
}

#[test]
fn frame_accessors_expose_payloads() {
    assert_eq!(bulk("x").as_bytes(), Some(&b("x")));
    assert_eq!(
        Frame::VerbatimString {
            format: *b"txt",
            text: b("t")
        }
        .as_bytes(),
        Some(&b("t"))
    );
    assert_eq!(Frame::Integer(3).as_integer(), Some(3));
    assert_eq!(bulk("x").as_integer(), None);
    assert_eq!(
        Frame::Set(vec![Frame::Null]).as_elements(),
        Some(&[Frame::Null][..])
    );
    assert_eq!(Frame::Map(vec![]).as_elements(), None);
}
