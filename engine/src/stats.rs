//! Counters and the pop-to-handler latency histogram.
//!
//! Each shard counts into its own [`ShardStats`]: relaxed atomic adds once per reply (not
//! per message), and a shard-local histogram merged into the shared one on a timer, so
//! the hot path takes no lock. [`Stats`] is the sum over shards at one moment.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Highest latency the histogram tracks: 60 s in nanoseconds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

pub(crate) fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail; auto-resize is the fallback all the same.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).unwrap_or_else(|_| {
        let mut h = Histogram::new_with_max(2, 1).expect("constant histogram bounds");
        h.auto(true);
        h
    })
}

/// One shard's counters, shared with `Running::stats`.
pub(crate) struct ShardStats {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub pops: AtomicU64,
    pub empty_pops: AtomicU64,
    pub reconnects: AtomicU64,
    pub connections_ready: AtomicU64,
    pub acked: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    pub max_in_flight: AtomicU64,
    pub max_in_flight_bytes: AtomicU64,
    pub stalls: AtomicU64,
    pub redirects: AtomicU64,
    pub foreign_leases: AtomicU64,
    pub late_messages: AtomicU64,
    pub unanswered_pops: AtomicU64,
    pub possibly_lost: AtomicU64,
    pub enobufs: AtomicU64,
    pub push_frames: AtomicU64,
    pub gaps: AtomicU64,
    pub dropped: AtomicU64,
    pub stale_outcomes: AtomicU64,
    pub recovered: AtomicU64,
    pub requeued: AtomicU64,
    pub filtered: AtomicU64,
    pub deleted: AtomicU64,
    /// Gauges (stored, not added): the stream group's lag and pending count on this shard.
    pub stream_lag: AtomicU64,
    pub stream_pending: AtomicU64,
    /// Gauges stored every 100 ms: messages and payload bytes in flight now.
    pub in_flight: AtomicU64,
    pub in_flight_bytes: AtomicU64,
    /// Stored every 100 ms and at the end: the backend's system calls and completions.
    pub syscalls: AtomicU64,
    pub completions: AtomicU64,
    /// Gauges stored every 100 ms: connections by [`ConnectionCounts`] slot (fetch ready,
    /// fetch not ready, control ready, control not ready).
    pub conns: [AtomicU64; 4],
    /// Connection failures by `ErrorKind::index`.
    pub conn_errors: [AtomicU64; 10],
    /// Handler time per message (inline dispatch), merged every 100 ms.
    pub process: Mutex<Histogram<u64>>,
    /// Round trips of non-blocking fetches, and of Control's commands.
    pub rtt_fetch: Mutex<Histogram<u64>>,
    pub rtt_control: Mutex<Histogram<u64>>,
    /// Messages per source (pop: queue), in configuration order.
    pub per_source: Vec<AtomicU64>,
    /// Gauges per source (stream mode): the group's lag and pending entries on each
    /// stream, as last read.
    pub source_lag: Vec<AtomicU64>,
    pub source_pending: Vec<AtomicU64>,
    /// Gauges per source: waiting messages as last sampled (`shard::UNSAMPLED`: none).
    pub source_depth: Vec<AtomicU64>,
    pub latency: Mutex<Histogram<u64>>,
}

impl ShardStats {
    pub(crate) fn new(sources: usize) -> Self {
        Self {
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            pops: AtomicU64::new(0),
            empty_pops: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            connections_ready: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            max_in_flight_bytes: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            redirects: AtomicU64::new(0),
            foreign_leases: AtomicU64::new(0),
            late_messages: AtomicU64::new(0),
            unanswered_pops: AtomicU64::new(0),
            possibly_lost: AtomicU64::new(0),
            enobufs: AtomicU64::new(0),
            push_frames: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            stale_outcomes: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            requeued: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            stream_lag: AtomicU64::new(0),
            stream_pending: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            in_flight_bytes: AtomicU64::new(0),
            syscalls: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            conns: Default::default(),
            conn_errors: Default::default(),
            per_source: (0..sources).map(|_| AtomicU64::new(0)).collect(),
            source_lag: (0..sources).map(|_| AtomicU64::new(0)).collect(),
            source_pending: (0..sources).map(|_| AtomicU64::new(0)).collect(),
            source_depth: (0..sources)
                .map(|_| AtomicU64::new(crate::shard::UNSAMPLED))
                .collect(),
            latency: Mutex::new(new_histogram()),
            process: Mutex::new(new_histogram()),
            rtt_fetch: Mutex::new(new_histogram()),
            rtt_control: Mutex::new(new_histogram()),
        }
    }

    pub(crate) fn add(&self, c: &AtomicU64, n: u64) {
        if n != 0 {
            c.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn merge_latency(&self, local: &mut Histogram<u64>) {
        Self::merge(&self.latency, local);
    }

    pub(crate) fn merge_process(&self, local: &mut Histogram<u64>) {
        Self::merge(&self.process, local);
    }

    pub(crate) fn merge_rtt(&self, fetch: &mut Histogram<u64>, control: &mut Histogram<u64>) {
        Self::merge(&self.rtt_fetch, fetch);
        Self::merge(&self.rtt_control, control);
    }

    fn merge(into: &Mutex<Histogram<u64>>, local: &mut Histogram<u64>) {
        if local.is_empty() {
            return;
        }
        if let Ok(mut h) = into.lock() {
            let _ = h.add(&*local);
        }
        local.reset();
    }
}

/// Connections by role and state (see [`Stats::connections`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionCounts {
    /// Fetch connections whose handshake is done and that serve.
    pub fetch_ready: u64,
    /// Fetch connections connecting, reconnecting, backing off or draining.
    pub fetch_down: u64,
    /// Control connections that serve.
    pub control_ready: u64,
    /// Control connections not serving now.
    pub control_down: u64,
}

/// A snapshot of the engine's counters, summed over shards.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Stats {
    /// Messages handed to handlers.
    pub messages: u64,
    /// Payload bytes handed to handlers.
    pub bytes: u64,
    /// Pop commands answered (including empty answers).
    pub pops: u64,
    /// Pop commands answered with nothing (a blocking pop timed out, or queues were empty).
    pub empty_pops: u64,
    /// Connections re-established after a loss.
    pub reconnects: u64,
    /// Connections currently past their handshake.
    pub connections_ready: u64,
    /// Outcomes: acknowledged.
    pub acked: u64,
    /// Outcomes: retry requested (no server-side effect in `pop` mode).
    pub retried: u64,
    /// Outcomes: dead-lettered (no server-side effect in `pop` mode).
    pub dead: u64,
    /// Highest number of messages in flight (requested by pops or not yet handled) seen on
    /// any one shard; never above that shard's share of the prefetch limit, except by the
    /// late replies of a stalled connection (see [`Stats::stalls`]).
    pub max_in_flight: u64,
    /// Highest number of payload bytes in flight (reserved by pops that had not answered,
    /// or received and not yet handled) seen on any one shard. See
    /// [`EngineBuilder::prefetch_bytes`](crate::EngineBuilder::prefetch_bytes) for the bound.
    pub max_in_flight_bytes: u64,
    /// Connections whose reply was overdue while pops were unanswered: each was replaced
    /// by a fresh connection and kept open to deliver its late replies.
    pub stalls: u64,
    /// In a cluster: commands the cluster answered with MOVED, ASK, TRYAGAIN or
    /// CLUSTERDOWN (each ran nowhere; the engine followed the slot or tried again).
    pub redirects: u64,
    /// Reliable mode: elements found in this consumer's leased lists that it did not
    /// lease (a lease that reached the server from a connection it had given up, or from
    /// another process running with the same consumer id). None is settled by mistake:
    /// each is given back to its queue by the recovery that follows.
    pub foreign_leases: u64,
    /// Messages delivered by the late replies of stalled connections.
    pub late_messages: u64,
    /// Pops whose connection was lost (or closed at a drain limit or a stop) before they
    /// answered. In `pop` mode, whatever the server popped for them is lost.
    pub unanswered_pops: u64,
    /// Messages those unanswered pops asked for: an upper bound on what `pop` mode lost.
    pub possibly_lost: u64,
    /// Multishot receives that ran out of provided buffers and were re-armed.
    pub enobufs: u64,
    /// Push frames no pipeline turned into messages (a pop-mode connection should see
    /// none; a server that sends them anyway is counted here).
    pub push_frames: u64,
    /// Listen mode: gaps — times subscriptions were not in force (a lost connection, an
    /// unsubscribe nobody asked for), each also reported as `Event::Gap`.
    pub gaps: u64,
    /// Listen mode with `Overflow::DropOldest`: messages dropped from the full staging area.
    pub dropped: u64,
    /// Reliable mode: outcomes (acks, retries, deads) that found their message gone from
    /// this consumer's processing list — its lease had run out and recovery gave it to
    /// another consumer — so they did nothing (fencing); each reported as
    /// `Event::StaleOutcomes`.
    pub stale_outcomes: u64,
    /// Reliable mode: messages this consumer moved back to their queues — its own
    /// unfinished ones at start and at stop, leases whose replies were lost, and those of
    /// consumers whose heartbeat expired.
    pub recovered: u64,
    /// Reliable mode: retried messages moved from the retry set back to their queue when
    /// due.
    pub requeued: u64,
    /// Stream mode: entries whose tag did not pass their stream's filter, acknowledged
    /// without reaching the handler.
    pub filtered: u64,
    /// Stream mode: pending entries the server had deleted (trimmed with MAXLEN, XDEL),
    /// found when re-reading or claiming, and acknowledged as gone.
    pub deleted: u64,
    /// Stream mode: the consumer group's lag (`XINFO GROUPS`, entries not yet delivered
    /// to the group), summed over streams, as last read (every second).
    pub lag: u64,
    /// Stream mode: the group's pending entries (delivered, not acknowledged, by any
    /// consumer), summed over streams, as last read.
    pub pending: u64,
    /// In a cluster: topology refreshes run so far (the start's included). They are
    /// coalesced and rate-limited: a node that goes away costs one, not one per
    /// connection.
    pub topology_refreshes: u64,
    /// Messages in flight now (asked for by fetches not yet answered, or fetched and not
    /// yet handled), summed over shards as last published (every 100 ms).
    pub in_flight: u64,
    /// Payload bytes in flight now, as [`Stats::in_flight`].
    pub in_flight_bytes: u64,
    /// Connections by role and state, as last published (every 100 ms).
    pub connections: ConnectionCounts,
    /// The shards' system calls and completions (see
    /// [`IoCounters`](crate::IoCounters)), as last published (every 100 ms, and when a
    /// shard ends).
    pub io: crate::backend::IoCounters,
    /// Connection failures by the kind of their error (`ErrorKind::label`, count), every
    /// kind listed.
    pub connection_errors: Vec<(&'static str, u64)>,
    /// Stream mode: each stream's (name, group lag, group pending), as last read (every
    /// second), in configuration order; zeros in the other modes.
    pub per_source_lag: Vec<(String, u64, u64)>,
    /// Pop and reliable mode: each queue's (name, waiting messages) as last sampled
    /// (`LLEN` of its keys, summed: every priority level), in configuration order; `None`
    /// where it has not been sampled. Sampling starts when metrics are asked for
    /// (`Running::metrics` (feature `prometheus`),
    /// [`Running::sample_queue_depth`](crate::Running::sample_queue_depth)); see
    /// [`EngineBuilder::queue_depth`](crate::EngineBuilder::queue_depth).
    pub per_source_depth: Vec<(String, Option<u64>)>,
    /// Round trips, in nanoseconds, of non-blocking fetches (pops, leases, reads), from
    /// the loop turn that sent each to the one that read its reply.
    pub fetch_rtt_ns: Histogram<u64>,
    /// Round trips, in nanoseconds, of the Control connection's commands (settles, acks,
    /// scripts), as [`Stats::fetch_rtt_ns`].
    pub control_rtt_ns: Histogram<u64>,
    /// Handler time per message, in nanoseconds, on the shards (inline dispatch) or the
    /// workers (a batch's time is spread over its messages).
    pub process_ns: Histogram<u64>,
    /// Messages per source — a queue in `pop` mode (its name, as configured) — in
    /// configuration order.
    pub per_source: Vec<(String, u64)>,
    /// Pop-to-handler latency in nanoseconds: from the reply's arrival to the handler call.
    pub latency_ns: Histogram<u64>,
    /// The I/O backend the engine ran on: io_uring or epoll.
    pub backend: crate::backend::IoBackend,
}

/// What one dispatch worker measures: pop-to-handler latency and handler time per
/// message, merged from the worker's own histograms every 100 ms.
pub(crate) struct WorkerStats {
    pub latency: Mutex<Histogram<u64>>,
    pub process: Mutex<Histogram<u64>>,
}

impl WorkerStats {
    pub(crate) fn new() -> Self {
        Self {
            latency: Mutex::new(new_histogram()),
            process: Mutex::new(new_histogram()),
        }
    }
}

/// Source `i`'s counter `pick`, summed over the shards.
fn per_source(
    shards: &[std::sync::Arc<ShardStats>],
    i: usize,
    pick: fn(&ShardStats) -> &Vec<AtomicU64>,
) -> u64 {
    shards
        .iter()
        .map(|s| pick(s).get(i).map_or(0, |a| a.load(Relaxed)))
        .sum()
}

/// One histogram summed over the shards' `pick`.
fn merged(
    shards: &[std::sync::Arc<ShardStats>],
    pick: fn(&ShardStats) -> &Mutex<Histogram<u64>>,
) -> Histogram<u64> {
    let mut h = new_histogram();
    for s in shards {
        if let Ok(p) = pick(s).lock() {
            let _ = h.add(&*p);
        }
    }
    h
}

impl Stats {
    pub(crate) fn sum(
        shards: &[std::sync::Arc<ShardStats>],
        workers: &[std::sync::Arc<WorkerStats>],
        source_names: &[String],
        backend: crate::backend::IoBackend,
    ) -> Self {
        let total = |f: fn(&ShardStats) -> &AtomicU64| {
            shards.iter().map(|s| f(s).load(Relaxed)).sum::<u64>()
        };
        let mut latency = new_histogram();
        let hists = shards
            .iter()
            .map(|s| &s.latency)
            .chain(workers.iter().map(|w| &w.latency));
        for h in hists {
            if let Ok(h) = h.lock() {
                let _ = latency.add(&*h);
            }
        }
        Self {
            messages: total(|s| &s.messages),
            bytes: total(|s| &s.bytes),
            pops: total(|s| &s.pops),
            empty_pops: total(|s| &s.empty_pops),
            reconnects: total(|s| &s.reconnects),
            connections_ready: total(|s| &s.connections_ready),
            acked: total(|s| &s.acked),
            retried: total(|s| &s.retried),
            dead: total(|s| &s.dead),
            max_in_flight: shards
                .iter()
                .map(|s| s.max_in_flight.load(Relaxed))
                .max()
                .unwrap_or(0),
            max_in_flight_bytes: shards
                .iter()
                .map(|s| s.max_in_flight_bytes.load(Relaxed))
                .max()
                .unwrap_or(0),
            stalls: total(|s| &s.stalls),
            redirects: total(|s| &s.redirects),
            foreign_leases: total(|s| &s.foreign_leases),
            late_messages: total(|s| &s.late_messages),
            unanswered_pops: total(|s| &s.unanswered_pops),
            possibly_lost: total(|s| &s.possibly_lost),
            enobufs: total(|s| &s.enobufs),
            push_frames: total(|s| &s.push_frames),
            gaps: total(|s| &s.gaps),
            dropped: total(|s| &s.dropped),
            stale_outcomes: total(|s| &s.stale_outcomes),
            recovered: total(|s| &s.recovered),
            requeued: total(|s| &s.requeued),
            filtered: total(|s| &s.filtered),
            deleted: total(|s| &s.deleted),
            lag: total(|s| &s.stream_lag),
            pending: total(|s| &s.stream_pending),
            topology_refreshes: 0,
            in_flight: total(|s| &s.in_flight),
            in_flight_bytes: total(|s| &s.in_flight_bytes),
            connections: ConnectionCounts {
                fetch_ready: total(|s| &s.conns[0]),
                fetch_down: total(|s| &s.conns[1]),
                control_ready: total(|s| &s.conns[2]),
                control_down: total(|s| &s.conns[3]),
            },
            io: crate::backend::IoCounters {
                syscalls: total(|s| &s.syscalls),
                completions: total(|s| &s.completions),
            },
            connection_errors: crate::ErrorKind::ALL
                .iter()
                .map(|k| {
                    let i = k.index();
                    (
                        k.label(),
                        shards.iter().map(|s| s.conn_errors[i].load(Relaxed)).sum(),
                    )
                })
                .collect(),
            per_source_lag: source_names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let lag = per_source(shards, i, |s| &s.source_lag);
                    (n.clone(), lag, per_source(shards, i, |s| &s.source_pending))
                })
                .collect(),
            per_source_depth: source_names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    // One shard samples each source; the others hold `UNSAMPLED`.
                    let depth = shards
                        .iter()
                        .filter_map(|s| s.source_depth.get(i).map(|a| a.load(Relaxed)))
                        .find(|&d| d != crate::shard::UNSAMPLED);
                    (n.clone(), depth)
                })
                .collect(),
            process_ns: {
                let mut h = merged(shards, |s| &s.process);
                for w in workers {
                    if let Ok(p) = w.process.lock() {
                        let _ = h.add(&*p);
                    }
                }
                h
            },
            fetch_rtt_ns: merged(shards, |s| &s.rtt_fetch),
            control_rtt_ns: merged(shards, |s| &s.rtt_control),
            per_source: source_names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), per_source(shards, i, |s| &s.per_source)))
                .collect(),
            latency_ns: latency,
            backend,
        }
    }
}
