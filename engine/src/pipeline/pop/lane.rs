//! One connection's pop state: its queues in a rotating order, whether they have backlog,
//! its pops in flight, the payload size it expects, and messages to push back.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use ringq_resp::CommandWriter;

use super::dialect::{Dialect, Either, Fetch};
use super::reply::{parse_pop_reply, PopReply};
use super::{CarriesPop, PopCmd, PopPlan, PopTag, Scope, HOT_KEYS};
use crate::conn::{Conn, Failure, Tag};
use crate::credit::{Credits, Grant, SizeEstimate};
use crate::handler::Message;

/// The pop state of one connection.
pub(crate) struct Lane {
    /// This lane's index on its shard (its credit account).
    index: usize,
    /// Indices into the consumer's queue list, rotated for fairness.
    order: VecDeque<u32>,
    /// The queues believed to hold messages, in the same rotation: while there is
    /// backlog, non-blocking pops name only the first few of them (see `Scope`), so a
    /// pop's cost follows the messages, not the number of queues.
    hot: VecDeque<u32>,
    /// Membership of `hot`, by queue index.
    in_hot: Vec<bool>,
    /// When the queues not in `hot` are next checked (a non-blocking pop naming them
    /// all), so one that fills while others drain is noticed within a block timeout.
    next_probe: Option<Instant>,
    streak: (u32, u32),
    backlog: bool,
    /// Reliable mode, a lane with several keys: its blocking lease (which waits on one
    /// key) came back empty, so the next lease checks every key without blocking.
    recheck: bool,
    /// Reliable mode, a lane with several keys: its connection has `CLIENT TRACKING` on,
    /// so once dry it names every key in one `EXISTS` (which tracks them) and then waits
    /// without a command for the server's invalidation of one of them (`parked`),
    /// instead of blocking on one key and polling the others.
    tracking: bool,
    /// Dry and watching its keys: nothing is sent until [`Lane::wake`].
    parked: bool,
    /// Large messages' LMOVEs that found their queue empty in a row (see `on_reply`).
    misses: u32,
    /// Pops sent on the lane's current connection and not yet answered.
    in_flight: u32,
    /// The payload size to plan pops with, learned from replies.
    sizes: SizeEstimate,
    /// Messages popped beyond the [`Budget`](super::Budget), in pop order, waiting for the lane's pops in
    /// flight to answer so they go back to the server in one go, in the right order (a
    /// later pop on this connection took messages from further left; see
    /// `PopPipeline::push_back`). No pop is issued while any wait.
    pub returns: Vec<Message<'static>>,
}

impl Lane {
    pub(crate) fn new(index: usize, queues: Vec<u32>) -> Self {
        // Nothing is known at start: every queue counts as hot, and the first pops find
        // out, a few queues each (cheaper than a check naming them all per queue found).
        let mut in_hot = vec![false; queues.iter().map(|&q| q as usize + 1).max().unwrap_or(0)];
        for &q in &queues {
            in_hot[q as usize] = true;
        }
        Self {
            index,
            hot: queues.iter().copied().collect(),
            in_hot,
            next_probe: None,
            order: queues.into(),
            streak: (u32::MAX, 0),
            backlog: true,
            recheck: false,
            tracking: false,
            parked: false,
            misses: 0,
            in_flight: 0,
            sizes: SizeEstimate::default(),
            returns: Vec::new(),
        }
    }

    /// Pops sent and not yet answered.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// A pop of this lane will not answer (its connection was lost): its credit and its
    /// budget claim come back. Returns how many messages it had asked for.
    pub(crate) fn forget<D: Dialect>(
        &mut self,
        plan: &PopPlan<D>,
        pop: &PopCmd,
        credits: &mut Credits,
    ) -> u32 {
        if !pop.late {
            self.in_flight = self.in_flight.saturating_sub(1);
            credits.release(self.index, pop.count, pop.bytes);
        }
        if let (Some(b), false) = (&plan.budget, pop.blocking) {
            b.unclaim(pop.count);
        }
        pop.count
    }

    /// The lane's connection stalled: its pops in flight stay on it, to answer late, and
    /// give their credit back so a fresh connection can pop at once. Their budget claims
    /// stay until they answer or are lost. The caller marks them late.
    pub(crate) fn detach(&mut self, pop: &PopCmd, credits: &mut Credits) {
        if !pop.late {
            self.in_flight = self.in_flight.saturating_sub(1);
            credits.release(self.index, pop.count, pop.bytes);
        }
        self.backlog = true;
    }

    /// Nothing is known about which queues hold messages (a new connection, or back
    /// from waiting): every queue counts as hot again, `first` (the one known to hold
    /// messages) at the front, and the next pops find out which are empty, a few each.
    fn all_hot(&mut self, first: Option<u32>) {
        self.hot.clear();
        if let Some(q) = first {
            self.hot.push_back(q);
        }
        for &q in &self.order {
            self.in_hot[q as usize] = true;
            if Some(q) != first {
                self.hot.push_back(q);
            }
        }
    }

    fn cool(&mut self, q: u32) {
        if let Some(flag) = self.in_hot.get_mut(q as usize) {
            if std::mem::take(flag) {
                self.hot.retain(|&x| x != q);
            }
        }
    }

    fn heat(&mut self, q: u32) {
        if let Some(flag) = self.in_hot.get_mut(q as usize) {
            if !std::mem::replace(flag, true) {
                self.hot.push_back(q);
            }
        }
    }

    /// The lane's connection was lost: no pop of it is in flight any more.
    pub(crate) fn reset(&mut self) {
        if !self.returns.is_empty() {
            tracing::error!(
                "connection lost before {} message(s) popped beyond the limit went back to the server; they are lost",
                self.returns.len()
            );
            self.returns.clear();
        }
        self.in_flight = 0;
        self.backlog = true;
        self.tracking = false;
        self.parked = false;
        self.all_hot(None);
    }

    /// The lane's connection confirmed `CLIENT TRACKING ON`.
    pub(crate) fn tracking_on(&mut self) {
        self.tracking = true;
    }

    /// A key the lane watches changed (the server's invalidation; `first`: the queue it
    /// named, if the lane has it): lease again, from that queue.
    pub(crate) fn wake(&mut self, first: Option<u32>) {
        if std::mem::take(&mut self.parked) {
            self.backlog = true;
            let first =
                first.filter(|&q| self.in_hot.get(q as usize).is_some() && self.order.contains(&q));
            self.all_hot(first);
        }
    }

    /// The lane's `EXISTS` was refused: it stops watching (until its connection is made
    /// again) and, dry, blocks on one key and polls the others.
    pub(crate) fn watch_refused(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.tracking = false;
    }

    /// The reply to the lane's `EXISTS`: how many of its keys hold messages. None: it
    /// parks until a key changes; some: it leases again.
    pub(crate) fn watched(&mut self, found: i64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if found > 0 {
            self.backlog = true;
            self.all_hot(None);
        } else {
            self.parked = true;
        }
    }

    /// Queues as many fetches as credits, pipeline depth and the dialect allow.
    pub(crate) fn fill<C: CarriesPop, D: Dialect>(
        &mut self,
        plan: &PopPlan<D>,
        conn: &mut Conn<C>,
        credits: &mut Credits,
        now: Instant,
    ) {
        while self.fill_one(plan, conn, credits, now) {}
    }

    /// Queues the lane's next fetch if it may go now; false when it may not.
    fn fill_one<C: CarriesPop, D: Dialect>(
        &mut self,
        plan: &PopPlan<D>,
        conn: &mut Conn<C>,
        credits: &mut Credits,
        now: Instant,
    ) -> bool {
        let c = &plan.consumer;
        if self.order.is_empty() || !self.returns.is_empty() {
            return false;
        }
        let depth = self.depth(plan);
        if self.in_flight >= depth {
            return false;
        }
        if D::LEASES && self.tracking && !self.backlog && !self.recheck && self.keys(plan) > 1 {
            return !self.parked && self.watch(plan, conn, now);
        }
        let shape = plan.dialect.shape(
            c.strategy,
            conn.server().has_lmpop(),
            self.backlog,
            self.recheck,
            // Before the first message the size is unknown: one message first, natively,
            // so a first batch of large ones never goes through the script.
            !matches!(self.sizes.get(), Some(s) if s < super::dialect::LARGE),
        );
        let mut want = if shape.counted && !shape.single {
            c.batch
        } else {
            1
        };
        if !self.backlog && shape.blocking && depth > 1 {
            // Parked pops (`PopConsumer::parked_pops`) share the lane's reserve (all a
            // blocking pop may draw on), so that each of them gets a grant.
            want = want.min((credits.reserve(self.index) / depth).max(1));
        }
        let Some(grant) = credits.grant_fetch(
            plan.budget.as_deref(),
            self.index,
            shape.blocking,
            want,
            self.sizes.get(),
            depth,
        ) else {
            return false;
        };
        let scope = if std::mem::take(&mut self.recheck) {
            Scope::All
        } else if shape.single && !shape.blocking {
            // One large message from the queue first in rotation.
            let mut queues = [0u32; HOT_KEYS];
            queues[0] = self.order[0];
            Scope::Hot { queues, len: 1 }
        } else {
            self.scope(shape.blocking, shape.counted, plan, now)
        };
        let single = shape.single.then(|| self.order[0]);
        let tag = PopTag::Pop(PopCmd {
            count: grant.count,
            blocking: shape.blocking,
            bytes: grant.bytes,
            late: false,
            scope,
            single,
        });
        let allow = plan
            .timing()
            .allow(shape.blocking.then_some(c.block_timeout));
        let block = if conn.server().version >= (6, 0, 0) {
            &plan.block_secs
        } else {
            &plan.block_secs_whole
        };
        let in_hot = &self.in_hot;
        let cold_only = scope == Scope::Cold;
        let queues = match &scope {
            Scope::Hot { queues, len } => Either::Left(queues[..*len as usize].iter().copied()),
            _ => Either::Right(
                self.order
                    .iter()
                    .copied()
                    .filter(move |&q| !cold_only || !in_hot[q as usize]),
            ),
        };
        // Keys are counted and then written from the same (allocation-free) walk.
        let nkeys = queues
            .clone()
            .map(|q| c.queues[q as usize].levels.len())
            .sum();
        let fetch = Fetch {
            consumer: c,
            queues,
            nkeys,
            single,
            lane_keys: if single.is_some() { self.keys(plan) } else { 0 },
            count: grant.count,
            blocking: shape.blocking,
            counted: shape.counted,
            block,
        };
        conn.command_framed(
            Tag::Pipe(C::from_pop(tag)),
            now,
            allow,
            plan.dialect.framing(&fetch),
            |buf: &mut BytesMut| {
                plan.dialect.write(buf, &fetch);
            },
        );
        self.in_flight += 1;
        true
    }

    /// How many fetches the lane keeps in flight now. With backlog, fetches (even
    /// blocking ones, which then answer at once) are pipelined; once the queues run dry,
    /// one blocking fetch goes out alone, so nothing waits behind a command that may
    /// block for the whole timeout — or, in pop mode without a message limit,
    /// `PopConsumer::parked_pops` of them.
    fn depth<D: Dialect>(&self, plan: &PopPlan<D>) -> u32 {
        let c = &plan.consumer;
        if self.backlog {
            c.pipeline
        } else if D::LEASES || plan.budget.is_some() {
            1
        } else {
            c.parked.min(c.pipeline)
        }
    }

    /// Reliable mode, a dry lane over several keys: `EXISTS key…` tracks every key (a
    /// change to any is then invalidated to this connection), and says whether one
    /// filled since the last lease.
    fn watch<C: CarriesPop, D: Dialect>(
        &mut self,
        plan: &PopPlan<D>,
        conn: &mut Conn<C>,
        now: Instant,
    ) -> bool {
        let c = &plan.consumer;
        let n = self.keys(plan);
        let keys = self
            .order
            .iter()
            .flat_map(|&q| c.queues[q as usize].levels.iter().map(|(_, k)| k));
        conn.command(
            Tag::Pipe(C::from_pop(PopTag::Watch)),
            now,
            plan.timing().allow(None),
            |buf: &mut BytesMut| {
                CommandWriter::new(buf, 1 + n)
                    .arg("EXISTS")
                    .args(keys)
                    .finish();
            },
        );
        self.in_flight += 1;
        true
    }

    /// How many keys (queues × priority levels) the lane pops.
    pub(crate) fn key_count<D: Dialect>(&self, plan: &PopPlan<D>) -> usize {
        self.keys(plan)
    }

    fn keys<D: Dialect>(&self, plan: &PopPlan<D>) -> usize {
        self.order
            .iter()
            .map(|&q| plan.consumer.queues[q as usize].levels.len())
            .sum()
    }

    /// Which queues the next pop names: with backlog and non-blocking LMPOP, the first
    /// few known to hold messages (or, once per block timeout, every other queue, to
    /// notice one that filled); otherwise all of them.
    fn scope<D: Dialect>(
        &mut self,
        blocking: bool,
        lmpop: bool,
        plan: &PopPlan<D>,
        now: Instant,
    ) -> Scope {
        if blocking || !lmpop || self.order.len() <= HOT_KEYS {
            return Scope::All;
        }
        let probe_due = !matches!(self.next_probe, Some(at) if now < at);
        if probe_due && self.hot.len() < self.order.len() {
            self.next_probe = Some(now + plan.consumer.block_timeout);
            return Scope::Cold;
        }
        if self.next_probe.is_none() {
            self.next_probe = Some(now + plan.consumer.block_timeout);
        }
        if self.hot.is_empty() {
            return Scope::All;
        }
        // Pipelined pops of one turn name different windows of the hot queues, so they do
        // not all come back empty from the same few.
        let n = self.hot.len();
        let offset = (self.in_flight as usize * HOT_KEYS) % n;
        let mut queues = [0u32; HOT_KEYS];
        let len = n.min(HOT_KEYS);
        for (i, slot) in queues.iter_mut().take(len).enumerate() {
            *slot = self.hot[(offset + i) % n];
        }
        Scope::Hot {
            queues,
            len: len as u8,
        }
    }

    /// What a pop's answer says about the queues it named: the one that answered holds
    /// messages; for `Hot`, the ones named before it, or all of them when nothing came,
    /// hold none.
    fn learn(&mut self, scope: Scope, answered: Option<u32>) {
        if let Some(q) = answered {
            // (A short answer emptied that key; a queue with priority levels may still
            // hold messages at lower levels: the next pop finds out.)
            self.heat(q);
            if scope == Scope::Cold {
                // One queue found per check: check again at once until none is found.
                self.next_probe = None;
            }
        }
        if let Scope::Hot { queues, len } = scope {
            for &q in &queues[..len as usize] {
                if Some(q) == answered {
                    break;
                }
                self.cool(q);
            }
        }
    }

    /// Parses a pop reply into `out` (appending) and updates the cycle, the size estimate
    /// and the credits. A late reply (its connection stalled and was replaced) is
    /// delivered all the same: its messages are real pops, held from their arrival.
    ///
    /// # Errors
    /// `Retry` errors (LOADING, READONLY…) or fatal ones (WRONGTYPE…).
    pub(crate) fn on_reply<'f, D: Dialect>(
        &mut self,
        plan: &PopPlan<D>,
        frame: &'f Bytes,
        pop: PopCmd,
        received_ns: u64,
        credits: &mut Credits,
        out: &mut Vec<Message<'f>>,
    ) -> Result<PopReply, Failure> {
        let start = out.len();
        let parsed = parse_pop_reply(plan, pop.single, pop.blocking, frame, received_ns, out);
        let mut reply = match parsed {
            Ok(r) => r,
            Err(e) => {
                out.truncate(start);
                if !pop.late {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    credits.release(self.index, pop.count, pop.bytes);
                }
                if let (Some(b), false) = (&plan.budget, pop.blocking) {
                    b.unclaim(pop.count);
                }
                return Err(e);
            }
        };
        let got = reply.count;
        if let Some(b) = &plan.budget {
            if pop.blocking {
                // Claimed on arrival: what the budget grants is kept, the rest goes back.
                let kept = b.claim(got);
                if kept < got {
                    reply.excess = got - kept;
                    reply.count = kept;
                    reply.bytes = out[start + kept as usize..]
                        .iter()
                        .fold(reply.bytes, |n, m| n - m.payload().len() as u64);
                }
            } else {
                b.unclaim(pop.count.saturating_sub(got));
            }
        }
        self.sizes.note(got, reply.largest);
        if pop.late {
            credits.hold(self.index, reply.count, reply.bytes);
        } else {
            self.in_flight = self.in_flight.saturating_sub(1);
            credits.settle(
                self.index,
                Grant {
                    count: pop.count,
                    bytes: pop.bytes,
                },
                reply.count,
                reply.bytes,
            );
            self.learn(pop.scope, reply.queue);
            let missed = pop.single.is_some() && got == 0;
            if missed && !pop.blocking && self.keys(plan) > 1 && self.sizes.get().is_some() {
                // A large message's LMOVE found its queue empty: the next one names the
                // next queue, and a whole round of misses checks every key.
                self.misses += 1;
                self.order.rotate_left(1);
                if self.misses as usize >= self.order.len() {
                    self.misses = 0;
                    self.recheck = true;
                }
            } else if missed && (!pop.blocking || self.keys(plan) > 1) {
                // Every key is checked next (a counted fetch, which says whether the
                // lane is dry).
                self.recheck = true;
            }
            if got > 0 {
                self.misses = 0;
            }
            match pop.scope {
                // Only a pop that named every queue can say that none holds messages (a
                // check of the cold queues names them all when none is hot).
                Scope::All if got == 0 => self.backlog = false,
                Scope::Cold if got == 0 && self.hot.is_empty() => self.backlog = false,
                _ if got > 0 && (!pop.blocking || got >= pop.count) => {
                    if !self.backlog {
                        // Back from waiting: the others may have filled meanwhile.
                        self.all_hot(reply.queue);
                    }
                    self.backlog = true;
                }
                _ => {}
            }
            if reply.woke {
                // Reliable mode's wait saw a message: lease now, from that queue first.
                if !self.backlog {
                    self.all_hot(reply.queue);
                }
                self.backlog = true;
                self.recheck = false;
            }
        }
        if let Some(q) = reply.queue.filter(|_| !reply.woke) {
            self.rotate_after(plan, q);
        }
        Ok(reply)
    }

    fn rotate_after<D: Dialect>(&mut self, plan: &PopPlan<D>, q: u32) {
        let weight = plan.consumer.queues.get(q as usize).map_or(1, |x| x.weight);
        if self.streak.0 == q {
            self.streak.1 += 1;
        } else {
            self.streak = (q, 1);
        }
        if self.streak.1 < weight {
            return;
        }
        self.streak = (u32::MAX, 0);
        for ring in [&mut self.order, &mut self.hot] {
            if let Some(pos) = ring.iter().position(|&x| x == q) {
                if let Some(x) = ring.remove(pos) {
                    ring.push_back(x);
                }
            }
        }
    }

    #[cfg(test)]
    fn order(&self) -> Vec<u32> {
        self.order.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::pop::{PopConsumer, Queue};

    #[test]
    fn served_queue_moves_to_the_back_after_its_weight() {
        let p = PopPlan::new(
            PopConsumer::new([Queue::new("a").weight(2), Queue::new("b"), Queue::new("c")]),
            None,
            &[vec![0, 1, 2]],
            crate::pipeline::Timing {
                reply_grace: std::time::Duration::from_secs(2),
                reply_timeout: std::time::Duration::from_secs(10),
            },
            crate::pipeline::pop::Popping,
        );
        let mut lane = Lane::new(0, vec![0, 1, 2]);
        lane.rotate_after(&p, 0);
        assert_eq!(
            lane.order(),
            vec![0, 1, 2],
            "weight 2: first turn keeps a in front"
        );
        lane.rotate_after(&p, 0);
        assert_eq!(lane.order(), vec![1, 2, 0]);
        lane.rotate_after(&p, 1);
        assert_eq!(lane.order(), vec![2, 0, 1]);
        lane.rotate_after(&p, 0);
        lane.rotate_after(&p, 2);
        assert_eq!(lane.order(), vec![0, 1, 2]);
    }
}
