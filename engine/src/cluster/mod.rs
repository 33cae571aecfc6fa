//! Redis Cluster and Valkey Cluster: which node owns each hash slot, kept current by one
//! topology thread per engine.
//!
//! Shards never do topology I/O. Each fetch connection of a cluster engine has a *route*
//! (the hash slot of its lane's queues, [`slot::key_slot`]); when it connects, the shard
//! reads the slot's owner from the current [`View`] and dials it. Whatever says the map may
//! be stale — a MOVED (which also patches that one slot at once), ASK, TRYAGAIN,
//! CLUSTERDOWN, UNBLOCKED after a role change, a lost connection, a slot with no owner —
//! posts a refresh trigger; the thread coalesces triggers into one refresh at a time, at
//! most one per [`MIN_GAP`], and refreshes every [`PERIOD`] anyway. A refresh asks up to
//! three nodes (`CLUSTER SHARDS`, or `CLUSTER SLOTS` where SHARDS is unknown) and keeps the
//! majority view. A new view bumps the epoch and wakes every shard, which then moves the
//! connections whose slot changed owner (`Shard::follow_topology`).

pub(crate) mod slot;
mod view;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use crate::blocking::Blocking;
use crate::error::{Error, ErrorKind};
use crate::url::HostPort;
use crate::wake::Signals;

pub(crate) use view::{Node, View};

/// The least time between two refreshes: a node that goes away makes every connection
/// to it fail at once, and that must cost one refresh, not one each.
pub(crate) const MIN_GAP: Duration = Duration::from_millis(250);

/// A refresh this often even when nothing asked for one.
pub(crate) const PERIOD: Duration = Duration::from_secs(30);

/// A refresh something asked for that found the view unchanged is followed by up to this
/// many more, `MIN_GAP` × 1, 2, 4, 8 later: what asked (an unsolicited `sunsubscribe`, an
/// UNBLOCKED, a lost connection) saw a change under way that the nodes asked may not
/// know yet (a failover is gossiped in milliseconds, but a refresh can come first).
const FOLLOW_UPS: u32 = 4;

/// The route of a lane whose commands name no key (SUBSCRIBE, PSUBSCRIBE): any primary
/// serves it.
pub(crate) const ANY_NODE: u16 = u16::MAX;

/// Nodes asked per refresh (their majority is kept).
const ASK: usize = 3;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The cluster's current view, shared by the topology thread and the shards.
pub(crate) struct Topology {
    seeds: Vec<(String, u16)>,
    auth: Option<(Option<String>, String)>,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
    view: Mutex<Arc<View>>,
    /// Bumped for every view that differs from the one before.
    epoch: AtomicU64,
    /// Refreshes run so far (stats and tests: refreshes stay rate-limited).
    refreshes: AtomicU64,
    triggers: Mutex<Option<mpsc::Sender<()>>>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("seeds", &self.seeds)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Topology {
    /// Reads the topology from `seeds` (each tried in turn; the first that answers is
    /// enough to start). Does not start the thread ([`Topology::follow`]).
    ///
    /// # Errors
    /// [`ErrorKind::ConnectionLost`] naming what each seed did when none answered;
    /// [`ErrorKind::Auth`] when the password was refused; [`ErrorKind::Config`] when a
    /// seed is not a cluster node.
    pub(crate) fn discover(
        seeds: Vec<(String, u16)>,
        auth: Option<(Option<String>, String)>,
        tls: Option<Arc<ClientConfig>>,
        timeout: Duration,
    ) -> Result<Arc<Self>, Error> {
        let t = Self {
            seeds,
            auth,
            tls,
            timeout,
            view: Mutex::new(Arc::new(View::default())),
            epoch: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            triggers: Mutex::new(None),
        };
        t.refresh()?;
        Ok(Arc::new(t))
    }

    /// The current view.
    pub(crate) fn view(&self) -> Arc<View> {
        lock(&self.view).clone()
    }

    /// The number of views seen so far: a shard compares it with the one it followed.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Refreshes run so far.
    pub(crate) fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// Asks the topology thread for a refresh (coalesced and rate-limited there).
    pub(crate) fn trigger(&self) {
        if let Some(tx) = lock(&self.triggers).as_ref() {
            let _ = tx.send(());
        }
    }

    /// A MOVED named `node` as `slot`'s owner: believed at once (the blocked pop that
    /// got it must go there now), and a refresh confirms the rest.
    pub(crate) fn moved(&self, slot: u16, host: &str, port: u16) {
        {
            let mut v = lock(&self.view);
            if v.owner(slot)
                .is_some_and(|n| n.host == host && n.port == port)
            {
                return;
            }
            let mut next = (**v).clone();
            let id = v
                .primaries()
                .iter()
                .find(|n| n.host == host && n.port == port)
                .map_or_else(|| HostPort(host, port).to_string(), |n| n.id.clone());
            next.assign(
                slot,
                Node {
                    id,
                    host: host.to_owned(),
                    port,
                },
            );
            *v = Arc::new(next);
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.trigger();
    }

    /// Connects to one node for a topology question.
    pub(crate) fn connect(&self, host: &str, port: u16) -> Result<Blocking, Error> {
        let auth = self.auth.as_ref().map(|(u, p)| (u.as_deref(), p.as_str()));
        Blocking::connect(
            host,
            port,
            self.timeout,
            self.tls.as_ref(),
            auth,
            "the password",
        )
    }

    /// One refresh: up to [`ASK`] nodes asked (the known primaries first, then the
    /// seeds), their majority stored. Fails only when no node answered.
    pub(crate) fn refresh(&self) -> Result<(), Error> {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let mut candidates: Vec<(String, u16)> = self
            .view()
            .primaries()
            .iter()
            .map(|n| (n.host.clone(), n.port))
            .collect();
        // Start at a different primary each time, so one slow node is not always first.
        if !candidates.is_empty() {
            let r = self.refreshes() as usize % candidates.len();
            candidates.rotate_left(r);
        }
        for s in &self.seeds {
            if !candidates.contains(s) {
                candidates.push(s.clone());
            }
        }
        let mut views = Vec::new();
        let mut why = Vec::new();
        for (host, port) in candidates {
            if views.len() == ASK {
                break;
            }
            match self.ask(&host, port) {
                Ok(v) => views.push(v),
                Err(e) if e.kind() == ErrorKind::Auth || e.kind() == ErrorKind::Config => {
                    return Err(e)
                }
                Err(e) => why.push(e.to_string()),
            }
        }
        let Some(best) = View::majority(views) else {
            return Err(Error::new(
                ErrorKind::ConnectionLost,
                format!(
                    "no cluster node answered CLUSTER SHARDS: {}",
                    why.join("; ")
                ),
            ));
        };
        let mut v = lock(&self.view);
        if **v != best {
            tracing::debug!(
                "cluster topology: {} primaries, {} of 16384 slots served",
                best.primaries().len(),
                best.covered()
            );
            *v = Arc::new(best);
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// One node's view.
    fn ask(&self, host: &str, port: u16) -> Result<View, Error> {
        let mut c = self.connect(host, port)?;
        let peer = c.peer().to_owned();
        let bad = |why: String| Error::new(ErrorKind::Protocol, format!("{peer}: {why}"));
        let f = c.command(&[b"CLUSTER", b"SHARDS"])?;
        match f.to_server_error() {
            None => View::from_shards(&f, host, self.tls.is_some()).map_err(bad),
            Some(e)
                if e.kind() == &ringq_resp::ServerErrorKind::Other
                    && e.to_string().contains("cluster support disabled") =>
            {
                Err(not_a_cluster(&peer))
            }
            Some(e) if e.is_auth() => Err(Error::auth(
                format!(
                    "{peer} refused the password: {}",
                    crate::conn::classify::plain(&e)
                ),
                Some(e),
            )),
            Some(_) => {
                // Before 7.0: CLUSTER SHARDS is unknown.
                let f = c.command(&[b"CLUSTER", b"SLOTS"])?;
                match f.to_server_error() {
                    None => View::from_slots(&f, host).map_err(bad),
                    Some(e) => Err(Error::server(&format!("{peer}: CLUSTER SLOTS failed"), e)),
                }
            }
        }
    }

    /// Starts the topology thread: it refreshes on triggers and every [`PERIOD`], and
    /// wakes every shard when the view changed. It ends once the engine stops.
    pub(crate) fn follow(self: &Arc<Self>, shared: Arc<Signals>) -> Result<(), Error> {
        let (tx, rx) = mpsc::channel();
        *lock(&self.triggers) = Some(tx);
        let t = self.clone();
        std::thread::Builder::new()
            .name("ringq-topology".into())
            .spawn(move || t.run(&rx, &shared))
            .map(|_| ())
            .map_err(|e| Error::io("spawning the cluster topology thread", e))
    }

    fn run(&self, rx: &mpsc::Receiver<()>, shared: &Signals) {
        let poll = MIN_GAP;
        let mut last = Instant::now();
        let mut due = last + PERIOD;
        let mut wanted = false;
        // Follow-ups of an asked-for refresh that changed nothing: how many so far, and
        // when the next is due.
        let (mut follow_ups, mut follow_at) = (FOLLOW_UPS, None::<Instant>);
        while !shared.stop.load(Ordering::Acquire) {
            match rx.recv_timeout(poll) {
                Ok(()) => {
                    wanted = true;
                    follow_ups = 0;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            if follow_at.is_some_and(|t| now >= t) {
                follow_at = None;
                wanted = true;
            }
            if !(wanted && now >= last + MIN_GAP || now >= due) {
                continue;
            }
            // Every trigger that came in until now is answered by this refresh.
            while rx.try_recv().is_ok() {}
            let asked = std::mem::take(&mut wanted);
            let before = self.epoch();
            if let Err(e) = self.refresh() {
                tracing::warn!("cluster topology refresh: {e}");
                wanted = true;
            }
            last = Instant::now();
            due = last + PERIOD;
            if self.epoch() != before {
                shared.wake_all();
                follow_ups = FOLLOW_UPS;
                follow_at = None;
            } else if asked && follow_ups < FOLLOW_UPS {
                follow_at = Some(last + MIN_GAP * (1 << follow_ups));
                follow_ups += 1;
            }
        }
    }
}

/// The error for a `redis+cluster://` seed that is a standalone server.
pub(crate) fn not_a_cluster(peer: &str) -> Error {
    Error::config(format!(
        "{peer} is not a cluster node (cluster support is disabled there): use a redis:// URL \
         for a standalone server"
    ))
}

/// Which node of a `redis+cluster://` URL's cluster serves `key` now, for tools that open
/// their own connection (the `ringq` CLI's `produce`, `publish`, `stats`, `dead`): the
/// same topology read the engine makes at start, with `tls` for `rediss+cluster://`.
/// Returns the node's host and port.
///
/// # Errors
/// [`ErrorKind::Config`] for a URL that is not a cluster one, or a seed that is not a
/// cluster node; otherwise as the engine's start: every seed's failure named, or
/// [`ErrorKind::ConnectionLost`] when no node serves the key's slot now.
pub fn cluster_node(
    info: &crate::ConnectionInfo,
    tls: Option<&crate::Tls>,
    key: &[u8],
    timeout: Duration,
) -> Result<(String, u16), Error> {
    let crate::Address::Cluster { seeds } = &info.address else {
        return Err(Error::config("not a redis+cluster:// URL"));
    };
    let config = if info.tls {
        Some(tls.cloned().unwrap_or_default().client_config()?)
    } else {
        None
    };
    let auth = info.password.clone().map(|p| (info.username.clone(), p));
    let t = Topology::discover(seeds.clone(), auth, config, timeout)?;
    let slot = slot::key_slot(key);
    let view = t.view();
    let node = view.owner(slot).ok_or_else(|| {
        Error::new(
            ErrorKind::ConnectionLost,
            format!("no node of the cluster serves slot {slot} now (a failover under way?)"),
        )
    })?;
    Ok((node.host.clone(), node.port))
}
