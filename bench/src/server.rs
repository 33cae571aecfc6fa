//! The broker under test: the server at `--url`, or the embedded default — a private
//! `redis-server` (or `$REDIS_SERVER`, e.g. a `valkey-server`) on a free port in a temp
//! dir, started through the `ringq-tests` harness, which kills it when the run ends (even
//! if ringq-bench itself is killed).

use std::sync::Arc;

use ringq_resp::Frame;
use ringq_tests::{RedisServer, SentinelGroup, TestPki};

use crate::conn::RawConn;
use crate::error::{Error, Result};

/// The server a run talks to.
pub struct Broker {
    /// Its URL.
    pub url: String,
    /// "redis 7.0.15", "valkey 9.0.0 (redis_version 7.2.4)", …
    pub version: String,
    /// Whether the server has LMPOP/BLMPOP (Redis ≥ 7 and its forks).
    pub has_lmpop: bool,
    /// `redis_version` as (major, minor, patch).
    pub redis_version: (u32, u32, u32),
    /// `--tls`: where the measured clients connect with TLS.
    pub tls: Option<BrokerTls>,
    /// The embedded server, stopped on drop (shared with `load`'s fault injector).
    embedded: Option<Arc<RedisServer>>,
    /// `load --failover-at`: the embedded master, replica and sentinels (the URL is the
    /// sentinels'), stopped on drop.
    sentinels: Option<Arc<SentinelGroup>>,
    /// The throw-away CA and certificates of `--tls`, removed on drop.
    _pki: Option<TestPki>,
}

/// The TLS side of the embedded server (`--tls`).
pub struct BrokerTls {
    /// `rediss://127.0.0.1:<tls port>`.
    pub url: String,
    /// The CA certificate (PEM) the clients trust.
    pub ca: std::path::PathBuf,
}

impl Broker {
    /// Connects to `url`, or starts the embedded server when there is none.
    ///
    /// # Errors
    /// No `redis-server` found (the message says to run `scripts/setup.sh` or set
    /// `REDIS_SERVER`), a server that does not start, or one that cannot be reached.
    pub fn open(url: Option<&str>) -> Result<Self> {
        Self::open_with(url, false)
    }

    /// As [`Broker::open`]; with `tls`, the embedded server also listens with TLS.
    ///
    /// # Errors
    /// As [`Broker::open`]; `tls` with a `--url` server.
    pub fn open_with(url: Option<&str>, tls: bool) -> Result<Self> {
        Self::open_inner(url, tls, false)
    }

    /// As [`Broker::open`], the embedded server with its append-only file written and
    /// fsynced on every write (`appendfsync always`), so it can be restarted mid-run
    /// without losing what it acknowledged (`load --restart-server-at`).
    ///
    /// # Errors
    /// As [`Broker::open`].
    pub fn open_durable(url: Option<&str>) -> Result<Self> {
        Self::open_inner(url, false, true)
    }

    /// An embedded master with one replica and three sentinels, reached through the
    /// sentinels (`redis+sentinel://…/ringq-bench`), for `load --failover-at`.
    ///
    /// # Errors
    /// As [`Broker::open`], or a group that does not settle.
    pub fn open_sentinel() -> Result<Self> {
        let group = SentinelGroup::start("ringq-bench", 1, 3)?;
        let mut b = Self::open_inner(Some(&group.url()), false, false)?;
        b.sentinels = Some(Arc::new(group));
        Ok(b)
    }

    /// The embedded sentinel group of [`Broker::open_sentinel`].
    pub fn sentinels(&self) -> Option<Arc<SentinelGroup>> {
        self.sentinels.clone()
    }

    fn open_inner(url: Option<&str>, tls: bool, durable: bool) -> Result<Self> {
        let pki = if tls {
            if url.is_some() {
                return Err(Error::new(
                    "--tls runs its own TLS server (with a throw-away CA); it cannot be \
                     combined with --url",
                ));
            }
            Some(TestPki::generate()?)
        } else {
            None
        };
        let (url, embedded) = match url {
            Some(u) => (u.to_owned(), None),
            None => {
                let mut b = RedisServer::builder()
                    // Queues of a few million messages must fit; no eviction, no saving
                    // (unless a restart must keep the data).
                    .arg("--maxmemory", "0")
                    .aof_always(durable);
                if let Some(p) = &pki {
                    b = b.tls(p, false);
                }
                let server = b.start()?;
                (server.url(), Some(Arc::new(server)))
            }
        };
        let tls = match (&pki, &embedded) {
            (Some(p), Some(s)) => Some(BrokerTls {
                url: s.tls_url(),
                ca: p.ca_cert(),
            }),
            _ => None,
        };
        let mut conn = RawConn::connect(&url).map_err(|e| e.context("checking the server"))?;
        let info = match conn.command_ok(["INFO", "server"])? {
            Frame::BulkString(b) | Frame::SimpleString(b) => {
                String::from_utf8_lossy(&b).into_owned()
            }
            Frame::VerbatimString { text, .. } => String::from_utf8_lossy(&text).into_owned(),
            f => return Err(Error::new(format!("unexpected INFO reply: {f:?}"))),
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        let redis_version = field("redis_version").unwrap_or_else(|| "unknown".into());
        let version = match (field("server_name"), field("valkey_version")) {
            (_, Some(v)) => format!("valkey {v} (redis_version {redis_version})"),
            (Some(name), None) => format!("{name} {redis_version}"),
            (None, None) => format!("redis {redis_version}"),
        };
        let mut parts = redis_version.split('.').map(|m| m.parse().unwrap_or(0));
        let triple = (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        );
        let major = triple.0;
        Ok(Self {
            url,
            version,
            has_lmpop: major >= 7,
            redis_version: triple,
            tls,
            embedded,
            sentinels: None,
            _pki: pki,
        })
    }

    /// The embedded server's process id (None with `--url`).
    pub fn server_pid(&self) -> Option<u32> {
        self.embedded.as_ref()?.pid()
    }

    /// The embedded server, for a fault injector that restarts it (None with `--url`).
    pub fn embedded(&self) -> Option<Arc<RedisServer>> {
        self.embedded.clone()
    }

    /// Whether this is the embedded server.
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// "redis 7.0.15 (embedded)", "… (embedded, TLS)" or "… (--url)", for titles.
    pub fn label(&self) -> String {
        let place = match (self.is_embedded(), self.tls.is_some()) {
            _ if self.sentinels.is_some() => "embedded, behind 3 sentinels with 1 replica",
            (true, true) => "embedded, TLS",
            (true, false) => "embedded",
            _ => "--url",
        };
        format!("{} ({place})", self.version)
    }

    /// The server's CPU time so far, `used_cpu_user + used_cpu_sys` of `INFO cpu`, in
    /// seconds: the one server-CPU probe of every scenario (it works with `--url` too).
    ///
    /// # Errors
    /// The server cannot be reached or does not answer INFO.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds_of(&self.url)
    }
}

/// The CPU time so far of the server at `url` (`used_cpu_user + used_cpu_sys` of `INFO
/// cpu`), in seconds.
///
/// # Errors
/// The server cannot be reached or does not answer INFO.
pub fn cpu_seconds_of(url: &str) -> Result<f64> {
    {
        let mut c = RawConn::connect(url)?;
        let text = match c.command_ok(["INFO", "cpu"])? {
            Frame::BulkString(b) | Frame::SimpleString(b) => {
                String::from_utf8_lossy(&b).into_owned()
            }
            Frame::VerbatimString { text, .. } => String::from_utf8_lossy(&text).into_owned(),
            other => return Err(Error::new(format!("INFO cpu answered {other:?}"))),
        };
        let field = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        Ok(field("used_cpu_user") + field("used_cpu_sys"))
    }
}
