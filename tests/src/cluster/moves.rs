//! Moving slots between nodes: a legacy migration (whole, or in its three steps so a
//! test can hold it open between them), Valkey 9's atomic slot migration, and a primary
//! added to a running cluster.

use super::{node_id, start_failed, start_node, text, ClusterGroup, SETTLE};
use crate::error::Result;
use crate::wait::wait_until;

impl ClusterGroup {
    /// The first half of a legacy migration of `slot` from node `from` to node `to`:
    /// `IMPORTING` on the target, `MIGRATING` on the source. Until
    /// [`ClusterGroup::finish_migration`], the source answers ASK for keys it no longer
    /// has and TRYAGAIN for multi-key commands over present and absent keys.
    ///
    /// # Errors
    /// A node refuses.
    pub fn begin_migration(&self, slot: u16, from: usize, to: usize) -> Result<()> {
        let s = slot.to_string();
        self.nodes[to]
            .client()?
            .cmd(["CLUSTER", "SETSLOT", &s, "IMPORTING", &self.ids[from]])?;
        self.nodes[from]
            .client()?
            .cmd(["CLUSTER", "SETSLOT", &s, "MIGRATING", &self.ids[to]])?;
        Ok(())
    }

    /// Moves every key of `slot` still at node `from` to node `to` (`MIGRATE`, in
    /// batches). Returns how many moved.
    ///
    /// # Errors
    /// A node refuses.
    pub fn migrate_keys(&self, slot: u16, from: usize, to: usize) -> Result<usize> {
        let mut c = self.nodes[from].client()?;
        let port = self.nodes[to].port().to_string();
        let mut moved = 0;
        loop {
            let f = c.cmd(["CLUSTER", "GETKEYSINSLOT", &slot.to_string(), "100"])?;
            let keys: Vec<String> = f
                .as_elements()
                .unwrap_or_default()
                .iter()
                .filter_map(text)
                .collect();
            if keys.is_empty() {
                return Ok(moved);
            }
            let mut args: Vec<String> = ["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            moved += keys.len();
            args.extend(keys);
            c.cmd(args)?;
        }
    }

    /// Ends a migration: `SETSLOT NODE` on the target, the source, then every other
    /// primary (replicas refuse it and learn it from their primary). Blocked clients of
    /// the slot at the source get MOVED within about a second.
    ///
    /// # Errors
    /// A node refuses.
    pub fn finish_migration(&self, slot: u16, from: usize, to: usize) -> Result<()> {
        let s = slot.to_string();
        let order = [to, from]
            .into_iter()
            .chain((0..self.nodes.len()).filter(|&i| i != to && i != from));
        for i in order {
            if !self.nodes[i].is_running() {
                continue;
            }
            let mut c = self.nodes[i].client()?;
            if c.info_field("replication", "role")?.as_deref() != Some("master") {
                continue;
            }
            c.cmd(["CLUSTER", "SETSLOT", &s, "NODE", &self.ids[to]])?;
        }
        Ok(())
    }

    /// A whole legacy migration of `slot` from `from` to `to`.
    ///
    /// # Errors
    /// A node refuses.
    pub fn migrate_slot(&self, slot: u16, from: usize, to: usize) -> Result<usize> {
        self.begin_migration(slot, from, to)?;
        let n = self.migrate_keys(slot, from, to)?;
        self.finish_migration(slot, from, to)?;
        Ok(n)
    }
    /// Valkey 9's atomic slot migration of `slot` from node `from` to node `to`
    /// (`CLUSTER MIGRATESLOTS … NODE`; the source streams the slot to the target and
    /// hands it over in one step, with no ASK or TRYAGAIN on the way). Returns once every
    /// node agrees that `to` owns it.
    ///
    /// # Errors
    /// The source refuses (a server without atomic migration), or the move does not end
    /// within 30 s.
    pub fn migrate_slot_atomic(&self, slot: u16, from: usize, to: usize) -> Result<()> {
        let s = slot.to_string();
        self.nodes[from].client()?.cmd([
            "CLUSTER",
            "MIGRATESLOTS",
            "SLOTSRANGE",
            &s,
            &s,
            "NODE",
            &self.ids[to],
        ])?;
        let moved = wait_until(SETTLE, || self.owner_of_slot(slot).ok() == Some(to));
        if !moved {
            let jobs = self.nodes[from]
                .client()?
                .cmd(["CLUSTER", "GETSLOTMIGRATIONS"])?;
            return Err(start_failed(format!(
                "slot {slot} did not reach node {to} in 30 s: {jobs:?}"
            )));
        }
        self.wait_healthy()
    }

    /// Starts one more node, introduces it to the cluster (it joins as a primary that
    /// owns no slot) and waits until every node knows it. Returns its index.
    ///
    /// # Errors
    /// The node does not start, or the cluster does not settle within 30 s.
    pub fn add_primary(&mut self) -> Result<usize> {
        let (node, bus) = start_node(self.binary.as_ref(), &self.args)?;
        let id = node_id(&node)?;
        self.nodes[0].client()?.cmd([
            "CLUSTER",
            "MEET",
            "127.0.0.1",
            &node.port().to_string(),
            &bus.to_string(),
        ])?;
        self.nodes.push(node);
        self.ids.push(id);
        let count = self.nodes.len();
        let met = wait_until(SETTLE, || {
            self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                n.client()
                    .and_then(|mut c| c.cmd(["CLUSTER", "NODES"]))
                    .ok()
                    .and_then(|f| text(&f))
                    .is_some_and(|t| {
                        t.lines().filter(|l| !l.contains("noaddr")).count() >= count
                            && !t.contains("handshake")
                    })
            })
        });
        if !met {
            return Err(start_failed("the added node did not join within 30 s"));
        }
        self.wait_healthy()?;
        Ok(count - 1)
    }
}
