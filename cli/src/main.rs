//! `ringq`: consume, produce and (soon) subscribe from the command line — kcat for Redis
//! queues, on the ringq engine.
//!
//! ```text
//! ringq consume   --url URL --queue Q [--queue Q2 ...] [--count N] [--format raw|json] ...
//! ringq produce   --url URL --queue Q --messages N [--size S | --seq] [--rate R]
//! ringq subscribe --url URL (--channel C | --pattern P)... [--count N] [--format raw|json]
//! ringq probe
//! ```
//!
//! Messages go to stdout, one per line; everything else (errors, warnings, the producer's
//! progress and summary) goes to stderr. Exit status: 0 on success (including a stop by
//! SIGINT/SIGTERM or a closed stdout), 1 for a runtime failure, 2 for a usage error.
//!
//! # Layout
//! - `args`: the command line (clap derive); every flag's `--help` text lives here.
//! - `consume`: `ringq consume` — the engine, its stop switch, exit status.
//! - `output`: the handler that prints messages (raw or JSON) without interleaving lines.
//! - `produce`: `ringq produce` — a blocking, pipelined LPUSH client with pacing.
//! - `stop`: the stop switch shared by signals, a closed stdout and the engine.
//! - `log`: engine warnings (`tracing` events) printed to stderr.
//! - `exit`: [`Exit`], an error with its exit status.

mod args;
mod consume;
mod exit;
mod log;
mod output;
mod produce;
mod stop;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::exit::Exit;

fn main() {
    let cli = Cli::parse();
    log::install();
    let result = match cli.command {
        Command::Consume(a) => consume::run(a),
        Command::Produce(a) => produce::run(a),
        Command::Subscribe(a) => subscribe(a),
        Command::Probe => probe(),
    };
    if let Err(e) = result {
        e.report_and_exit();
    }
}

/// `ringq subscribe`: the flags are parsed and checked (so scripts can be written against
/// them), but the engine's listen mode has not landed: exit 2.
fn subscribe(a: args::SubscribeArgs) -> Result<(), Exit> {
    ringq::ConnectionInfo::parse(&a.server.url).map_err(Exit::engine)?;
    let _ = (a.count, a.format);
    Err(Exit::usage(format!(
        "subscribe is not implemented yet ({} channel(s), {} pattern(s) asked for): the \
         engine's listen mode (SUBSCRIBE/PSUBSCRIBE) has not landed; only \
         `ringq consume --mode pop` works today",
        a.channel.len(),
        a.pattern.len()
    )))
}

/// `ringq probe`: what io_uring offers on this host, or why it cannot be used.
fn probe() -> Result<(), Exit> {
    let features = ringq::probe().map_err(Exit::engine)?;
    println!("{features}");
    Ok(())
}
