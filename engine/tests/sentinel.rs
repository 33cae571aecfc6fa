//! Sentinel (`redis+sentinel://`, issue 21) against real servers: a master, a replica and
//! three sentinels (`down-after-milliseconds` 1000) on loopback. Failovers during a drain
//! in every mode — planned (`SENTINEL FAILOVER`) and a crash (SIGKILL of the master) —
//! and then the counts: reliable and stream mode lose nothing (duplicates bounded by the
//! prefetch), pop mode counts what it may have lost, listen mode reports a gap and
//! resumes. Sentinels that are down or frozen are skipped.
//!
//! Each test checks the failover really happened mid-run (the master moved while
//! messages were still queued), so it can fail.

use std::time::{Duration, Instant};

use ringq::{
    ErrorKind, Event, ListenConsumer, PopConsumer, ReliableConsumer, StartAt, StreamConsumer,
};
use ringq_resp::Frame;
use ringq_tests::{wait_until, SentinelGroup, SentinelOptions, TestClient, TestPki};

mod support;
use support::{builder, payloads, xadd, Recorder, WAIT};

fn group() -> SentinelGroup {
    SentinelGroup::start("ringq-m", 1, 3).expect("a master, a replica and three sentinels")
}

/// A client of the current master.
fn master(g: &SentinelGroup) -> TestClient {
    g.master().unwrap().client().unwrap()
}

/// Waits until the replica has everything the master wrote (`WAIT 1`), so a failover
/// loses no message the test produced.
fn replicated(c: &mut TestClient) {
    let f = c.cmd(["WAIT", "1", "10000"]).unwrap();
    assert_eq!(f, Frame::Integer(1), "the replica acknowledged the writes");
}

/// The group `g`'s pending count on `stream` (XPENDING summary).
fn pending(c: &mut TestClient, stream: &str) -> i64 {
    match c.cmd(["XPENDING", stream, "g"]) {
        Ok(Frame::Array(v)) => v.first().and_then(Frame::as_integer).unwrap_or(-1),
        _ => -1,
    }
}

/// How a test moves the master.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `SENTINEL FAILOVER`.
    Planned,
    /// SIGKILL of the master; the sentinels notice after `down-after-milliseconds`.
    Crash,
}

/// Moves the master away and returns when the sentinels name the new one.
///
/// In a planned failover the old master keeps accepting commands from the moment the
/// replica is promoted until the sentinels announce the switch (`+switch-master`, at the
/// end of the failover): what the engine leases and acks there is not replicated, so
/// those messages are delivered again by the new master. Duplicates are bounded by what
/// was delivered during the failover plus the prefetch, not by the prefetch alone.
fn fail_over(g: &SentinelGroup, fault: Fault) -> Instant {
    let before = g.master_addr().unwrap();
    let at = Instant::now();
    match fault {
        Fault::Planned => {
            g.failover().unwrap();
        }
        Fault::Crash => {
            g.master().unwrap().kill().unwrap();
            g.wait_switched(before).unwrap();
        }
    }
    assert_ne!(g.master_addr().unwrap(), before, "the master moved");
    at
}

/// The at-least-once modes, drained through a failover.
#[derive(Clone, Copy, Debug)]
enum Acked {
    Reliable,
    Stream,
}

/// Drains 30 000 messages in `mode` while `fault` moves the master; then nothing is
/// lost, duplicates are bounded, and nothing stays leased or pending at the new master.
fn acked_loses_nothing(fault: Fault, mode: Acked) {
    let g = group();
    let mut c = master(&g);
    const N: usize = 30_000;
    match mode {
        Acked::Reliable => {
            c.lpush_many("aq", payloads("m", N)).unwrap();
        }
        Acked::Stream => xadd(&mut c, "aq", "m", N, None),
    }
    replicated(&mut c);
    let seen = Recorder::<String>::default();
    let b = builder(g.url()).prefetch(512);
    let handler = seen.deciding(support::ack_after(Duration::from_micros(100)));
    let running = match mode {
        Acked::Reliable => b.start(ReliableConsumer::new("c1", ["aq"]).batch(32), handler),
        Acked::Stream => b.start(
            StreamConsumer::new("g", "c1", ["aq"])
                .start_at(StartAt::Beginning)
                .batch(32),
            handler,
        ),
    }
    .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 2000), "draining");
    let before = seen.len();
    let at = fail_over(&g, fault);
    let in_window = seen.len() - before;
    let during = seen.distinct();
    assert!(
        during < N,
        "{fault:?}: the failover came mid-drain ({during} of {N})"
    );
    assert!(
        wait_until(WAIT, || seen.distinct() > during),
        "{fault:?}: messages flow from the new master"
    );
    println!(
        "{fault:?}, {mode:?}: first new message {:?} after the fault",
        at.elapsed()
    );
    assert!(
        wait_until(WAIT, || seen.distinct() >= N),
        "{fault:?}: delivered {} of {N}",
        seen.distinct()
    );
    // Nothing stays leased or pending at the new master: acks the old master took and
    // did not replicate leave their messages there, and the engine takes them back
    // (delivered again: duplicates, never stuck).
    let left = |g: &SentinelGroup| -> i64 {
        let mut c = master(g);
        match mode {
            Acked::Reliable => {
                let processing = ringq::envelope::keys::processing(b"aq", b"c1");
                c.llen(&processing).unwrap_or(-1) + c.llen("aq").unwrap_or(-1)
            }
            Acked::Stream => pending(&mut c, "aq"),
        }
    };
    let settled = wait_until(WAIT, || left(&g) == 0);
    let stats = running.shutdown().unwrap();
    assert!(settled, "{fault:?}: {} left leased or pending", left(&g));
    let (distinct, dups) = seen.tally();
    assert_eq!(distinct, N, "{fault:?}: 0 lost");
    assert!(
        stats.reconnects >= 1,
        "{fault:?}: reconnected to the new master"
    );
    assert!(
        dups <= in_window + 2 * 512,
        "{fault:?}: duplicates ({dups}) bounded by the deliveries during the failover \
         ({in_window}) and the prefetch"
    );
    println!(
        "{fault:?}, {mode:?}: {N} delivered, {dups} duplicates ({in_window} delivered during \
         the failover)"
    );
}

#[test]
fn a_planned_failover_loses_nothing_in_reliable_mode() {
    acked_loses_nothing(Fault::Planned, Acked::Reliable);
}

#[test]
fn a_crashed_master_loses_nothing_in_reliable_mode() {
    acked_loses_nothing(Fault::Crash, Acked::Reliable);
}

#[test]
fn a_planned_failover_loses_nothing_in_stream_mode() {
    acked_loses_nothing(Fault::Planned, Acked::Stream);
}

#[test]
fn a_crashed_master_loses_nothing_in_stream_mode() {
    acked_loses_nothing(Fault::Crash, Acked::Stream);
}

fn pop_counts_what_it_may_lose(fault: Fault) {
    let g = group();
    let mut c = master(&g);
    const N: usize = 30_000;
    c.lpush_many("pq", payloads("p", N)).unwrap();
    replicated(&mut c);
    let seen = Recorder::<String>::default();
    let running = builder(g.url())
        .prefetch(512)
        .start(
            PopConsumer::new(["pq"]).batch(32),
            seen.deciding(support::ack_after(Duration::from_micros(100))),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 2000), "draining");
    fail_over(&g, fault);
    let during = seen.distinct();
    assert!(during < N, "{fault:?}: the failover came mid-drain");
    // At-most-once: the new master may still hold pops whose answers the old one sent
    // and never replicated (redelivered: duplicates), or the old master applied pops it
    // did not replicate whose answers were lost (lost: counted as possibly lost).
    let settled = wait_until(WAIT, || {
        let left = master(&g).llen("pq").unwrap_or(1);
        left == 0 && seen.len() >= during
    });
    assert!(settled, "{fault:?}: the queue drained at the new master");
    std::thread::sleep(Duration::from_millis(500));
    let stats = running.shutdown().unwrap();
    let (distinct, dups) = seen.tally();
    let lost = N - distinct;
    println!(
        "{fault:?}, pop: {distinct} of {N} delivered, {dups} duplicates, {lost} lost; \
         possibly_lost counted {}, unanswered pops {}",
        stats.possibly_lost, stats.unanswered_pops
    );
    assert!(stats.reconnects >= 1);
    assert!(
        lost as u64 <= stats.possibly_lost,
        "{fault:?}: every lost message was counted as possibly lost ({lost} lost, {} counted)",
        stats.possibly_lost
    );
}

#[test]
fn a_planned_failover_in_pop_mode_counts_what_may_be_lost() {
    pop_counts_what_it_may_lose(Fault::Planned);
}

#[test]
fn a_crashed_master_in_pop_mode_counts_what_may_be_lost() {
    pop_counts_what_it_may_lose(Fault::Crash);
}

fn listen_reports_a_gap_and_resumes(fault: Fault) {
    let g = group();
    let seen = Recorder::<(String, Option<String>, String)>::default();
    let running = builder(g.url())
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start(ListenConsumer::new().channel("news"), seen.clone())
        .unwrap();
    let subscribed = |g: &SentinelGroup| {
        wait_until(WAIT, || {
            master(g).publish("news", "probe").unwrap_or(0) >= 1
        })
    };
    assert!(subscribed(&g), "subscribed at the first master");
    fail_over(&g, fault);
    assert!(
        subscribed(&g),
        "{fault:?}: subscribed again at the new master"
    );
    assert!(
        wait_until(WAIT, || !seen.gaps().is_empty()),
        "{fault:?}: a gap was reported"
    );
    let before = seen.len();
    master(&g).publish("news", "after").unwrap();
    assert!(
        wait_until(WAIT, || seen.len() > before),
        "{fault:?}: resumed"
    );
    let stats = running.shutdown().unwrap();
    assert!(stats.gaps >= 1);
    assert!(matches!(seen.gaps()[0], Event::Gap { .. }));
}

#[test]
fn a_planned_failover_in_listen_mode_reports_a_gap_and_resumes() {
    listen_reports_a_gap_and_resumes(Fault::Planned);
}

#[test]
fn a_crashed_master_in_listen_mode_reports_a_gap_and_resumes() {
    listen_reports_a_gap_and_resumes(Fault::Crash);
}

/// The first sentinel of the URL is down, the second frozen (it accepts connections and
/// answers nothing): the engine asks them in turn, each with a short deadline, and
/// connects through the third.
#[test]
fn a_sentinel_that_is_down_or_frozen_is_skipped() {
    let g = group();
    let mut c = master(&g);
    c.lpush_many("kq", payloads("k", 100)).unwrap();
    g.kill_sentinel(0).unwrap();
    g.freeze_sentinel(1).unwrap();
    let seen = Recorder::<String>::default();
    let running = builder(g.url())
        .start(PopConsumer::new(["kq"]), seen.clone())
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 100), "got {}", seen.len());
    running.shutdown().unwrap();
    g.thaw_sentinel(1).unwrap();
}

/// A master name no sentinel knows fails the start, saying what each sentinel said.
#[test]
fn an_unknown_master_name_is_a_clear_error() {
    let g = group();
    let url = g.url().replace("/ringq-m", "/no-such-master");
    let e = match builder(url).start(PopConsumer::new(["q"]), Recorder::<String>::default()) {
        Ok(r) => r.wait().expect_err("an unknown master stops the engine"),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}");
    let text = e.to_string();
    assert!(text.contains("no-such-master"), "{text}");
    assert!(text.contains("does not know"), "{text}");
}

/// `rediss+sentinel://`: the sentinels and the data nodes all speak TLS (the Valkey 9
/// wheel here has no TLS: redis-server only), the data nodes and the sentinels each have
/// a password of their own. A wrong data password is an authentication error that never
/// shows it; with the right ones, a planned failover in reliable mode loses nothing.
#[test]
fn tls_sentinels_with_passwords_fail_over_without_loss() {
    let pki = TestPki::generate().unwrap();
    let opts = SentinelOptions {
        sentinel_password: Some("sentinel-pw-1"),
        data_password: Some("data-pw-2"),
        tls: Some(&pki),
    };
    let g = SentinelGroup::start_with("tls-m", 1, 3, &opts).unwrap();
    assert!(g.url().starts_with("rediss+sentinel://"));
    let tls = || ringq::Tls::new().ca_cert(pki.ca_cert());

    let e = match builder(g.url())
        .tls(tls())
        .sentinel_password("sentinel-pw-1")
        .password("wrong-DATA-pw-9")
        .start(PopConsumer::new(["q"]), Recorder::<String>::default())
    {
        Ok(r) => r
            .wait()
            .expect_err("a wrong data password stops the engine"),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(!format!("{e} {e:?}").contains("wrong-DATA-pw-9"), "{e}");

    let mut c = master(&g);
    const N: usize = 20_000;
    c.lpush_many("tq", payloads("t", N)).unwrap();
    replicated(&mut c);
    let seen = Recorder::<(String, u32, Instant)>::default();
    let running = builder(g.url())
        .tls(tls())
        .sentinel_password("sentinel-pw-1")
        .password("data-pw-2")
        .prefetch(512)
        .start(
            ReliableConsumer::new("c1", ["tq"]).batch(32),
            seen.deciding(support::ack_after(Duration::from_micros(100))),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 2000), "draining over TLS");
    fail_over(&g, Fault::Planned);
    assert!(seen.distinct() < N, "the failover came mid-drain");
    assert!(
        wait_until(WAIT, || seen.distinct() >= N),
        "delivered {} of {N}",
        seen.distinct()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.tally().0, N, "0 lost");
    assert!(stats.reconnects >= 1);
}

/// The URL names one sentinel; the engine learns the other two from its `SENTINEL
/// SENTINELS`. With that one killed, a reconnect still finds the master through the
/// sentinels it was never told about.
#[test]
fn sentinels_the_url_does_not_name_are_learned_and_used() {
    let g = group();
    let first = g.sentinel_ports()[0];
    let url = format!("redis+sentinel://127.0.0.1:{first}/{}", g.name());
    let mut c = master(&g);
    let seen = Recorder::<String>::default();
    let running = builder(url)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start(PopConsumer::new(["lq"]), seen.clone())
        .unwrap();
    c.lpush_many("lq", payloads("a", 10)).unwrap();
    assert!(
        wait_until(WAIT, || seen.len() >= 10),
        "served through the one sentinel"
    );
    g.kill_sentinel(0).unwrap();
    // Every connection of the engine is cut: each reconnect asks the sentinels.
    let killed = c
        .client_kill(&[("TYPE", "normal"), ("SKIPME", "yes")])
        .unwrap();
    assert!(killed >= 1, "the engine's connections were cut");
    c.lpush_many("lq", payloads("b", 10)).unwrap();
    assert!(
        wait_until(WAIT, || seen.len() >= 20),
        "served again through a sentinel learned from the first: got {}",
        seen.len()
    );
    let stats = running.shutdown().unwrap();
    assert!(stats.reconnects >= 1);
}
