//! Queue depth sampling's settings, and which shard samples which source (the sampling
//! itself is the shard's: `shard::depth`).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{EngineBuilder, ShardLanes};
use crate::pipeline::Start;
use crate::shard::DepthSpec;

/// How often depths are sampled unless set.
pub(super) const DEFAULT_EVERY: Duration = Duration::from_secs(5);
/// The most sources sampled unless set.
pub(super) const DEFAULT_LIMIT: usize = 100;

/// Each shard's part of the sampling, and the switch that turns it on.
pub(crate) struct DepthPlan {
    pub on: Arc<AtomicBool>,
    pub every: Duration,
    /// Per shard: (source index, its keys) it samples.
    pub shards: Vec<Vec<(u32, Vec<Bytes>)>>,
}

impl DepthPlan {
    /// A plan that samples nothing, for `nshards` shards.
    #[cfg(test)]
    pub(crate) fn none(nshards: usize) -> Self {
        Self {
            on: Arc::new(AtomicBool::new(false)),
            every: DEFAULT_EVERY,
            shards: vec![Vec::new(); nshards],
        }
    }

    /// Shard `i`'s sampling, if it samples anything.
    pub(crate) fn spec(&mut self, i: usize) -> Option<DepthSpec> {
        let sources = std::mem::take(self.shards.get_mut(i)?);
        (!sources.is_empty()).then(|| DepthSpec {
            every: self.every,
            on: self.on.clone(),
            sources,
        })
    }
}

impl EngineBuilder {
    /// Queue depth sampling for the `ringq_queue_depth` gauge and
    /// [`Stats::per_source_depth`](crate::Stats::per_source_depth): every `every`
    /// (default 5 s; zero turns it off) each queue's waiting messages are read with `LLEN`
    /// (every priority level's key, summed) on the Control connection, as long as the
    /// consumer has at most `max_sources` queues (default 100; above it nothing is
    /// sampled, so thousands of queues cost neither thousands of commands per period
    /// nor thousands of series). Pop and reliable mode; stream mode exports the group's
    /// lag instead.
    ///
    /// Sampling starts only when metrics are asked for
    /// (`Running::metrics` (feature `prometheus`) or
    /// [`Running::sample_queue_depth`](crate::Running::sample_queue_depth)): an engine
    /// nobody watches sends nothing more, and pop mode opens its Control connection only
    /// then.
    pub fn queue_depth(mut self, every: Duration, max_sources: usize) -> Self {
        self.depth_every = every;
        self.depth_limit = max_sources;
        self
    }

    /// Which shard samples which of `consumer`'s sources: the first whose lanes hold it.
    pub(super) fn depth_plan<K: Start>(&self, consumer: &K, lanes: &ShardLanes) -> DepthPlan {
        let nsources = consumer.source_names().len();
        let mut plan = DepthPlan {
            on: Arc::new(AtomicBool::new(false)),
            every: self.depth_every,
            shards: vec![Vec::new(); lanes.len()],
        };
        if self.depth_every.is_zero() || nsources > self.depth_limit {
            if nsources > self.depth_limit && !self.depth_every.is_zero() {
                tracing::info!(
                    "queue depth not sampled: {nsources} sources, above the limit of {} (EngineBuilder::queue_depth)",
                    self.depth_limit
                );
            }
            return plan;
        }
        let mut seen = vec![false; nsources];
        for (shard, shard_lanes) in lanes.iter().enumerate() {
            for &i in shard_lanes.iter().flatten() {
                let Some(s) = seen.get_mut(i as usize) else {
                    continue;
                };
                if std::mem::replace(s, true) {
                    continue;
                }
                let keys = consumer.depth_keys(i as usize);
                if !keys.is_empty() {
                    plan.shards[shard].push((i, keys));
                }
            }
        }
        plan
    }
}
