//! The seam's tests, each driving a real shard loop with the recording pipeline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringq_tests::{RedisServer, Script, ScriptedServer};

use super::{Record, RecordingPipeline, TestCmd};
use crate::engine::launch::{launch as launch_with, Launch};
use crate::pipeline::Timing;
use crate::{Dispatch, EngineBuilder, Message, Outcome, Running};

const HELLO3: &str = "%2\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n$2\r\nid\r\n:7\r\n";

fn launch(url: &str, dispatch: Dispatch, pipeline: RecordingPipeline) -> Running {
    let launch = Launch {
        fetch_per_shard: vec![1],
        prefetch: 1000,
        prefetch_bytes: 1 << 20,
        limit: None,
        sources: vec!["test".into()],
        mode: "test",
        group: None,
        timing: Timing {
            reply_timeout: Duration::from_secs(10),
            reply_grace: Duration::from_secs(2),
        },
        routes: Vec::new(),
        depth: crate::engine::DepthPlan::none(1),
    };
    let mut once = Some(pipeline);
    let builder = EngineBuilder::new(url)
        .pin_cores(false)
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .idle_ping(Duration::from_secs(600))
        .dispatch(dispatch);
    launch_with(
        builder,
        launch,
        |m: &Message<'_>| match m.payload().last() {
            Some(b'7') => Outcome::Dead,
            Some(b'3') => Outcome::Retry,
            _ => Outcome::Ack,
        },
        move |_| once.take().expect("one shard"),
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
    let replies: Vec<(TestCmd, &[u8])> = rec.replies.iter().map(|(c, f)| (*c, &f[..])).collect();
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
