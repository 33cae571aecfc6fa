//! Real-server harness for ringq's black-box and fault tests.
//!
//! Tests run against real brokers: each starts its own private `redis-server` on a free
//! port in a temp dir, kills and restarts it to inject faults, and never assumes a server
//! is already running. Where no real server misbehaves on demand, a [`ScriptedServer`]
//! plays canned (often malformed) replies.
//!
//! # Layout
//! - `server`: [`RedisServer`]: start, kill, stop, freeze, restart; killed on drop.
//! - `builder`: [`RedisServerBuilder`]: AOF, `requirepass`, ACL users, extra options.
//! - `launch` (private): spawning one server process and waiting until it serves.
//! - `process`: finding the binary ([`find_redis_server`]), picking ports
//!   ([`free_port`]), spawning children the kernel kills with the test process.
//! - `version`: [`Version`], from `INFO server`.
//! - `url`: [`ConnectionInfo`], `redis://` URL parsing.
//! - `client`: [`TestClient`], a blocking RESP2 client for set-up and assertions
//!   (pipelined bulk pushes, `CLIENT LIST` / `CLIENT KILL`, `INFO`).
//! - `scripted`: [`ScriptedServer`] and [`Script`], a fake server for hostile input.
//! - `proxy`: [`FaultProxy`], a TCP proxy in front of a real server whose [`Fault`]s
//!   (delay, 1-byte writes, a reset right after a reply, a black hole) a test switches
//!   on and off mid-run.
//! - `wait`: [`wait_until`], bounded polling instead of sleeps.
//! - `error`: [`Error`], with predicates such as [`Error::is_connection_lost`].
//!
//! # Finding redis-server
//! `$REDIS_SERVER` (a `redis-server` or `valkey-server`), then `redis-server` on `$PATH`,
//! `/usr/bin`, `/usr/sbin`, `/usr/local/bin`. When none is found every server start fails
//! with [`Error::NotInstalled`], whose message says to run `scripts/setup.sh`: tests fail
//! loudly rather than skip.
//!
//! # Example
//! ```no_run
//! # fn main() -> ringq_tests::Result<()> {
//! use ringq_tests::{RedisServer, TestClient};
//!
//! let server = RedisServer::start()?;
//! let mut client = TestClient::connect(&server.url())?;
//! client.lpush_many("jobs", (0..1_000).map(|i| format!("job-{i}")))?;
//! assert_eq!(client.llen("jobs")?, 1_000);
//! println!("redis {} on {}", server.version(), server.addr());
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod builder;
mod client;
mod cluster;
mod error;
mod launch;
mod process;
mod proxy;
mod python;
mod scripted;
mod sentinel;
mod server;
mod tls;
mod url;
mod version;
mod wait;

pub use builder::RedisServerBuilder;
pub use client::{ClientInfo, TestClient};
pub use cluster::ClusterGroup;
pub use error::{Error, Result};
pub use process::{
    find_redis_server, find_valkey_server, free_port, REDIS_SERVER_ENV, VALKEY_SERVER_ENV,
};
pub use proxy::{Fault, FaultProxy};
pub use python::{kombu_python, parse_openmetrics, run_python, KOMBU_PYTHON_ENV};
pub use scripted::{Script, ScriptedServer, Step};
pub use sentinel::{SentinelGroup, SentinelOptions};
pub use server::RedisServer;
pub use tls::TestPki;
pub use url::ConnectionInfo;
pub use version::Version;
pub use wait::wait_until;
