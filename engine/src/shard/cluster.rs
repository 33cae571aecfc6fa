//! A shard of a cluster engine: which node each connection dials, what a redirect does
//! to the topology, and moving connections when the topology changes. Everything else —
//! the loop, reconnects, the stalled-connection drain — is the same as for one server.
//!
//! Each fetch connection has a *route*: the hash slot of its lane's sources (the engine
//! puts only sources of one slot in a lane). A Control follows its slot group's route
//! (the modes with one Control per slot group) or the shard's first lane.
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

use super::Shard;
use crate::backend::Backend;
use crate::cluster::ANY_NODE;
use crate::conn::{Failure, Phase, Role};
use crate::error::Error;
use crate::pipeline::Pipeline;
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
