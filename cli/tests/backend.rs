//! The epoll fallback as a container user meets it: `ringq consume` under a seccomp filter
//! that refuses the io_uring system calls with EPERM (what Docker's and containerd's
//! default profiles do) falls back to epoll, warns once naming the cause, and consumes
//! every message; `--backend io-uring` refuses to start there, and `ringq probe` says
//! what is available.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::{client, seq, server};

/// Runs `ringq ARGS` with io_uring_setup/enter/register refused with EPERM by a seccomp
/// filter installed in the child before exec. Returns (status, stdout, stderr).
fn run_without_io_uring(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringq"));
    // Auto must choose: a RINGQ_BACKEND from the caller (the epoll test phase) would
    // skip the fallback this checks.
    cmd.args(args)
        .env_remove("RINGQ_BACKEND")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (prctl) on data built before the fork.
    unsafe {
        cmd.pre_exec(|| {
            refuse_io_uring();
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn ringq");
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code(), out, err)
}

/// Installs the filter in the calling (forked, not yet exec'd) process.
fn refuse_io_uring() {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: JEQ_K,
        jt,
        jf,
        k,
    };
    let eperm = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);
    let mut filter = [
        stmt(LD_W_ABS, 4), // seccomp_data.arch
        jump(ARCH, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        stmt(LD_W_ABS, 0), // seccomp_data.nr
        jump(libc::SYS_io_uring_setup as u32, 3, 0),
        jump(libc::SYS_io_uring_enter as u32, 2, 0),
        jump(libc::SYS_io_uring_register as u32, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        stmt(RET_K, eperm),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with a filter program that lives until the call returns (the kernel
    // copies it); no-new-privs first, as an unprivileged filter requires.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const _,
        );
    }
}

#[test]
fn consume_falls_back_to_epoll_when_seccomp_refuses_io_uring() {
    let s = server();
    let mut c = client(&s);
    c.lpush_many("q", seq(0..500)).unwrap();
    let url = s.url();
    let (code, out, err) =
        run_without_io_uring(&["consume", "--url", &url, "--queue", "q", "--count", "500"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(lines, seq(0..500), "every message, in order");
    let warnings = err.matches("io_uring is not available here").count();
    assert_eq!(warnings, 1, "one warning, naming the cause: {err}");
    assert!(
        err.contains("EPERM") || err.contains("not permitted") || err.contains("seccomp"),
        "the cause: {err}"
    );
    assert_eq!(c.llen("q").unwrap(), 0);
}

#[test]
fn io_uring_only_is_refused_there_and_probe_names_epoll() {
    let s = server();
    let url = s.url();
    let (code, _, err) = run_without_io_uring(&[
        "consume",
        "--url",
        &url,
        "--queue",
        "q",
        "--count",
        "1",
        "--backend",
        "io-uring",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("io_uring"), "{err}");
    let (code, out, err) = run_without_io_uring(&["probe"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(out.contains("epoll: available"), "{out}");
}
