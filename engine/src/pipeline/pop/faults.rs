//! What a stalled or lost fetch connection means for the pop pipeline (and reliable
//! mode's leases, which share it): a stall detaches its pops (their late replies are
//! still delivered, their credit is given back now); a loss forgets them, counts what
//! they may have taken (`Stats::possibly_lost`, `Event::PossiblyLost` — pop mode is
//! at-most-once), and resets the lane.

use super::{CarriesPop, Dialect, PopPipeline, PopTag};
use crate::handler::Event;
use crate::pipeline::{FetchLane, Io};

impl<D: Dialect> PopPipeline<D> {
    pub(crate) fn stalled<C: CarriesPop>(&mut self, io: &mut Io<C>, conn: usize) -> String {
        let Some(lane) = io.fetch_of(conn).map(FetchLane::index) else {
            // Control never carries pops, so it never stalls owing any.
            return "nothing".to_owned();
        };
        let (mut pops, mut asked) = (0u32, 0u64);
        let (c, credits) = io.conn_and_credits(conn);
        for cmd in c.cmds_mut() {
            if let Some(PopTag::Pop(pop)) = cmd.as_pop_mut() {
                if let Some(l) = self.lanes.get_mut(lane) {
                    l.detach(pop, credits);
                }
                pop.late = true;
                pops += 1;
                asked += u64::from(pop.count);
            }
        }
        io.event(Event::Stalled {
            connection: io.conn(conn).name().to_owned(),
            commands: u64::from(pops),
        });
        format!("its {pops} pop(s) (asking for up to {asked} messages)")
    }

    pub(crate) fn lost<C: CarriesPop>(
        &mut self,
        io: &mut Io<C>,
        conn: usize,
        unanswered: &[C],
        stalled: bool,
    ) {
        // Control carries no pop and has no lane.
        let Some(lane) = io.fetch_of(conn) else {
            return;
        };
        let lane = lane.index();
        let (mut pops, mut asked, mut unreturned) = (0u64, 0u64, 0u32);
        for cmd in unanswered.iter().filter_map(CarriesPop::as_pop) {
            match cmd {
                PopTag::Pop(pop) => {
                    pops += 1;
                    if let Some(l) = self.lanes.get_mut(lane) {
                        asked += u64::from(l.forget(&self.plan, &pop, io.credits()));
                    }
                }
                PopTag::PushBack { count } => unreturned += count,
                PopTag::Watch => {}
            }
        }
        io.stats().add(&io.stats().unanswered_pops, pops);
        let leased = D::LEASES;
        if !leased {
            io.stats().add(&io.stats().possibly_lost, asked);
        }
        let c = io.conn(conn).name().to_owned();
        if pops > 0 && !leased {
            tracing::warn!(
                target: crate::handler::EVENT_TARGET,
                shard = io.shard(), conn = %c,
                "{pops} pop(s) unanswered: up to {asked} messages they may have taken are lost"
            );
            io.event(Event::PossiblyLost {
                connection: c.clone(),
                commands: pops,
                messages: asked,
            });
        }
        if unreturned > 0 {
            tracing::error!(
                conn = %c,
                "connection lost before {unreturned} message(s) popped beyond the limit were pushed back; they may be lost"
            );
        }
        // A stalled connection's loss leaves its lane's fresh connection alone.
        if !stalled {
            if let Some(l) = self.lanes.get_mut(lane) {
                l.reset();
            }
        }
    }
}
