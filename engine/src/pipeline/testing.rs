//! A recording pipeline for the seam's own tests: it sends `ECHO` commands, turns their
//! replies and push frames into messages, acknowledges outcomes on the Control connection
//! with another `ECHO`, and records everything the shard hands it, so the tests can check
//! what reached the pipeline — not what a mode made of it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringq_resp::{CommandWriter, Reader, Token};

use super::{ControlUse, Drain, Io, Pipeline};
use crate::conn::{Failure, Phase, Role, Tag};
use crate::error::{Error, ErrorKind};
use crate::handler::{Message, Outcome, Payload};

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
            if io.control.is_none() {
                io.want_control = true;
            }
            self.send_acks(io);
        }
        if self.stop_after == Some(self.outcomes) {
            io.shared.stop_all();
        }
    }

    fn send_acks(&mut self, io: &mut Io<TestCmd>) {
        let allow = io.reply_timeout;
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
        queue: b"test",
        key: b"test",
        priority: 0,
        queue_index: 0,
        deliveries: 1,
        received_ns,
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
        if io.conns[conn].role() == Role::Control {
            let allow = io.reply_timeout;
            io.conns[conn].command(Tag::Pipe(TestCmd::Warm), now, allow, |buf| {
                CommandWriter::new(buf, 2).arg("ECHO").arg("warm").finish();
            });
            self.send_acks(io);
            return;
        }
        io.timer(now + Duration::from_millis(1), 7);
        self.fetch_conn = conn;
        if self.subscribe {
            let c = &mut io.conns[conn];
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
        let allow = io.reply_timeout;
        for n in 0..self.fetches {
            io.conns[conn].command(Tag::Pipe(TestCmd::Fetch(n)), now, allow, |buf| {
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
                    io.conns[self.fetch_conn].pause_reading();
                    io.timer(Instant::now() + Duration::from_millis(50), 9);
                }
                let len = at.len() as u64;
                out.push(message(frame, at, io.turn_ns));
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
        out.push(message(frame, at, io.turn_ns));
        Ok(len)
    }

    fn on_outcomes(
        &mut self,
        io: &mut Io<TestCmd>,
        _conn: usize,
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
                assert!(io.conns[self.fetch_conn].reading_paused());
                r.replies_at_resume = Some(r.replies.len());
                io.conns[self.fetch_conn].resume_reading();
            }
        }
    }

    fn on_stop(&mut self, io: &mut Io<TestCmd>, _now: Instant) -> Drain {
        self.send_acks(io);
        let control_gone = io
            .control
            .is_some_and(|c| matches!(io.conns[c].phase(), Phase::Closing | Phase::Done));
        if control_gone || (self.unanswered == 0 && self.unsent.is_empty()) {
            return Drain::Drained;
        }
        if let Ok(mut r) = self.rec.lock() {
            r.waited += 1;
        }
        Drain::Waiting
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use ringq_tests::{RedisServer, Script, ScriptedServer};

    use super::{Record, RecordingPipeline, TestCmd};
    use crate::engine::Launch;
    use crate::{Dispatch, EngineBuilder, Message, Outcome, Running};

    const HELLO3: &str = "%2\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n$2\r\nid\r\n:7\r\n";

    fn launch(url: &str, dispatch: Dispatch, pipeline: RecordingPipeline) -> Running {
        let launch = Launch {
            fetch_per_shard: vec![1],
            prefetch: 1000,
            prefetch_bytes: 1 << 20,
            limit: None,
            sources: vec!["test".into()],
            reply_timeout: Duration::from_secs(10),
            reply_grace: Duration::from_secs(2),
        };
        let mut once = Some(pipeline);
        EngineBuilder::new(url)
            .pin_cores(false)
            .backoff(Duration::from_millis(5), Duration::from_millis(20))
            .idle_ping(Duration::from_secs(600))
            .dispatch(dispatch)
            .launch(
                launch,
                |m: &Message<'_>| match m.payload().last() {
                    Some(b'7') => Outcome::Dead,
                    Some(b'3') => Outcome::Retry,
                    _ => Outcome::Ack,
                },
                move |_, _| once.take().expect("one shard"),
            )
            .expect("engine starts")
    }

    fn wait_for(rec: &Mutex<Record>, what: &str, f: impl Fn(&Record) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f(&rec.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "never happened: {what}; saw {:?}",
                rec.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn expected(n: u32) -> Outcome {
        match n % 10 {
            7 => Outcome::Dead,
            3 => Outcome::Retry,
            _ => Outcome::Ack,
        }
    }

    /// Outcomes reach the pipeline on the shard thread: from worker threads through the
    /// results ring, and inline right after the handler, one per message, as returned.
    #[test]
    fn an_outcome_from_a_worker_thread_reaches_the_pipeline() {
        let server = RedisServer::start().unwrap();
        for (dispatch, path) in [
            (Dispatch::workers(2), "worker"),
            (Dispatch::orderly(2), "worker"),
            (Dispatch::inline(), "inline"),
        ] {
            let rec = Arc::new(Mutex::new(Record::default()));
            let mut p = RecordingPipeline::new(rec.clone(), 50);
            p.stop_after = Some(50);
            let stats = launch(&server.url(), dispatch, p).wait().unwrap();
            let rec = rec.lock().unwrap();
            assert_eq!(rec.outcomes.len(), 50, "{path}: {rec:?}");
            let mut seen: Vec<(u32, Outcome)> = rec
                .outcomes
                .iter()
                .map(|(p, o, via)| {
                    assert_eq!(*via, path);
                    (std::str::from_utf8(&p[1..]).unwrap().parse().unwrap(), *o)
                })
                .collect();
            seen.sort_by_key(|(n, _)| *n);
            let want: Vec<(u32, Outcome)> = (0..50).map(|n| (n, expected(n))).collect();
            assert_eq!(seen, want, "{path}");
            assert_eq!(
                (stats.messages, stats.dead, stats.retried),
                (50, 5, 5),
                "{path}"
            );
        }
    }

    /// Under RESP3 a push frame can arrive between replies on one connection: it goes to
    /// the pipeline's push path, and every reply still reaches the command it answers.
    #[test]
    fn a_push_frame_interleaved_with_replies_is_routed_apart_from_them() {
        let push = |p: &str| format!(">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n${}\r\n{p}\r\n", p.len());
        let script = Script::new()
            .reply(HELLO3)
            .reply(format!("{}$2\r\nm0\r\n", push("p1")))
            .reply(format!("$2\r\nm1\r\n{}", push("p2")))
            .reply("$2\r\nm2\r\n");
        let server = ScriptedServer::start(script).unwrap();
        let rec = Arc::new(Mutex::new(Record::default()));
        let mut p = RecordingPipeline::new(rec.clone(), 3);
        p.stop_after = Some(5);
        let stats = launch(&server.url(), Dispatch::inline(), p).wait().unwrap();
        let rec = rec.lock().unwrap();
        let replies: Vec<(TestCmd, &[u8])> =
            rec.replies.iter().map(|(c, f)| (*c, &f[..])).collect();
        assert_eq!(
            replies,
            vec![
                (TestCmd::Fetch(0), &b"$2\r\nm0\r\n"[..]),
                (TestCmd::Fetch(1), b"$2\r\nm1\r\n"),
                (TestCmd::Fetch(2), b"$2\r\nm2\r\n"),
            ]
        );
        assert_eq!(
            rec.pushes,
            vec![Bytes::from(push("p1")), Bytes::from(push("p2"))]
        );
        let order: Vec<&[u8]> = rec.outcomes.iter().map(|(p, _, _)| &p[..]).collect();
        assert_eq!(order, [&b"p1"[..], b"m0", b"m1", b"p2", b"m2"]);
        assert_eq!(stats.messages, 5);
    }

    /// A connection lost with commands in flight hands them back to the pipeline, oldest
    /// first; the one answered before the loss is not among them.
    #[test]
    fn a_lost_connection_hands_its_unanswered_commands_back() {
        let script = Script::new()
            .reply(HELLO3)
            .reply("$2\r\nm0\r\n")
            .then_close();
        let server = ScriptedServer::start(script).unwrap();
        let rec = Arc::new(Mutex::new(Record::default()));
        let running = launch(
            &server.url(),
            Dispatch::inline(),
            RecordingPipeline::new(rec.clone(), 4),
        );
        wait_for(&rec, "the lost commands handed back", |r| {
            !r.lost.is_empty()
        });
        wait_for(&rec, "a reconnect", |r| r.ready >= 2);
        running.shutdown().unwrap();
        let rec = rec.lock().unwrap();
        assert_eq!(rec.replies.len(), 1, "{rec:?}");
        assert_eq!(rec.replies[0].0, TestCmd::Fetch(0));
        assert_eq!(
            rec.lost,
            [TestCmd::Fetch(1), TestCmd::Fetch(2), TestCmd::Fetch(3)]
        );
        assert!(
            rec.timers.contains(&7),
            "the pipeline's own timer fired: {rec:?}"
        );
    }

    /// Subscribing is a command without a FIFO entry: against a real server (RESP3) its
    /// confirmation and the published messages arrive as push frames, and the idle PING
    /// sent meanwhile still gets its own reply.
    #[test]
    fn a_subscribe_without_a_fifo_entry_gets_its_messages_as_push_frames() {
        let server = RedisServer::start().unwrap();
        let rec = Arc::new(Mutex::new(Record::default()));
        let mut p = RecordingPipeline::new(rec.clone(), 0);
        p.subscribe = true;
        p.stop_after = Some(3);
        let running = launch(&server.url(), Dispatch::inline(), p);
        wait_for(&rec, "the subscription confirmed", |r| !r.pushes.is_empty());
        let mut client = server.client().unwrap();
        for m in ["a", "b", "c"] {
            assert_eq!(client.publish("ch", m).unwrap(), 1);
        }
        let stats = running.wait().unwrap();
        let rec = rec.lock().unwrap();
        assert_eq!(
            rec.pushes.len(),
            4,
            "a confirmation and three messages: {rec:?}"
        );
        let got: Vec<&[u8]> = rec.outcomes.iter().map(|(p, _, _)| &p[..]).collect();
        assert_eq!(got, [&b"a"[..], b"b", b"c"]);
        assert_eq!(stats.messages, 3);
    }

    /// On a RESP2 subscriber connection, message and subscribe arrays are push frames, not
    /// replies nobody asked for.
    #[test]
    fn resp2_message_arrays_on_a_subscriber_connection_are_push_frames() {
        let script = Script::new()
            .reply("-ERR unknown command 'HELLO'\r\n")
            .reply("+OK\r\n")
            .reply(concat!(
                "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
                "*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n",
                "*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\ny\r\n",
            ));
        let server = ScriptedServer::start(script).unwrap();
        let rec = Arc::new(Mutex::new(Record::default()));
        let mut p = RecordingPipeline::new(rec.clone(), 0);
        p.subscribe = true;
        p.stop_after = Some(2);
        launch(&server.url(), Dispatch::inline(), p).wait().unwrap();
        let rec = rec.lock().unwrap();
        assert_eq!(rec.pushes.len(), 3, "{rec:?}");
        let got: Vec<&[u8]> = rec.outcomes.iter().map(|(p, _, _)| &p[..]).collect();
        assert_eq!(got, [&b"x"[..], b"y"]);
        assert_eq!(server.received()[2], ["SUBSCRIBE", "ch"]);
    }

    /// A paused connection hands on no reply, though the server sent them all; once it
    /// resumes, the buffered ones arrive in order.
    #[test]
    fn reading_pauses_and_resumes() {
        let script = Script::new()
            .reply(HELLO3)
            .reply("$2\r\nm0\r\n$2\r\nm1\r\n$2\r\nm2\r\n");
        let server = ScriptedServer::start(script).unwrap();
        let rec = Arc::new(Mutex::new(Record::default()));
        let mut p = RecordingPipeline::new(rec.clone(), 3);
        p.pause_after_first = true;
        p.stop_after = Some(3);
        launch(&server.url(), Dispatch::inline(), p).wait().unwrap();
        let rec = rec.lock().unwrap();
        assert_eq!(rec.replies_at_resume, Some(1), "{rec:?}");
        let got: Vec<&[u8]> = rec.outcomes.iter().map(|(p, _, _)| &p[..]).collect();
        assert_eq!(got, [&b"m0"[..], b"m1", b"m2"]);
    }

    /// A stop waits until the pipeline says its last acks are answered before it closes
    /// the Control connection: here the stop begins while Control is still connecting,
    /// with the ack not even sent, and the server is slow to answer it.
    #[test]
    fn a_stop_waits_for_the_pipeline_to_report_its_last_acks_answered() {
        // Every connection: HELLO, one prompt reply, then a slow one. The fetch
        // connection sends one command; Control sends `ECHO warm`, then the ack.
        let script = Script::new()
            .reply(HELLO3)
            .reply("$2\r\nok\r\n")
            .pause(Duration::from_millis(400))
            .reply("$4\r\nslow\r\n");
        let server = ScriptedServer::start(script).unwrap();
        let rec = Arc::new(Mutex::new(Record::default()));
        let mut p = RecordingPipeline::new(rec.clone(), 1);
        p.acks = true;
        p.stop_after = Some(1);
        let stats = launch(&server.url(), Dispatch::inline(), p).wait().unwrap();
        let rec = rec.lock().unwrap();
        assert_eq!(stats.messages, 1);
        assert_eq!(rec.acks_answered, [Bytes::from_static(b"slow")], "{rec:?}");
        assert!(
            rec.waited > 0,
            "the stop found the ack unanswered and waited: {rec:?}"
        );
        let acks = server
            .received()
            .iter()
            .filter(|c| {
                c.first().is_some_and(|a| a == "ECHO")
                    && c.get(1).is_some_and(|a| a.starts_with(b"ack:"))
            })
            .count();
        assert_eq!(acks, 1);
    }
}
