//! A shard of a cluster engine: which node each connection dials, what a redirect does
//! to the topology, and moving connections when the topology changes. Everything else —
//! the loop, reconnects, the stalled-connection drain — is the same as for one server.
//!
//! Each fetch connection has a *route*: the hash slot of its lane's sources (the engine
//! puts only sources of one slot in a lane). A Control follows a slot too: in the modes
//! with a Control per node, one of its lanes' (`assign_controls`); else the first lane's.
//!
//! ASK (a legacy migration under way: the slot's keys already moved to the importing
//! node) is followed without touching the map: the slot is noted in `Shard::asks`, and
//! its connections dial the importing node and send every command after an `ASKING`.
//! That ends when the map names the importing node as the owner (the migration ended),
//! when the importing node answers MOVED (the migration was undone), or when the
//! connection fails for any other reason (it then dials the owner, which answers ASK
//! again while the migration lasts).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use ringq_resp::ServerErrorKind;

use super::{ControlSlot, Shard};
use crate::backend::Backend;
use crate::cluster::ANY_NODE;
use crate::conn::{Failure, Phase, Role};
use crate::error::Error;
use crate::pipeline::{ControlUse, Pipeline};
use crate::url::ResolvedAddr;

impl<P: Pipeline, B: Backend> Shard<P, B> {
    /// The hash slot connection `id` serves.
    fn route(&self, id: usize) -> u16 {
        let lane = match self.io.conns[id].role() {
            Role::Fetch(l) => l as usize,
            Role::Control(c) => return self.io.controls.get(c as usize).map_or(0, |c| c.route),
        };
        self.routes
            .get(lane)
            .or(self.routes.first())
            .copied()
            .unwrap_or(0)
    }

    /// In a cluster, for the modes with a Control per node
    /// (`Pipeline::CONTROL_PER_NODE`): maps each lane to the Control on the node that
    /// owns its slot now — the Control already there when there is one (its slot moved
    /// there, or it serves other lanes), else a new one, opened at once — and points each
    /// Control at a slot of its lanes. A lane whose slot has no owner now keeps its
    /// Control. A Control left without lanes stays open, idle.
    pub(super) fn assign_controls(&mut self) {
        if !P::CONTROL_PER_NODE {
            return;
        }
        let Some(topology) = self.conn_cfg.cluster.clone() else {
            return;
        };
        let view = topology.view();
        let want = self.pipeline.control() == ControlUse::Always;
        // Each node's Control: the first whose slot that node owns now.
        let mut at: Vec<(String, usize)> = Vec::new();
        for (c, ctl) in self.io.controls.iter().enumerate() {
            if ctl.retired {
                continue;
            }
            if let Some(n) = view.owner(ctl.route) {
                if !at.iter().any(|(a, _)| *a == n.addr()) {
                    at.push((n.addr(), c));
                }
            }
        }
        for (l, &slot) in self.routes.iter().enumerate() {
            let Some(node) = view.owner(slot) else {
                continue;
            };
            let c = match at.iter().find(|(a, _)| *a == node.addr()) {
                Some(&(_, c)) => c,
                None => {
                    self.io.controls.push(ControlSlot {
                        route: slot,
                        id: None,
                        want,
                        retired: false,
                    });
                    let c = self.io.controls.len() - 1;
                    at.push((node.addr(), c));
                    c
                }
            };
            self.io.lane_control[l] = c as u32;
        }
        // Each Control dials the node of (one of) its lanes' slots.
        for (l, &c) in self.io.lane_control.iter().enumerate() {
            if view.owner(self.routes[l]).is_some() {
                self.io.controls[c as usize].route = self.routes[l];
            }
        }
    }

    /// Closes for good each Control no lane maps to any more (per-node mode), once
    /// nothing is in flight on it: after a slot moved, a node's lanes may have needed two
    /// Controls for a moment (one slot's move heard before the other's), and only one
    /// stays. Checked on a topology change and with every stats merge (100 ms).
    pub(super) fn retire_idle_controls(&mut self, now: Instant) {
        if !P::CONTROL_PER_NODE || self.conn_cfg.cluster.is_none() || self.io.stopping {
            return;
        }
        for c in 0..self.io.controls.len() {
            let ctl = &self.io.controls[c];
            if ctl.retired || self.io.lane_control.contains(&(c as u32)) {
                continue;
            }
            if self.io.lane_control.is_empty() && c == 0 {
                continue;
            }
            if let Some(id) = ctl.id {
                let conn = &self.io.conns[id];
                if conn.phase() == Phase::Ready && !conn.is_idle() {
                    // Its replies first (settles: they are the pipeline's to match).
                    continue;
                }
                match conn.phase() {
                    Phase::Done => {}
                    // Failed and closing (a failover cuts it): it must not dial again once
                    // closed — it would come back at the new owner, retired and so never
                    // reused nor retired again: an idle Control for good.
                    Phase::Closing => self.io.conns[id].stop_after_close(),
                    Phase::Idle | Phase::Resolving => self.io.conns[id].set_done(),
                    _ => {
                        tracing::debug!(conn = %conn.name(), "no lane needs this Control now; closing it");
                        self.stop_conn(id);
                        self.finish_close(id, now);
                    }
                }
            }
            let ctl = &mut self.io.controls[c];
            ctl.retired = true;
            ctl.want = false;
        }
    }

    /// Dials connection `id`: the address found at start, or in a cluster the current
    /// owner of its slot (a host name is looked up on the resolver thread).
    pub(super) fn dial(&mut self, id: usize, now: Instant) {
        let Some(topology) = self.conn_cfg.cluster.clone() else {
            let addr = self.conn_cfg.addr.clone();
            self.connect(id, now, &addr);
            return;
        };
        let slot = self.route(id);
        let view = topology.view();
        let ask = self.asks.iter().find(|(s, _)| *s == slot).map(|(_, n)| n);
        self.io.conns[id].set_asking(ask.is_some());
        let owner = if let Some(n) = ask {
            Some(n)
        } else if slot == ANY_NODE {
            // Any primary; after each failed attempt the next one.
            let p = view.primaries();
            let n = self.io.conns[id].failures() as usize;
            (!p.is_empty()).then(|| &p[(n + self.index) % p.len()])
        } else {
            view.owner(slot)
        };
        let Some(node) = owner else {
            topology.trigger();
            let conn = &mut self.io.conns[id];
            conn.lookup_failed(format!(
                "no node of the cluster serves slot {slot} now (a failover under way?); \
                 asking the cluster again"
            ));
            self.finish_close(id, now);
            return;
        };
        match node.host.parse::<IpAddr>() {
            Ok(ip) => {
                let addr =
                    ResolvedAddr::Tcp(SocketAddr::new(ip, node.port), node.host.as_str().into());
                self.connect(id, now, &addr);
            }
            Err(_) => {
                let (host, port) = (node.host.clone(), node.port);
                let Some(r) = self.conn_cfg.resolver.clone() else {
                    let conn = &mut self.io.conns[id];
                    conn.lookup_failed(format!("cannot look up cluster node {host}"));
                    self.finish_close(id, now);
                    return;
                };
                let conn = &mut self.io.conns[id];
                conn.set_resolving();
                if !r.request_host(self.index, conn.id(), conn.gen(), host, port) {
                    conn.lookup_failed("the resolver thread is gone".into());
                    self.finish_close(id, now);
                }
            }
        }
    }

    /// What a connection's failure tells the topology. In a cluster every failure may
    /// mean the map is stale: a MOVED patches its slot at once, anything else asks for a
    /// (rate-limited) refresh. A MOVED or ASK from a server reached through a plain URL
    /// stops the engine, naming the URL to use.
    pub(super) fn note_failure(&mut self, id: usize, f: Failure) -> Failure {
        let Failure::Retry(e) = f else {
            return f;
        };
        let kind = e.server_error().map(|s| s.kind());
        let redirect = match kind {
            Some(ServerErrorKind::Moved { slot, addr }) => Some((false, *slot, addr.clone())),
            Some(ServerErrorKind::Ask { slot, addr }) => Some((true, *slot, addr.clone())),
            _ => None,
        };
        let Some(topology) = self.conn_cfg.cluster.clone() else {
            if redirect.is_some() {
                return Failure::Fatal(Error::config(format!(
                    "{}: {e}; this is a Redis Cluster node: connect with a redis+cluster:// \
                     URL",
                    self.io.conns[id].peer()
                )));
            }
            return Failure::Retry(e);
        };
        let refused = matches!(
            e.server_error().map(|s| s.kind()),
            Some(
                ServerErrorKind::Moved { .. }
                    | ServerErrorKind::Ask { .. }
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
            )
        );
        if refused {
            let s = &self.io.stats;
            s.add(&s.redirects, 1);
        }
        // An asking connection that fails for any reason but the migration's own
        // refusals goes back to the owner (which answers ASK again while it lasts).
        if self.io.conns[id].asking() && !matches!(kind, Some(ServerErrorKind::TryAgain)) {
            let slot = self.route(id);
            self.asks.retain(|(s, _)| *s != slot);
        }
        let Some((ask, slot, addr)) = redirect else {
            topology.trigger();
            return Failure::Retry(e);
        };
        let (host, port) = addr.rsplit_once(':').unwrap_or(("?", ""));
        let host = match host {
            // An empty endpoint: the node that answered, on that port.
            "" => self.io.conns[id]
                .target_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|| "?".into()),
            h => h.to_owned(),
        };
        let port = port.parse::<u16>().ok().filter(|_| host != "?");
        match (ask, port) {
            (false, Some(port)) => topology.moved(slot, &host, port),
            (true, Some(port)) => {
                // ASK changes no map: the slot is still its owner's until the move ends.
                let id = format!("{host}:{port}");
                self.asks.retain(|(s, _)| *s != slot);
                self.asks
                    .push((slot, crate::cluster::Node { id, host, port }));
            }
            (_, None) => topology.trigger(),
        }
        Failure::Retry(e)
    }

    /// In a cluster, when the topology changed: every connection whose slot is now
    /// served by another node moves there — retired like a stalled connection when it
    /// owes replies that carry messages (they are delivered if they come), else closed
    /// and dialled again.
    pub(super) fn follow_topology(&mut self, now: Instant) {
        let Some(topology) = self.conn_cfg.cluster.clone() else {
            return;
        };
        let epoch = topology.epoch();
        if epoch == self.topology_seen || self.io.stopping {
            return;
        }
        self.topology_seen = epoch;
        self.assign_controls();
        self.retire_idle_controls(now);
        let view = topology.view();
        // A migration that ended at the node an ASK named: that node is the owner now.
        let ended: Vec<u16> = self
            .asks
            .iter()
            .filter(|(slot, n)| {
                view.owner(*slot)
                    .is_some_and(|o| o.host == n.host && o.port == n.port)
            })
            .map(|(slot, _)| *slot)
            .collect();
        if !ended.is_empty() {
            self.asks.retain(|(s, _)| !ended.contains(s));
            for id in 0..self.io.conns.len() {
                if ended.contains(&self.route(id)) {
                    self.io.conns[id].set_asking(false);
                }
            }
        }
        for id in 0..self.io.conns.len() {
            let c = &self.io.conns[id];
            let live = !matches!(
                c.phase(),
                Phase::Idle | Phase::Resolving | Phase::Closing | Phase::Done
            );
            if !live || c.draining().is_some() {
                continue;
            }
            let Some(at) = c.target_addr() else {
                continue;
            };
            if let Some(ci) = self.io.control_index(id) {
                // A Control no lane needs now stays where it is (idle) rather than
                // following a slot that is no longer its lanes'.
                if P::CONTROL_PER_NODE && !self.io.lane_control.contains(&(ci as u32)) {
                    continue;
                }
            }
            let slot = self.route(id);
            let is_at = |n: &crate::cluster::Node| {
                n.port == at.port() && n.host.parse::<IpAddr>().map_or(true, |ip| ip == at.ip())
            };
            if c.asking() && self.asks.iter().any(|(s, n)| *s == slot && is_at(n)) {
                // Following an ASK: the importing node serves it until the move ends.
                continue;
            }
            if slot == ANY_NODE {
                // Any primary will do: move only off a node that is no longer one.
                if view.primaries().is_empty() || view.primaries().iter().any(is_at) {
                    continue;
                }
            }
            let owner = if slot == ANY_NODE {
                view.primaries().first()
            } else {
                view.owner(slot)
            };
            let same = owner.is_some_and(is_at);
            if same || owner.is_none() {
                // Unowned: wait for an owner rather than leave a node that may still
                // serve it.
                continue;
            }
            let what = format!(
                "the cluster moved slot {slot} from {at} to {}",
                owner.map(|n| n.addr()).unwrap_or_default()
            );
            let pipeline = &self.pipeline;
            let owes = c.any_cmd(|cmd| pipeline.owes_effects(cmd));
            if owes && c.phase() == Phase::Ready && !self.io.is_control(id) {
                self.retire(id, what, now);
            } else {
                let e = Error::new(
                    crate::ErrorKind::ConnectionLost,
                    format!("{what}; reconnecting"),
                );
                self.fail_conn(id, Failure::Retry(e), now);
                self.finish_close(id, now);
            }
        }
    }
}
