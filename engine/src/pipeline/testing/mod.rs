//! A recording pipeline for the seam's own tests: it sends `ECHO` commands, turns their
//! replies and push frames into messages, acknowledges outcomes on the Control connection
//! with another `ECHO`, and records everything the shard hands it, so the tests can check
//! what reached the pipeline — not what a mode made of it.

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringq_resp::{CommandWriter, Reader, Token};

use super::{ControlUse, Drain, Io, Pipeline};
use crate::conn::{Failure, Phase, Tag};
use crate::error::{Error, ErrorKind};
use crate::handler::SourceKind;
use crate::handler::{Message, Outcome, Payload, Span};
use crate::intern::intern_source;

/// The recording pipeline's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TestCmd {
    /// `ECHO m<n>`: its reply is message `m<n>`.
    Fetch(u32),
    /// `ECHO ack:<payload>` on Control, for the n-th outcome.
    Ack(u32),
    /// `ECHO warm`: the first command on Control.
    Warm,
}

/// What reached the pipeline, in order.
#[derive(Debug, Default)]
pub(crate) struct Record {
    pub replies: Vec<(TestCmd, Bytes)>,
    pub pushes: Vec<Bytes>,
    pub outcomes: Vec<(Bytes, Outcome, &'static str)>,
    pub acks_answered: Vec<Bytes>,
    pub lost: Vec<TestCmd>,
    pub timers: Vec<u32>,
    /// Replies that had reached the pipeline when reading resumed.
    pub replies_at_resume: Option<usize>,
    pub ready: u32,
    /// `on_stop` calls that answered `Waiting`.
    pub waited: u32,
}

pub(crate) struct RecordingPipeline {
    pub rec: Arc<Mutex<Record>>,
    /// `ECHO` commands sent on the fetch connection once it is ready (the first time).
    pub fetches: u32,
    /// Acknowledge outcomes on Control, opened when the first outcome arrives.
    pub acks: bool,
    /// Stop the engine once this many outcomes arrived.
    pub stop_after: Option<u32>,
    /// Subscribe the fetch connection to channel `ch` (a command without a FIFO entry).
    pub subscribe: bool,
    /// Pause reading after the first reply; resume on a timer 50 ms later.
    pub pause_after_first: bool,
    fetch_conn: usize,
    sent: bool,
    /// Outcomes whose ack is not sent yet (Control not ready), and acks unanswered.
    unsent: Vec<Bytes>,
    unanswered: u32,
    outcomes: u32,
}

impl RecordingPipeline {
    pub(crate) fn new(rec: Arc<Mutex<Record>>, fetches: u32) -> Self {
        Self {
            rec,
            fetches,
            acks: false,
            stop_after: None,
            subscribe: false,
            pause_after_first: false,
            fetch_conn: 0,
            sent: false,
            unsent: Vec::new(),
            unanswered: 0,
            outcomes: 0,
        }
    }

    fn outcome(
        &mut self,
        io: &mut Io<TestCmd>,
        payload: Bytes,
        outcome: Outcome,
        path: &'static str,
    ) {
        if let Ok(mut r) = self.rec.lock() {
            r.outcomes.push((payload.clone(), outcome, path));
        }
        self.outcomes += 1;
        if self.acks {
            self.unsent.push(payload);
            if io.control_id().is_none() {
                io.want_control();
            }
            self.send_acks(io);
        }
        if self.stop_after == Some(self.outcomes) {
            io.stop_all();
        }
    }

    fn send_acks(&mut self, io: &mut Io<TestCmd>) {
        let allow = io.reply_timeout();
        let Some(control) = io.control_ready() else {
            return;
        };
        for p in self.unsent.drain(..) {
            let n = self.unanswered;
            self.unanswered += 1;
            control.command(Tag::Pipe(TestCmd::Ack(n)), Instant::now(), allow, |buf| {
                let mut ack = b"ack:".to_vec();
                ack.extend_from_slice(&p);
                CommandWriter::new(buf, 2)
                    .arg("ECHO")
                    .arg(&ack[..])
                    .finish();
            });
        }
    }
}

fn message<'f>(frame: &'f Bytes, at: std::ops::Range<usize>, received_ns: u64) -> Message<'f> {
    Message {
        payload: Payload::Lent {
            bytes: &frame[at],
            frame,
        },
        source: intern_source(SourceKind::Queue, b"test", b"test", 0, 0),
        aux: Span::default(),
        deliveries: 1,
        received_ns,
        seq: 0,
    }
}

fn malformed(what: &str) -> Failure {
    Failure::Fatal(Error::new(ErrorKind::Protocol, what.to_owned()))
}

impl Pipeline for RecordingPipeline {
    type Cmd = TestCmd;

    fn fetch_connections(&self) -> usize {
        1
    }

    fn control(&self) -> ControlUse {
        ControlUse::OnDemand
    }

    fn on_ready(&mut self, io: &mut Io<TestCmd>, conn: usize, now: Instant) {
        if let Ok(mut r) = self.rec.lock() {
            r.ready += 1;
        }
        if io.is_control(conn) {
            let allow = io.reply_timeout();
            io.conn_mut(conn)
                .command(Tag::Pipe(TestCmd::Warm), now, allow, |buf| {
                    CommandWriter::new(buf, 2).arg("ECHO").arg("warm").finish();
                });
            self.send_acks(io);
            return;
        }
        io.timer(now + Duration::from_millis(1), 7);
        self.fetch_conn = conn;
        if self.subscribe {
            let c = io.conn_mut(conn);
            let resp2 = !c.server().resp3;
            c.set_subscriber(resp2);
            c.command_unanswered(|buf| {
                CommandWriter::new(buf, 2)
                    .arg("SUBSCRIBE")
                    .arg("ch")
                    .finish();
            });
        }
        if std::mem::replace(&mut self.sent, true) {
            return;
        }
        let allow = io.reply_timeout();
        for n in 0..self.fetches {
            io.conn_mut(conn)
                .command(Tag::Pipe(TestCmd::Fetch(n)), now, allow, |buf| {
                    CommandWriter::new(buf, 2)
                        .arg("ECHO")
                        .arg(format!("m{n}").as_bytes())
                        .finish();
                });
        }
    }

    fn fill(&mut self, io: &mut Io<TestCmd>, _now: Instant) {
        self.send_acks(io);
    }

    fn on_reply<'f>(
        &mut self,
        io: &mut Io<TestCmd>,
        _conn: usize,
        cmd: TestCmd,
        frame: &'f Bytes,
        out: &mut Vec<Message<'f>>,
        _now: Instant,
    ) -> Result<u64, Failure> {
        if let Ok(mut r) = self.rec.lock() {
            r.replies.push((cmd, frame.clone()));
        }
        let mut reader = Reader::new(frame.clone());
        let at = match reader.next_range() {
            Ok(Ok(at)) => at,
            _ => return Err(malformed("expected a bulk string")),
        };
        match cmd {
            TestCmd::Fetch(n) => {
                if n == 0 && self.pause_after_first {
                    io.conn_mut(self.fetch_conn).pause_reading();
                    io.timer(Instant::now() + Duration::from_millis(50), 9);
                }
                let len = at.len() as u64;
                out.push(message(frame, at, io.turn_ns()));
                Ok(len)
            }
            TestCmd::Warm => Ok(0),
            TestCmd::Ack(_) => {
                self.unanswered -= 1;
                if let Ok(mut r) = self.rec.lock() {
                    r.acks_answered.push(frame.slice(at));
                }
                Ok(0)
            }
        }
    }

    fn on_push<'f>(
        &mut self,
        io: &mut Io<TestCmd>,
        _conn: usize,
        frame: &'f Bytes,
        out: &mut Vec<Message<'f>>,
        _now: Instant,
    ) -> Result<u64, Failure> {
        if let Ok(mut r) = self.rec.lock() {
            r.pushes.push(frame.clone());
        }
        // `>3 message <channel> <payload>` (or `*3…` in RESP2): the payload is a
        // message. Confirmations (`subscribe ch 1`) are only recorded.
        let mut reader = Reader::new(frame.clone());
        let n = match reader.next_value_token() {
            Ok(Token::Push(n)) | Ok(Token::Array(n)) => n,
            _ => return Err(malformed("expected a push frame")),
        };
        match reader.next_slice() {
            Ok(Ok(kind)) if kind == b"message" => {}
            Ok(Ok(_)) => return Ok(0),
            _ => return Err(malformed("expected the kind of push")),
        }
        for _ in 0..n.saturating_sub(2) {
            if !matches!(reader.next_slice(), Ok(Ok(_))) {
                return Err(malformed("expected a push element"));
            }
        }
        let Ok(Ok(at)) = reader.next_range() else {
            return Err(malformed("expected the payload"));
        };
        let len = at.len() as u64;
        out.push(message(frame, at, io.turn_ns()));
        Ok(len)
    }

    fn on_outcomes(
        &mut self,
        io: &mut Io<TestCmd>,
        _conn: Option<usize>,
        msgs: &[Message<'_>],
        outcomes: &[Outcome],
        _bytes: u64,
    ) {
        for (m, &o) in msgs.iter().zip(outcomes) {
            self.outcome(io, m.payload_bytes(), o, "inline");
        }
    }

    fn on_worker_outcome(
        &mut self,
        io: &mut Io<TestCmd>,
        msg: &Message<'static>,
        outcome: Outcome,
    ) {
        self.outcome(io, msg.payload_bytes(), outcome, "worker");
    }

    fn owes_effects(&self, _cmd: &TestCmd) -> bool {
        false
    }

    fn blocks(&self, _cmd: &TestCmd) -> bool {
        false
    }

    fn on_stalled(&mut self, _io: &mut Io<TestCmd>, _conn: usize) -> String {
        unreachable!("no command of this pipeline owes effects")
    }

    fn on_lost(
        &mut self,
        _io: &mut Io<TestCmd>,
        _conn: usize,
        unanswered: &[TestCmd],
        _stalled: bool,
    ) {
        if let Ok(mut r) = self.rec.lock() {
            r.lost.extend_from_slice(unanswered);
        }
        self.unanswered = self.unanswered.saturating_sub(
            unanswered
                .iter()
                .filter(|c| matches!(c, TestCmd::Ack(_)))
                .count() as u32,
        );
    }

    fn on_timer(&mut self, io: &mut Io<TestCmd>, id: u32, _now: Instant) {
        if let Ok(mut r) = self.rec.lock() {
            r.timers.push(id);
            if id == 9 {
                assert!(io.conn(self.fetch_conn).reading_paused());
                r.replies_at_resume = Some(r.replies.len());
                io.conn_mut(self.fetch_conn).resume_reading();
            }
        }
    }

    fn on_stop(&mut self, io: &mut Io<TestCmd>, _now: Instant) -> Drain {
        self.send_acks(io);
        let control_gone = io
            .control_id()
            .is_some_and(|c| matches!(io.conn(c).phase(), Phase::Closing | Phase::Done));
        if control_gone || (self.unanswered == 0 && self.unsent.is_empty()) {
            return Drain::Drained;
        }
        if let Ok(mut r) = self.rec.lock() {
            r.waited += 1;
        }
        Drain::Waiting
    }
}
