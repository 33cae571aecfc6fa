//! A subscribed connection's (un)subscribe confirmations: a subscription in force again
//! (which may end its lane's gap), and one the server ended without being asked (a gap,
//! a resubscription, and in a cluster a topology refresh).

use std::time::SystemTime;

use super::{Gap, ListenPipeline, ListenTag, State};
use crate::handler::GapCause;
use crate::pipeline::Io;

impl ListenPipeline {
    /// Subscription `s` is in force on `conn`: the confirmation answers its command, and
    /// the lane's gap ends when the last of its subscriptions is in force again —
    /// reported now, not when the round's barrier PING is read (which may wait behind
    /// messages while reading is paused).
    pub(super) fn on_subscribed(&mut self, io: &mut Io<ListenTag>, conn: usize, s: usize) {
        io.conn_mut(conn).push_answered();
        self.subs[s].state = State::On;
        let lane = self.subs[s].lane;
        if self.lanes[lane].gap.is_some()
            && self.lanes[lane]
                .subs
                .iter()
                .all(|&x| self.subs[x].state == State::On)
        {
            self.close_gap(io, lane, true);
        }
    }

    /// The server ended subscription `s` without being asked: subscribe again, and
    /// report the gap once restored. In a cluster a shard channel ends so when its slot
    /// moved, or its node stopped being the slot's primary (a failover: as a replica it
    /// may still take the subscription, which then belongs at the new primary): the
    /// topology is asked again, and the connection follows.
    pub(super) fn on_unsolicited_unsubscribe(
        &mut self,
        io: &mut Io<ListenTag>,
        conn: usize,
        s: usize,
    ) {
        let lane = self.subs[s].lane;
        tracing::warn!(
            target: crate::handler::EVENT_TARGET,
            conn = %io.conn(conn).name(),
            "{} ended {} without being asked; subscribing again",
            io.conn(conn).peer(),
            self.subs[s].spec
        );
        self.subs[s].state = State::Off;
        io.refresh_topology();
        let gap = self.lanes[lane].gap.get_or_insert_with(|| Gap {
            since: SystemTime::now(),
            cause: GapCause::Unsubscribed,
            subs: Vec::new(),
        });
        if !gap.subs.contains(&s) {
            gap.subs.push(s);
        }
        self.subscribe(io, conn, lane, Some(s));
    }
}
