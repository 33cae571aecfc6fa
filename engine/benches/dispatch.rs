//! The dispatch path alone: one shard handing messages to 2 workers and taking the
//! outcomes back, with the real rings and sleep/wake protocol, at batch sizes 1, 16, 256.
//! Compared in the same run with running the same handler inline.
//!
//! `cargo bench -p ringq --bench dispatch`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringq::bench_support::LoopbackPool;
use ringq::{Dispatch, Handler, Message, Outcome};

/// The least work a handler can do: read the payload length.
#[derive(Clone)]
struct Touch;

impl Handler for Touch {
    fn handle(&mut self, m: &Message<'_>) -> Outcome {
        std::hint::black_box(m.payload().len());
        Outcome::Ack
    }
}

const CAPACITY: usize = 1024;

fn dispatch(c: &mut Criterion) {
    let payload = Bytes::from_static(&[b'x'; 16]);
    let mut g = c.benchmark_group("dispatch_1_shard_2_workers");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for batch in [1usize, 16, 256] {
        g.throughput(Throughput::Elements(batch as u64));
        let mut pool = LoopbackPool::new(&Dispatch::workers(2).batch(batch), &Touch, CAPACITY)
            .expect("the benchmark's worker pool starts");
        let mut msgs = Vec::with_capacity(batch);
        g.bench_with_input(BenchmarkId::new("workers", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    // Keep within the credit the shard would have.
                    while pool.in_flight() as usize + batch > CAPACITY {
                        if pool.collect() == 0 {
                            pool.wait();
                        }
                    }
                    for _ in 0..batch {
                        msgs.push(pool.message(payload.clone(), 0));
                    }
                    pool.send(&mut msgs);
                    pool.collect();
                }
                while pool.in_flight() > 0 {
                    if pool.collect() == 0 {
                        pool.wait();
                    }
                }
                start.elapsed()
            })
        });
        let mut inline = Touch;
        let pool2 = LoopbackPool::new(&Dispatch::workers(1), &Touch, 1)
            .expect("the benchmark's worker pool starts");
        let mut out = Vec::with_capacity(batch);
        g.bench_with_input(BenchmarkId::new("inline", batch), &batch, |b, &batch| {
            b.iter(|| {
                for _ in 0..batch {
                    msgs.push(pool2.message(payload.clone(), 0));
                }
                out.clear();
                inline.handle_batch(&msgs, &mut out);
                msgs.clear();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
