//! Slots that move while ringq consumes (issue 22), on a real 6-node cluster:
//!
//! - a legacy migration held open after its keys moved: the source answers ASK, and the
//!   engine follows it to the importing node with `ASKING` — it drains there, and is
//!   woken there by producers that follow ASK too, before the migration ends;
//! - Valkey 9's atomic slot migration (`CLUSTER MIGRATESLOTS`) mid-drain;
//! - a primary added to the cluster and given slots of queues being consumed: the
//!   engine follows them to it, with its topology refreshes counted (they are
//!   rate-limited, not one per redirect).
//!
//! Each checks that the move happened mid-run, then counts delivered, duplicated, lost.
//! (Reliable and stream mode through the same atomic migration: `cluster_acked.rs`.)

use std::time::{Duration, Instant};

use ringq::PopConsumer;
use ringq_tests::wait_until;

mod support;
use support::cluster::{cluster_of, llen, push, push_asking, ringq_clients};
use support::{builder, longest_stop, on_redis_and_valkey, payloads, Kind, Rec, Recorder, WAIT};

on_redis_and_valkey!(pop_mode_follows_ask_to_the_importing_node);

/// A one-key lane mid-drain when its slot starts moving from node 0 to node 1 the
/// legacy way; the migration is held open after MIGRATE moved the list.
///
/// The source answers the next pop ASK; the engine dials node 1 and sends each pop after
/// `ASKING`: the rest of the list drains there while node 0 still owns the slot. Then,
/// blocked at node 1, it is woken by messages a producer writes there after `ASKING`.
/// Once SETSLOT NODE ends the migration it stays at node 1, now the owner. Nothing is
/// lost or delivered twice.
fn pop_mode_follows_ask_to_the_importing_node(kind: Kind) {
    let g = cluster_of(kind);
    let q = g.key_on(0, "ask").unwrap();
    let slot = g.slot_of(&q).unwrap();
    const N: usize = 3_000;
    push(&g, &q, &payloads("before", N));
    let seen = Recorder::<String>::default();
    let running = builder(g.url())
        .prefetch(32)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start(
            PopConsumer::new([q.clone()]).batch(16),
            seen.with_pause(Duration::from_millis(1)),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.distinct() >= 200), "draining");

    g.begin_migration(slot, 0, 1).unwrap();
    let moved = g.migrate_keys(slot, 0, 1).unwrap();
    let at_move = seen.distinct();
    assert_eq!(moved, 1, "the list moved to node 1");
    assert!(at_move < N, "the list moved mid-drain ({at_move} of {N})");
    let held = Instant::now();
    // The rest of the list is at node 1 now, and node 0 still owns the slot.
    assert!(
        wait_until(WAIT, || seen.distinct() >= N),
        "drained at the importing node during the migration: {} of {N}",
        seen.distinct()
    );
    assert!(
        running.stats().redirects >= 1,
        "the source's ASK reached the engine"
    );
    assert!(
        ringq_clients(&g, 1) >= 1,
        "the engine's connection is at node 1"
    );
    // Blocked at node 1: woken by a producer that follows ASK too.
    push_asking(&g, 1, &q, &payloads("asked", 100));
    assert!(
        wait_until(WAIT, || seen.distinct() >= N + 100),
        "messages written at the importing node during the migration: {} of {}",
        seen.distinct(),
        N + 100
    );
    assert_eq!(
        g.owner_of_slot(slot).unwrap(),
        0,
        "the migration was still open while all of that was consumed"
    );
    let open_for = held.elapsed();
    g.finish_migration(slot, 0, 1).unwrap();
    assert_eq!(g.owner_of(&q).unwrap(), 1, "the slot moved to node 1");
    push(&g, &q, &payloads("after", 100));
    let total = N + 200;
    assert!(
        wait_until(WAIT, || seen.distinct() >= total),
        "delivered {} of {total} after the migration",
        seen.distinct()
    );
    let stats = running.shutdown().unwrap();
    let (distinct, dups) = seen.tally();
    println!(
        "{kind:?} ASK, pop: {distinct} of {total} delivered, {dups} duplicates; {} delivered \
         at node 1 during the {open_for:?} the migration was held open; {} redirects, {} \
         reconnects, {} pops unanswered",
        N + 100 - at_move,
        stats.redirects,
        stats.reconnects,
        stats.unanswered_pops
    );
    assert_eq!((distinct, dups), (total, 0));
    // Pops pipelined behind the redirected one are closed unanswered and counted as
    // possibly lost (an upper bound): every message arrived, as counted above.
    assert_eq!(llen(&g, &q), 0);
}

/// Valkey 9's atomic slot migration of a queue's slot mid-drain: the source keeps
/// serving while it streams the slot, then hands it over; the engine's pops there are
/// answered MOVED (a blocked one too) and it follows. Nothing lost or duplicated.
#[test]
fn pop_mode_rides_an_atomic_slot_migration_on_valkey() {
    let g = cluster_of(Kind::Valkey);
    let q = g.key_on(0, "atomic").unwrap();
    let slot = g.slot_of(&q).unwrap();
    const N: usize = 20_000;
    push(&g, &q, &payloads("m", N));
    let seen = Recorder::<Rec>::default();
    let running = builder(g.url())
        .prefetch(64)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start(
            PopConsumer::new([q.clone()]).batch(16),
            seen.with_pause(Duration::from_micros(200)),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.distinct() >= 1000), "draining");
    let at = Instant::now();
    g.migrate_slot_atomic(slot, 0, 1).unwrap();
    let took = at.elapsed();
    let during = seen.distinct();
    assert!(
        during < N,
        "the migration ended mid-drain ({during} of {N})"
    );
    assert_eq!(g.owner_of(&q).unwrap(), 1, "the slot moved to node 1");
    assert!(
        wait_until(WAIT, || seen.distinct() >= N),
        "delivered {} of {N}",
        seen.distinct()
    );
    // Then blocked at the new owner: woken by a push there.
    push(&g, &q, &payloads("after", 100));
    let total = N + 100;
    assert!(
        wait_until(WAIT, || seen.distinct() >= total),
        "delivered {} of {total}",
        seen.distinct()
    );
    let stopped = longest_stop(&seen, at);
    let stats = running.shutdown().unwrap();
    let (distinct, dups) = seen.tally();
    println!(
        "Valkey atomic migration, pop: {distinct} of {total} delivered, {dups} duplicates; \
         migration took {took:?}, {during} delivered by its end, consuming stopped for \
         {stopped:?} at most; {} redirects, {} reconnects, {} pops unanswered",
        stats.redirects, stats.reconnects, stats.unanswered_pops
    );
    assert!(
        stats.redirects >= 1,
        "the old owner's MOVED reached the engine"
    );
    assert_eq!((distinct, dups), (total, 0));
    // Pops pipelined behind the redirected one are closed unanswered and counted as
    // possibly lost (an upper bound): every message arrived, as counted above.
    assert_eq!(llen(&g, &q), 0);
}

/// A fourth primary joins mid-drain and is given the slots of three of the six queues
/// being consumed (one from each primary, the legacy way). The engine follows each to
/// the new node; every message arrives once; and the topology refreshes this cost stay
/// within the rate limit (one per 250 ms at most, plus the periodic one) while the
/// redirects that asked for them are many more.
#[test]
fn a_primary_added_and_given_slots_is_followed() {
    let mut g = cluster_of(Kind::Redis);
    let mut queues = Vec::new();
    for node in 0..g.primaries() {
        for k in 0..2 {
            queues.push(g.key_on(node, &format!("grow{node}-{k}-")).unwrap());
        }
    }
    const N: usize = 3_000;
    for q in &queues {
        push(&g, q, &payloads(q, N));
    }
    let seen = Recorder::<String>::default();
    let running = builder(g.url())
        .shards(2)
        .prefetch(64)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start(
            PopConsumer::new(queues.clone()).batch(16),
            seen.with_pause(Duration::from_micros(300)),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.distinct() >= 1000), "draining");
    let before = running.stats();
    let at = Instant::now();
    let added = g.add_primary().unwrap();
    // One queue of each first primary moves to the new node.
    let moving: Vec<&String> = queues.iter().step_by(2).collect();
    for q in &moving {
        let slot = g.slot_of(q).unwrap();
        let from = g.owner_of_slot(slot).unwrap();
        g.migrate_slot(slot, from, added).unwrap();
        assert_eq!(g.owner_of(q).unwrap(), added, "{q} moved to the new node");
    }
    let during = seen.distinct();
    let total = N * queues.len();
    assert!(
        during < total,
        "the slots moved mid-drain ({during} of {total})"
    );
    assert!(
        wait_until(WAIT, || seen.distinct() >= total),
        "delivered {} of {total}",
        seen.distinct()
    );
    assert!(
        ringq_clients(&g, added) >= 1,
        "the engine consumes from the new node"
    );
    // Blocked there now: woken by pushes at the new owner.
    for q in &moving {
        push(&g, q, &payloads(&format!("{q}-after"), 100));
    }
    let total = total + 100 * moving.len();
    assert!(
        wait_until(WAIT, || seen.distinct() >= total),
        "delivered {} of {total}",
        seen.distinct()
    );
    let elapsed = at.elapsed();
    let stats = running.shutdown().unwrap();
    let (distinct, dups) = seen.tally();
    let refreshes = stats.topology_refreshes - before.topology_refreshes;
    let redirects = stats.redirects - before.redirects;
    println!(
        "a primary added, 3 slots moved to it: {distinct} of {total} delivered, {dups} \
         duplicates; {refreshes} topology refreshes and {redirects} redirects in {elapsed:?}"
    );
    assert_eq!((distinct, dups), (total, 0));
    // Pops pipelined behind a redirected one are counted as possibly lost (an upper
    // bound): every message arrived, as counted above.
    for q in &queues {
        assert_eq!(llen(&g, q), 0, "{q} drained");
    }
    // A refresh after one MOVED may already show the later moves: their connections
    // then move without a redirect of their own.
    assert!(redirects >= 1, "the moves reached the engine ({redirects})");
    // The topology thread runs at most one refresh per 250 ms (MIN_GAP), plus its
    // periodic one every 30 s.
    let limit = elapsed.as_millis() as u64 / 250 + elapsed.as_secs() / 30 + 2;
    assert!(
        refreshes <= limit,
        "{refreshes} refreshes in {elapsed:?}: more than the rate limit allows ({limit})"
    );
}

/// What one blocking connection per slot group costs, measured (the trade-off the README
/// documents): 100 idle queues in 100 slots over 3 primaries, one consumer. Counts the
/// engine's connections on the primaries and the server memory they take there
/// (`used_memory`), then pushes one message to each queue in turn, while the
/// other 99 lanes stay blocked, and measures how long each took to arrive. Every
/// message arrives; the figures are printed, not asserted (no timing in tests).
#[test]
fn one_blocking_connection_per_slot_group_measured() {
    let g = cluster_of(Kind::Redis);
    let queues: Vec<String> = (0..100).map(|i| format!("idle-{i}")).collect();
    let slots: std::collections::HashSet<u16> = queues
        .iter()
        .map(|q| ringq::key_slot(q.as_bytes()))
        .collect();
    let client_mem = || -> i64 {
        (0..g.primaries())
            .map(|n| {
                let mut c = g.nodes()[n].client().unwrap();
                c.info_field("memory", "used_memory")
                    .unwrap()
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    };
    let mem_before = client_mem();
    let seen = Recorder::<Rec>::default();
    let running = builder(g.url())
        .start(PopConsumer::new(queues.clone()).batch(16), seen.clone())
        .unwrap();
    let conns = || -> usize { (0..g.primaries()).map(|n| ringq_clients(&g, n)).sum() };
    assert!(
        wait_until(WAIT, || conns() >= slots.len()),
        "a blocking connection per slot: {} of {}",
        conns(),
        slots.len()
    );
    let blocked = || -> usize {
        (0..g.primaries())
            .map(|n| support::blocked_clients(&mut g.nodes()[n].client().unwrap()))
            .sum()
    };
    assert!(
        wait_until(WAIT, || blocked() >= slots.len()),
        "every lane blocked: {} of {}",
        blocked(),
        slots.len()
    );
    let per_conn = (client_mem() - mem_before) / conns() as i64;
    let mut pushed = Vec::new();
    for (i, q) in queues.iter().enumerate() {
        let before = seen.len();
        let at = Instant::now();
        push(&g, q, &[format!("wake-{i}")]);
        pushed.push(at);
        assert!(
            wait_until(WAIT, || seen.len() > before),
            "the message to {q} arrived"
        );
    }
    let mut waits: Vec<Duration> = seen
        .snapshot()
        .into_iter()
        .map(|(p, _, when)| {
            let i: usize = p.trim_start_matches("wake-").parse().unwrap();
            when - pushed[i]
        })
        .collect();
    waits.sort_unstable();
    let n_conns = conns();
    let stats = running.shutdown().unwrap();
    let (distinct, dups) = seen.tally();
    println!(
        "100 idle queues in {} slots over {} primaries: {} connections, ~{per_conn} bytes of server \
         memory each; push-to-handler while the other lanes stay \
         blocked: median {:?}, max {:?} (includes the test client's own round trip)",
        slots.len(),
        g.primaries(),
        n_conns,
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    );
    assert_eq!((distinct, dups), (100, 0));
    assert_eq!(stats.possibly_lost, 0);
}
