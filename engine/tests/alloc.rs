//! Heap allocations on the pop-to-handler path, counted by a global allocator.
//!
//! Its own test binary (a global allocator is process-wide), one test at a time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringq::{Dispatch, EngineBuilder, Handler, Message, Outcome, PopConsumer, PopStrategy};
use ringq_tests::{wait_until, RedisServer};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone)]
struct Count(Arc<AtomicU64>);

impl Handler for Count {
    fn handle(&mut self, _m: &Message<'_>) -> Outcome {
        self.0.fetch_add(1, Ordering::Relaxed);
        Outcome::Ack
    }
}

/// Allocations per message over a steady-state window, after a warm-up.
fn allocations_per_message(dispatch: Dispatch, strategy: PopStrategy, total: u64) -> f64 {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("alloc", (0..total).map(|i| format!("payload-{i:012}")))
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let running = EngineBuilder::new(server.url())
        .prefetch(1024)
        .pin_cores(false)
        .dispatch(dispatch)
        .start(
            PopConsumer::new(["alloc"]).strategy(strategy).batch(128),
            Count(count.clone()),
        )
        .unwrap();
    let warm = total / 4;
    let end = total * 3 / 4;
    // Polling the counter (no allocation) instead of stats(), which builds a snapshot.
    assert!(wait_until(Duration::from_secs(120), || count
        .load(Ordering::Relaxed)
        >= warm));
    let (n0, a0) = (
        count.load(Ordering::Relaxed),
        ALLOCS.load(Ordering::Relaxed),
    );
    assert!(wait_until(Duration::from_secs(120), || count
        .load(Ordering::Relaxed)
        >= end));
    let (n1, a1) = (
        count.load(Ordering::Relaxed),
        ALLOCS.load(Ordering::Relaxed),
    );
    assert!(wait_until(Duration::from_secs(120), || count
        .load(Ordering::Relaxed)
        >= total));
    running.shutdown().unwrap();
    let per = (a1 - a0) as f64 / (n1 - n0) as f64;
    println!(
        "{:>8} allocations over {} messages: {per:.5} per message",
        a1 - a0,
        n1 - n0
    );
    per
}

#[test]
fn steady_state_pop_path_does_not_allocate_per_message() {
    // What may allocate in the window is per *buffer*, not per message: a receive buffer
    // replaced while messages still hold slices of the old one, a histogram merge. One
    // allocation per 1000 messages is far above that and far below one per message.
    const BOUND: f64 = 0.001;
    for (name, dispatch) in [
        ("inline", Dispatch::inline()),
        ("workers", Dispatch::workers(2)),
        ("orderly", Dispatch::orderly(2)),
    ] {
        for strategy in [PopStrategy::Adaptive, PopStrategy::Single] {
            let total = if strategy == PopStrategy::Single {
                100_000
            } else {
                400_000
            };
            let per = allocations_per_message(dispatch.clone(), strategy, total);
            assert!(
                per < BOUND,
                "{name} {strategy:?}: {per} allocations per message"
            );
        }
    }
}
