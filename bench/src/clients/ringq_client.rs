//! ringq itself (in `reliable`, its reliable mode: leases and batched acks): one engine with `--shards` shard threads and `--connections` connections
//! in all, `PopStrategy::Single` (one message per BRPOP, pipelined while there is backlog)
//! or `Adaptive` (LMPOP COUNT while there is backlog, BLMPOP when dry). The child stops
//! the engine through a [`ringq::ShutdownHandle`] once the sink has counted every expected
//! message, as the baselines stop.
//!
//! `EngineBuilder::limit` is deliberately not used: the workload holds exactly the expected
//! messages, so there is nothing to hold back, and with several connections the engine's
//! shared budget can stay claimed by a blocking pop on a connection whose queues are empty
//! while the last message waits in another connection's queue (see issue 5's report).

use std::sync::Arc;
use std::time::Duration;

use ringq::{
    Consumer, EngineBuilder, Handler, ListenConsumer, Message, Outcome, PopConsumer, PopStrategy,
    ReliableConsumer, StreamConsumer,
};

use super::Sink;
use crate::cli::PopMode;
use crate::error::Result;
use crate::spec::ChildSpec;

/// The benchmark handler: feeds each batch to the sink, acks everything.
#[derive(Clone)]
struct SinkHandler(Arc<Sink>);

impl Handler for SinkHandler {
    fn handle(&mut self, msg: &Message<'_>) -> Outcome {
        self.0.consume([msg.payload()]);
        Outcome::Ack
    }

    fn handle_batch(&mut self, batch: &[Message<'_>], outcomes: &mut Vec<Outcome>) {
        self.0.consume(batch.iter().map(|m| m.payload()));
        outcomes.extend(std::iter::repeat_n(Outcome::Ack, batch.len()));
    }
}

/// Kombu mode in a load run: each envelope is decoded as an application would, and its
/// body (which carries the send-time stamp) counted.
#[derive(Clone)]
struct KombuSinkHandler(Arc<Sink>);

impl Handler for KombuSinkHandler {
    fn handle(&mut self, msg: &Message<'_>) -> Outcome {
        match ringq::kombu::Incoming::parse(msg.payload()) {
            Ok(m) => {
                self.0.consume([&m.body[..]]);
                Outcome::Ack
            }
            Err(e) => {
                self.0
                    .fail(format!("a Kombu envelope did not decode: {}", e.0));
                Outcome::Dead
            }
        }
    }
}

/// `--tls`: trust the run's CA.
fn with_tls(b: EngineBuilder, spec: &ChildSpec) -> EngineBuilder {
    match &spec.tls_ca {
        Some(ca) => b.tls(ringq::Tls::new().ca_cert(ca)),
        None => b,
    }
}

pub fn run(spec: &ChildSpec, sink: &Arc<Sink>) -> Result<Option<String>> {
    let strategy = match spec.pop {
        PopMode::Single => PopStrategy::Single,
        PopMode::Batch => PopStrategy::Adaptive,
    };
    let per_pop = match spec.pop {
        PopMode::Single => 1,
        PopMode::Batch => spec.batch,
    };
    let shards = spec.shards.max(1);
    let lanes = spec.lanes();
    let consumer: Consumer = if spec.stream {
        StreamConsumer::new(
            crate::spec::STREAM_GROUP,
            "ringq",
            spec.queues
                .iter()
                .map(|q| ringq::StreamKey::from(q.as_str())),
        )
        .batch(spec.batch)
        .pipeline(spec.pipeline)
        .block_timeout(Duration::from_secs(1))
        .into()
    } else if spec.kombu {
        ringq::KombuConsumer::new(crate::spec::RELIABLE_ID, spec.queues.clone())
            .key_prefix(crate::kombu::PREFIX)
            .batch(spec.batch)
            .pipeline(spec.pipeline)
            .block_timeout(Duration::from_secs(1))
            .into()
    } else if spec.reliable {
        ReliableConsumer::new(crate::spec::RELIABLE_ID, spec.queues.clone())
            .batch(spec.batch)
            .pipeline(spec.pipeline)
            .block_timeout(Duration::from_secs(1))
            .into()
    } else {
        PopConsumer::new(spec.queues.clone())
            .strategy(strategy)
            .batch(spec.batch)
            .pipeline(spec.pipeline)
            .parked_pops(spec.parked_pops)
            .block_timeout(Duration::from_secs(1))
            .into()
    };
    let running = with_tls(EngineBuilder::new(&spec.url), spec)
        .backend(backend(spec))
        // Enough credit for every lane's full pipeline, twice over (one in flight, one
        // being handled).
        .prefetch(
            per_pop
                .saturating_mul(spec.pipeline)
                .saturating_mul(2 * lanes as u32),
        )
        .shards(shards)
        .connections_per_shard(lanes.div_ceil(shards))
        .pin_cores(spec.pin_cores)
        .client_name("ringq-bench");
    let running = if spec.kombu && spec.latency {
        running.start(consumer, KombuSinkHandler(sink.clone()))?
    } else {
        running.start(consumer, SinkHandler(sink.clone()))?
    };
    stop_when_done(spec, sink, &running)?;
    let scrapes = (spec.client == crate::cli::ClientKind::RingqMetrics)
        .then(|| scrape_every_100ms(&running))
        .transpose()?;
    if spec.latency {
        // The producer starts on `ready`: every connection must be up and blocked first.
        while running.stats().connections_ready < lanes as u64 && !running.is_stopping() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    sink.ready();
    if spec.series_origin_ns.is_some() {
        sink.stop_when_quiet();
    }
    let stats = running.wait()?;
    sink.set_engine(&stats);
    let mut notes = Vec::new();
    if stats.messages != sink.count() {
        notes.push(format!(
            "engine counted {} messages, handler {}",
            stats.messages,
            sink.count()
        ));
    }
    if spec.client == crate::cli::ClientKind::Ringq && stats.backend != ringq::IoBackend::IoUring {
        notes.push(format!("ran on the {} backend", stats.backend));
    }
    if let Some(n) = scrapes {
        notes.push(format!(
            "{} scrapes of the metrics",
            n.load(std::sync::atomic::Ordering::Relaxed)
        ));
    }
    Ok((!notes.is_empty()).then(|| notes.join("; ")))
}

/// Registers the engine's Prometheus collector and encodes it to text every 100 ms on a
/// thread of its own (a Prometheus server's scrape, without the network) for as long as
/// the child runs. Returns the scrape count.
fn scrape_every_100ms(running: &ringq::Running) -> Result<Arc<std::sync::atomic::AtomicU64>> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut registry = prometheus_client::registry::Registry::with_prefix("ringq");
    registry.register_collector(Box::new(running.metrics()));
    let count = Arc::new(AtomicU64::new(0));
    let n = count.clone();
    std::thread::Builder::new()
        .name("ringq-bench-scrape".into())
        .spawn(move || {
            let mut text = String::new();
            loop {
                text.clear();
                if prometheus_client::encoding::text::encode(&mut text, &registry).is_ok() {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .map_err(|e| crate::error::Error::io("spawning the scrape thread", e))?;
    Ok(count)
}

/// `pubsub`: one listen-mode engine on one shard subscribed to the channel (or, on a
/// cluster, to the sharded channels); `ready` once the server counts the subscriber, so
/// the publisher's first message is not missed.
pub fn listen(spec: &ChildSpec, sink: &Arc<Sink>) -> Result<Option<String>> {
    let consumer = if spec.sharded {
        spec.queues
            .iter()
            .fold(ListenConsumer::new(), |c, ch| c.shard_channel(ch.clone()))
    } else if !spec.queues.is_empty() {
        // The load scenario's channels.
        spec.queues
            .iter()
            .fold(ListenConsumer::new(), |c, ch| c.channel(ch.clone()))
    } else {
        ListenConsumer::new().channel(spec.channel.clone().unwrap_or_default())
    };
    // Fan-in (`pubsub --connections N` over N channels): the channels spread over N
    // subscriber connections of the one shard.
    let running = EngineBuilder::new(&spec.url)
        .backend(backend(spec))
        .prefetch(65_536)
        .connections_per_shard(spec.lanes())
        .pin_cores(spec.pin_cores)
        .client_name("ringq-bench")
        .start(consumer, SinkHandler(sink.clone()))?;
    stop_when_done(spec, sink, &running)?;
    super::wait_subscribed(spec, || running.is_stopping())?;
    sink.ready();
    sink.stop_when_quiet();
    let stats = running.wait()?;
    sink.set_engine(&stats);
    Ok((stats.gaps > 0).then(|| format!("{} gap(s) in the subscription", stats.gaps)))
}

/// Arms the sink's watchdog and stops the engine once every message is counted (or the
/// watchdog failed the sink).
fn stop_when_done(spec: &ChildSpec, sink: &Arc<Sink>, running: &ringq::Running) -> Result<()> {
    let stop = running.shutdown_handle();
    sink.watchdog(super::deadline(spec), || {});
    let waiter = sink.clone();
    std::thread::Builder::new()
        .name("ringq-bench-stop".into())
        .spawn(move || {
            waiter.wait_blocking();
            stop.shutdown();
        })
        .map_err(|e| crate::error::Error::io("spawning the stop thread", e))?;
    Ok(())
}

/// The backend the spec names (io_uring when it names none).
fn backend(spec: &ChildSpec) -> ringq::IoBackend {
    ringq::IoBackend::parse(&spec.backend)
        .filter(|b| *b != ringq::IoBackend::Auto || !spec.backend.is_empty())
        .unwrap_or(ringq::IoBackend::IoUring)
}
