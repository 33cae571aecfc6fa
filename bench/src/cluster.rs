//! `drain --cluster`: the batch drain on a Redis Cluster — a private 3-primary cluster
//! (no replicas: on a small machine they would take CPU from the primaries measured), or
//! the one at `--url redis+cluster://…`.
//!
//! The queues are named so they spread evenly over the primaries (queue `i` on primary
//! `i mod P`), filled at their own nodes, and drained by ringq (one engine, the cluster
//! URL) and by redis-rs's cluster client (`cluster-async`: one multiplexed connection
//! per node, `--pipeline` tasks per queue, each looping on `BLMPOP … COUNT`). The server
//! CPU is summed over the primaries (`INFO cpu` before and after). With the private
//! cluster, ringq also drains one primary's share on a standalone server of the same
//! binary, in the same run: the cost of the cluster layer per primary.

use std::io::Write as _;

use ringq_resp::Frame;
use ringq_tests::ClusterGroup;

use crate::child;
use crate::cli::{Cli, ClientKind};
use crate::conn::RawConn;
use crate::error::{Error, Result};
use crate::load;
use crate::progress;
use crate::report::{opt, ratio, target_line, write_file, Table};
use crate::server::{cpu_seconds_of, Broker};
use crate::spec::ChildSpec;

/// Primaries of the private cluster.
const PRIMARIES: usize = 3;

/// The cluster under test: its URL, its primaries and which slots each serves.
pub struct Cluster {
    url: String,
    /// `redis://host:port` of each primary.
    nodes: Vec<String>,
    /// `(first slot, last slot, primary index)`.
    slots: Vec<(u16, u16, usize)>,
    /// The private cluster, stopped on drop.
    embedded: Option<ClusterGroup>,
}

impl Cluster {
    /// The private cluster, or the one at `url` (a `redis+cluster://` URL).
    ///
    /// # Errors
    /// The cluster does not start, or no seed answers `CLUSTER SLOTS`.
    pub fn open(url: Option<&str>) -> Result<Self> {
        let (url, embedded) = match url {
            Some(u) => {
                if !u.starts_with("redis+cluster://") {
                    return Err(Error::new(format!(
                        "--cluster with --url needs a redis+cluster:// URL, not {u}"
                    )));
                }
                (u.to_owned(), None)
            }
            None => {
                eprintln!("starting a private cluster of {PRIMARIES} primaries ...");
                let binary = std::env::var_os("REDIS_SERVER").map(std::path::PathBuf::from);
                let g = ClusterGroup::start_primaries(binary, PRIMARIES)?;
                (g.url(), Some(g))
            }
        };
        let (auth, seeds) = seeds(&url);
        let mut last = None;
        for seed in seeds {
            match RawConn::connect(&seed).and_then(|mut c| c.command_ok(["CLUSTER", "SLOTS"])) {
                Ok(f) => return Self::from_slots(url.clone(), &auth, &f, embedded),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::new(format!("{url} names no node"))))
    }

    /// Reads `CLUSTER SLOTS`: `[first, last, [host, port, id, …], replicas…]` per range.
    fn from_slots(
        url: String,
        auth: &str,
        f: &Frame,
        embedded: Option<ClusterGroup>,
    ) -> Result<Self> {
        let mut nodes: Vec<String> = Vec::new();
        let mut slots = Vec::new();
        for r in f.as_elements().unwrap_or_default() {
            let e = r.as_elements().unwrap_or_default();
            let (Some(first), Some(last), Some(owner)) = (
                e.first().and_then(Frame::as_integer),
                e.get(1).and_then(Frame::as_integer),
                e.get(2).and_then(Frame::as_elements),
            ) else {
                return Err(Error::new(format!("unexpected CLUSTER SLOTS entry: {r:?}")));
            };
            let host = owner
                .first()
                .and_then(Frame::as_bytes)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let port = owner.get(1).and_then(Frame::as_integer).unwrap_or(0);
            let node = format!("redis://{auth}{host}:{port}");
            let i = match nodes.iter().position(|n| *n == node) {
                Some(i) => i,
                None => {
                    nodes.push(node);
                    nodes.len() - 1
                }
            };
            slots.push((first as u16, last as u16, i));
        }
        if nodes.is_empty() {
            return Err(Error::new("CLUSTER SLOTS named no primary"));
        }
        Ok(Self {
            url,
            nodes,
            slots,
            embedded,
        })
    }

    fn node_of(&self, key: &str) -> usize {
        let slot = ringq::key_slot(key.as_bytes());
        self.slots
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map_or(0, |r| r.2)
    }

    /// `n` queue names (at least one per primary), queue `i` on primary `i mod P`.
    pub fn queues(&self, n: usize) -> Vec<String> {
        self.names("ringq-bench:q", n)
    }

    /// `n` key or channel names starting with `prefix` (at least one per primary), name
    /// `i` on primary `i mod P`.
    pub fn names(&self, prefix: &str, n: usize) -> Vec<String> {
        let p = self.nodes.len();
        (0..n.max(p))
            .map(|i| {
                (0..)
                    .map(|k| format!("{prefix}{i}.{k}"))
                    .find(|q| self.node_of(q) == i % p)
                    .unwrap_or_default()
            })
            .collect()
    }

    /// `queues` grouped by the primary that serves them: `(node URL, its queues)`.
    pub fn by_node<'a>(&'a self, queues: &[String]) -> Vec<(&'a str, Vec<String>)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let mine = queues
                    .iter()
                    .filter(|q| self.node_of(q) == i)
                    .cloned()
                    .collect();
                (url.as_str(), mine)
            })
            .collect()
    }

    fn fill(&self, queues: &[String], per_queue: u64, size: usize, what: &str) -> Result<()> {
        let pb = progress::bar(per_queue * queues.len() as u64, what);
        for (url, mine) in self.by_node(queues) {
            load::fill(url, &mine, per_queue, size, &pb)?;
        }
        pb.finish_and_clear();
        Ok(())
    }

    fn delete(&self, queues: &[String]) -> Result<()> {
        for (url, mine) in self.by_node(queues) {
            load::delete(url, &mine)?;
        }
        Ok(())
    }

    fn left(&self, queues: &[String]) -> Result<u64> {
        let mut n = 0;
        for (url, mine) in self.by_node(queues) {
            n += load::total_len(url, &mine)?;
        }
        Ok(n)
    }

    /// The `redis://` URL of the primary that serves `key`.
    pub fn node_url(&self, key: &str) -> &str {
        &self.nodes[self.node_of(key)]
    }

    /// The cluster URL the consumers connect to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Primaries.
    pub fn primaries(&self) -> usize {
        self.nodes.len()
    }

    /// The private cluster's server processes (none with `--url`).
    pub fn server_pids(&self) -> Vec<u32> {
        self.embedded
            .iter()
            .flat_map(|g| g.nodes().iter().filter_map(|n| n.pid()))
            .collect()
    }

    /// Whether this is the private cluster.
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// CPU seconds so far, summed over the primaries.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let mut s = 0.0;
        for url in &self.nodes {
            s += cpu_seconds_of(url)?;
        }
        Ok(s)
    }
}

/// A `redis+cluster://[auth@]h1:p1,h2:p2[/db]` URL's credentials (`user:pass@`, or empty)
/// and its seeds as `redis://[auth@]host:port` URLs.
pub fn seeds(url: &str) -> (String, Vec<String>) {
    let rest = url.trim_start_matches("redis+cluster://");
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let seeds = hosts
        .split('/')
        .next()
        .unwrap_or_default()
        .split(',')
        .map(|h| format!("redis://{auth}{h}"))
        .collect();
    (auth, seeds)
}

/// One measured drain.
struct Row {
    name: String,
    messages: u64,
    seconds: f64,
    msgs_per_sec: f64,
    cpu_us_per_msg: f64,
    server_cpu_us_per_msg: Option<f64>,
    /// Primaries that served it (1 for the standalone row).
    primaries: usize,
    note: Option<String>,
}

/// Runs one consumer child on `spec` and measures it with `server_cpu`.
fn measure(
    name: &str,
    spec: &ChildSpec,
    primaries: usize,
    server_cpu: &dyn Fn() -> Result<f64>,
) -> std::result::Result<Row, String> {
    let before = server_cpu().ok();
    let out = child::run(spec, || Ok(())).map_err(|e| e.to_string())?;
    let server = before.and_then(|b| server_cpu().ok().map(|a| a - b));
    let messages = out.report.messages.max(1);
    Ok(Row {
        name: name.to_owned(),
        messages: out.report.messages,
        seconds: out.report.seconds,
        msgs_per_sec: messages as f64 / out.report.seconds.max(1e-9),
        cpu_us_per_msg: out.cpu.as_secs_f64() * 1e6 / messages as f64,
        server_cpu_us_per_msg: server.map(|s| s * 1e6 / messages as f64),
        primaries,
        note: out.report.note,
    })
}

/// `ringq-bench drain --cluster`.
///
/// # Errors
/// Bad options, a cluster that cannot be started or reached, an output file that cannot
/// be written. A client that fails is a row in the table.
pub fn run(cli: &Cli) -> Result<()> {
    if cli.tls {
        return Err(Error::new("--cluster does not combine with --tls yet"));
    }
    let cluster = Cluster::open(cli.url.as_deref())?;
    let queues = cluster.queues(cli.queues);
    let p = cluster.nodes.len();
    let per_queue = (cli.messages / queues.len() as u64).max(1);
    let total = per_queue * queues.len() as u64;
    let title = format!(
        "drain --cluster, --pop batch: {total} messages of {} B in {} queue(s) over {p} \
         primaries; batch {}, pipeline {}, {} shard(s); {}",
        cli.size,
        queues.len(),
        cli.batch,
        cli.pipeline,
        cli.shards,
        if cluster.embedded.is_some() {
            "private cluster (no replicas)"
        } else {
            "--url"
        }
    );
    eprintln!("{title}");
    // Warm-up fill, deleted unmeasured (see the single-node drain).
    cluster.fill(&queues, per_queue, cli.size, "warming the cluster up")?;
    cluster.delete(&queues)?;
    let mut rows = Vec::new();
    for &kind in &cli.clients {
        if !matches!(
            kind,
            ClientKind::Ringq | ClientKind::RingqEpoll | ClientKind::RedisRs
        ) {
            eprintln!(
                "ringq-bench: {} has no cluster client; skipped with --cluster",
                kind.name()
            );
            continue;
        }
        cluster.fill(
            &queues,
            per_queue,
            cli.size,
            &format!("filling for {}", kind.name()),
        )?;
        let mut spec = ChildSpec::for_url(cli, &cluster.url, &queues, kind);
        spec.pop = crate::cli::PopMode::Batch;
        // One lane per queue: each queue is a slot of its own.
        spec.connections = queues.len();
        spec.expected = total;
        spec.deadline_secs = 60.0 + total as f64 / 2000.0;
        eprintln!("draining: {} ...", kind.name());
        let row = measure(kind.name(), &spec, p, &|| cluster.cpu_seconds());
        let left = cluster.left(&queues)?;
        rows.push((
            kind.name().to_owned(),
            row.map(|mut r| {
                if left > 0 {
                    r.note = Some(format!("{left} messages left in the queues"));
                }
                r
            }),
        ));
        cluster.delete(&queues)?;
    }
    if cluster.embedded.is_some() && cli.clients.iter().any(|k| matches!(k, ClientKind::Ringq)) {
        // One primary's share on a standalone server of the same binary.
        let single = Broker::open(None)?;
        let share: Vec<String> = (0..queues.len().div_ceil(p))
            .map(|i| format!("ringq-bench:one{i}"))
            .collect();
        let pb = progress::bar(per_queue * share.len() as u64, "filling one node");
        load::fill(&single.url, &share, per_queue, cli.size, &pb)?;
        pb.finish_and_clear();
        let mut spec = ChildSpec::base(cli, &single, &share, ClientKind::Ringq);
        spec.pop = crate::cli::PopMode::Batch;
        spec.connections = share.len();
        spec.expected = per_queue * share.len() as u64;
        spec.deadline_secs = 60.0 + spec.expected as f64 / 2000.0;
        eprintln!("draining: ringq on one standalone server ...");
        let name = "ringq, one standalone node";
        rows.push((
            name.to_owned(),
            measure(name, &spec, 1, &|| single.cpu_seconds()),
        ));
    }
    let report = render(&title, &rows);
    print!("{report}");
    if let Some(path) = &cli.json {
        write_file(path, &json(&rows))?;
        eprintln!("wrote {}", path.display());
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

fn render(title: &str, rows: &[(String, std::result::Result<Row, String>)]) -> String {
    let find = |name: &str| {
        rows.iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .find(|r| r.name == name)
    };
    let redis_rs = find(ClientKind::RedisRs.name());
    let ringq = find(ClientKind::Ringq.name());
    let mut t = Table::new(
        title.to_owned(),
        vec![
            "client",
            "messages",
            "seconds",
            "msgs/s",
            "msgs/s per primary",
            "CPU µs/msg",
            "server CPU µs/msg (summed)",
            "msgs/s ÷ redis-rs",
            "CPU ÷ redis-rs",
        ],
    );
    for (name, r) in rows {
        match r {
            Ok(r) => {
                t.row(vec![
                    r.name.clone(),
                    r.messages.to_string(),
                    format!("{:.2}", r.seconds),
                    format!("{:.0}", r.msgs_per_sec),
                    format!("{:.0}", r.msgs_per_sec / r.primaries as f64),
                    format!("{:.3}", r.cpu_us_per_msg),
                    opt(r.server_cpu_us_per_msg, 3),
                    ratio(Some(r.msgs_per_sec), redis_rs.map(|b| b.msgs_per_sec)),
                    ratio(Some(r.cpu_us_per_msg), redis_rs.map(|b| b.cpu_us_per_msg)),
                ]);
                t.note(&r.name, r.note.as_deref());
            }
            Err(e) => t.failed(name, e),
        }
    }
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let mut check = |what: &str, v: Option<f64>, goal: f64, at_least: bool| {
        t.targets.push(target_line(what, v, goal, at_least));
    };
    check(
        "cluster batch drain, ringq msgs/s ÷ redis-rs cluster",
        div(
            ringq.map(|r| r.msgs_per_sec),
            redis_rs.map(|r| r.msgs_per_sec),
        ),
        1.5,
        true,
    );
    check(
        "cluster batch drain, ringq CPU per message ÷ redis-rs cluster",
        div(
            ringq.map(|r| r.cpu_us_per_msg),
            redis_rs.map(|r| r.cpu_us_per_msg),
        ),
        0.3,
        false,
    );
    let single = find("ringq, one standalone node");
    if let (Some(c), Some(s)) = (ringq, single) {
        t.targets.push(format!(
            "the cluster layer (reported): ringq msgs/s per primary ÷ one standalone node {}, \
             server CPU per message {} (cluster, summed) ÷ {} (one node) = {}",
            ratio(
                Some(c.msgs_per_sec / c.primaries as f64),
                Some(s.msgs_per_sec)
            ),
            opt(c.server_cpu_us_per_msg, 3),
            opt(s.server_cpu_us_per_msg, 3),
            ratio(c.server_cpu_us_per_msg, s.server_cpu_us_per_msg),
        ));
    }
    t.render()
}

fn json(rows: &[(String, std::result::Result<Row, String>)]) -> String {
    let clients: Vec<serde_json::Value> = rows
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "messages": r.messages,
                "seconds": r.seconds,
                "msgs_per_sec": r.msgs_per_sec,
                "cpu_us_per_msg": r.cpu_us_per_msg,
                "server_cpu_us_per_msg": r.server_cpu_us_per_msg,
                "p50_us": null,
                "p99_us": null,
                "p999_us": null,
                "max_us": null,
            })
        })
        .collect();
    let v = serde_json::json!({ "scenario": "drain-cluster", "clients": clients });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}
