//! The at-least-once modes on a Redis Cluster (issue 22): reliable (lists) and stream
//! (consumer groups) against a real 6-node cluster of Redis 7.0 and of Valkey 9.
//!
//! Sources on every primary drain with nothing lost. Then each fault, during a drain
//! of a source whose every message was replicated first (`WAIT 1`):
//!
//! - a legacy reshard of the source's slot, held open between MIGRATING and SETSLOT
//!   NODE (the lease and settle scripts meet TRYAGAIN while some of their keys have
//!   moved, everything meets ASK once all have);
//! - `CLUSTER FAILOVER` of its primary (Redis answers the blocked pops UNBLOCKED and
//!   closes, Valkey answers MOVED);
//! - SIGKILL of its primary;
//! - `SCRIPT FLUSH` on its primary, as after a restart without its scripts (reliable);
//! - Valkey 9's atomic migration of the source's slot (`CLUSTER MIGRATESLOTS`).
//!
//! Through the two slot moves, half the messages come from a steady producer that
//! follows the cluster (MOVED, ASK with ASKING, TRYAGAIN) and is still writing when the
//! slot moves (its last 100 wait for the move to end).
//!
//! Each checks the fault came mid-drain, then counts: every message delivered (lost must
//! be 0), duplicates printed, and nothing left leased or pending at the new owner.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringq::Running;
use ringq_tests::{wait_until, ClusterGroup};

mod support;
use support::cluster::{cluster_of, fill, left, replicated, start_acked, Acked, Producer};
use support::{builder, longest_stop, on_redis_and_valkey, Kind, Rec, Recorder, WAIT};

/// What a test does to the source's primary mid-drain.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Reshard,
    Failover,
    Kill,
    /// `SCRIPT FLUSH` on the primary (as a restart without its scripts): NOSCRIPT, then
    /// a reconnect that loads them again. Reliable mode only: a stream drain runs no
    /// script between its start and its first claim.
    ScriptFlush,
    /// Valkey 9's atomic slot migration (`CLUSTER MIGRATESLOTS`) of the source's slot.
    AtomicMigration,
}

on_redis_and_valkey!(
    reliable_drains_queues_on_every_primary,
    stream_drains_streams_on_every_primary,
    reliable_loses_nothing_through_a_reshard,
    reliable_loses_nothing_through_a_failover,
    reliable_loses_nothing_through_a_killed_primary,
    stream_loses_nothing_through_a_reshard,
    stream_loses_nothing_through_a_failover,
    stream_loses_nothing_through_a_killed_primary,
    reliable_loses_nothing_when_the_primary_forgets_its_scripts,
);

fn reliable_loses_nothing_when_the_primary_forgets_its_scripts(kind: Kind) {
    loses_nothing(kind, Acked::Reliable, Fault::ScriptFlush);
}

fn reliable_drains_queues_on_every_primary(kind: Kind) {
    drains_on_every_primary(kind, Acked::Reliable);
}
fn stream_drains_streams_on_every_primary(kind: Kind) {
    drains_on_every_primary(kind, Acked::Stream);
}
fn reliable_loses_nothing_through_a_reshard(kind: Kind) {
    loses_nothing(kind, Acked::Reliable, Fault::Reshard);
}
fn reliable_loses_nothing_through_a_failover(kind: Kind) {
    loses_nothing(kind, Acked::Reliable, Fault::Failover);
}
fn reliable_loses_nothing_through_a_killed_primary(kind: Kind) {
    loses_nothing(kind, Acked::Reliable, Fault::Kill);
}
fn stream_loses_nothing_through_a_reshard(kind: Kind) {
    loses_nothing(kind, Acked::Stream, Fault::Reshard);
}
fn stream_loses_nothing_through_a_failover(kind: Kind) {
    loses_nothing(kind, Acked::Stream, Fault::Failover);
}
fn stream_loses_nothing_through_a_killed_primary(kind: Kind) {
    loses_nothing(kind, Acked::Stream, Fault::Kill);
}
#[test]
fn reliable_loses_nothing_through_an_atomic_migration_on_valkey() {
    loses_nothing(Kind::Valkey, Acked::Reliable, Fault::AtomicMigration);
}
#[test]
fn stream_loses_nothing_through_an_atomic_migration_on_valkey() {
    loses_nothing(Kind::Valkey, Acked::Stream, Fault::AtomicMigration);
}

/// Starts consumer `c1` of `sources` in `mode`.
fn start(g: &ClusterGroup, mode: Acked, sources: &[String], seen: &Recorder<Rec>) -> Running {
    start_acked(builder(g.url()), mode, sources, seen)
}

fn drains_on_every_primary(kind: Kind, mode: Acked) {
    let g = cluster_of(kind);
    let sources: Vec<String> = (0..g.primaries())
        .map(|n| g.key_on(n, "aq").unwrap())
        .collect();
    const N: usize = 3_000;
    for s in &sources {
        fill(&g, mode, s, s, N);
    }
    let seen = Recorder::<Rec>::default();
    let running = start(&g, mode, &sources, &seen);
    let total = N * sources.len();
    assert!(
        wait_until(WAIT, || seen.distinct() >= total),
        "{mode:?}: delivered {} of {total}",
        seen.distinct()
    );
    assert!(
        wait_until(WAIT, || sources.iter().all(|s| left(&g, mode, s) == 0)),
        "{mode:?}: every ack reached its node"
    );
    running.shutdown().unwrap();
    let (distinct, dups) = seen.tally();
    assert_eq!((distinct, dups), (total, 0), "{mode:?}");
}

fn loses_nothing(kind: Kind, mode: Acked, fault: Fault) {
    let g = cluster_of(kind);
    let q = g.key_on(0, "fq").unwrap();
    let slot = g.slot_of(&q).unwrap();
    const N: usize = 20_000;
    // Through a slot move, half the messages come from a steady producer that follows
    // the cluster (MOVED, ASK, TRYAGAIN) while the slot moves.
    let produce = matches!(fault, Fault::Reshard | Fault::AtomicMigration);
    let later = if produce { N / 2 } else { 0 };
    fill(&g, mode, &q, "m", N - later);
    replicated(&g, &q);
    let seen = Recorder::<Rec>::default();
    let running = start(&g, mode, std::slice::from_ref(&q), &seen);
    assert!(wait_until(WAIT, || seen.len() >= 1000), "draining");
    let at = Instant::now();
    let produced = AtomicUsize::new(0);
    let followed = AtomicUsize::new(0);
    let moved = AtomicBool::new(false);
    std::thread::scope(|scope| {
        if produce {
            scope.spawn(|| {
                let mut p = Producer::new(&g, &q);
                for i in 0..later {
                    // The last 100 wait for the end of the move: the producer is still
                    // writing when the slot moves, and meets the move itself.
                    while i == later - 100 && !moved.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let payload = format!("p-{i:08}");
                    let n = match mode {
                        Acked::Reliable => p.run(&["RPUSH", &q, &payload]),
                        Acked::Stream => p.run(&["XADD", &q, "*", "payload", &payload]),
                    };
                    followed.fetch_add(n, Ordering::Relaxed);
                    produced.fetch_add(1, Ordering::Relaxed);
                    if i % 20 == 19 {
                        // About 4 000 messages a second: the move happens mid-production.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            });
        }
        let produced_before = produced.load(Ordering::Relaxed);
        match fault {
            Fault::Reshard => {
                // While some keys of the slot are at each node, the multi-key scripts get
                // TRYAGAIN (reliable); once all have moved, everything gets ASK. A stream is one
                // key: it is served at the source until it moves.
                let before = running.stats().redirects;
                g.begin_migration(slot, 0, 1).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                let during = seen.distinct();
                let moved = g.migrate_keys(slot, 0, 1).unwrap();
                assert!(
                    wait_until(WAIT, || running.stats().redirects > before),
                    "{mode:?}: the migration reached the engine"
                );
                std::thread::sleep(Duration::from_millis(300));
                g.finish_migration(slot, 0, 1).unwrap();
                assert!(
                    during < N,
                    "{mode:?}: the reshard came mid-drain ({during})"
                );
                assert_eq!(g.owner_of(&q).unwrap(), 1, "the slot moved");
                println!(
                    "{kind:?} {mode:?} reshard: {moved} keys migrated, {during} delivered before"
                );
            }
            Fault::AtomicMigration => {
                // The leased list, retry set and the rest share the queue's slot and move
                // with it in one step; the old owner answers MOVED from then on.
                let before = running.stats().redirects;
                g.migrate_slot_atomic(slot, 0, 1).unwrap();
                let during = seen.distinct();
                assert!(
                    during < N,
                    "{mode:?}: the migration ended mid-drain ({during})"
                );
                assert_eq!(g.owner_of(&q).unwrap(), 1, "the slot moved");
                assert!(
                    wait_until(WAIT, || running.stats().redirects > before),
                    "{mode:?}: the old owner's MOVED reached the engine"
                );
            }
            Fault::Failover => {
                let promoted = g.failover(0).unwrap();
                assert!(seen.distinct() < N, "{mode:?}: the failover came mid-drain");
                assert_eq!(g.owner_of(&q).unwrap(), promoted);
            }
            Fault::ScriptFlush => {
                let before = running.stats().reconnects;
                g.client_for(&q).unwrap().cmd(["SCRIPT", "FLUSH"]).unwrap();
                assert!(seen.distinct() < N, "{mode:?}: the flush came mid-drain");
                assert!(
                    wait_until(WAIT, || running.stats().reconnects > before),
                    "{mode:?}: the engine met NOSCRIPT and reconnected"
                );
            }
            Fault::Kill => {
                let replica = g.replica_of(0).unwrap().expect("a replica");
                g.nodes()[0].kill().unwrap();
                assert!(seen.distinct() < N, "{mode:?}: the kill came mid-drain");
                g.wait_primary(replica).unwrap();
            }
        }
        if produce {
            let during = produced.load(Ordering::Relaxed);
            println!(
            "{kind:?} {mode:?} {fault:?}: the producer wrote {produced_before} before the move \
             and {} during it",
            during - produced_before
        );
        }
        moved.store(true, Ordering::Relaxed);
    });
    if produce {
        assert!(
            followed.load(Ordering::Relaxed) >= 1,
            "{mode:?} {fault:?}: the producer met the move too"
        );
    }
    let at_fault = seen.distinct();
    assert!(
        wait_until(WAIT, || seen.distinct() > at_fault),
        "{kind:?} {mode:?} {fault:?}: messages flow after the fault"
    );
    assert!(
        wait_until(WAIT, || seen.distinct() >= N),
        "{kind:?} {mode:?} {fault:?}: delivered {} of {N}",
        seen.distinct()
    );
    let stopped = longest_stop(&seen, at);
    assert!(
        wait_until(WAIT, || left(&g, mode, &q) == 0),
        "{kind:?} {mode:?} {fault:?}: nothing left leased or pending ({})",
        left(&g, mode, &q)
    );
    let stats = running.shutdown().unwrap();
    let distinct: HashSet<String> = seen.payloads().into_iter().collect();
    let dups = seen.len() - distinct.len();
    println!(
        "{kind:?} {mode:?} {fault:?}: {} of {N} delivered, 0 lost, {dups} duplicates; \
         consuming stopped for {stopped:?} at most; redirects {}, reconnects {}",
        distinct.len(),
        stats.redirects,
        stats.reconnects
    );
    assert_eq!(distinct.len(), N, "{mode:?} {fault:?}: lost nothing");
}
