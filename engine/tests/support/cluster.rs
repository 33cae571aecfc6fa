//! Cluster helpers for the cluster test files: a 6-node cluster of either server, and
//! producing to / reading the length of a key at the node that serves it.

use ringq_tests::ClusterGroup;

use super::Kind;

/// A 6-node cluster (3 primaries, 3 replicas) of `kind`'s server; panics, saying how to
/// install it, when Valkey is missing (the tests that run on it fail rather than skip).
pub fn cluster_of(kind: Kind) -> ClusterGroup {
    let binary = match kind {
        Kind::Redis => None,
        Kind::Valkey => Some(ringq_tests::find_valkey_server().unwrap_or_else(|e| {
            panic!("the cluster tests run against Valkey 9 too and need it: {e}")
        })),
    };
    ClusterGroup::start_with(binary, 3).expect("a 6-node cluster (3 primaries, 3 replicas)")
}

/// RPUSHes `items` to `key` at the node that serves it.
pub fn push(g: &ClusterGroup, key: &str, items: &[String]) {
    let mut c = g.client_for(key).unwrap();
    c.rpush_many(key, items).unwrap();
}

/// The length of `key` at the node that serves it (-1 when no node answers).
pub fn llen(g: &ClusterGroup, key: &str) -> i64 {
    g.client_for(key)
        .and_then(|mut c| c.llen(key))
        .unwrap_or(-1)
}

/// Waits until the replica of `key`'s primary has everything written to it (`WAIT 1`),
/// so a failover loses no message the test produced.
pub fn replicated(g: &ClusterGroup, key: &str) {
    let mut c = g.client_for(key).unwrap();
    assert_eq!(
        c.cmd(["WAIT", "1", "10000"]).unwrap(),
        ringq_resp::Frame::Integer(1),
        "the replica acknowledged the writes"
    );
}

/// RPUSHes `items` to `key` at node `node` after `ASKING`: how a producer that follows
/// ASK writes to the node importing the key's slot during a legacy migration.
pub fn push_asking(g: &ClusterGroup, node: usize, key: &str, items: &[String]) {
    let mut c = g.nodes()[node].client().unwrap();
    for chunk in items.chunks(100) {
        // ASKING covers the next command only.
        c.cmd(["ASKING"]).unwrap();
        let args: Vec<&str> = ["RPUSH", key]
            .into_iter()
            .chain(chunk.iter().map(String::as_str))
            .collect();
        let r = c.cmd(args).unwrap();
        assert!(r.as_integer().is_some(), "RPUSH after ASKING: {r:?}");
    }
}

/// Names of connections of an engine (`ringq-…`) connected to node `i`.
pub fn ringq_clients(g: &ClusterGroup, i: usize) -> usize {
    g.nodes()[i]
        .client()
        .and_then(|mut c| c.client_list())
        .map(|l| {
            l.iter()
                .filter(|c| c.get("name").is_some_and(|n| n.starts_with("ringq-")))
                .count()
        })
        .unwrap_or(0)
}
