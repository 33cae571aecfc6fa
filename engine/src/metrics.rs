//! Prometheus metrics (cargo feature `prometheus`): a [`Collector`] for the
//! [`prometheus-client`](https://docs.rs/prometheus-client) crate that the application
//! registers in its own registry. The library opens no port and keeps no global
//! registry; the `ringq` CLI serves one with `--metrics-addr`.
//!
//! Nothing is added to the hot path: the shards keep counting into their own counters
//! as they always do (relaxed atomics, written by one thread each, added once per reply),
//! and a scrape reads and sums them, and merges the shards' latency histograms into fixed
//! buckets, on the scraping thread.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use prometheus_client::registry::Registry;
//! use ringq::{EngineBuilder, Outcome, PopConsumer};
//!
//! let running = EngineBuilder::new("redis://127.0.0.1:6379")
//!     .start(PopConsumer::new(["jobs"]), |_: &ringq::Message<'_>| Outcome::Ack)?;
//! let mut registry = Registry::with_prefix("ringq");
//! registry.register_collector(Box::new(running.metrics()));
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry)?;
//! assert!(text.contains("ringq_messages_consumed_total"));
//! # Ok(()) }
//! ```
//!
//! # Names (with the registry's `ringq` prefix)
//!
//! | name | type | labels | modes |
//! |---|---|---|---|
//! | `ringq_messages_consumed_total` | counter | `source`, `mode` | all: messages handed to the handler |
//! | `ringq_messages_acked_total` | counter | `mode` | all (pop and listen: the handler's `Ack`, no server effect) |
//! | `ringq_messages_retried_total` | counter | `mode` | all (server effect in reliable and stream) |
//! | `ringq_messages_dead_lettered_total` | counter | `mode` | all (server effect in reliable and stream) |
//! | `ringq_messages_failed_total` | counter | `mode` | all: retried + dead-lettered |
//! | `ringq_messages_claimed_total` | counter | `mode` | reliable, stream, kombu: taken back (a restart, a lost reply, a dead consumer; kombu: records restored, its own and, in `restore_visible`, other workers') |
//! | `ringq_messages_requeued_total` | counter | `mode` | reliable: due retries moved back to their queue |
//! | `ringq_stale_outcomes_total` | counter | `mode` | reliable, stream, kombu: outcomes refused (another consumer took the message over; kombu: a `restore_visible` took its record) |
//! | `ringq_foreign_leases_total` | counter | `mode` | reliable, kombu: elements (records) found under this consumer's numbering that it did not fetch |
//! | `ringq_possibly_lost_total` | counter | `mode` | pop: messages asked for by pops whose answers were lost (an upper bound) |
//! | `ringq_reconnects_total` | counter | `mode` | all |
//! | `ringq_stalls_total` | counter | `mode` | all: connections replaced after an overdue reply |
//! | `ringq_redirects_total` | counter | `mode` | cluster: MOVED, ASK, TRYAGAIN, CLUSTERDOWN answers |
//! | `ringq_topology_refreshes_total` | counter | `mode` | cluster |
//! | `ringq_pubsub_gaps_total` | counter | `mode` | listen: times subscriptions were not in force |
//! | `ringq_pubsub_dropped_total` | counter | `mode` | listen: messages dropped by the overflow policy |
//! | `ringq_io_syscalls_total`, `ringq_io_completions_total` | counter | `mode` | all: the I/O backend's system calls and the completions its loop handled ([`Stats::io`](crate::Stats::io); published every 100 ms) |
//! | `ringq_connection_errors_total` | counter | `mode`, `kind` (`connection_lost`, `timeout`, `server`, `protocol`, `auth`, `tls`, …) | all |
//! | `ringq_connections` | gauge | `mode`, `role` (`fetch`, `control`), `state` (`ready`, `down`) | all (published every 100 ms) |
//! | `ringq_inflight_messages`, `ringq_inflight_bytes` | gauge | `mode` | all (published every 100 ms) |
//! | `ringq_queue_depth` | gauge | `source`, `mode` | pop, reliable, kombu: messages waiting in each queue (`LLEN` over its levels on Control, every 5 s; see [`EngineBuilder::queue_depth`](crate::EngineBuilder::queue_depth) for the period and the limit of 100 queues); absent until sampled |
//! | `ringq_stream_lag` | gauge | `stream`, `group`, `mode` | stream: the group's lag on each stream (read every second) |
//! | `ringq_stream_pending` | gauge | `stream`, `group`, `mode` | stream: the group's pending entries on each stream |
//! | `ringq_await_time_seconds` | histogram | `mode` | all: from a reply's arrival to the handler call (the shards publish it every 100 ms) |
//! | `ringq_process_duration_seconds` | histogram | `mode` | all: handler time per message, on the shards or the workers (a batch's time spread over its messages) |
//! | `ringq_operation_duration_seconds` | histogram | `mode`, `op` (`fetch`, `control`) | round trips of non-blocking fetches (pops, leases, reads) and of Control's commands (settles, acks, scripts), loop turn to loop turn |
//!
//! Creating a collector starts the queue depth sampling
//! ([`Running::sample_queue_depth`](crate::Running::sample_queue_depth)).

use std::sync::Arc;

use hdrhistogram::Histogram;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::backend::IoBackend;
use crate::stats::{ShardStats, Stats};

/// Upper bounds (seconds) of the histograms' buckets.
const BUCKETS: [f64; 14] = [
    1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 0.1, 1.0, 10.0,
];

/// What a collector reads: the engine's shard counters (shared with the shards).
pub(crate) struct Source {
    pub stats: Vec<Arc<ShardStats>>,
    pub workers: Vec<Arc<crate::stats::WorkerStats>>,
    pub names: Vec<String>,
    pub backend: IoBackend,
    pub topology: Option<Arc<crate::cluster::Topology>>,
    pub mode: &'static str,
    pub group: Option<String>,
}

/// A Prometheus collector of one running engine's metrics ([`crate::Running::metrics`]).
/// Register it with `Registry::register_collector`; every scrape reads the engine's
/// counters as they are then. It stays valid (reporting the final counts) after the
/// engine stops.
#[derive(Clone)]
pub struct Collector(Arc<Source>);

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("mode", &self.0.mode)
            .field("sources", &self.0.names.len())
            .finish()
    }
}

impl Collector {
    pub(crate) fn new(source: Source) -> Self {
        Self(Arc::new(source))
    }

    fn snapshot(&self) -> Stats {
        let s = &self.0;
        let mut stats = Stats::sum(&s.stats, &s.workers, &s.names, s.backend);
        stats.topology_refreshes = s.topology.as_ref().map_or(0, |t| t.refreshes());
        stats
    }
}

/// A counter family of one sample (the encoder adds the `_total` suffix to `name`).
fn counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    let mut m = e.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m.encode_family(&labels)?)
}

/// A histogram family of one sample from an HdrHistogram of nanoseconds, in the fixed
/// buckets of [`BUCKETS`].
fn histogram(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    h: &Histogram<u64>,
) -> Result<(), std::fmt::Error> {
    let (sum, count, buckets) = buckets_of(h);
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_family(&labels)?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

/// `h` (nanoseconds) as the encoder takes a histogram: the sum in seconds, the count, and
/// each bucket's own count (the encoder adds them up), `f64::MAX` being `+Inf`.
fn buckets_of(h: &Histogram<u64>) -> (f64, u64, Vec<(f64, u64)>) {
    let count = h.len();
    let mut below = 0;
    let mut buckets: Vec<(f64, u64)> = BUCKETS
        .iter()
        .map(|&b| {
            let upto = h.count_between(0, (b * 1e9) as u64).min(count);
            let own = upto.saturating_sub(below);
            below = below.max(upto);
            (b, own)
        })
        .collect();
    buckets.push((f64::MAX, count.saturating_sub(below)));
    (h.mean() * count as f64 / 1e9, count, buckets)
}

fn gauge(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    v: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    let mut m = e.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m.encode_family(&labels)?)
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.snapshot();
        self.counters(&s, &mut e)?;
        self.gauges(&s, &mut e)?;
        self.histograms(&s, &mut e)
    }
}

impl Collector {
    /// The counters: messages, outcomes, faults.
    fn counters(&self, s: &Stats, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mode = self.0.mode;
        let by_mode = [("mode", mode)];
        {
            let c = ConstCounter::new(0u64);
            let mut m = e.encode_descriptor(
                "messages_consumed",
                "Messages handed to the handler, per source",
                None,
                c.metric_type(),
            )?;
            for (name, n) in &s.per_source {
                let labels = [("source", name.as_str()), ("mode", mode)];
                ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
            }
        }
        let counters: [(&str, &str, u64); 17] = [
            ("messages_acked", "Outcomes: acknowledged", s.acked),
            (
                "messages_retried",
                "Outcomes: to be delivered again",
                s.retried,
            ),
            ("messages_dead_lettered", "Outcomes: dead-lettered", s.dead),
            (
                "messages_failed",
                "Outcomes other than an acknowledgement (retried or dead-lettered)",
                s.retried + s.dead,
            ),
            (
                "messages_claimed",
                "Messages taken back: a restart's, a lost reply's, a dead consumer's",
                s.recovered,
            ),
            (
                "messages_requeued",
                "Due retries moved back to their queue",
                s.requeued,
            ),
            (
                "stale_outcomes",
                "Outcomes refused: another consumer had taken the message over",
                s.stale_outcomes,
            ),
            (
                "foreign_leases",
                "Elements found in a leased list that this consumer did not lease",
                s.foreign_leases,
            ),
            (
                "possibly_lost",
                "Messages asked for by pops whose answers were lost (an upper bound)",
                s.possibly_lost,
            ),
            (
                "reconnects",
                "Connections made again after a loss",
                s.reconnects,
            ),
            (
                "stalls",
                "Connections replaced after an overdue reply",
                s.stalls,
            ),
            (
                "redirects",
                "Commands a cluster answered with MOVED, ASK, TRYAGAIN or CLUSTERDOWN",
                s.redirects,
            ),
            (
                "topology_refreshes",
                "Cluster topology refreshes",
                s.topology_refreshes,
            ),
            (
                "pubsub_gaps",
                "Times subscriptions were not in force",
                s.gaps,
            ),
            (
                "pubsub_dropped",
                "Messages dropped by the subscriber's overflow policy",
                s.dropped,
            ),
            (
                "io_syscalls",
                "System calls the I/O backend made (io_uring_enter; epoll_wait, read, send…)",
                s.io.syscalls,
            ),
            (
                "io_completions",
                "Completions the I/O loop handled (CQEs on io_uring)",
                s.io.completions,
            ),
        ];
        for (name, help, v) in counters {
            counter(e, name, help, &by_mode, v)?;
        }
        Ok(())
    }

    /// The gauges: connections, in flight, stream lag and pending.
    fn gauges(&self, s: &Stats, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mode = self.0.mode;
        let by_mode = [("mode", mode)];
        {
            let g = ConstGauge::new(0i64);
            let mut m = e.encode_descriptor(
                "connections",
                "Connections by role (fetch, control) and state (ready, down)",
                None,
                g.metric_type(),
            )?;
            let c = s.connections;
            for (role, state, n) in [
                ("fetch", "ready", c.fetch_ready),
                ("fetch", "down", c.fetch_down),
                ("control", "ready", c.control_ready),
                ("control", "down", c.control_down),
            ] {
                let labels = [("mode", mode), ("role", role), ("state", state)];
                ConstGauge::new(n as i64).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let c = ConstCounter::new(0u64);
            let mut m = e.encode_descriptor(
                "connection_errors",
                "Connection failures by the kind of their error",
                None,
                c.metric_type(),
            )?;
            for (kind, n) in &s.connection_errors {
                let labels = [("mode", mode), ("kind", *kind)];
                ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
            }
        }
        gauge(
            e,
            "inflight_messages",
            "Messages asked for by fetches not yet answered, or fetched and not yet handled",
            &by_mode,
            s.in_flight as i64,
        )?;
        gauge(
            e,
            "inflight_bytes",
            "Payload bytes in flight (reserved by fetches, or fetched and not yet handled)",
            &by_mode,
            s.in_flight_bytes as i64,
        )?;
        if let Some(group) = &self.0.group {
            for (name, help, pick) in [
                (
                    "stream_lag",
                    "The consumer group's lag on the stream (entries not yet delivered to it)",
                    0,
                ),
                (
                    "stream_pending",
                    "The consumer group's pending entries on the stream (delivered, not acked)",
                    1,
                ),
            ] {
                let g = ConstGauge::new(0i64);
                let mut m = e.encode_descriptor(name, help, None, g.metric_type())?;
                for (stream, lag, pending) in &s.per_source_lag {
                    let v = if pick == 0 { *lag } else { *pending };
                    let labels = [
                        ("stream", stream.as_str()),
                        ("group", group.as_str()),
                        ("mode", mode),
                    ];
                    ConstGauge::new(v as i64).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        if s.per_source_depth.iter().any(|(_, d)| d.is_some()) {
            let g = ConstGauge::new(0i64);
            let mut m = e.encode_descriptor(
                "queue_depth",
                "Messages waiting in the queue (LLEN over its priority levels), as last sampled",
                None,
                g.metric_type(),
            )?;
            for (source, depth) in &s.per_source_depth {
                if let Some(d) = depth {
                    let labels = [("source", source.as_str()), ("mode", mode)];
                    ConstGauge::new(*d as i64).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }

    /// The histograms: await time, handler time, round trips.
    fn histograms(&self, s: &Stats, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mode = self.0.mode;
        let by_mode = [("mode", mode)];
        histogram(
            e,
            "await_time_seconds",
            "From a reply's arrival to the handler call",
            &by_mode,
            &s.latency_ns,
        )?;
        histogram(
            e,
            "process_duration_seconds",
            "Handler time per message",
            &by_mode,
            &s.process_ns,
        )?;
        {
            let mut m = e.encode_descriptor(
                "operation_duration_seconds",
                "Round trips: non-blocking fetches (pops, leases, reads) and Control's commands \
                 (settles, acks, scripts)",
                None,
                MetricType::Histogram,
            )?;
            for (op, h) in [("fetch", &s.fetch_rtt_ns), ("control", &s.control_rtt_ns)] {
                let (sum, count, buckets) = buckets_of(h);
                m.encode_family(&[("mode", mode), ("op", op)])?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        Ok(())
    }
}
