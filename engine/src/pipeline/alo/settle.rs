//! The settle queue: outcome commands sent on the Control connection and not yet
//! answered, oldest first (replies come in that order), kept so that a lost Control
//! connection sends them again. Every settle command of ringq's at-least-once modes acts
//! only on what is still held (an element still in the processing list, an entry still
//! pending), so one that was applied before the connection died does nothing the second
//! time.

use std::collections::VecDeque;

/// Settle commands in flight on the Control connections, and those to send again.
#[derive(Debug)]
pub(crate) struct SettleQueue<T> {
    /// Sent and unanswered, oldest first, each with whether it is a resend and the
    /// Control it went on (replies come in order per connection).
    settling: VecDeque<(T, bool, usize)>,
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

    /// `t` was queued on Control `ctl` (`resent`: it had been sent on a lost connection).
    pub(crate) fn sent(&mut self, t: T, resent: bool, ctl: usize) {
        self.settling.push_back((t, resent, ctl));
    }

    /// The oldest command's reply on Control `ctl` came: the command, and whether it was
    /// a resend (then what it did not find may have been done by its first sending).
    pub(crate) fn answered(&mut self, ctl: usize) -> Option<(T, bool)> {
        let i = self.settling.iter().position(|(_, _, c)| *c == ctl)?;
        self.settling.remove(i).map(|(t, resent, _)| (t, resent))
    }

    /// Control `ctl` was lost: everything unanswered on it is to be sent again, in order,
    /// before anything new. Returns how many.
    pub(crate) fn control_lost(&mut self, ctl: usize) -> usize {
        let mut lost = Vec::new();
        let mut kept = VecDeque::with_capacity(self.settling.len());
        for (t, resent, c) in self.settling.drain(..) {
            if c == ctl {
                lost.push(t);
            } else {
                kept.push_back((t, resent, c));
            }
        }
        self.settling = kept;
        let n = lost.len();
        for t in lost.into_iter().rev() {
            self.resend.push_front(t);
        }
        n
    }

    /// What to send again, oldest first (each to go back through [`SettleQueue::sent`]
    /// with `resent`, or through [`SettleQueue::resend_later`] while its Control is not
    /// ready).
    pub(crate) fn take_resend(&mut self) -> Vec<T> {
        self.resend.drain(..).collect()
    }

    /// `t`, taken to be sent again, waits for its Control: it goes back at the end of
    /// what is to be sent again (taken in order, so the order holds).
    pub(crate) fn resend_later(&mut self, t: T) {
        self.resend.push_back(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_control_sends_everything_unanswered_again_in_order_first() {
        let mut q = SettleQueue::default();
        q.sent(1, false, 0);
        q.sent(2, false, 0);
        q.sent(3, false, 0);
        assert_eq!(q.answered(0), Some((1, false)));
        assert_eq!(q.control_lost(0), 2);
        assert_eq!(q.in_flight(), 0);
        assert!(!q.is_empty());
        let again: Vec<i32> = q.take_resend();
        assert_eq!(again, vec![2, 3]);
        for t in again {
            q.sent(t, true, 0);
        }
        q.sent(4, false, 0);
        assert_eq!(q.answered(0), Some((2, true)));
        assert_eq!(q.answered(0), Some((3, true)));
        assert_eq!(q.answered(0), Some((4, false)));
        assert!(q.is_empty());
    }

    #[test]
    fn each_control_answers_and_loses_only_its_own() {
        let mut q = SettleQueue::default();
        q.sent(1, false, 0);
        q.sent(2, false, 1);
        q.sent(3, false, 0);
        q.sent(4, false, 1);
        assert_eq!(q.answered(1), Some((2, false)));
        assert_eq!(q.control_lost(0), 2, "1 and 3 were on Control 0");
        assert_eq!(q.in_flight(), 1);
        assert_eq!(q.answered(0), None);
        assert_eq!(q.answered(1), Some((4, false)));
        let again = q.take_resend();
        assert_eq!(again, vec![1, 3]);
        q.resend_later(1);
        q.resend_later(3);
        assert_eq!(q.take_resend(), vec![1, 3], "the order holds");
        assert!(q.is_empty());
    }
}
