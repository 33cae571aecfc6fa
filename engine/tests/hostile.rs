//! The engine against a scripted server: malformed replies and old-server handshakes.

use std::time::Duration;

use ringq::{EngineBuilder, ErrorKind, PopConsumer};
use ringq_tests::{wait_until, Script, ScriptedServer};

const HELLO_7: &[u8] = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n";

mod support;

/// Every delivered payload.
type Log = support::Recorder<String>;

fn run_against(script: Script) -> ringq::Error {
    let server = ScriptedServer::start(script).unwrap();
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .start(PopConsumer::new(["q"]), Log::default())
        .unwrap();
    running
        .wait()
        .expect_err("malformed input must stop the engine with an error")
}

#[test]
fn malformed_pop_reply_is_a_typed_protocol_error() {
    let err = run_against(Script::new().reply(HELLO_7).reply(&b"*2\r\n$abc\r\n"[..]));
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(
        err.decode_error().is_some(),
        "carries the decoder's error: {err:?}"
    );
}

#[test]
fn garbage_instead_of_a_hello_reply_is_a_protocol_error() {
    let err = run_against(Script::new().reply(&b"HTTP/1.1 400 Bad Request\r\n\r\n"[..]));
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("Redis-protocol"), "{err}");
}

#[test]
fn hostile_bulk_length_is_rejected_without_allocating_it() {
    let err = run_against(
        Script::new()
            .reply(HELLO_7)
            .reply(&b"*2\r\n$1\r\nq\r\n$9223372036854775807\r\n"[..]),
    );
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
}

#[test]
fn reply_for_an_unrequested_key_is_refused() {
    let err = run_against(
        Script::new()
            .reply(HELLO_7)
            .reply(&b"*2\r\n$5\r\nother\r\n*1\r\n$1\r\nx\r\n"[..]),
    );
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("did not ask for"), "{err}");
}

#[test]
fn server_without_hello_gets_a_resp2_handshake_and_brpop() {
    // Redis < 6: HELLO is unknown; the engine falls back to RESP2, names the connection
    // with CLIENT SETNAME, and (no LMPOP before 7) pops with BRPOP.
    let script = Script::new()
        .reply(&b"-ERR unknown command 'HELLO'\r\n"[..])
        .reply(&b"+OK\r\n"[..])
        .reply(&b"*2\r\n$1\r\nq\r\n$5\r\nhello\r\n"[..]);
    let server = ScriptedServer::start(script).unwrap();
    let log = Log::default();
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .start(
            PopConsumer::new(["q"]).block_timeout(Duration::from_millis(100)),
            log.clone(),
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || log.len() == 1),
        "nothing delivered; the server was sent {:?}",
        server.received()
    );
    assert_eq!(log.snapshot()[0], "hello");
    let commands = server.received();
    assert!(
        commands
            .iter()
            .any(|c| c.first().is_some_and(|n| n.eq_ignore_ascii_case(b"BRPOP"))),
        "{commands:?}"
    );
    assert!(!commands
        .iter()
        .any(|c| c.first().is_some_and(|n| n.eq_ignore_ascii_case(b"LMPOP"))));
    running.shutdown().unwrap();
}

#[test]
fn a_server_that_accepts_the_handshake_but_fails_every_pop_gets_a_growing_backoff() {
    // HELLO succeeds, then the first pop is answered with LOADING, on every connection. A
    // handshake alone must not reset the backoff: only a served reply does. With a 20 ms
    // minimum, resetting would mean a reconnect every 10-20 ms (about 100 in the window);
    // growing to the 2 s maximum, about 7.
    let script = Script::new()
        .reply(HELLO_7)
        .reply(&b"-LOADING Redis is loading the dataset in memory\r\n"[..]);
    let server = ScriptedServer::start(script).unwrap();
    let log = Log::default();
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .backoff(Duration::from_millis(20), Duration::from_secs(2))
        .start(PopConsumer::new(["q"]), log.clone())
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || server.connections() >= 2));
    // A window of time, not a synchronisation: how many reconnects happen within it.
    let before = server.connections();
    std::thread::sleep(Duration::from_millis(1500));
    let during = server.connections() - before;
    assert!(
        during <= 20,
        "{during} reconnects in 1.5 s: the backoff does not grow"
    );
    assert!(!running.is_stopping(), "LOADING is not fatal");
    assert!(log.snapshot().is_empty());
    running.shutdown().unwrap();
}
