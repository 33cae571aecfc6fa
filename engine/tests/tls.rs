//! TLS (`rediss://`, issue 21) against a real redis-server listening with TLS on a second
//! port, with a throw-away CA made by the harness. Debian's redis-server 7.0 is built
//! with TLS; the Valkey 9 wheel here is not, so these cases run on redis-server only.
//! `scripts/test.sh` runs this file on io_uring and again on epoll.
//!
//! Every mode end to end (in order where the mode promises it), mutual TLS, each
//! misconfiguration as a clear error (never a hang), and faults — CLIENT KILL, a server
//! restart, a connection cut in the middle of a TLS record — after which reliable and
//! stream mode have lost nothing.

use std::time::{Duration, Instant};

use ringq::{
    EngineBuilder, ErrorKind, ListenConsumer, PopConsumer, ReliableConsumer, StartAt,
    StreamConsumer, Tls,
};
use ringq_tests::{wait_until, Fault, FaultProxy, RedisServer, TestClient, TestPki};

mod support;
use support::{builder, payloads, wait_any_blocked, xadd, Recorder, WAIT};

fn pki() -> TestPki {
    TestPki::generate().expect("test certificates")
}

fn tls_server(pki: &TestPki, require_client_cert: bool) -> RedisServer {
    RedisServer::builder()
        .tls(pki, require_client_cert)
        .start()
        .expect("redis-server with TLS (Debian's is built with it; scripts/setup.sh)")
}

/// Trusts the test CA.
fn trusting(pki: &TestPki) -> Tls {
    Tls::new().ca_cert(pki.ca_cert())
}

/// How many of the server's clients came in over TLS (`CLIENT LIST` has no TLS flag, but
/// the engine's connections are the ones named `ringq-…`, and the only way in for them
/// here is the TLS port; this checks they are there and serving).
fn engine_clients(c: &mut TestClient) -> usize {
    c.client_list()
        .unwrap()
        .iter()
        .filter(|i| i.get("name").is_some_and(|n| n.starts_with("ringq-")))
        .count()
}

#[test]
fn pop_mode_over_tls_delivers_every_message_in_order() {
    let pki = pki();
    let server = tls_server(&pki, false);
    let mut c = server.client().unwrap();
    const N: usize = 30_000;
    let sent = payloads("p", N);
    c.lpush_many("tq", &sent).unwrap();
    // Large payloads too: replies spanning many TLS records and many receives.
    let big: Vec<String> = (0..40)
        .map(|i| format!("{i:04}{}", "x".repeat(300_000)))
        .collect();
    c.lpush_many("tbig", &big).unwrap();
    let seen = Recorder::<(String, String, u8)>::default();
    let running = builder(server.tls_url())
        .tls(trusting(&pki))
        .start(PopConsumer::new(["tq", "tbig"]).batch(100), seen.clone())
        .unwrap();
    assert!(
        wait_until(WAIT, || seen.len() >= N + big.len()),
        "delivered {} of {}",
        seen.len(),
        N + big.len()
    );
    assert!(engine_clients(&mut c) >= 1, "the engine is connected");
    running.shutdown().unwrap();
    let log = seen.snapshot();
    let of = |q: &str| -> Vec<String> {
        log.iter()
            .filter(|r| r.0 == q)
            .map(|r| r.1.clone())
            .collect()
    };
    // Pushed on the left, popped from the right: each queue in the order pushed.
    assert_eq!(of("tq"), sent, "every message once, in order");
    assert!(
        of("tbig") == big,
        "the 300 KB payloads arrive whole, in order"
    );
}

#[test]
fn reliable_mode_over_tls_delivers_exactly_once_in_order() {
    let pki = pki();
    let server = tls_server(&pki, false);
    let mut c = server.client().unwrap();
    const N: usize = 20_000;
    let sent = payloads("r", N);
    c.lpush_many("rq", &sent).unwrap();
    let seen = Recorder::<(String, u32, Instant)>::default();
    let running = builder(server.tls_url())
        .tls(trusting(&pki))
        .start(ReliableConsumer::new("c1", ["rq"]).batch(64), seen.clone())
        .unwrap();
    assert!(
        wait_until(WAIT, || seen.len() >= N),
        "delivered {}",
        seen.len()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.tally(), (N, 0), "exactly once");
    assert_eq!(
        seen.payloads(),
        sent,
        "in the order pushed (LPUSH, popped from the right)"
    );
    assert_eq!(stats.acked, N as u64);
    assert_eq!(c.llen("rq").unwrap(), 0);
}

#[test]
fn stream_mode_over_tls_delivers_exactly_once_in_order() {
    let pki = pki();
    let server = tls_server(&pki, false);
    let mut c = server.client().unwrap();
    const N: usize = 20_000;
    xadd(&mut c, "ts", "s", N, None);
    let seen = Recorder::<(String, String, u32, Instant)>::default();
    let running = builder(server.tls_url())
        .tls(trusting(&pki))
        .start(
            StreamConsumer::new("g", "c1", ["ts"]).start_at(StartAt::Beginning),
            seen.clone(),
        )
        .unwrap();
    assert!(
        wait_until(WAIT, || seen.len() >= N),
        "delivered {}",
        seen.len()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.tally(), (N, 0), "exactly once");
    assert_eq!(seen.payloads(), payloads("s", N), "in stream order");
    assert_eq!(stats.acked, N as u64);
}

#[test]
fn listen_mode_over_tls_receives_every_publish_in_order() {
    let pki = pki();
    let server = tls_server(&pki, false);
    let mut c = server.client().unwrap();
    let seen = Recorder::<(String, Option<String>, String)>::default();
    let running = builder(server.tls_url())
        .tls(trusting(&pki))
        .start(ListenConsumer::new().channel("tc"), seen.clone())
        .unwrap();
    assert!(
        wait_until(WAIT, || {
            c.cmd(["PUBSUB", "NUMSUB", "tc"])
                .ok()
                .and_then(|f| f.as_elements().and_then(|e| e.get(1)?.as_integer()))
                == Some(1)
        }),
        "subscribed over TLS"
    );
    let sent = payloads("l", 50_000);
    assert_eq!(c.publish_many("PUBLISH", "tc", &sent).unwrap(), 50_000);
    assert!(
        wait_until(WAIT, || seen.len() >= sent.len()),
        "got {}",
        seen.len()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.payloads(), sent, "every message, in order");
    assert_eq!(stats.gaps, 0);
}

#[test]
fn a_dns_name_is_verified_against_the_certificate_too() {
    let pki = pki();
    let server = tls_server(&pki, false);
    let mut c = server.client().unwrap();
    c.lpush_many("dq", payloads("d", 100)).unwrap();
    let seen = Recorder::<String>::default();
    let running = builder(server.tls_url_for("localhost"))
        .tls(trusting(&pki))
        .start(PopConsumer::new(["dq"]), seen.clone())
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 100));
    running.shutdown().unwrap();
}

#[test]
fn mutual_tls_needs_the_client_certificate_and_works_with_it() {
    let pki = pki();
    let server = tls_server(&pki, true);
    let mut c = server.client().unwrap();
    c.lpush_many("mq", payloads("m", 1000)).unwrap();
    // Without a client certificate: refused with a hint, at start.
    let err = builder(server.tls_url())
        .tls(trusting(&pki))
        .connect_timeout(Duration::from_secs(5))
        .start_attempts(1)
        .start(PopConsumer::new(["mq"]), Recorder::<String>::default())
        .and_then(|r| r.wait())
        .expect_err("no client certificate: refused");
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(err.to_string().contains("client certificate"), "{err}");
    // With one: served.
    let seen = Recorder::<String>::default();
    let running = builder(server.tls_url())
        .tls(trusting(&pki).client_cert(pki.client_cert(), pki.client_key()))
        .start(PopConsumer::new(["mq"]), seen.clone())
        .unwrap();
    assert!(
        wait_until(WAIT, || seen.len() >= 1000),
        "got {}",
        seen.len()
    );
    running.shutdown().unwrap();
    assert_eq!(seen.distinct(), 1000);
}

/// Starts a pop engine with `tls` against `url` and returns the error that stops it.
fn start_error(url: String, tls: Option<Tls>) -> ringq::Error {
    let mut b = EngineBuilder::new(url)
        .pin_cores(false)
        .connect_timeout(Duration::from_secs(3))
        .start_attempts(1);
    if let Some(t) = tls {
        b = b.tls(t);
    }
    // The start returns once the shards run; a connection's fatal error then stops the
    // engine, and `wait` returns it (a configuration error fails the start itself).
    match b.start(PopConsumer::new(["eq"]), Recorder::<String>::default()) {
        Ok(r) => r.wait().expect_err("the engine stops with an error"),
        Err(e) => e,
    }
}

#[test]
fn each_misconfiguration_is_a_clear_error_not_a_hang() {
    let pki = pki();
    let server = tls_server(&pki, false);
    let mut c = server.client().unwrap();

    let e = start_error(
        server.tls_url(),
        Some(Tls::new().ca_cert(pki.other_ca_cert())),
    );
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert!(
        e.to_string().contains("not signed by a trusted CA"),
        "unknown CA: {e}"
    );

    let e = start_error(server.tls_url(), None);
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert!(
        e.to_string().contains("trusted CA"),
        "the system's roots do not know the test CA: {e}"
    );

    let e = start_error(
        server.url().replace("redis://", "rediss://"),
        Some(trusting(&pki)),
    );
    assert_eq!(e.kind(), ErrorKind::Tls, "TLS to the plaintext port: {e}");
    assert!(e.to_string().contains("plaintext port"), "{e}");

    let e = start_error(format!("redis://127.0.0.1:{}", server.tls_port()), None);
    assert!(
        e.to_string().contains("rediss://"),
        "plaintext to the TLS port names the likely cause: {e}"
    );

    let bad_key = pki.dir().join("bad.key");
    std::fs::write(
        &bad_key,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = start_error(
        server.tls_url(),
        Some(trusting(&pki).client_cert(pki.client_cert(), &bad_key)),
    );
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("bad.key"), "names the file: {e}");

    let e = start_error(server.url(), Some(trusting(&pki)));
    assert_eq!(
        e.kind(),
        ErrorKind::Config,
        "TLS settings with redis://: {e}"
    );

    // The server's certificate swapped at runtime: expired, then for another name.
    let set_cert = |c: &mut TestClient, cert: &std::path::Path| {
        let f = c
            .cmd([
                "CONFIG",
                "SET",
                "tls-cert-file",
                cert.to_str().unwrap(),
                "tls-key-file",
                pki.server_key().to_str().unwrap(),
            ])
            .unwrap();
        assert!(!f.is_error(), "{f:?}");
    };
    set_cert(&mut c, &pki.expired_cert());
    let e = start_error(server.tls_url(), Some(trusting(&pki)));
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert!(e.to_string().contains("expired"), "expired: {e}");
    set_cert(&mut c, &pki.wrong_name_cert());
    let e = start_error(server.tls_url(), Some(trusting(&pki)));
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert!(
        e.to_string().contains("not valid for that name"),
        "name mismatch: {e}"
    );
    // Verification off: the wrong name is accepted (and the engine warned).
    let running = builder(server.tls_url())
        .tls(Tls::new().insecure_skip_verify())
        .start(PopConsumer::new(["eq"]), Recorder::<String>::default())
        .unwrap();
    running.shutdown().unwrap();
}

#[test]
fn a_wrong_password_over_tls_is_an_auth_error_that_never_shows_it() {
    let pki = pki();
    let server = RedisServer::builder()
        .tls(&pki, false)
        .requirepass("right-one")
        .start()
        .unwrap();
    let url = format!("rediss://:wrong-SECRET-42@127.0.0.1:{}", server.tls_port());
    let e = start_error(url, Some(trusting(&pki)));
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(!shown.contains("wrong-SECRET-42"), "{shown}");
    }
}

#[test]
fn client_kill_over_tls_loses_nothing_in_reliable_mode() {
    let pki = pki();
    let server = tls_server(&pki, false);
    let mut c = server.client().unwrap();
    let seen = Recorder::<(String, u32, Instant)>::default();
    let running = builder(server.tls_url())
        .tls(trusting(&pki))
        .start(ReliableConsumer::new("c1", ["kq"]), seen.clone())
        .unwrap();
    wait_any_blocked(&mut c);
    let killed = c
        .client_kill(&[("TYPE", "normal"), ("SKIPME", "yes")])
        .unwrap();
    assert!(killed >= 1, "killed the engine's connections");
    c.lpush_many("kq", payloads("k", 2000)).unwrap();
    assert!(
        wait_until(WAIT, || seen.distinct() >= 2000),
        "got {}",
        seen.distinct()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.tally(), (2000, 0));
    assert!(stats.reconnects >= 1, "reconnected over TLS");
}

#[test]
fn a_server_restart_over_tls_loses_nothing_in_stream_mode() {
    let pki = pki();
    let server = RedisServer::builder()
        .tls(&pki, false)
        .aof_always(true)
        .start()
        .unwrap();
    let mut c = server.client().unwrap();
    const N: usize = 20_000;
    xadd(&mut c, "rs", "s", N, None);
    let seen = Recorder::<(String, String, u32, Instant)>::default();
    let running = builder(server.tls_url())
        .tls(trusting(&pki))
        .start(
            StreamConsumer::new("g", "c1", ["rs"])
                .start_at(StartAt::Beginning)
                .batch(32),
            seen.deciding(support::ack_after(Duration::from_micros(50))),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 2000));
    server.restart().unwrap();
    assert!(seen.len() < N, "the restart came mid-drain");
    assert!(
        wait_until(WAIT, || seen.distinct() >= N),
        "got {}",
        seen.distinct()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.distinct(), N, "0 lost");
    assert!(stats.reconnects >= 1);
}

/// The fault proxy, in front of the TLS port, resets the connection part-way through a
/// TLS record three times during a drain: the engine reconnects (a new handshake each
/// time) and reliable and stream mode lose nothing, duplicates bounded by the prefetch.
#[test]
fn a_cut_in_the_middle_of_a_tls_record_loses_nothing() {
    let pki = pki();
    let server = tls_server(&pki, false);
    let mut c = server.client().unwrap();
    const N: usize = 20_000;
    c.lpush_many("cq", payloads("c", N)).unwrap();
    xadd(&mut c, "cs", "s", N, None);
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.tls_port()).into()).unwrap();
    let url = format!("rediss://127.0.0.1:{}", proxy.addr().port());
    for mode in ["reliable", "stream"] {
        let seen = Recorder::<String>::default();
        let b = builder(url.clone()).tls(trusting(&pki)).prefetch(512);
        let running = match mode {
            "reliable" => b.start(ReliableConsumer::new("c1", ["cq"]).batch(64), seen.clone()),
            _ => b.start(
                StreamConsumer::new("g", "c1", ["cs"])
                    .start_at(StartAt::Beginning)
                    .batch(64),
                seen.deciding(support::ack_after(Duration::from_micros(20))),
            ),
        }
        .unwrap();
        for _ in 0..3 {
            let before = seen.len();
            assert!(
                wait_until(WAIT, || seen.len() > before + 1000),
                "{mode}: progress"
            );
            let fired = proxy.fired();
            assert!(seen.distinct() < N, "{mode}: armed mid-drain");
            proxy.set(Fault::ResetMidRecord);
            assert!(
                wait_until(WAIT, || proxy.fired() > fired),
                "{mode}: the cut happened"
            );
        }
        assert!(
            wait_until(WAIT, || seen.distinct() >= N),
            "{mode}: delivered {}",
            seen.distinct()
        );
        let stats = running.shutdown().unwrap();
        let (distinct, dups) = seen.tally();
        assert_eq!(distinct, N, "{mode}: 0 lost");
        assert!(stats.reconnects >= 3, "{mode}: reconnected after each cut");
        assert!(
            dups <= 3 * 512,
            "{mode}: duplicates bounded by the prefetch: {dups}"
        );
    }
}
