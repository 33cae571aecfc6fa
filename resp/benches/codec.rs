//! Codec micro-benchmarks, each measured against the `redis-protocol` crate (v6) in the same
//! run so the ratio, not the absolute figure, is what a reader compares across machines.
//!
//! Cases (payloads are 100 bytes everywhere):
//! - `decode/brpop`: a BRPOP reply, `*2` of key and one payload.
//! - `decode/lmpop_100`, `decode/lmpop_1000`: an LMPOP reply, `*2` of key and `*N` payloads.
//!   Our decoder as a [`Frame`] tree, our zero-allocation [`Reader`] walk, and
//!   `redis_protocol::resp2` decoding the same bytes.
//! - `decode/push_message`: a RESP3 pub/sub push, `>3 message channel payload`, against
//!   `redis_protocol::resp3`.
//! - `encode/brpop_16_keys`: writing `BRPOP k1..k16 5`.
//! - `chunked/array_10000`: a 10 000-element array arriving in 64-byte reads, decoded after
//!   every read, against decoding the same array from one buffer: equal figures mean the
//!   incremental decoder does linear total work.
//!
//! Throughput is in elements (popped messages), so criterion prints a per-element rate.
//! Results are recorded in `docs/bench/codec.md`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use redis_protocol::{resp2, resp3};
use ringq_resp::{encode_command, CommandWriter, Decoder, Frame, Reader, Token};

const PAYLOAD_LEN: usize = 100;
const KEY: &[u8] = b"queue:{jobs}:ready";

fn payload(i: usize) -> Vec<u8> {
    // Distinct payloads so nothing can be deduplicated or cached by content.
    let mut p = vec![b'x'; PAYLOAD_LEN];
    let tag = format!("msg-{i:08}");
    p[..tag.len()].copy_from_slice(tag.as_bytes());
    p
}

fn brpop_reply() -> Bytes {
    Frame::Array(vec![
        Frame::BulkString(Bytes::from_static(KEY)),
        Frame::BulkString(payload(0).into()),
    ])
    .to_bytes()
}

fn lmpop_reply(n: usize) -> Bytes {
    let items = (0..n)
        .map(|i| Frame::BulkString(payload(i).into()))
        .collect();
    Frame::Array(vec![
        Frame::BulkString(Bytes::from_static(KEY)),
        Frame::Array(items),
    ])
    .to_bytes()
}

fn push_message() -> Bytes {
    Frame::Push(vec![
        Frame::BulkString(Bytes::from_static(b"message")),
        Frame::BulkString(Bytes::from_static(b"events:orders")),
        Frame::BulkString(payload(0).into()),
    ])
    .to_bytes()
}

fn flat_array(n: usize) -> Bytes {
    Frame::Array(
        (0..n)
            .map(|i| Frame::BulkString(payload(i).into()))
            .collect(),
    )
    .to_bytes()
}

/// The engine's hot path: scan for a complete reply, then walk it without allocating.
/// Returns the total payload length so the walk cannot be optimised away.
fn walk_lmpop(dec: &mut Decoder, input: &Bytes) -> usize {
    let n = dec.scan(input).expect("valid").expect("complete");
    let mut r = Reader::new(input.slice(..n));
    assert_eq!(r.next_token().expect("valid"), Token::Array(2));
    let key = r.next_bytes().expect("valid").expect("a key");
    let Token::Array(count) = r.next_token().expect("valid") else {
        panic!("not an LMPOP reply")
    };
    let mut total = key.len();
    for _ in 0..count {
        total += r.next_bytes().expect("valid").expect("a payload").len();
    }
    total
}

fn decode_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");

    let cases: [(&str, Bytes, u64); 3] = [
        ("brpop", brpop_reply(), 1),
        ("lmpop_100", lmpop_reply(100), 100),
        ("lmpop_1000", lmpop_reply(1000), 1000),
    ];
    for (name, input, elements) in cases {
        g.throughput(Throughput::Elements(elements));
        let mut dec = Decoder::new();
        g.bench_function(format!("{name}/ringq_frame"), |b| {
            b.iter(|| {
                dec.decode_bytes(black_box(&input))
                    .expect("valid")
                    .expect("complete")
            })
        });
        if name != "brpop" {
            let mut dec = Decoder::new();
            g.bench_function(format!("{name}/ringq_reader"), |b| {
                b.iter(|| walk_lmpop(&mut dec, black_box(&input)))
            });
        }
        g.bench_function(format!("{name}/redis_protocol_resp2"), |b| {
            b.iter(|| {
                resp2::decode::decode_bytes(black_box(&input))
                    .expect("valid")
                    .expect("complete")
            })
        });
    }

    let input = push_message();
    g.throughput(Throughput::Elements(1));
    let mut dec = Decoder::new();
    g.bench_function("push_message/ringq_frame", |b| {
        b.iter(|| {
            dec.decode_bytes(black_box(&input))
                .expect("valid")
                .expect("complete")
        })
    });
    g.bench_function("push_message/redis_protocol_resp3", |b| {
        b.iter(|| {
            resp3::decode::complete::decode_bytes(black_box(&input))
                .expect("valid")
                .expect("complete")
        })
    });
    g.finish();
}

fn encode_benches(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..16)
        .map(|i| format!("queue:{{jobs}}:{i:02}").into_bytes())
        .collect();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(1024);
    g.bench_function("brpop_16_keys/ringq_command_writer", |b| {
        b.iter(|| {
            out.clear();
            CommandWriter::new(&mut out, 2 + keys.len())
                .arg(b"BRPOP")
                .args(black_box(&keys))
                .arg_int(5)
                .finish();
            black_box(out.len())
        })
    });
    let argv: Vec<&[u8]> = std::iter::once(&b"BRPOP"[..])
        .chain(keys.iter().map(Vec::as_slice))
        .chain([&b"5"[..]])
        .collect();
    g.bench_function("brpop_16_keys/ringq_encode_command", |b| {
        b.iter(|| {
            out.clear();
            encode_command(&mut out, black_box(&argv).iter());
            black_box(out.len())
        })
    });
    let mut bytes_out = BytesMut::with_capacity(1024);
    g.bench_function("brpop_16_keys/redis_protocol_resp2", |b| {
        b.iter(|| {
            bytes_out.clear();
            let mut args = Vec::with_capacity(keys.len() + 2);
            args.push(resp2::types::BytesFrame::BulkString(Bytes::from_static(
                b"BRPOP",
            )));
            for k in black_box(&keys) {
                args.push(resp2::types::BytesFrame::BulkString(
                    Bytes::copy_from_slice(k),
                ));
            }
            args.push(resp2::types::BytesFrame::BulkString(Bytes::from_static(
                b"5",
            )));
            let frame = resp2::types::BytesFrame::Array(args);
            resp2::encode::extend_encode(&mut bytes_out, &frame, false).expect("encodable")
        })
    });
    g.finish();
}

const CHUNKED_ELEMENTS: usize = 10_000;
const CHUNK: usize = 64;

fn chunked_benches(c: &mut Criterion) {
    let whole = flat_array(CHUNKED_ELEMENTS);
    let mut g = c.benchmark_group("chunked");
    g.throughput(Throughput::Elements(CHUNKED_ELEMENTS as u64));
    let mut dec = Decoder::new();
    g.bench_function("array_10000/ringq_64_byte_reads", |b| {
        b.iter_batched_ref(
            || BytesMut::with_capacity(whole.len()),
            |buf| {
                for chunk in whole.chunks(CHUNK) {
                    buf.extend_from_slice(chunk);
                    if let Some(frame) = dec.decode(buf).expect("valid") {
                        return frame;
                    }
                }
                panic!("the array never completed");
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("array_10000/ringq_one_buffer", |b| {
        b.iter_batched_ref(
            || BytesMut::with_capacity(whole.len()),
            |buf| {
                buf.extend_from_slice(&whole);
                dec.decode(buf).expect("valid").expect("complete")
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = decode_benches, encode_benches, chunked_benches
}
criterion_main!(benches);
