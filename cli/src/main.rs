//! `ringq`: consume, produce, subscribe and publish from the command line — kcat for
//! Redis queues and channels, on the ringq engine.
//!
//! ```text
//! ringq consume   --url URL --queue Q [--queue Q2 ...] [--count N] [--format raw|json] ...
//! ringq produce   --url URL --queue Q --messages N [--size S | --seq] [--rate R]
//! ringq subscribe --url URL (--channel C | --pattern P | --shard-channel C)... [--count N]
//!                 [--format raw|json]
//! ringq publish   --url URL --channel C --messages N [--size S | --seq] [--rate R]
//! ringq consume   --mode reliable --consumer-id ID --queue Q [--max-retries N] [--lease-ms MS]
//! ringq consume   --mode stream --group G --consumer-id C --queue S [--from new|start|ID] [--tag EXPR]
//! ringq produce   --stream --queue S --messages N [--tag T]
//! ringq produce   --mode kombu --queue Q --messages N [--priority N] [--task NAME]
//! ringq stats     [--mode stream] --queue Q [--format text|json]
//! ringq dead      --queue Q list [--count N] [--format raw|json] | requeue [--count N] | purge
//! ringq probe
//! ```
//!
//! Messages go to stdout, one per line; everything else (errors, warnings, the producer's
//! progress and summary) goes to stderr. Exit status: 0 on success (including a stop by
//! SIGINT/SIGTERM or a closed stdout), 1 for a runtime failure, 2 for a usage error.
//!
//! # Layout
//! - `args`: the command line (clap derive); every flag's `--help` text lives here.
//! - `consume`: `ringq consume` — the engine (pop or reliable mode), its stop switch,
//!   exit status.
//! - `admin`: `ringq stats` and `ringq dead` — a reliable queue's figures and dead letters;
//!   `stream_admin`: the same for streams (`--mode stream`).
//! - `client`: the blocking RESP2 connection of `produce`, `publish`, `stats`, `dead`.
//! - `output`: the handler that prints messages (raw or JSON) without interleaving lines.
//! - `writer`: `subscribe`'s stdout writer thread, fed through a bounded byte queue.
//! - `subscribe`: `ringq subscribe` — the engine in listen mode.
//! - `produce`: `ringq produce` and `ringq publish` — a blocking, pipelined client with
//!   pacing.
//! - `stop`: the stop switch shared by signals, a closed stdout and the engine.
//! - `log`: engine warnings (`tracing` events) printed to stderr.
//! - `exit`: [`Exit`], an error with its exit status.

mod admin;
mod args;
mod client;
mod consume;
mod exit;
mod log;
mod metrics;
mod output;
mod produce;
mod server;
mod stop;
mod stream_admin;
mod subscribe;
mod watch;
mod writer;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::exit::Exit;

fn main() {
    let cli = Cli::parse();
    log::install();
    let result = match cli.command {
        Command::Consume(a) => consume::run(a),
        Command::Produce(a) => produce::run(a),
        Command::Subscribe(a) => subscribe::run(a),
        Command::Publish(a) => produce::publish(a),
        Command::Stats(a) => admin::stats(a),
        Command::Dead(a) => admin::dead(a),
        Command::Probe => probe(),
    };
    if let Err(e) = result {
        e.report_and_exit();
    }
}

/// `ringq probe`: what io_uring offers on this host, or why it cannot be used; and the
/// epoll fallback, which is always there.
fn probe() -> Result<(), Exit> {
    let io_uring = ringq::probe();
    if let Ok(features) = &io_uring {
        println!("{features}");
    }
    println!(
        "epoll: available{}",
        if io_uring.is_ok() {
            " (--backend epoll)"
        } else {
            "; consume and subscribe use it (--backend auto, the default)"
        }
    );
    io_uring.map(|_| ()).map_err(Exit::engine)
}
