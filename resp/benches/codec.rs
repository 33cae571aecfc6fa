//! Codec micro-benchmarks, each measured against the `redis-protocol` crate (v6) in the same
//! run so the ratio, not the absolute figure, is what a reader compares across machines.
//!
//! Decoding is measured two ways, each against its `redis-protocol` counterpart:
//! - *owned*: a value whose payloads are [`Bytes`] handles on the input. Ours is
//!   [`Decoder::decode_bytes`] building a [`Frame`] (`ringq_frame`); theirs is
//!   `decode_bytes` (`redis_protocol_bytes`). Each payload handle costs an atomic increment
//!   when made and a decrement when dropped (the benchmark drops what it decodes).
//! - *borrowed*: payloads as positions in the input, no reference count touched. Ours is a
//!   [`Reader`] walk with [`Reader::next_slice`] (`ringq_reader`; on a reply that has not
//!   fully arrived it stops with `Truncated`); theirs is `decode_range`
//!   (`redis_protocol_range`, `None` when incomplete).
//!
//! And the two-pass path the engine takes, where a resumable [`Decoder::scan`] first finds
//! the reply complete: `ringq_scan_then_reader` (then `next_slice`),
//! `ringq_scan_then_reader_bytes` (then [`Reader::next_bytes`], one `Bytes` per payload,
//! dropped at once, as the engine does), and `ringq_scan` alone.
//!
//! Cases (payloads are 100 bytes everywhere):
//! - `decode/brpop`: a BRPOP reply, `*2` of key and one payload.
//! - `decode/lmpop_100`, `decode/lmpop_1000`: an LMPOP reply, `*2` of key and `*N` payloads.
//! - `decode/push_message`: a RESP3 pub/sub push, `>3 message channel payload`, against
//!   `redis_protocol::resp3`.
//! - `encode/brpop_16_keys`: writing `BRPOP k1..k16 5`.
//! - `chunked/array_N`: an N-element array arriving in 64-byte reads, decoded after every
//!   read, against the same array in one buffer. The same per-element time at N = 1 000 and
//!   N = 10 000 shows the incremental decoder does linear total work; `redis-protocol`,
//!   which starts over on every read, is shown at N = 1 000 for contrast.
//!
//! - `floor/*`: what no decoder on this machine can go below, for reading the figures above:
//!   a `Bytes` clone and drop (the price of one owned payload), and a bare loop that only
//!   follows the length chain of an LMPOP reply (read a length, jump past the body) with
//!   no validation at all.
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

/// Walks a BRPOP or LMPOP reply with a [`Reader`], taking each LMPOP payload with `take`
/// (which returns its length so the walk cannot be optimised away). A [`Reader`] owns a
/// `Bytes` handle on the reply, so making one costs a reference count per reply (not per
/// element).
fn walk_pop_reply(mut r: Reader, mut take: impl FnMut(&mut Reader) -> usize) -> usize {
    assert_eq!(r.next_token().expect("valid"), Token::Array(2));
    let mut total = r.next_slice().expect("valid").expect("a key").len();
    // BRPOP: one payload; LMPOP: an array of them.
    match r.next_slice().expect("valid") {
        Ok(payload) => total += payload.len(),
        Err(Token::Array(count)) => {
            for _ in 0..count {
                total += take(&mut r);
            }
        }
        Err(t) => panic!("not a pop reply: {t:?}"),
    }
    total
}

/// The engine's path: a resumable scan finds the reply complete, then a walk.
fn scan_then_walk(
    dec: &mut Decoder,
    input: &Bytes,
    take: impl FnMut(&mut Reader) -> usize,
) -> usize {
    let n = dec.scan(input).expect("valid").expect("complete");
    walk_pop_reply(Reader::new(input.slice(..n)), take)
}

fn slice_len(r: &mut Reader) -> usize {
    r.next_slice().expect("valid").expect("a payload").len()
}

fn bytes_len(r: &mut Reader) -> usize {
    r.next_bytes().expect("valid").expect("a payload").len()
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
        g.bench_function(format!("{name}/redis_protocol_bytes"), |b| {
            b.iter(|| {
                resp2::decode::decode_bytes(black_box(&input))
                    .expect("valid")
                    .expect("complete")
            })
        });
        g.bench_function(format!("{name}/ringq_reader"), |b| {
            b.iter(|| walk_pop_reply(Reader::new(black_box(&input).clone()), slice_len))
        });
        g.bench_function(format!("{name}/redis_protocol_range"), |b| {
            b.iter(|| {
                resp2::decode::decode_range(black_box(&input))
                    .expect("valid")
                    .expect("complete")
            })
        });
        g.bench_function(format!("{name}/ringq_scan_then_reader"), |b| {
            b.iter(|| scan_then_walk(&mut dec, black_box(&input), slice_len))
        });
        if name != "brpop" {
            g.bench_function(format!("{name}/ringq_scan_then_reader_bytes"), |b| {
                b.iter(|| scan_then_walk(&mut dec, black_box(&input), bytes_len))
            });
            g.bench_function(format!("{name}/ringq_scan"), |b| {
                b.iter(|| {
                    dec.scan(black_box(&input))
                        .expect("valid")
                        .expect("complete")
                })
            });
        }
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
    g.bench_function("push_message/redis_protocol_bytes", |b| {
        b.iter(|| {
            resp3::decode::complete::decode_bytes(black_box(&input))
                .expect("valid")
                .expect("complete")
        })
    });
    g.bench_function("push_message/ringq_reader", |b| {
        b.iter(|| {
            let mut r = Reader::new(black_box(&input).clone());
            let Token::Push(count) = r.next_token().expect("valid") else {
                panic!("not a push");
            };
            (0..count)
                .map(|_| r.next_slice().expect("valid").expect("a string").len())
                .sum::<usize>()
        })
    });
    g.bench_function("push_message/redis_protocol_range", |b| {
        b.iter(|| {
            resp3::decode::complete::decode_range(black_box(&input))
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
    g.bench_function("brpop_16_keys/redis_protocol", |b| {
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

const CHUNK: usize = 64;

fn chunked_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunked");
    for elements in [1_000, 10_000] {
        let whole = flat_array(elements);
        g.throughput(Throughput::Elements(elements as u64));
        let mut dec = Decoder::new();
        g.bench_function(format!("array_{elements}/ringq_64_byte_reads"), |b| {
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
        g.bench_function(format!("array_{elements}/ringq_one_buffer"), |b| {
            b.iter_batched_ref(
                || BytesMut::with_capacity(whole.len()),
                |buf| {
                    buf.extend_from_slice(&whole);
                    dec.decode(buf).expect("valid").expect("complete")
                },
                BatchSize::SmallInput,
            )
        });
        if elements == 1_000 {
            g.bench_function(
                format!("array_{elements}/redis_protocol_64_byte_reads"),
                |b| {
                    b.iter_batched_ref(
                        || BytesMut::with_capacity(whole.len()),
                        |buf| {
                            for chunk in whole.chunks(CHUNK) {
                                buf.extend_from_slice(chunk);
                                if let Some(done) =
                                    resp2::decode::decode_bytes_mut(buf).expect("valid")
                                {
                                    return done;
                                }
                            }
                            panic!("the array never completed");
                        },
                        BatchSize::SmallInput,
                    )
                },
            );
        }
    }
    g.finish();
}

fn floor_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    let input = lmpop_reply(100);
    g.throughput(Throughput::Elements(1));
    g.bench_function("bytes_clone_and_drop", |b| {
        b.iter(|| black_box(black_box(&input).clone()))
    });
    // The 100 payloads start after `*2`, the key and `*100`.
    let first = input.len() - 100 * (PAYLOAD_LEN + 8);
    assert_eq!(&input[first..first + 6], b"$100\r\n");
    g.throughput(Throughput::Elements(100));
    g.bench_function("lmpop_100_length_chain", |b| {
        b.iter(|| {
            let buf = black_box(&input[..]);
            let (mut pos, mut total) = (first, 0);
            while pos < buf.len() {
                let (mut n, mut i) = (0, pos + 1);
                while buf[i].is_ascii_digit() {
                    n = n * 10 + usize::from(buf[i] - b'0');
                    i += 1;
                }
                pos = i + 2 + n + 2;
                total += n;
            }
            total
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = decode_benches, encode_benches, chunked_benches, floor_benches
}
criterion_main!(benches);
