//! The park/wake handshake between a shard and its workers, hammered.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{epoch_nanos, start_pool, Dispatch, ShardWaker};
use crate::error::Error;
use crate::handler::SourceKind;
use crate::handler::{Message, Outcome, Payload, Span};
use crate::intern::intern_source;
use crate::ring::sys;

fn msg(i: u64, epoch: Instant) -> Message<'static> {
    Message {
        payload: Payload::owned(Bytes::copy_from_slice(&i.to_le_bytes())),
        source: intern_source(SourceKind::Queue, b"q", b"q", 0, (i % 4) as u32),
        aux: Span::default(),
        deliveries: 1,
        received_ns: epoch_nanos(epoch),
        seq: 0,
    }
}

/// A shard loop stand-in hammering the park/wake handshake on both sides: tiny rings,
/// bursts of random size, random pauses on both ends. A lost wake-up shows as a hang,
/// caught by the deadline.
#[test]
fn park_wake_race_loses_no_message() {
    for (mode, workers) in [
        (Dispatch::workers(2).batch(3), 2),
        (Dispatch::orderly(3).batch(5), 3),
    ] {
        let fd = sys::eventfd().unwrap();
        let waker = Arc::new(ShardWaker::new(fd));
        let sum = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let s2 = sum.clone();
        let handler = move |m: &Message<'_>| {
            let v = u64::from_le_bytes(m.payload()[..8].try_into().unwrap());
            s2.fetch_add(v, Ordering::Relaxed);
            if v % 7919 == 0 {
                std::thread::yield_now();
            }
            Outcome::Ack
        };
        let epoch = Instant::now();
        let fatal: Arc<dyn Fn(Error) + Send + Sync> = Arc::new(|e| panic!("{e}"));
        let capacity = 16;
        let mut pool = start_pool(
            &mode,
            &handler,
            std::slice::from_ref(&waker),
            capacity,
            epoch,
            fatal,
        )
        .unwrap();
        assert_eq!(pool.threads.len(), workers);
        let mut side = pool.shard_sides.pop().unwrap();
        let total: u64 = 200_000;
        let (mut sent, mut done, mut rng) = (0u64, 0u64, 0x9E37_79B9u64);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut msgs = Vec::new();
        while done < total {
            assert!(
                Instant::now() < deadline,
                "hang: sent {sent}, done {done} — a wake-up was lost"
            );
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let credit = capacity as u64 - u64::from(side.in_flight());
            let burst = (rng % 6).min(credit).min(total - sent);
            for _ in 0..burst {
                msgs.push(msg(sent, epoch));
                sent += 1;
            }
            side.submit(&mut msgs);
            side.wake_workers();
            done += side.collect(|d| assert_eq!(d.outcome, Outcome::Ack)) as u64;
            if rng % 3 == 0 && side.in_flight() > 0 && side.prepare_sleep() {
                // Sleep as the ring would, until a worker writes the eventfd. Outcomes
                // are owed, so a 10 s silence can only be a lost wake-up.
                assert!(
                    sys::wait_readable(fd, 10_000),
                    "lost wake-up: {} messages owed, no eventfd write",
                    side.in_flight()
                );
                sys::eventfd_read(fd);
                side.woke();
            }
        }
        assert_eq!(sum.load(Ordering::Relaxed), total * (total - 1) / 2);
        drop(side);
        for t in pool.threads.drain(..) {
            t.join().unwrap();
        }
        sys::close(fd);
    }
}
