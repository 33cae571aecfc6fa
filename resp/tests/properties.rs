//! Property tests: arbitrary frames round-trip through the encoder and decoder however the
//! bytes are split into reads; arbitrary and mutated bytes never panic, and every way of
//! feeding them gives the same frames and the same typed error (see `common::oracle`).

mod common;

use bytes::{Bytes, BytesMut};
use common::{
    any_frame, blob_bytes, cuts_from, decode_bytes_fed, decode_fed, decode_whole, oracle, same,
    same_attributes, same_decoded, wire_with_attributes,
};
use proptest::collection::vec;
use proptest::prelude::*;
use ringq_resp::{encode_command, CommandWriter, Decoder, Frame};

/// Bytes drawn mostly from the RESP alphabet (type bytes, digits, signs, CR, LF), so short
/// inputs reach deep into the decoder instead of failing on their first byte.
fn resp_ish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => prop::sample::select(&b"+-:$*_#,(!=%~|>"[..]),
        4 => prop::sample::select(&b"0123456789"[..]),
        3 => prop::sample::select(&b"\r\n"[..]),
        1 => prop::sample::select(&b"-+.eEtfinax "[..]),
        1 => any::<u8>(),
    ];
    vec(byte, 0..200)
}

/// One edit to a valid wire form.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: u16, to: u8 },
    Insert { at: u16, byte: u8 },
    Delete { at: u16 },
    Truncate { at: u16 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        prop::sample::select(&b"+-:$*_#,(!=%~|>0123456789\r\n"[..]),
        any::<u8>(),
    ];
    prop_oneof![
        (any::<u16>(), byte.clone()).prop_map(|(at, to)| Mutation::Flip { at, to }),
        (any::<u16>(), byte).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<u16>().prop_map(|at| Mutation::Delete { at }),
        any::<u16>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(wire: &mut Vec<u8>, m: &Mutation) {
    let pick = |at: u16, len: usize| usize::from(at) % len.max(1);
    match *m {
        Mutation::Flip { at, to } if !wire.is_empty() => {
            let i = pick(at, wire.len());
            wire[i] = to;
        }
        Mutation::Insert { at, byte } => {
            let i = pick(at, wire.len() + 1);
            wire.insert(i, byte);
        }
        Mutation::Delete { at } if !wire.is_empty() => {
            let i = pick(at, wire.len());
            wire.remove(i);
        }
        Mutation::Truncate { at } => {
            let i = pick(at, wire.len() + 1);
            wire.truncate(i);
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_frame_round_trips_through_write_to_and_decode(frame in any_frame()) {
        let wire = frame.to_bytes();
        for (how, got) in [
            ("decode", decode_whole(&wire)),
            ("decode_bytes", decode_bytes_fed(&wire, &[]).0),
        ] {
            let Ok(Some((back, attributes, n))) = got else {
                panic!("{how}: {frame:?} as {wire:?} gave {got:?}");
            };
            prop_assert!(same(&back, &frame), "{}: {:?} came back as {:?}", how, frame, back);
            prop_assert_eq!(attributes, None);
            prop_assert_eq!(n, wire.len());
        }
    }

    #[test]
    fn any_frame_decodes_identically_in_arbitrary_pieces(
        frame in any_frame(),
        fractions in vec(any::<u16>(), 0..12),
    ) {
        let wire = frame.to_bytes();
        let whole = decode_whole(&wire);
        let cuts = cuts_from(wire.len(), &fractions);
        let (fed, _) = decode_fed(&wire, &cuts);
        prop_assert!(same_decoded(&whole, &fed), "{:?} cut at {:?}: {:?}", frame, cuts, fed);
        let (fed, _) = decode_bytes_fed(&wire, &cuts);
        prop_assert!(same_decoded(&whole, &fed), "{:?} cut at {:?}: {:?}", frame, cuts, fed);
    }

    #[test]
    fn attributes_before_a_reply_are_returned_with_it_and_nested_ones_are_dropped(
        (wire, frame, top) in wire_with_attributes(),
        fractions in vec(any::<u16>(), 0..6),
    ) {
        let cuts = cuts_from(wire.len(), &fractions);
        for (how, got) in [
            ("decode", decode_fed(&wire, &cuts).0),
            ("decode_bytes", decode_bytes_fed(&wire, &cuts).0),
        ] {
            let Ok(Some((back, attributes, n))) = got else {
                panic!("{how}: {wire:?} gave {got:?}");
            };
            prop_assert!(same(&back, &frame), "{}: {:?} came back as {:?}", how, frame, back);
            prop_assert!(same_attributes(&attributes, &top), "{}: {:?} vs {:?}", how, attributes, top);
            prop_assert_eq!(n, wire.len());
        }
    }

    #[test]
    fn pipelined_frames_come_out_one_by_one_in_order(
        frames in vec(any_frame(), 1..6),
        fractions in vec(any::<u16>(), 0..12),
    ) {
        let mut wire = Vec::new();
        for f in &frames {
            f.write_to(&mut wire);
        }
        let cuts = cuts_from(wire.len(), &fractions);
        let mut dec = Decoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        for end in cuts.iter().copied().chain([wire.len()]) {
            buf.extend_from_slice(&wire[fed..end]);
            fed = end;
            while let Some(f) = dec.decode(&mut buf).expect("valid") {
                out.push(f);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert!(common::same_list(&out, &frames), "{:?} vs {:?}", out, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_every_way_of_feeding_them_agrees(
        data in vec(any::<u8>(), 0..128),
    ) {
        oracle::check(&data);
    }

    #[test]
    fn resp_like_bytes_never_panic_and_every_way_of_feeding_them_agrees(
        data in resp_ish_bytes(),
    ) {
        oracle::check(&data);
    }

    #[test]
    fn mutated_frames_never_panic_and_every_way_of_feeding_them_agrees(
        (wire, _, _) in wire_with_attributes(),
        mutations in vec(mutation(), 1..4),
    ) {
        let mut wire = wire;
        for m in &mutations {
            apply(&mut wire, m);
        }
        oracle::check(&wire);
    }

    #[test]
    fn encoded_commands_decode_as_arrays_of_the_same_bulk_strings(
        args in vec(blob_bytes(40), 1..40),
    ) {
        let mut out = BytesMut::new();
        encode_command(&mut out, args.iter());
        let frame = Decoder::new().decode(&mut out).expect("valid").expect("complete");
        prop_assert!(out.is_empty());
        let expected = Frame::Array(args.iter().cloned().map(Frame::BulkString).collect());
        prop_assert_eq!(frame, expected);
    }

    #[test]
    fn command_writer_writes_what_encode_command_writes(
        name in blob_bytes(12),
        keys in vec(blob_bytes(24), 0..300),
        timeout in any::<i64>(),
    ) {
        let mut by_writer = Vec::new();
        CommandWriter::new(&mut by_writer, keys.len() + 2)
            .arg(&name)
            .args(&keys)
            .arg_int(timeout)
            .finish();
        let timeout_text = Bytes::from(timeout.to_string());
        let argv: Vec<&Bytes> = std::iter::once(&name).chain(&keys).chain([&timeout_text]).collect();
        let mut by_function = Vec::new();
        encode_command(&mut by_function, argv);
        prop_assert_eq!(by_writer, by_function);
    }
}

#[test]
fn every_generated_frame_decodes_identically_when_split_into_two_reads_at_every_byte() {
    // Exhaustive over split points, so fewer frames than the sampled tests above.
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&any_frame(), |frame| {
            let wire = frame.to_bytes();
            let whole = decode_whole(&wire);
            for k in 0..=wire.len() {
                let (fed, _) = decode_fed(&wire, &[k]);
                prop_assert!(same_decoded(&whole, &fed), "{:?} split at {}", frame, k);
                let (fed, _) = decode_bytes_fed(&wire, &[k]);
                prop_assert!(same_decoded(&whole, &fed), "{:?} split at {}", frame, k);
            }
            Ok(())
        })
        .expect("every split decodes the same");
}
