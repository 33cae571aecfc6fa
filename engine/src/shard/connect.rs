//! Opening connections: a Control when one is wanted, connecting to an address, and
//! reconnecting (after a host-name lookup on the resolver thread where there is one; in a
//! cluster through `Shard::dial`, to the slot's current owner).

use std::time::Instant;

use super::{conn_seed, Shard};
use crate::backend::Backend;
use crate::conn::{Conn, Phase, Role};
use crate::pipeline::Pipeline;

impl<P: Pipeline, B: Backend> Shard<P, B> {
    /// Opens Control `c` (acks, scripts, CLIENT UNBLOCK), in a new slot.
    pub(super) fn open_control(&mut self, c: usize, now: Instant) {
        let id = self.io.conns.len();
        let name = if c == 0 {
            format!("{}-s{}-control", self.conn_cfg.client_name, self.index)
        } else {
            format!("{}-s{}-control{c}", self.conn_cfg.client_name, self.index)
        };
        let mut control = Conn::new(
            id as u32,
            Role::Control(c as u32),
            name,
            self.conn_cfg.clone(),
            conn_seed(self.index, id) ^ 0xC0,
        );
        if self.io.stopping {
            // Opened for the stop: one attempt only, a failure leaves the stop to the
            // block timeouts.
            control.stop_after_close();
        }
        self.io.conns.push(control);
        self.io.controls[c].id = Some(id);
        self.io.controls[c].want = false;
        self.dial(id, now);
    }

    /// Starts connection `id` connecting to `addr`.
    pub(super) fn connect(&mut self, id: usize, now: Instant, addr: &crate::url::ResolvedAddr) {
        if let Err(f) = self.io.conns[id].start_connect(&mut self.driver, now, addr) {
            self.fail_conn(id, f, now);
            self.finish_close(id, now);
        }
    }

    /// Connects `id` again: after looking the host name up again where there is one (a
    /// failover may have moved it), else to the address found at start.
    pub(super) fn reconnect(&mut self, id: usize, now: Instant) {
        if self.conn_cfg.cluster.is_some() {
            self.dial(id, now);
            return;
        }
        if let Some(r) = self.conn_cfg.resolver.clone() {
            let conn = &mut self.io.conns[id];
            conn.set_resolving();
            if r.request(self.index, conn.id(), conn.gen()) {
                return;
            }
            tracing::warn!(conn = %conn.name(), "the resolver thread is gone; dialling the address found at start");
        }
        let addr = self.conn_cfg.addr.clone();
        self.connect(id, now, &addr);
    }

    /// Connects the connections whose host-name lookups were answered.
    pub(super) fn take_resolved(&mut self, now: Instant) {
        let Some(r) = self.conn_cfg.resolver.clone() else {
            return;
        };
        let mut answers = std::mem::take(&mut self.resolved);
        r.take(self.index, &mut answers);
        for a in answers.drain(..) {
            let id = a.conn as usize;
            let waiting = self
                .io
                .conns
                .get(id)
                .is_some_and(|c| c.gen() == a.gen && c.phase() == Phase::Resolving);
            if !waiting {
                continue;
            }
            match a.addr {
                Ok(addr) => self.connect(id, now, &addr),
                Err(e) => {
                    // Counts as a failed attempt: back off and look it up again.
                    let conn = &mut self.io.conns[id];
                    tracing::warn!(conn = %conn.name(), "{e}; retrying");
                    conn.lookup_failed(e.to_string());
                    self.finish_close(id, now);
                }
            }
        }
        self.resolved = answers;
    }
}
