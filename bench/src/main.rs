//! `ringq-bench`: ringq's benchmark suite and broker load tester.
//!
//! Every run measures ringq *and* its baselines on the same workload, against the same
//! server, one after the other, and reports ratios against the best baseline. Each
//! client's consumer runs in its own child process (this binary re-executed with a hidden
//! subcommand), so the CPU time the kernel accounts to that child is the consumer's alone;
//! filling the queues and producing messages happen in the parent and are not counted.
//!
//! # Layout
//! - `cli`: the command line (clap) and its help text.
//! - `scenario`: the parent's side of `drain` and `latency`: prepare the server, run each
//!   client's child, collect results. `pubsub` and `acked` (`reliable`, `stream`) are the
//!   other scenarios, each on its own.
//! - `child`: the parent's side of a consumer child: spawning it, the `ready` handshake
//!   on its stdout, its report, and its CPU time from `wait4`.
//! - `spec`: what the parent tells a child (`ChildSpec`, built from the command line by
//!   `ChildSpec::base`) and what it answers (`ChildReport`), as JSON.
//! - `clients`: the child's side (`child_main`) and the consumers measured — `ringq`,
//!   `redis-rs`, `tokio-uring`, the raw `limit` probe, and the `ping` reference — and the
//!   per-message work they all share.
//! - `load`: the parent's load generators: queue filling and the paced producer; the
//!   monotonic clock and absolute sleeps they use.
//! - `conn`: a small blocking RESP connection (connect, AUTH, SELECT, pipelined writes).
//! - `server`: the embedded `redis-server` (or the one at `--url`), its version, and its
//!   CPU time (`INFO cpu`).
//! - `latency`: payload time stamps and histogram summaries.
//! - `cluster`: `drain --cluster` on a private 3-primary cluster or a `redis+cluster://`
//!   URL, with redis-rs's cluster client and a standalone node for the layer's cost.
//! - `acked`: the `reliable` and `stream` scenarios (drains with acks, server CPU per
//!   message); `kombu`: Kombu envelopes drained by ringq's kombu and pop modes and by a
//!   Python Kombu consumer.
//! - `loadtest`: the `load` scenario (open-loop producers at a rate, a consumer child in
//!   list, reliable, stream, pubsub or kombu mode, one row a second); `loadreport`: its
//!   merged series, summary, table and CSV; `series`: the child's per-second recorder.
//! - `produce`: the load tester's producer at full speed against redis-benchmark.
//! - `hlog`: HdrHistogram interval logs (`load --hdr-prefix`).
//! - `report`: the one table renderer, the drain and latency rows and targets, the JSON
//!   file; `plot`: the SVG percentile plot.
//! - `progress`: progress bars on stderr (hidden when stderr is not a terminal).
//! - `noise`: a measured child run, with other processes' CPU load meanwhile noted in the
//!   table.
//! - `error`: [`error::Error`].

mod acked;
mod child;
mod cli;
mod clients;
mod cluster;
mod conn;
mod connsweep;
mod error;
mod faults;
mod hlog;
mod kombu;
mod latency;
mod load;
mod loadreport;
mod loadtest;
mod noise;
mod paced;
mod plot;
mod produce;
mod progress;
mod pubsub;
mod repeat;
mod report;
mod scenario;
mod series;
mod server;
mod spec;
mod sweep;

use std::process::ExitCode;

use crate::cli::Scenario;
use crate::spec::CHILD_SUBCOMMAND;

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == CHILD_SUBCOMMAND) {
        return clients::child_main(std::env::var_os(spec::SPEC_ENV));
    }
    let cli = cli::Cli::parse_args();
    let result = if cli.repeats > 1 {
        repeat::run(&cli, dispatch)
    } else {
        dispatch(&cli)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringq-bench: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs the scenario `cli` names, once.
fn dispatch(cli: &cli::Cli) -> error::Result<()> {
    let cluster = cli.cluster
        || cli
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("redis+cluster://"));
    match cli.scenario {
        Scenario::Drain if cluster && cli.connection_counts.len() > 1 => Err(error::Error::new(
            "the connections sweep runs on one server, not --cluster",
        )),
        Scenario::Drain if cluster => cluster::run(cli),
        Scenario::Latency if cluster => Err(error::Error::new(
            "--cluster (or a redis+cluster:// URL) runs the drain, pubsub, reliable and \
             stream scenarios, not latency yet",
        )),
        Scenario::Drain | Scenario::Latency => scenario::run(cli),
        Scenario::Pubsub => pubsub::run(cli, cluster),
        Scenario::Reliable => acked::run(cli, cluster, acked::Flavor::Reliable),
        Scenario::Stream => acked::run(cli, cluster, acked::Flavor::Stream),
        Scenario::Kombu if cluster => Err(error::Error::new(
            "kombu runs on one server: Kombu has no cluster support (one unacked hash)",
        )),
        Scenario::Kombu => kombu::run(cli),
        Scenario::Load if cluster => Err(error::Error::new(
            "load runs on one server for now (--cluster is for drain, pubsub, reliable and \
             stream)",
        )),
        Scenario::Load => loadtest::run(cli),
        Scenario::Produce if cluster => Err(error::Error::new(
            "produce runs on one server (redis-benchmark's LPUSH goes to one node)",
        )),
        Scenario::Produce => produce::run(cli),
    }
}
