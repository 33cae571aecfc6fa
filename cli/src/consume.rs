//! `ringq consume`: the engine in pop, reliable or stream mode, printing every message it
//! takes. In reliable and stream modes a message is acknowledged only once its line is
//! written and stdout flushed; one whose line could not be written is retried.
//!
//! The shape of a run: validate the flags (usage errors exit 2 before anything connects),
//! watch SIGINT/SIGTERM, start the engine with a [`Printer`] handler, hand its shutdown
//! handle to the [`StopSwitch`], then wait. The engine stops on its own after `--count`
//! messages ([`EngineBuilder::limit`]: it never pops more), on a signal or closed stdout
//! (the switch), or on a fatal error (bad password, server unreachable at start).
//! A stopping engine hands every message already popped to the handler, so everything
//! that left the server is printed — unless stdout itself has gone away.

use std::sync::Arc;
use std::time::Duration;

use ringq::{
    Consumer, Dispatch, EngineBuilder, KombuConsumer, PopConsumer, PopStrategy, ReliableConsumer,
    StartAt, StreamConsumer, StreamKey,
};

use crate::args::{ConsumeArgs, Mode, Strategy};
use crate::exit::Exit;
use crate::output::{Lines, Output, Printer};
use crate::stop::{watch_signals, StopSwitch};

/// Runs `ringq consume`.
///
/// # Errors
/// Usage errors (status 2): an unimplemented mode, a bad URL, a prefetch below the
/// connection count. Runtime errors
/// (status 1): whatever stopped the engine, or a failed write to stdout.
pub fn run(a: ConsumeArgs) -> Result<(), Exit> {
    let (reliable, stream) = (a.mode == Mode::Reliable, a.mode == Mode::Stream);
    let kombu = a.mode == Mode::Kombu;
    if kombu && a.consumer_id.is_none() {
        return Err(Exit::usage(
            "--mode kombu needs --consumer-id: the id names this consumer's records in \
             Kombu's unacked hash, and a restart with the same id restores its unfinished \
             messages at once",
        ));
    }
    if !kombu && a.visibility_timeout_ms.is_some() {
        return Err(Exit::usage(
            "--visibility-timeout-ms applies to --mode kombu only",
        ));
    }
    if kombu && a.lease_ms.is_some() {
        return Err(Exit::usage(
            "--lease-ms applies to --mode reliable and stream; kombu mode's is --visibility-timeout-ms",
        ));
    }
    if reliable && a.consumer_id.is_none() {
        return Err(Exit::usage(
            "--mode reliable needs --consumer-id: the id names this consumer's processing \
             lists, and a restart with the same id takes its unfinished messages back at once",
        ));
    }
    if stream && (a.consumer_id.is_none() || a.group.is_none()) {
        return Err(Exit::usage(
            "--mode stream needs --group and --consumer-id: the consumer of that group whose \
             pending entries a restart with the same id reads again",
        ));
    }
    if a.mode == Mode::Pop && (a.max_retries.is_some() || a.lease_ms.is_some()) {
        return Err(Exit::usage(
            "--max-retries and --lease-ms apply to --mode reliable and stream only",
        ));
    }
    if !stream && (a.group.is_some() || a.from.is_some() || a.tag.is_some()) {
        return Err(Exit::usage(
            "--group, --from and --tag apply to --mode stream only",
        ));
    }
    // Parsed here as well as by the engine so a bad URL is a usage error with the
    // engine's (password-redacting) message, before any thread starts.
    a.server.info()?;
    // Every connection that owns queues needs credit to wait on them; the engine would
    // refuse this too, but only the command line knows the flags' names.
    let lanes = (u64::from(a.shards) * u64::from(a.connections)).min(a.queues.len() as u64);
    if u64::from(a.prefetch) < lanes {
        return Err(Exit::usage(format!(
            "--prefetch {} is below the {lanes} connections that own queues (--shards {} × \
             --connections {}, at most one per --queue): each needs at least one message of \
             credit to wait on its queues. Raise --prefetch to {lanes} or more, or lower \
             --connections",
            a.prefetch, a.shards, a.connections
        )));
    }

    let consumer: Consumer = if stream {
        let tag = a.tag.as_deref().unwrap_or("*");
        let mut c = StreamConsumer::new(
            a.group.clone().unwrap_or_default(),
            a.consumer_id.clone().unwrap_or_default(),
            a.queues
                .iter()
                .map(|q| StreamKey::from(q.as_str()).tags(tag)),
        )
        .batch(a.batch)
        .block_timeout(Duration::from_millis(a.block_timeout_ms))
        .start_at(match a.from.as_deref() {
            None | Some("new") => StartAt::New,
            Some("start") => StartAt::Beginning,
            Some(id) => StartAt::Id(id.to_owned().into()),
        });
        if let Some(n) = a.max_retries {
            c = c.max_deliveries(n);
        }
        if let Some(ms) = a.lease_ms {
            c = c.lease(Duration::from_millis(ms));
        }
        c.into()
    } else if kombu {
        let id = a.consumer_id.clone().unwrap_or_default();
        let mut c = KombuConsumer::new(id, a.queues.iter().map(String::as_str))
            .batch(a.batch)
            .block_timeout(Duration::from_millis(a.block_timeout_ms));
        if let Some(n) = a.max_retries {
            c = c.max_deliveries(n);
        }
        if let Some(ms) = a.visibility_timeout_ms {
            c = c.visibility_timeout(Duration::from_millis(ms));
        }
        c.into()
    } else if reliable {
        let id = a.consumer_id.clone().unwrap_or_default();
        let mut c = ReliableConsumer::new(id, a.queues.iter().map(String::as_str))
            .batch(a.batch)
            .block_timeout(Duration::from_millis(a.block_timeout_ms));
        if let Some(n) = a.max_retries {
            c = c.max_deliveries(n);
        }
        if let Some(ms) = a.lease_ms {
            c = c.lease(Duration::from_millis(ms));
        }
        c.into()
    } else {
        PopConsumer::new(a.queues.iter().map(String::as_str))
            .strategy(match a.strategy {
                Strategy::Adaptive => PopStrategy::Adaptive,
                Strategy::Single => PopStrategy::Single,
                Strategy::Batch => PopStrategy::BlockingBatch,
            })
            .batch(a.batch)
            .block_timeout(Duration::from_millis(a.block_timeout_ms))
            .into()
    };
    let dispatch = match (a.workers, a.orderly) {
        (None, _) => Dispatch::inline(),
        (Some(n), false) => Dispatch::workers(usize::from(n)),
        (Some(n), true) => Dispatch::orderly(usize::from(n)),
    };
    let mut builder = a
        .server
        .builder()?
        .shards(usize::from(a.shards))
        .connections_per_shard(usize::from(a.connections))
        .pin_cores(!a.no_pin)
        .dispatch(dispatch)
        .prefetch(a.prefetch)
        .reply_grace(Duration::from_millis(a.reply_grace_ms))
        .reply_timeout(Duration::from_millis(a.reply_timeout_ms));
    if let Some(n) = a.count {
        builder = builder.limit(n);
    }
    if let Some(b) = a.backend {
        builder = builder.backend(b.engine());
    }
    if let Some(id) = &a.consumer_id {
        builder = builder.client_name(id.as_str());
    }

    let group = a.group.clone().unwrap_or_default();
    let stats = print_until_stopped(
        builder,
        consumer,
        Lines {
            format: a.format,
            listen: false,
            kombu,
            metrics: a.metrics_addr,
        },
        |e| stream.then(|| group_lost(e, &group)).flatten(),
    )?;
    if let (Some(tag), Some(stats)) = (&a.tag, stats) {
        eprintln!(
            "ringq: {} entr(ies) did not match --tag '{tag}': acknowledged without being printed",
            stats.filtered
        );
    }
    Ok(())
}

/// The engine's NOGROUP failure, said for the command line: what most likely happened and
/// that starting `consume` again is the fix (it creates missing groups itself).
fn group_lost(e: &ringq::Error, group: &str) -> Option<Exit> {
    let kind = e.server_error()?.kind();
    matches!(kind, ringq_resp::ServerErrorKind::NoGroup).then(|| {
        Exit::runtime(format!(
            "the server no longer has consumer group '{group}' (NOGROUP): it lost it — most \
             likely it restarted without persistence (or someone ran XGROUP DESTROY or \
             deleted the stream). Start `ringq consume` again: it creates missing groups \
             itself, where --from says (new by default; --from start reads every entry still \
             in the stream)"
        ))
    })
}

/// Stdout without std's line buffering (a `dup` of descriptor 1), so the writer thread's
/// one `writev` per drain reaches the kernel as it is; std's `Stdout` if `dup` fails.
fn stdout_unbuffered() -> Box<dyn std::io::Write + Send> {
    use std::os::fd::AsFd;
    match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)),
        Err(_) => Box::new(std::io::stdout()),
    }
}

/// Starts the engine with `printer`'s handler and waits until it stops: after `--count`,
/// on a signal or a closed stdout (the stop switch), or on a fatal error. Returns the
/// engine's figures (none when the reader of stdout went away first).
///
/// # Errors
/// Whatever stopped the engine (status 1, or 2 for a usage error the engine found) — as
/// `explain` words it for the command line where it does — or a failed write to stdout.
pub fn print_until_stopped(
    builder: EngineBuilder,
    consumer: impl Into<Consumer>,
    lines: Lines,
    explain: impl Fn(&ringq::Error) -> Option<Exit>,
) -> Result<Option<ringq::Stats>, Exit> {
    let stop = Arc::new(StopSwitch::default());
    watch_signals(stop.clone())?;
    let output = if lines.listen {
        // Nothing is acknowledged in listen mode: lines can wait in the writer's queue.
        Output::queued(lines.format, stdout_unbuffered(), stop.clone())
            .map_err(|e| Exit::runtime(format!("cannot start the stdout writer thread: {e}")))?
    } else {
        Output::new(lines.format, Box::new(std::io::stdout()), stop.clone())
    };
    let output = Arc::new(output);
    let running = builder
        .start(
            consumer,
            Printer::new(output.clone(), lines.listen).kombu(lines.kombu),
        )
        .map_err(|e| explain(&e).unwrap_or_else(|| Exit::engine(e)))?;
    stop.arm(running.shutdown_handle());
    if let Some(addr) = lines.metrics {
        if let Err(e) = crate::metrics::serve(addr, running.metrics()) {
            let _ = running.shutdown();
            let _ = output.finish();
            return Err(e);
        }
    }
    let result = running.wait();

    let out = output.finish();
    if let Some(e) = out.error {
        return Err(Exit::runtime(format!(
            "writing to stdout failed after {} messages: {e}",
            out.lines
        )));
    }
    match result {
        Ok(stats) => Ok(Some(stats)),
        // The reader went away first; whatever the engine hit while stopping no longer
        // has anyone to tell.
        Err(_) if out.closed => Ok(None),
        Err(e) => Err(explain(&e).unwrap_or_else(|| Exit::engine(e))),
    }
}
