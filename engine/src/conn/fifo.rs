//! The reply FIFO: commands queued with the tag of what they are for, replies matched to
//! them in order, push frames (which answer no command) told apart, and the deadline of
//! the oldest command.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{Conn, Deadline, Failure, Pending, Reply, Tag};
use crate::error::{Error, ErrorKind};

impl<C: Copy + std::fmt::Debug> Conn<C> {
    /// From now on RESP2 message and (un)subscribe arrays are push frames (RESP3 push
    /// frames are told apart by their type byte on any connection).
    pub(crate) fn set_subscriber(&mut self, on: bool) {
        self.subscriber = on;
    }

    /// No command awaits a reply.
    pub(crate) fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether any queued pipeline command matches `f`.
    pub(crate) fn any_cmd(&self, mut f: impl FnMut(&C) -> bool) -> bool {
        self.pending.iter().any(|p| match &p.tag {
            Tag::Pipe(c) => f(c),
            _ => false,
        })
    }

    /// The pipeline's commands awaiting replies, oldest first, to update in place.
    pub(crate) fn cmds_mut(&mut self) -> impl Iterator<Item = &mut C> {
        self.pending.iter_mut().filter_map(|p| match &mut p.tag {
            Tag::Pipe(c) => Some(c),
            _ => None,
        })
    }

    /// A push confirmed the oldest command answered by pushes ([`Conn::command_pushed`]):
    /// it leaves the FIFO, and its tag is returned. Confirmations come in command order,
    /// after the replies of every command before it, so it is at the head.
    pub(crate) fn push_answered(&mut self) -> Option<C> {
        match self.pending.front() {
            Some(Pending {
                tag: Tag::Pipe(c),
                pushed: true,
                ..
            }) => {
                let c = *c;
                self.pending.pop_front();
                if let Some(next) = self.pending.front_mut() {
                    next.deadline = next.deadline.max(Instant::now() + next.allow);
                }
                Some(c)
            }
            _ => None,
        }
    }

    /// When the command answered last (by [`Conn::next_reply`]) was queued.
    pub(crate) fn answered_queued(&self) -> Option<Instant> {
        self.answered_queued
    }

    /// The tag of the oldest command awaiting its reply.
    pub(crate) fn head(&self) -> Option<Tag<C>> {
        self.pending.front().map(|p| p.tag)
    }

    /// Moves the pipeline's unanswered commands to `out`, oldest first (the connection
    /// is lost: they will never be answered).
    pub(crate) fn take_unanswered(&mut self, out: &mut Vec<C>) {
        out.extend(self.pending.iter().filter_map(|p| match p.tag {
            Tag::Pipe(c) => Some(c),
            _ => None,
        }));
        self.pending.retain(|p| !matches!(p.tag, Tag::Pipe(_)));
    }

    /// The head command's deadline, if no timer armed so far fires by then: the caller
    /// adds a timer for it. (A new head may be due sooner than the armed timer — a
    /// blocking pop after non-blocking ones — or a hung server would be noticed late.)
    pub(crate) fn arm_deadline(&mut self) -> Option<Instant> {
        if self.draining.is_some() {
            // Past its deadline already; its drain limit has a timer of its own.
            return None;
        }
        let head = self.pending.front()?.deadline;
        if self.deadline_armed.is_some_and(|at| head >= at) {
            return None;
        }
        self.deadline_armed = Some(head);
        Some(head)
    }

    /// The deadline timer armed for this generation fired at `now`.
    pub(crate) fn deadline_fired(&mut self, now: Instant) -> Deadline<C> {
        if !self.deadline_armed.is_some_and(|at| at <= now) {
            // Not armed, or a timer superseded by an earlier one that is still to fire.
            return Deadline::Moot;
        }
        self.deadline_armed = None;
        if self.draining.is_some() {
            return Deadline::Moot;
        }
        let paused = self.paused;
        let Some(head) = self.pending.front_mut() else {
            return Deadline::Moot;
        };
        if paused {
            // Its reply may be here already, unread: the pipeline stopped reading. The
            // deadline counts again from the resume.
            head.deadline = head.deadline.max(now + head.allow);
        }
        if head.deadline > now {
            self.deadline_armed = Some(head.deadline);
            return Deadline::Rearm(head.deadline);
        }
        Deadline::Overdue(head.tag)
    }

    /// Queues one command for the pipeline, allowed `allow` from `now` (and from when it
    /// reaches the pipeline's head). Sent at the end of the loop turn.
    pub(crate) fn command(
        &mut self,
        tag: Tag<C>,
        now: Instant,
        allow: Duration,
        encode: impl FnOnce(&mut BytesMut),
    ) {
        self.queue(tag, now, allow, false, 0, encode);
    }

    /// As [`Conn::command`], for a transaction: `encode` writes `MULTI`, `framing - 1`
    /// commands and `EXEC`; the `framing` replies before `EXEC`'s are swallowed
    /// ([`Tag::Framing`]), and `EXEC`'s answers `tag`.
    pub(crate) fn command_framed(
        &mut self,
        tag: Tag<C>,
        now: Instant,
        allow: Duration,
        framing: usize,
        encode: impl FnOnce(&mut BytesMut),
    ) {
        self.queue(tag, now, allow, false, framing, encode);
    }

    /// Queues a command answered by push frames if it succeeds (SUBSCRIBE and its kin, in
    /// RESP3 and in RESP2 subscribe mode), and by an error reply in their place if it
    /// fails (an ACL without the channel). Its FIFO entry takes an error reply, and is
    /// dropped when a later command's reply arrives first: so send a command with a
    /// reply after it (a PING) to learn that it succeeded.
    pub(crate) fn command_pushed(
        &mut self,
        tag: Tag<C>,
        now: Instant,
        allow: Duration,
        encode: impl FnOnce(&mut BytesMut),
    ) {
        self.queue(tag, now, allow, true, 0, encode);
    }

    fn queue(
        &mut self,
        tag: Tag<C>,
        now: Instant,
        allow: Duration,
        pushed: bool,
        framing: usize,
        encode: impl FnOnce(&mut BytesMut),
    ) {
        if self.asking && !pushed && matches!(tag, Tag::Pipe(_)) {
            // A one-shot flag on the server's side: it covers the next command only.
            self.wbuf.extend_from_slice(b"*1\r\n$6\r\nASKING\r\n");
            self.pending.push_back(Pending {
                tag: Tag::Asking,
                deadline: now + allow,
                allow,
                pushed: false,
                queued: now,
            });
        }
        for _ in 0..framing {
            self.pending.push_back(Pending {
                tag: Tag::Framing,
                deadline: now + allow,
                allow,
                pushed: false,
                queued: now,
            });
        }
        encode(&mut self.wbuf);
        self.pending.push_back(Pending {
            tag,
            deadline: now + allow,
            allow,
            pushed,
            queued: now,
        });
    }

    #[cfg_attr(not(test), expect(dead_code, reason = "only the seam tests use it"))]
    /// Queues a command no reply answers in order: its only answers are push frames
    /// (RESP3 SUBSCRIBE, redis#11784; every SUBSCRIBE-family command in RESP2 subscribe
    /// mode), which the pipeline counts itself.
    pub(crate) fn command_unanswered(&mut self, encode: impl FnOnce(&mut BytesMut)) {
        encode(&mut self.wbuf);
    }

    /// The next complete frame: the reply to the oldest queued command, or a push frame
    /// (RESP3 `>`; on a subscriber connection, a RESP2 message or (un)subscribe array).
    /// None while reading is paused.
    pub(crate) fn next_reply(&mut self) -> Result<Option<Reply<C>>, Failure> {
        if self.paused {
            return Ok(None);
        }
        let n = match self.dec.scan(&self.rbuf) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(None),
            Err(e) => return Err(Failure::Fatal(Error::protocol(&self.peer(), e))),
        };
        let frame = self.rbuf.split_to(n).freeze();
        if frame.first() == Some(&b'>') || (self.subscriber && is_resp2_push(&frame)) {
            return Ok(Some(Reply::Push(frame)));
        }
        // Commands answered by pushes ahead of this reply succeeded, unless it is the
        // error that answers the first of them.
        let is_error = matches!(frame.first(), Some(b'-' | b'!'));
        while !is_error && self.pending.front().is_some_and(|p| p.pushed) {
            self.pending.pop_front();
        }
        let Some(p) = self.pending.pop_front() else {
            return Err(Failure::Fatal(Error::new(
                ErrorKind::Protocol,
                format!("{} sent a reply nobody asked for", self.peer()),
            )));
        };
        // The next command only starts now (a pipelined BRPOP waits behind one that
        // blocked): it gets its full allowance from here, so a pipeline of blocking pops
        // on a queue that ran dry is never mistaken for a hung server.
        if let Some(next) = self.pending.front_mut() {
            next.deadline = next.deadline.max(Instant::now() + next.allow);
        }
        self.answered_queued = Some(p.queued);
        Ok(Some(Reply::Answer(p.tag, frame)))
    }
}

/// Whether a RESP2 frame is a subscriber connection's push: an array whose first element
/// is `message`, `pmessage`, `smessage` or a (un)subscribe confirmation. (A PING there
/// answers `*2 pong ""`, which is a reply.)
fn is_resp2_push(frame: &[u8]) -> bool {
    const KINDS: [&[u8]; 9] = [
        b"message",
        b"pmessage",
        b"smessage",
        b"subscribe",
        b"psubscribe",
        b"ssubscribe",
        b"unsubscribe",
        b"punsubscribe",
        b"sunsubscribe",
    ];
    if frame.first() != Some(&b'*') {
        return false;
    }
    // `*N\r\n$L\r\n<kind>\r\n`: the kind is the first bulk string.
    let Some(nl) = frame.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let rest = &frame[nl + 1..];
    if rest.first() != Some(&b'$') {
        return false;
    }
    let Some(nl2) = rest.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let body = &rest[nl2 + 1..];
    KINDS.iter().any(|k| {
        body.len() >= k.len() + 2
            && body[..k.len()].eq_ignore_ascii_case(k)
            && &body[k.len()..k.len() + 2] == b"\r\n"
    })
}

#[cfg(test)]
mod tests {
    use super::is_resp2_push;

    #[test]
    fn resp2_subscriber_pushes_are_told_from_replies() {
        assert!(is_resp2_push(
            b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n"
        ));
        assert!(is_resp2_push(
            b"*4\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n$1\r\nx\r\n"
        ));
        assert!(is_resp2_push(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"));
        assert!(is_resp2_push(
            b"*3\r\n$12\r\npunsubscribe\r\n$1\r\np\r\n:0\r\n"
        ));
        assert!(!is_resp2_push(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"));
        assert!(!is_resp2_push(b"*2\r\n$8\r\nmessages\r\n$1\r\nx\r\n"));
        assert!(!is_resp2_push(b"+OK\r\n"));
        assert!(!is_resp2_push(b"*1\r\n:1\r\n"));
    }
}
