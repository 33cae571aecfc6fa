//! [`RedisServerBuilder`]: what a test can configure before a server starts — persistence,
//! passwords, ACL users, arbitrary `redis-server` options — turned into command-line
//! arguments (`redis-server --port P --save "" ...`; no config file to write).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::launch::{Launch, Launcher, LOG_FILE};
use crate::process::{find_redis_server, free_port, is_executable};
use crate::server::RedisServer;
use crate::version::Version;

/// How long a server gets to answer PING after it is spawned.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(15);
/// Fresh ports tried by the first start when the server cannot bind.
const PORT_ATTEMPTS: usize = 8;

/// Configures a [`RedisServer`] before starting it.
///
/// ```no_run
/// # fn main() -> ringq_tests::Result<()> {
/// let server = ringq_tests::RedisServer::builder()
///     .aof_always(true)
///     .requirepass("pw")
///     .acl_user("alice", "secret")
///     .arg("--maxmemory", "64mb")
///     .start()?;
/// assert!(server.url().starts_with("redis://alice:secret@127.0.0.1:"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "call start() to run the server"]
pub struct RedisServerBuilder {
    binary: Option<PathBuf>,
    aof_always: bool,
    requirepass: Option<String>,
    acl_users: Vec<(String, String)>,
    debug_command: bool,
    extra: Vec<OsString>,
    start_timeout: Duration,
    tls: Option<TlsFiles>,
}

/// The files a TLS server is started with.
#[derive(Debug, Clone)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    auth_clients: bool,
}

impl Default for RedisServerBuilder {
    fn default() -> Self {
        Self {
            binary: None,
            aof_always: false,
            requirepass: None,
            acl_users: Vec::new(),
            debug_command: false,
            extra: Vec::new(),
            start_timeout: DEFAULT_START_TIMEOUT,
            tls: None,
        }
    }
}

impl RedisServerBuilder {
    /// Uses this binary instead of searching (`$REDIS_SERVER`, `$PATH`, `/usr/bin`, …).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Turns on the append-only file with `appendfsync always`: every acknowledged write
    /// survives a SIGKILL, so [`RedisServer::kill`] then [`RedisServer::restart`] keeps the
    /// data. Off by default (`--appendonly no`, and always `--save ""`).
    pub fn aof_always(mut self, on: bool) -> Self {
        self.aof_always = on;
        self
    }

    /// Sets the `default` user's password (`--requirepass`).
    pub fn requirepass(mut self, password: impl Into<String>) -> Self {
        self.requirepass = Some(password.into());
        self
    }

    /// Adds an ACL user with every permission (`--user NAME on >PASS ~* &* +@all`).
    /// [`RedisServer::url`] then authenticates as the first such user.
    pub fn acl_user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.acl_users.push((name.into(), password.into()));
        self
    }

    /// Allows `DEBUG` (`SLEEP`, `RELOAD`…) from loopback connections
    /// (`--enable-debug-command local`, Redis 7.0+).
    pub fn debug_command(mut self, on: bool) -> Self {
        self.debug_command = on;
        self
    }

    /// Adds a configuration option, as `arg("--maxmemory", "64mb")`. Given after the
    /// harness's own options, so it overrides them.
    pub fn arg(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.extra.push(name.as_ref().to_owned());
        self.extra.push(value.as_ref().to_owned());
        self
    }

    /// Adds raw command-line arguments, for options that take several values.
    pub fn args<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: AsRef<OsStr>,
    {
        self.extra
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Also listens with TLS on a second port ([`RedisServer::tls_port`]), with the
    /// server certificate of `pki` (for `localhost` and `127.0.0.1`); clients must present
    /// a certificate signed by its CA when `require_client_cert` is true
    /// (`--tls-auth-clients yes`). The plaintext port stays open for the test's own client.
    pub fn tls(mut self, pki: &crate::TestPki, require_client_cert: bool) -> Self {
        self.tls = Some(TlsFiles {
            cert: pki.server_cert(),
            key: pki.server_key(),
            ca: pki.ca_cert(),
            auth_clients: require_client_cert,
        });
        self
    }

    /// How long the server may take to answer PING (default 15 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Starts the server on a free port and waits until it answers PING.
    ///
    /// # Errors
    /// [`Error::NotInstalled`] when no binary is found (run `scripts/setup.sh`);
    /// [`Error::StartFailed`] with the end of the server's log when it exits or does not
    /// answer in time; I/O errors creating the temp dir.
    pub fn start(self) -> Result<RedisServer> {
        let binary = match self.binary.clone() {
            Some(b) if is_executable(&b) => b,
            Some(b) => {
                return Err(Error::NotInstalled {
                    searched: format!("{} (not an executable file)", b.display()),
                })
            }
            None => find_redis_server()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("ringq-redis-")
            .tempdir()
            .map_err(|e| Error::io("creating a temp dir for redis-server", e))?;
        let mut launcher = Launcher {
            binary,
            args: self.server_args(dir.path()),
            dir: dir.path().to_owned(),
            user: self.acl_users.first().map(|(u, _)| u.clone()),
            password: self
                .acl_users
                .first()
                .map(|(_, p)| p.clone())
                .or(self.requirepass.clone()),
            start_timeout: self.start_timeout,
            tls_port: None,
        };
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            if self.tls.is_some() {
                launcher.tls_port = Some(free_port()?);
            }
            match launcher.launch(port) {
                Ok(child) => {
                    let server = RedisServer {
                        launcher,
                        port,
                        child: Mutex::new(Some(child)),
                        version: Version::default(),
                        dir,
                    };
                    return server.with_version();
                }
                Err(Launch::PortInUse(e)) => last_error = Some(e),
                Err(Launch::Failed(e)) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::StartFailed {
            reason: "no free port".into(),
            log_tail: String::new(),
        }))
    }

    fn server_args(&self, dir: &Path) -> Vec<OsString> {
        let log = dir.join(LOG_FILE);
        let appendonly = if self.aof_always { "yes" } else { "no" };
        let options: [(&str, &OsStr); 6] = [
            ("--bind", "127.0.0.1".as_ref()),
            ("--daemonize", "no".as_ref()),
            ("--dir", dir.as_os_str()),
            ("--logfile", log.as_os_str()),
            ("--save", "".as_ref()),
            ("--appendonly", appendonly.as_ref()),
        ];
        let mut args: Vec<OsString> = Vec::new();
        for (name, value) in options {
            args.extend([OsString::from(name), value.to_os_string()]);
        }
        if self.aof_always {
            args.extend(["--appendfsync", "always"].map(OsString::from));
        }
        if let Some(pass) = &self.requirepass {
            args.extend(["--requirepass", pass.as_str()].map(OsString::from));
        }
        for (user, pass) in &self.acl_users {
            let pass = format!(">{pass}");
            args.extend(
                ["--user", user.as_str(), "on", &pass, "~*", "&*", "+@all"].map(OsString::from),
            );
        }
        if let Some(t) = &self.tls {
            for (name, value) in [
                ("--tls-cert-file", t.cert.as_os_str()),
                ("--tls-key-file", t.key.as_os_str()),
                ("--tls-ca-cert-file", t.ca.as_os_str()),
                (
                    "--tls-auth-clients",
                    if t.auth_clients { "yes" } else { "no" }.as_ref(),
                ),
            ] {
                args.extend([OsString::from(name), value.to_os_string()]);
            }
        }
        if self.debug_command {
            args.extend(["--enable-debug-command", "local"].map(OsString::from));
        }
        args.extend(self.extra.iter().cloned());
        args
    }
}
