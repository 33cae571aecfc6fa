//! The settle queue: outcome commands sent on the Control connection and not yet
//! answered, oldest first (replies come in that order), kept so that a lost Control
//! connection sends them again. Every settle command of ringq's at-least-once modes acts
//! only on what is still held (an element still in the processing list, an entry still
//! pending), so one that was applied before the connection died does nothing the second
//! time.

use std::collections::VecDeque;

/// Settle commands in flight on Control, and those to send again.
#[derive(Debug)]
pub(crate) struct SettleQueue<T> {
    /// Sent and unanswered, oldest first, each with whether it is a resend.
    settling: VecDeque<(T, bool)>,
    /// Lost with a Control connection: sent again first.
    resend: VecDeque<T>,
}

impl<T> Default for SettleQueue<T> {
    fn default() -> Self {
        Self {
            settling: VecDeque::new(),
            resend: VecDeque::new(),
        }
    }
}

impl<T> SettleQueue<T> {
    /// Nothing in flight and nothing to send again.
    pub(crate) fn is_empty(&self) -> bool {
        self.settling.is_empty() && self.resend.is_empty()
    }

    /// Commands sent and unanswered.
    pub(crate) fn in_flight(&self) -> usize {
        self.settling.len()
    }

    /// `t` was queued on Control (`resent`: it had been sent on a lost connection).
    pub(crate) fn sent(&mut self, t: T, resent: bool) {
        self.settling.push_back((t, resent));
    }

    /// The oldest command's reply came: the command, and whether it was a resend (then
    /// what it did not find may have been done by its first sending).
    pub(crate) fn answered(&mut self) -> Option<(T, bool)> {
        self.settling.pop_front()
    }

    /// Control was lost: everything unanswered is to be sent again, in order, before
    /// anything new. Returns how many.
    pub(crate) fn control_lost(&mut self) -> usize {
        let n = self.settling.len();
        for (t, _) in self.settling.drain(..).rev() {
            self.resend.push_front(t);
        }
        n
    }

    /// What to send again, oldest first (each to go back through [`SettleQueue::sent`]
    /// with `resent`).
    pub(crate) fn take_resend(&mut self) -> impl Iterator<Item = T> + '_ {
        self.resend.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_control_sends_everything_unanswered_again_in_order_first() {
        let mut q = SettleQueue::default();
        q.sent(1, false);
        q.sent(2, false);
        q.sent(3, false);
        assert_eq!(q.answered(), Some((1, false)));
        assert_eq!(q.control_lost(), 2);
        assert_eq!(q.in_flight(), 0);
        assert!(!q.is_empty());
        let again: Vec<i32> = q.take_resend().collect();
        assert_eq!(again, vec![2, 3]);
        for t in again {
            q.sent(t, true);
        }
        q.sent(4, false);
        assert_eq!(q.answered(), Some((2, true)));
        assert_eq!(q.answered(), Some((3, true)));
        assert_eq!(q.answered(), Some((4, false)));
        assert!(q.is_empty());
    }
}
