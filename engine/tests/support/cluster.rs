//! Cluster helpers for the cluster test files: a 6-node cluster of either server, and
//! producing to / reading the length of a key at the node that serves it.

use std::time::Duration;

use ringq::{EngineBuilder, ReliableConsumer, Running, StartAt, StreamConsumer};
use ringq_resp::Frame;
use ringq_tests::ClusterGroup;

use super::{payloads, xadd, Kind, Rec, Recorder};

/// The at-least-once modes, as the cluster tests run them.
#[derive(Clone, Copy, Debug)]
pub enum Acked {
    Reliable,
    Stream,
}

/// Fills `source` with `n` messages `<prefix>-<i>` at its node.
pub fn fill(g: &ClusterGroup, mode: Acked, source: &str, prefix: &str, n: usize) {
    match mode {
        Acked::Reliable => push(g, source, &payloads(prefix, n)),
        Acked::Stream => {
            let mut c = g.client_for(source).unwrap();
            xadd(&mut c, source, prefix, n, None);
        }
    }
}

/// Starts consumer `c1` (group `g` in stream mode) of `sources` in `mode` on `b`, batches
/// of 32, acking each message after 100 µs.
pub fn start_acked(
    b: EngineBuilder,
    mode: Acked,
    sources: &[String],
    seen: &Recorder<Rec>,
) -> Running {
    let b = b
        .prefetch(256)
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    let handler = seen.deciding(super::ack_after(Duration::from_micros(100)));
    match mode {
        Acked::Reliable => b.start(
            ReliableConsumer::new("c1", sources.to_vec()).batch(32),
            handler,
        ),
        Acked::Stream => b.start(
            StreamConsumer::new("g", "c1", sources.to_vec())
                .start_at(StartAt::Beginning)
                .batch(32),
            handler,
        ),
    }
    .unwrap()
}

/// What consumer `c1` still holds of `source` (reliable: its processing list; stream:
/// the group's XPENDING) at the node that serves it now; -1 when that cannot be read.
pub fn left(g: &ClusterGroup, mode: Acked, source: &str) -> i64 {
    let Ok(mut c) = g.client_for(source) else {
        return -1;
    };
    match mode {
        Acked::Reliable => {
            let p = ringq::envelope::keys::processing(source.as_bytes(), b"c1");
            c.llen(p).unwrap_or(-1)
        }
        Acked::Stream => match c.cmd(["XPENDING", source, "g"]) {
            Ok(Frame::Array(v)) => v.first().and_then(Frame::as_integer).unwrap_or(-1),
            _ => -1,
        },
    }
}

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

/// A producer that follows the cluster as a cluster client does: each command goes to
/// the node it last heard owns the key; MOVED switches node, ASK sends `ASKING` and the
/// command to the node named (once), TRYAGAIN and CLUSTERDOWN wait and try again.
pub struct Producer<'g> {
    g: &'g ClusterGroup,
    node: usize,
    clients: Vec<Option<ringq_tests::TestClient>>,
}

impl<'g> Producer<'g> {
    /// A producer for `key`, starting at its current owner.
    pub fn new(g: &'g ClusterGroup, key: &str) -> Self {
        Self {
            g,
            node: g.owner_of(key).unwrap(),
            clients: (0..g.nodes().len()).map(|_| None).collect(),
        }
    }

    fn client(&mut self, node: usize) -> &mut ringq_tests::TestClient {
        let g = self.g;
        self.clients[node].get_or_insert_with(|| g.nodes()[node].client().unwrap())
    }

    fn node_at(&self, addr: &str) -> usize {
        let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        self.g
            .ports()
            .iter()
            .position(|p| *p == port)
            .unwrap_or_else(|| panic!("a redirect to an unknown node {addr}"))
    }

    /// Runs `args` (one key's write) until a node accepts it. Returns how many redirects
    /// it followed.
    pub fn run(&mut self, args: &[&str]) -> usize {
        use ringq_resp::ServerErrorKind as K;
        let mut redirects = 0;
        for _ in 0..1000 {
            let node = self.node;
            let r = self.client(node).cmd(args.iter().copied());
            let e = match r {
                Ok(_) => return redirects,
                Err(e) => e,
            };
            redirects += 1;
            match e.server_error_kind() {
                Some(K::Moved { addr, .. }) => self.node = self.node_at(addr),
                Some(K::Ask { addr, .. }) => {
                    let to = self.node_at(addr);
                    let c = self.client(to);
                    c.cmd(["ASKING"]).unwrap();
                    match c.cmd(args.iter().copied()) {
                        Ok(_) => return redirects,
                        Err(e) if e.server_error_kind() == Some(&K::TryAgain) => {
                            std::thread::sleep(std::time::Duration::from_millis(10));
                        }
                        Err(e) => panic!("{args:?} after ASKING: {e}"),
                    }
                }
                Some(K::TryAgain | K::ClusterDown) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                _ => panic!("{args:?}: {e}"),
            }
        }
        panic!("{args:?}: no node accepted it after 1000 tries")
    }
}
