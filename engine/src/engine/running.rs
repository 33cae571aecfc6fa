//! A started engine: its stats, its stop handle, and joining its threads.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::backend::IoBackend;
use crate::error::{Error, ErrorKind};
use crate::ring::RingFeatures;
use crate::stats::{ShardStats, Stats};
use crate::wake::Signals;

/// A started engine.
pub struct Running {
    pub(super) shared: Arc<Signals>,
    pub(super) workers: Vec<JoinHandle<()>>,
    pub(super) worker_latency: Vec<Arc<crate::stats::WorkerStats>>,
    pub(super) threads: Vec<JoinHandle<Result<(), Error>>>,
    pub(super) stats: Vec<Arc<ShardStats>>,
    pub(super) source_names: Vec<String>,
    pub(super) mode: &'static str,
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(super) group: Option<String>,
    pub(super) features: Option<RingFeatures>,
    pub(super) backend: IoBackend,
    /// In a cluster: the topology (its refreshes are counted in the stats).
    pub(super) topology: Option<Arc<crate::cluster::Topology>>,
    /// Queue depth sampling's switch (see [`Running::sample_queue_depth`]).
    pub(super) depth_on: Arc<std::sync::atomic::AtomicBool>,
}

/// Stops an engine from any thread (signal handlers included: it only stores a flag and
/// writes to eventfds).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Signals>);

impl ShutdownHandle {
    /// Asks every shard to stop fetching, finish what is in flight and exit.
    pub fn shutdown(&self) {
        self.0.stop_all();
    }
}

impl Running {
    /// The counters so far, summed over shards.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::sum(
            &self.stats,
            &self.worker_latency,
            &self.source_names,
            self.backend,
        );
        s.topology_refreshes = self.topology.as_ref().map_or(0, |t| t.refreshes());
        s
    }

    /// The delivery mode's name: `pop`, `reliable`, `stream` or `listen`.
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// A Prometheus collector of this engine's metrics (feature `prometheus`), to
    /// register in the application's own registry (see [`crate::metrics`]). It reads the
    /// shards' counters at each scrape: nothing is added to the hot path.
    ///
    /// Creating it also starts queue depth sampling ([`Running::sample_queue_depth`]).
    #[cfg(feature = "prometheus")]
    pub fn metrics(&self) -> crate::metrics::Collector {
        self.sample_queue_depth();
        crate::metrics::Collector::new(crate::metrics::Source {
            stats: self.stats.clone(),
            workers: self.worker_latency.clone(),
            names: self.source_names.clone(),
            backend: self.backend,
            topology: self.topology.clone(),
            mode: self.mode,
            group: self.group.clone(),
        })
    }

    /// Starts sampling each queue's depth (pop and reliable mode), as set with
    /// [`EngineBuilder::queue_depth`](crate::EngineBuilder::queue_depth): the first
    /// sample lands in [`Stats::per_source_depth`] one period later. Creating a metrics
    /// collector does this too. Nothing happens when sampling is off or the consumer has
    /// more queues than the limit.
    pub fn sample_queue_depth(&self) {
        self.depth_on.store(true, Ordering::Relaxed);
    }

    /// The backend the shards run on (never `Auto`).
    pub fn backend(&self) -> IoBackend {
        self.backend
    }

    /// What the kernel offered the rings (flags, multishot recv); `None` on epoll.
    pub fn features(&self) -> Option<&RingFeatures> {
        self.features.as_ref()
    }

    /// A handle that stops the engine.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shared.clone())
    }

    /// Whether the engine has been asked to stop (by a handle or a fatal error).
    pub fn is_stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Stops the engine and waits for it: no new pops, every reply in flight is handled.
    ///
    /// # Errors
    /// The fatal error that stopped the engine earlier, if any.
    pub fn shutdown(self) -> Result<Stats, Error> {
        self.shared.stop_all();
        self.wait()
    }

    /// Waits until the engine stops (a [`ShutdownHandle`] or a fatal error).
    ///
    /// # Errors
    /// The fatal error that stopped it: authentication, a malformed reply, a server that
    /// could not be reached at start, a ring failure.
    pub fn wait(self) -> Result<Stats, Error> {
        let stats = self.stats.clone();
        let names = self.source_names.clone();
        let latency = self.worker_latency.clone();
        let backend = self.backend;
        let topology = self.topology.clone();
        self.join()?;
        let mut s = Stats::sum(&stats, &latency, &names, backend);
        s.topology_refreshes = topology.map_or(0, |t| t.refreshes());
        Ok(s)
    }

    pub(super) fn join(mut self) -> Result<(), Error> {
        let mut thread_err = None;
        for t in std::mem::take(&mut self.threads) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    thread_err.get_or_insert(e);
                }
                Err(_) => {
                    thread_err.get_or_insert(Error::new(
                        ErrorKind::Io,
                        "a shard thread panicked (in a handler?)",
                    ));
                }
            }
        }
        // Shards are gone, so their rings are abandoned: workers finish and exit.
        for t in std::mem::take(&mut self.workers) {
            if t.join().is_err() {
                thread_err
                    .get_or_insert(Error::new(ErrorKind::Handler, "a worker thread panicked"));
            }
        }
        let fatal = self.shared.fatal.lock().ok().and_then(|mut f| f.take());
        match fatal.or(thread_err) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A dropped handle must not leave threads consuming in the background.
        if !self.threads.is_empty() {
            self.shared.stop_all();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
            for t in self.workers.drain(..) {
                let _ = t.join();
            }
        }
    }
}
