//! Queue depth: each source's waiting messages, sampled on the shard's Control connection
//! (`LLEN` of each of the source's keys, summed) every [`EngineBuilder::queue_depth`]
//! period, for the `ringq_queue_depth` gauge and [`Stats::per_source_depth`].
//!
//! Sampling starts when the application asks for metrics (`Running::metrics`, feature `prometheus`, or
//! [`Running::sample_queue_depth`]): an engine nobody watches sends nothing more, and pop
//! mode opens no Control connection it does not otherwise need. Each source is sampled
//! by one shard only (the first whose lanes hold it). Above the builder's source limit no
//! source is sampled, so a consumer of thousands of queues neither sends thousands of
//! commands per period nor exports thousands of series by surprise.
//!
//! A sample is a round: one command per key, tagged with the round's number; a source's
//! gauge is stored when all its keys answered in that round. A key answered with an error
//! (a key of another type, an ACL without `LLEN`) leaves the source unsampled, logged once.
//! In a cluster, each source is sampled on a Control connection on its owner's node:
//! reliable and stream mode have one per slot group, so every source is sampled; pop
//! mode's one Control is on its first lane's node, and its sources owned by other nodes
//! are skipped there.
//!
//! [`EngineBuilder::queue_depth`]: crate::EngineBuilder::queue_depth
//! [`Stats::per_source_depth`]: crate::Stats::per_source_depth
//! [`Running::sample_queue_depth`]: crate::Running::sample_queue_depth

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringq_resp::{CommandWriter, Frame};

use super::Shard;
use crate::backend::Backend;
use crate::conn::{Phase, Tag};
use crate::pipeline::Pipeline;
use crate::timer::TimerEvent;

/// What launching gives a shard that samples depths.
pub(crate) struct DepthSpec {
    pub every: Duration,
    /// Set once the application asks for metrics.
    pub on: Arc<AtomicBool>,
    /// The sources this shard samples: (source index, its keys).
    pub sources: Vec<(u32, Vec<Bytes>)>,
}

/// The stored value of a source never sampled (or whose last sample failed).
pub(crate) const UNSAMPLED: u64 = u64::MAX;

pub(super) struct Sampler {
    spec: DepthSpec,
    round: u32,
    /// Per sampled source (same order as `spec.sources`): the sum so far, the keys
    /// answered, and whether one failed, in the current round.
    sums: Vec<(u64, u32, bool)>,
    /// A failure was logged already (once per shard).
    warned: bool,
}

impl Sampler {
    pub(super) fn new(spec: DepthSpec) -> Self {
        let sums = vec![(0, 0, false); spec.sources.len()];
        Self {
            spec,
            round: 0,
            sums,
            warned: false,
        }
    }

    pub(super) fn every(&self) -> Duration {
        self.spec.every
    }
}

impl<P: Pipeline, B: Backend> Shard<P, B> {
    /// The sampling timer: starts a round when sampling is on and Control serves (asking
    /// for Control when the pipeline opens it on demand), and sets the next timer.
    pub(super) fn on_depth_timer(&mut self, now: Instant) {
        let Some(s) = self.depth.as_mut() else { return };
        let every = s.every();
        self.io.timers.add(now + every, TimerEvent::SampleDepth);
        if self.io.stopping || !s.spec.on.load(Ordering::Relaxed) {
            return;
        }
        let Some(first) = self.io.control_id() else {
            self.io.want_control();
            return;
        };
        // The ready Controls and their nodes.
        let ready: Vec<(usize, Option<SocketAddr>)> = self
            .io
            .controls
            .iter()
            .filter_map(|c| c.id)
            .filter(|&u| self.io.conns[u].phase() == Phase::Ready)
            .map(|u| (u, self.io.conns[u].target_addr()))
            .collect();
        // Each source on a Control on its owner's node (in a cluster), else the first.
        let via: Vec<Option<usize>> = match self.conn_cfg.cluster.as_ref() {
            None => {
                let first = ready.iter().any(|(u, _)| *u == first).then_some(first);
                vec![first; s.spec.sources.len()]
            }
            Some(t) => {
                let view = t.view();
                s.spec
                    .sources
                    .iter()
                    .map(|(_, keys)| {
                        let slot =
                            crate::cluster::slot::key_slot(keys.first().map_or(&[][..], |k| k));
                        let owner = view.owner(slot).and_then(|n| {
                            n.host
                                .parse::<IpAddr>()
                                .ok()
                                .map(|ip| SocketAddr::new(ip, n.port))
                        })?;
                        ready
                            .iter()
                            .find(|(_, at)| *at == Some(owner))
                            .map(|(u, _)| *u)
                    })
                    .collect()
            }
        };
        s.round = s.round.wrapping_add(1);
        let round = s.round;
        let allow = self.io.reply_timeout;
        for (j, (_, keys)) in s.spec.sources.iter().enumerate() {
            s.sums[j] = (0, 0, false);
            let Some(u) = via[j] else {
                continue;
            };
            for key in keys {
                let tag = Tag::Depth {
                    source: j as u32,
                    round,
                };
                self.io.conns[u].command(tag, now, allow, |buf| {
                    CommandWriter::new(buf, 2).arg("LLEN").arg(key).finish();
                });
            }
        }
    }

    /// The answer to one `LLEN` of sampled source `j` in `round`.
    pub(super) fn on_depth_reply(&mut self, id: usize, j: u32, round: u32, frame: &Bytes) {
        let Some(s) = self.depth.as_mut() else { return };
        let j = j as usize;
        if round != s.round || j >= s.sums.len() {
            return;
        }
        let Some((source, keys)) = s.spec.sources.get(j) else {
            return;
        };
        let (source, nkeys) = (*source as usize, keys.len() as u32);
        let entry = &mut s.sums[j];
        match ringq_resp::Decoder::new().build(frame) {
            Ok(Frame::Integer(n)) => entry.0 += n.max(0) as u64,
            other => {
                entry.2 = true;
                if !s.warned {
                    s.warned = true;
                    tracing::warn!(
                        conn = %self.io.conns[id].name(),
                        "queue depth not sampled: LLEN answered {:?} (a key of another type, or an ACL without LLEN?)",
                        other
                    );
                }
            }
        }
        entry.1 += 1;
        if entry.1 == nkeys {
            let value = if entry.2 { UNSAMPLED } else { entry.0 };
            if let Some(g) = self.io.stats.source_depth.get(source) {
                g.store(value, Ordering::Relaxed);
            }
        }
    }
}
