//! The harness's own tests: it starts, authenticates, kills, freezes and restarts real
//! `redis-server`s, never leaks one, and its scripted server plays scripts faithfully.
//! Everything else in the workspace trusts these behaviours.

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use bytes::Bytes;
use ringq_resp::{Frame, ServerErrorKind};
use ringq_tests::{Error, RedisServer, Script, ScriptedServer, TestClient, Version};

fn bulk(s: &str) -> Frame {
    Frame::BulkString(Bytes::copy_from_slice(s.as_bytes()))
}

#[test]
fn server_starts_on_a_private_port_and_answers_ping() {
    let server = RedisServer::start().expect("start redis-server");
    assert!(server.is_running());
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(server.addr().port(), server.port());
    assert!(server.dir().is_dir());
    let mut c = TestClient::connect(&server.url()).unwrap();
    c.ping().unwrap();
    let args: &[&[u8]] = &[b"SET", b"k", b"v"];
    assert_eq!(
        c.cmd(args).unwrap(),
        Frame::SimpleString(Bytes::from_static(b"OK"))
    );
    // Private by construction: no persistence configured.
    let save = c.cmd(["CONFIG", "GET", "save"]).unwrap();
    assert_eq!(save, Frame::Array(vec![bulk("save"), bulk("")]));
    let aof = c.cmd(["CONFIG", "GET", "appendonly"]).unwrap();
    assert_eq!(aof, Frame::Array(vec![bulk("appendonly"), bulk("no")]));
}

#[test]
fn version_comes_from_info_and_tells_whether_blmpop_exists() {
    let server = RedisServer::start().unwrap();
    let v = server.version();
    assert!(v.major >= 2, "implausible version {v}");
    let mut c = server.client().unwrap();
    let lmpop = c.cmd(["LMPOP", "1", "missing", "LEFT"]);
    if v.has_blmpop() {
        assert_eq!(lmpop.unwrap(), Frame::Null);
    } else {
        assert!(lmpop.is_err(), "LMPOP exists before 7.0?");
    }
    assert_eq!(
        Version::parse("7.0.15"),
        Some(Version {
            major: 7,
            minor: 0,
            patch: 15
        })
    );
    assert!(Version::parse("6.2").is_some_and(|v| !v.has_blmpop()));
    assert!(Version::parse("x").is_none());
}

#[test]
fn aof_always_keeps_acknowledged_pushes_across_sigkill_and_restart() {
    let server = RedisServer::builder().aof_always(true).start().unwrap();
    let port = server.port();
    let mut c = server.client().unwrap();
    assert_eq!(
        c.lpush_many("jobs", (0..1_000).map(|i| i.to_string()))
            .unwrap(),
        1_000
    );

    server.kill().unwrap();
    assert!(!server.is_running());
    server.restart().unwrap();

    assert!(server.is_running());
    assert_eq!(server.port(), port, "restart must keep the port");
    let mut c = server.client().unwrap();
    assert_eq!(c.llen("jobs").unwrap(), 1_000);
    assert_eq!(c.cmd(["RPOP", "jobs"]).unwrap(), bulk("0"));
}

#[test]
fn restart_of_a_running_server_stops_it_gracefully_and_serves_again() {
    let server = RedisServer::start().unwrap();
    let mut before = server.client().unwrap();
    let pid = server.pid().unwrap();
    server.restart().unwrap();
    assert_ne!(server.pid(), Some(pid));
    assert!(before.ping().unwrap_err().is_connection_lost());
    server.client().unwrap().ping().unwrap();
}

#[test]
fn restart_retries_while_its_port_is_taken() {
    let server = RedisServer::start().unwrap();
    server.kill().unwrap();
    let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, server.port())).unwrap();
    // Restart is bounded at 5 s of retries; release the port well inside that.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(squatter);
    });
    server.restart().unwrap();
    release.join().unwrap();
    server.client().unwrap().ping().unwrap();
}

#[test]
fn kill_breaks_open_connections_and_refuses_new_ones() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.ping().unwrap();
    server.kill().unwrap();
    let err = c.ping().unwrap_err();
    assert!(
        err.is_connection_lost(),
        "expected a lost connection, got {err}"
    );
    let err = TestClient::connect(&server.url()).unwrap_err();
    assert!(
        err.is_connection_refused(),
        "expected a refused connection, got {err}"
    );
    // Killing twice is harmless.
    server.kill().unwrap();
}

#[test]
fn requirepass_answers_noauth_without_credentials_and_serves_with_them() {
    let server = RedisServer::builder().requirepass("pw").start().unwrap();
    assert_eq!(
        server.url(),
        format!("redis://:pw@127.0.0.1:{}", server.port())
    );

    let mut anonymous = TestClient::connect(&server.url_without_auth()).unwrap();
    let err = anonymous.cmd(["LLEN", "q"]).unwrap_err();
    assert_eq!(
        err.server_error_kind(),
        Some(&ServerErrorKind::NoAuth),
        "got {err}"
    );

    server.client().unwrap().ping().unwrap();
    let err = TestClient::connect(&server.url_as(None, "wrong")).unwrap_err();
    assert_eq!(
        err.server_error_kind(),
        Some(&ServerErrorKind::WrongPass),
        "got {err}"
    );
}

#[test]
fn acl_user_authenticates_and_a_wrong_password_gets_wrongpass() {
    let server = RedisServer::builder()
        .acl_user("alice", "s3cret")
        .start()
        .unwrap();
    assert_eq!(
        server.url(),
        format!("redis://alice:s3cret@127.0.0.1:{}", server.port())
    );

    let mut alice = server.client().unwrap();
    assert_eq!(alice.cmd(["ACL", "WHOAMI"]).unwrap(), bulk("alice"));
    alice.lpush_many("q", ["x"]).unwrap();

    let err = TestClient::connect(&server.url_as(Some("alice"), "nope")).unwrap_err();
    assert_eq!(
        err.server_error_kind(),
        Some(&ServerErrorKind::WrongPass),
        "got {err}"
    );
    assert!(err.server_error().is_some_and(|e| e.is_auth()));
}

#[test]
fn server_is_killed_when_dropped() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    TestClient::connect(&url).unwrap().ping().unwrap();
    drop(server);
    assert!(TestClient::connect(&url)
        .unwrap_err()
        .is_connection_refused());
}

#[test]
fn server_is_killed_when_the_thread_owning_it_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let owner = std::thread::spawn(move || {
        let server = RedisServer::start().unwrap();
        tx.send((server.url(), server.pid().unwrap())).unwrap();
        panic!("test body fails while owning a server");
    });
    assert!(
        owner.join().is_err(),
        "the owner thread should have panicked"
    );
    let (url, pid) = rx.recv().unwrap();
    let err = TestClient::connect(&url).unwrap_err();
    assert!(
        err.is_connection_refused(),
        "the port still answers after the panic: {err}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "redis-server {pid} outlived its owner"
    );
}

#[test]
fn freeze_makes_the_server_hang_until_thawed() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    server.freeze().unwrap();
    assert!(server.is_running());
    assert!(c.ping().unwrap_err().is_timeout());
    server.thaw().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The PING sent while frozen is answered after the thaw.
    assert_eq!(
        c.read_reply().unwrap(),
        Frame::SimpleString(Bytes::from_static(b"PONG"))
    );
}

#[test]
fn lpush_many_pushes_100k_items_in_order() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let len = c
        .lpush_many("big", (0..100_000).map(|i| format!("m{i}")))
        .unwrap();
    assert_eq!(len, 100_000);
    assert_eq!(c.llen("big").unwrap(), 100_000);
    // LPUSH: the first item given is the first one RPOP returns.
    assert_eq!(c.cmd(["RPOP", "big"]).unwrap(), bulk("m0"));
    assert_eq!(c.cmd(["LPOP", "big"]).unwrap(), bulk("m99999"));
}

#[test]
fn rpush_many_appends_and_a_pipelined_error_leaves_the_client_usable() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    assert_eq!(c.rpush_many("q", ["a", "b", "c"]).unwrap(), 3);
    assert_eq!(c.cmd(["LINDEX", "q", "0"]).unwrap(), bulk("a"));
    assert_eq!(c.rpush_many("q", Vec::<&str>::new()).unwrap(), 3);

    c.cmd(["SET", "s", "v"]).unwrap();
    let err = c
        .lpush_many("s", (0..5_000).map(|i| i.to_string()))
        .unwrap_err();
    assert_eq!(err.server_error_kind(), Some(&ServerErrorKind::WrongType));
    c.ping().unwrap();
}

#[test]
fn publish_reports_subscribers_and_reaches_them() {
    let server = RedisServer::start().unwrap();
    let mut sub = server.client().unwrap();
    let mut c = server.client().unwrap();
    assert_eq!(c.publish("news", "nobody").unwrap(), 0);
    sub.send(["SUBSCRIBE", "news"]).unwrap();
    sub.read_reply().unwrap(); // the subscribe confirmation
    assert_eq!(c.publish("news", "hello").unwrap(), 1);
    let msg = sub.read_reply().unwrap();
    assert_eq!(
        msg,
        Frame::Array(vec![bulk("message"), bulk("news"), bulk("hello")])
    );
}

#[test]
fn client_kill_by_name_closes_only_the_named_connections() {
    let server = RedisServer::start().unwrap();
    let mut victim = server.client().unwrap();
    victim.cmd(["CLIENT", "SETNAME", "victim"]).unwrap();
    let mut bystander = server.client().unwrap();
    bystander.cmd(["CLIENT", "SETNAME", "bystander"]).unwrap();
    let mut admin = server.client().unwrap();

    let names: Vec<String> = admin
        .client_list()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(
        names.contains(&"victim".to_owned()) && names.contains(&"bystander".to_owned()),
        "{names:?}"
    );

    assert_eq!(admin.client_kill_by_name("victim").unwrap(), 1);
    assert!(victim.ping().unwrap_err().is_connection_lost());
    bystander.ping().unwrap();
    assert!(admin
        .client_list()
        .unwrap()
        .iter()
        .all(|c| c.name != "victim"));
    assert_eq!(admin.client_kill_by_name("nobody").unwrap(), 0);

    let addr = bystander_addr(&mut admin);
    assert_eq!(admin.client_kill(&[("ADDR", &addr)]).unwrap(), 1);
    assert!(bystander.ping().unwrap_err().is_connection_lost());
}

fn bystander_addr(admin: &mut TestClient) -> String {
    let list = admin.client_list().unwrap();
    list.into_iter()
        .find(|c| c.name == "bystander")
        .map(|c| c.addr)
        .unwrap()
}

#[test]
fn client_list_shows_a_blocked_pop() {
    let server = RedisServer::start().unwrap();
    let mut blocked = server.client().unwrap();
    blocked.cmd(["CLIENT", "SETNAME", "popper"]).unwrap();
    blocked.send(["BRPOP", "empty", "0"]).unwrap();
    let mut admin = server.client().unwrap();
    let seen = ringq_tests::wait_until(Duration::from_secs(5), || {
        admin
            .client_list()
            .unwrap()
            .iter()
            .any(|c| c.name == "popper" && c.is_blocked() && c.cmd == "brpop")
    });
    assert!(
        seen,
        "BRPOP never showed as blocked: {:?}",
        admin.client_list().unwrap()
    );
    assert_eq!(
        admin
            .info_field("clients", "blocked_clients")
            .unwrap()
            .as_deref(),
        Some("1")
    );
}

#[test]
fn a_server_that_cannot_start_reports_its_log() {
    let err = RedisServer::builder()
        .arg("--no-such-directive", "1")
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::StartFailed { .. }), "got {err:?}");
    let text = err.to_string();
    assert!(
        text.contains("no-such-directive"),
        "the log tail should name the bad option: {text}"
    );
}

#[test]
fn a_missing_binary_says_to_run_setup() {
    let err = RedisServer::builder()
        .binary("/nonexistent/redis-server")
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::NotInstalled { .. }), "got {err:?}");
    assert!(err.to_string().contains("scripts/setup.sh"), "{err}");
}

#[test]
fn scripted_server_answers_commands_in_order_and_records_them() {
    let server = ScriptedServer::replying(["+PONG\r\n", ":42\r\n"]).unwrap();
    let mut c = TestClient::connect(&server.url()).unwrap();
    c.ping().unwrap();
    assert_eq!(c.cmd(["LLEN", "q"]).unwrap(), Frame::Integer(42));
    assert_eq!(server.connections(), 1);
    assert_eq!(server.received(), vec![vec!["PING"], vec!["LLEN", "q"]]);

    // Past the script's end the server reads but never answers.
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(c.cmd(["PING"]).unwrap_err().is_timeout());
}

#[test]
fn scripted_server_answers_pipelined_commands_one_reply_each() {
    let server = ScriptedServer::replying(["+A\r\n", "+B\r\n", "+C\r\n"]).unwrap();
    let mut c = TestClient::connect(&server.url()).unwrap();
    c.send_raw(b"*1\r\n$1\r\na\r\n*1\r\n$1\r\nb\r\n*1\r\n$1\r")
        .unwrap();
    c.send_raw(b"\nc\r\n").unwrap();
    for expected in ["A", "B", "C"] {
        assert_eq!(
            c.read_reply().unwrap(),
            Frame::SimpleString(Bytes::copy_from_slice(expected.as_bytes()))
        );
    }
}

#[test]
fn scripted_server_feeds_malformed_replies_verbatim_then_closes() {
    let script = Script::new()
        .reply("+OK\r\n")
        .reply("*1\r\n?garbage\r\n")
        .then_close();
    let server = ScriptedServer::start(script).unwrap();
    let mut c = TestClient::connect(&server.url()).unwrap();
    c.cmd(["HELLO", "3"]).unwrap();
    assert!(matches!(c.cmd(["GET", "k"]).unwrap_err(), Error::Decode(_)));

    // Every connection replays the script from its start.
    let mut again = TestClient::connect(&server.url()).unwrap();
    again.cmd(["HELLO", "3"]).unwrap();
    assert!(matches!(
        again.cmd(["GET", "k"]).unwrap_err(),
        Error::Decode(_)
    ));
    assert_eq!(server.connections(), 2);
}

#[test]
fn scripted_server_closes_after_the_last_reply_when_told() {
    let server = ScriptedServer::start(Script::replying(["+OK\r\n"]).then_close()).unwrap();
    let mut c = TestClient::connect(&server.url()).unwrap();
    assert_eq!(
        c.cmd(["SELECT", "0"]).unwrap(),
        Frame::SimpleString(Bytes::from_static(b"OK"))
    );
    assert!(c.ping().unwrap_err().is_connection_lost());
}

#[test]
fn scripted_server_can_send_unprompted_and_stay_silent() {
    let script = Script::new()
        .send(">2\r\n$7\r\nmessage\r\n$2\r\nhi\r\n")
        .silent()
        .reply("+late\r\n");
    let server = ScriptedServer::start(script).unwrap();
    let mut c = TestClient::connect(&server.url()).unwrap();
    let push = c.read_frame().unwrap();
    assert_eq!(push, Frame::Push(vec![bulk("message"), bulk("hi")]));
    c.send(["FIRST"]).unwrap();
    c.send(["SECOND"]).unwrap();
    // FIRST gets no answer; SECOND gets "+late".
    assert_eq!(
        c.read_reply().unwrap(),
        Frame::SimpleString(Bytes::from_static(b"late"))
    );
}

#[test]
fn scripted_server_drop_connections_hangs_up_on_clients() {
    let server = ScriptedServer::start(Script::new()).unwrap();
    let mut c = TestClient::connect(&server.url()).unwrap();
    c.send(["PING"]).unwrap();
    assert!(ringq_tests::wait_until(Duration::from_secs(5), || server
        .connections()
        == 1));
    server.drop_connections();
    assert!(c.read_frame().unwrap_err().is_connection_lost());
}

mod fault_proxy {
    use std::time::Duration;

    use ringq_resp::Frame;
    use ringq_tests::{Fault, FaultProxy, RedisServer, TestClient};

    #[test]
    fn forwards_and_still_decodes_one_byte_writes_and_delays() {
        let server = RedisServer::start().unwrap();
        let proxy = FaultProxy::start(server.addr()).unwrap();
        let mut c = TestClient::connect(&proxy.url()).unwrap();
        c.ping().unwrap();
        assert_eq!(proxy.fired(), 0);
        proxy.set(Fault::OneByteWrites);
        c.rpush_many("k", ["a", "bb", "ccc"]).unwrap();
        let all = c.cmd(["LRANGE", "k", "0", "-1"]).unwrap();
        assert_eq!(
            all,
            Frame::Array(vec![
                Frame::BulkString("a".into()),
                Frame::BulkString("bb".into()),
                Frame::BulkString("ccc".into()),
            ])
        );
        assert!(proxy.fired() > 0, "the replies went out a byte at a time");
        proxy.set(Fault::Delay(Duration::from_millis(20)));
        let before = proxy.fired();
        c.ping().unwrap();
        assert!(proxy.fired() > before, "the reply was held");
        assert_eq!(proxy.connections(), 1);
    }

    /// The reply is forwarded and the connection reset at once: the client either read
    /// it just in time or lost it, and the connection is dead either way; the next one
    /// works (the fault fires once).
    #[test]
    fn reset_after_reply_kills_the_connection_once() {
        let server = RedisServer::start().unwrap();
        let proxy = FaultProxy::start(server.addr()).unwrap();
        let mut c = TestClient::connect(&proxy.url()).unwrap();
        c.ping().unwrap();
        proxy.set(Fault::ResetAfterReply);
        let _maybe = c.ping();
        assert_eq!(proxy.fired(), 1);
        let err = c.ping().unwrap_err();
        assert!(err.is_connection_lost(), "{err}");
        assert_eq!(proxy.fault(), Fault::None);
        let mut again = TestClient::connect(&proxy.url()).unwrap();
        again.ping().unwrap();
    }

    /// Two connections with replies in flight when the reset is armed: exactly one of
    /// them is reset, and it is counted once (the switch-off and the check are one step).
    #[test]
    fn reset_after_reply_fires_once_across_connections() {
        let server = RedisServer::start().unwrap();
        let proxy = FaultProxy::start(server.addr()).unwrap();
        let mut a = TestClient::connect(&proxy.url()).unwrap();
        let mut b = TestClient::connect(&proxy.url()).unwrap();
        a.ping().unwrap();
        b.ping().unwrap();
        proxy.set(Fault::ResetAfterReply);
        a.send(["PING"]).unwrap();
        b.send(["PING"]).unwrap();
        let _maybe = (a.read_reply(), b.read_reply());
        assert_eq!(proxy.fired(), 1);
        let alive = [a.ping().is_ok(), b.ping().is_ok()];
        assert_eq!(
            alive.iter().filter(|ok| **ok).count(),
            1,
            "exactly one connection reset: {alive:?}"
        );
    }

    /// A black hole answers nothing and closes nothing: a half-open connection.
    #[test]
    fn a_black_hole_swallows_everything_and_closes_nothing() {
        let server = RedisServer::start().unwrap();
        let proxy = FaultProxy::start(server.addr()).unwrap();
        let mut c = TestClient::connect(&proxy.url()).unwrap();
        c.ping().unwrap();
        proxy.set(Fault::BlackHole);
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let err = c.ping().unwrap_err();
        assert!(err.is_timeout(), "no answer, no close: {err}");
        // The client saw nothing, so nothing orders its timeout after the proxy's read of
        // the PING (where the fault counts): wait for the count rather than assume it.
        assert!(
            ringq_tests::wait_until(Duration::from_secs(10), || proxy.fired() >= 1),
            "the proxy never swallowed the PING"
        );
        proxy.set(Fault::None);
        let mut fresh = TestClient::connect(&proxy.url()).unwrap();
        fresh.ping().unwrap();
    }
}
