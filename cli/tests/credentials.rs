//! Credentials kept off the command line: `$RINGQ_URL` as the default `--url`, the
//! password from `--password-file` or `$RINGQ_PASSWORD`, one warning for a password
//! inside `--url` on the command line, and a refused password never echoed.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use ringq_tests::RedisServer;

const PASSWORD: &str = "s3cret-pw-7731";

fn server() -> RedisServer {
    RedisServer::builder()
        .requirepass(PASSWORD)
        .start()
        .expect("start redis-server with a password")
}

fn password_file() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "{PASSWORD}").unwrap();
    f
}

#[test]
fn ringq_url_and_a_password_file_work_for_every_command() {
    let s = server();
    let url = s.url_without_auth();
    let file = password_file();
    let pf = file.path().to_str().unwrap();
    let env = [("RINGQ_URL", url.as_str())];
    // No --url anywhere: RINGQ_URL; the password from the file.
    for args in [
        &["produce", "--queue", "q", "--messages", "20"][..],
        &["consume", "--queue", "q", "--count", "10"][..],
        &[
            "consume",
            "--queue",
            "q",
            "--count",
            "10",
            "--mode",
            "reliable",
            "--consumer-id",
            "c1",
        ][..],
        &["stats", "--queue", "q"][..],
        &["dead", "--queue", "q", "list"][..],
        &["publish", "--channel", "ch", "--messages", "5"][..],
    ] {
        // Right after the command (`dead … list` takes options of its own after `list`).
        let mut a: Vec<&str> = args.to_vec();
        a.splice(1..1, ["--password-file", pf]);
        let stderr = common::stderr_of(&common::ringq_env(&a, &env));
        assert!(!stderr.contains(PASSWORD), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("visible to other users"),
            "{args:?}: {stderr}"
        );
    }
    // Subscribe too: RINGQ_PASSWORD this time, until --count.
    let sub = Command::new(env!("CARGO_BIN_EXE_ringq"))
        .args(["subscribe", "--channel", "ch2", "--count", "1"])
        .env("RINGQ_URL", &url)
        .env("RINGQ_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = s.client().unwrap();
    assert!(ringq_tests::wait_until(common::RUN_TIMEOUT, || {
        c.publish("ch2", "hello").unwrap() == 1
    }));
    let out = sub.wait_with_output().unwrap();
    common::stderr_of(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
}

#[test]
fn a_password_in_url_on_the_command_line_warns_once_and_in_ringq_url_does_not() {
    let s = server();
    let with_pw = s.url_as(None, PASSWORD);
    let stderr = common::stderr_of(&common::ringq_env(
        &[
            "produce",
            "--url",
            &with_pw,
            "--queue",
            "w",
            "--messages",
            "3",
        ],
        &[],
    ));
    let warnings = stderr.matches("visible to other users").count();
    assert_eq!(warnings, 1, "{stderr}");
    assert!(
        stderr.contains("--password-file"),
        "says what to do: {stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    // The same URL from the environment: nothing to warn about.
    let stderr = common::stderr_of(&common::ringq_env(
        &["produce", "--queue", "w", "--messages", "3"],
        &[("RINGQ_URL", &with_pw)],
    ));
    assert!(!stderr.contains("visible to other users"), "{stderr}");
}

#[test]
fn a_wrong_password_fails_without_echoing_it() {
    let s = server();
    let url = s.url_without_auth();
    let wrong = "not-the-pw-99";
    for args in [
        &[
            "produce",
            "--url",
            url.as_str(),
            "--queue",
            "q",
            "--messages",
            "1",
        ][..],
        &[
            "consume",
            "--url",
            url.as_str(),
            "--queue",
            "q",
            "--count",
            "1",
        ][..],
    ] {
        let o = common::ringq_env(args, &[("RINGQ_PASSWORD", wrong)]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            !stderr.contains(wrong),
            "{args:?} echoed the password: {stderr}"
        );
        assert!(
            stderr.to_lowercase().contains("auth") || stderr.contains("WRONGPASS"),
            "{stderr}"
        );
    }
    // A password file that does not exist is a usage error naming the file.
    let o = common::ringq_env(
        &[
            "stats",
            "--url",
            &url,
            "--queue",
            "q",
            "--password-file",
            "/nonexistent/pw",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/pw"));
}
