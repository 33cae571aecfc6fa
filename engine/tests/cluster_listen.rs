//! Listen mode on a Redis Cluster (issue 22) against a real 6-node cluster on loopback:
//! a channel subscription (any primary: the cluster forwards PUBLISH) moved off a killed
//! node; a shard channel (`SSUBSCRIBE`, at its slot's owner) following its slot to a new
//! owner after a reshard, and to the promoted replica after `CLUSTER FAILOVER` of its
//! primary. Each loss is a gap event, and messages flow again.

use std::time::{Duration, Instant};

use ringq::{Event, ListenConsumer, Running};
use ringq_tests::{wait_until, ClusterGroup};

mod support;
use support::cluster::cluster_of;
use support::{builder, on_redis_and_valkey, Kind, Recorder, WAIT};

on_redis_and_valkey!(
    listen_mode_moves_a_channel_subscription_off_a_killed_node,
    listen_mode_follows_a_shard_channel_to_its_new_owner,
    listen_mode_follows_a_shard_channel_through_a_failover,
);

/// The node (index) whose client list shows a subscriber of this engine.
fn subscriber_node(g: &ClusterGroup) -> Option<usize> {
    (0..g.nodes().len()).find(|&i| {
        g.nodes()[i].is_running()
            && g.nodes()[i]
                .client()
                .and_then(|mut c| c.client_list())
                .is_ok_and(|l| {
                    l.iter().any(|c| {
                        c.is_subscriber() && c.get("name").is_some_and(|n| n.starts_with("ringq-"))
                    })
                })
    })
}

/// Publishes `msg` on `channel` at a running primary until `seen` has `n` records
/// (a subscription being restored may miss the first tries).
fn publish_until(
    g: &ClusterGroup,
    channel: &str,
    seen: &Recorder<(String, Option<String>, String)>,
    n: usize,
) -> bool {
    wait_until(WAIT, || {
        for node in g.nodes().iter().filter(|n| n.is_running()) {
            if let Ok(mut c) = node.client() {
                if c.publish(channel, "m").is_ok() {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
        seen.len() >= n
    })
}

/// A channel subscription lives on one primary (any: the cluster forwards every
/// PUBLISH). SIGKILL of that node: a gap is reported and the subscription moves to
/// another primary at once, without waiting for the failover; messages published at
/// any node arrive again.
fn listen_mode_moves_a_channel_subscription_off_a_killed_node(kind: Kind) {
    let g = cluster_of(kind);
    let seen = Recorder::<(String, Option<String>, String)>::default();
    let running = builder(g.url())
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start(
            ListenConsumer::new().channel("news").pattern("new*"),
            seen.clone(),
        )
        .unwrap();
    assert!(publish_until(&g, "news", &seen, 2), "subscribed");
    let node = subscriber_node(&g).expect("a node holds the subscription");
    let at = Instant::now();
    g.nodes()[node].kill().unwrap();
    assert!(
        wait_until(WAIT, || !seen.gaps().is_empty()),
        "a gap was reported"
    );
    let before = seen.len();
    assert!(publish_until(&g, "news", &seen, before + 2), "resumed");
    let moved_to = subscriber_node(&g).expect("subscribed again");
    assert_ne!(moved_to, node, "on another node");
    println!(
        "{kind:?} listen: resumed {:?} after the kill, on node {moved_to}",
        at.elapsed()
    );
    let stats = running.shutdown().unwrap();
    assert!(stats.gaps >= 1);
    assert!(matches!(seen.gaps()[0], Event::Gap { .. }));
}

/// A shard channel is subscribed at its slot's owner. Its slot moves (the owner sends
/// an unsolicited `sunsubscribe`): a gap is reported and the subscription follows the
/// slot to its new owner, where SPUBLISH reaches it again.
fn listen_mode_follows_a_shard_channel_to_its_new_owner(kind: Kind) {
    let g = cluster_of(kind);
    let ch = g.key_on(0, "sch").unwrap();
    let slot = g.slot_of(&ch).unwrap();
    follows_its_shard_channel(kind, &g, &ch, "a reshard", WAIT, || {
        g.migrate_slot(slot, 0, 1).unwrap();
        1
    });
}

/// A shard channel's primary fails over (`CLUSTER FAILOVER` on its replica): the
/// subscription is lost at the old primary (it unsubscribes its shard channels, or the
/// connection is closed), a gap is reported, and the channel is subscribed again at the
/// promoted replica, where SPUBLISH reaches it — well before the periodic topology
/// refresh (30 s): the ended subscription asked for one at once (a replica may take
/// SSUBSCRIBE again, so nothing else would).
fn listen_mode_follows_a_shard_channel_through_a_failover(kind: Kind) {
    let g = cluster_of(kind);
    let ch = g.key_on(0, "fch").unwrap();
    follows_its_shard_channel(kind, &g, &ch, "a failover", Duration::from_secs(20), || {
        g.failover(0).unwrap()
    });
}

/// A listen engine on shard channel `ch` (at node 0); `fault` moves its slot and names
/// the new owner. Checks: a gap, the subscription at the new owner within `within`,
/// messages flowing again.
fn follows_its_shard_channel(
    kind: Kind,
    g: &ClusterGroup,
    ch: &str,
    what: &str,
    within: Duration,
    fault: impl FnOnce() -> usize,
) {
    let (seen, running) = shard_listener(g, ch);
    assert!(
        wait_until(WAIT, || spublish(g, ch) == 1),
        "subscribed at node 0"
    );
    let at = Instant::now();
    let owner = fault();
    assert_eq!(g.owner_of(ch).unwrap(), owner, "{what} moved the slot");
    assert!(
        wait_until(WAIT, || !seen.gaps().is_empty()),
        "{what} opened a gap"
    );
    assert!(
        wait_until(within, || spublish(g, ch) == 1),
        "subscribed again at the new owner after {what}"
    );
    let resubscribed = at.elapsed();
    let before = seen.len();
    spublish(g, ch);
    assert!(
        wait_until(WAIT, || seen.len() > before),
        "messages flow again"
    );
    let stats = running.shutdown().unwrap();
    println!(
        "{kind:?} shard channel through {what}: resubscribed {resubscribed:?} after it, {} \
         gaps, {} redirects",
        stats.gaps, stats.redirects
    );
    assert!(stats.gaps >= 1);
}

/// A listen-mode engine on shard channel `ch`.
fn shard_listener(
    g: &ClusterGroup,
    ch: &str,
) -> (Recorder<(String, Option<String>, String)>, Running) {
    let seen = Recorder::default();
    let running = builder(g.url())
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start(
            ListenConsumer::new().shard_channel(ch.to_owned()),
            seen.clone(),
        )
        .unwrap();
    (seen, running)
}

/// SPUBLISH at `ch`'s owner: how many subscribers got it (0 when that cannot be done).
fn spublish(g: &ClusterGroup, ch: &str) -> i64 {
    g.client_for(ch)
        .and_then(|mut c| c.cmd(["SPUBLISH", ch, "m"]))
        .ok()
        .and_then(|f| f.as_integer())
        .unwrap_or(0)
}
