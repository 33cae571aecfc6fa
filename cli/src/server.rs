//! Where the server is and how to authenticate: `--url` (or `$RINGQ_URL`), a password
//! kept off the command line (`--password-file`, `$RINGQ_PASSWORD`), and the TLS
//! settings of a `rediss://` URL (`--tls-ca-cert`, `--tls-cert`/`--tls-key`,
//! `--tls-insecure`).

use std::sync::Once;

use ringq::{ConnectionInfo, EngineBuilder, Tls};

use crate::args::ServerArgs;
use crate::exit::Exit;

impl ServerArgs {
    /// The password given apart from the URL: `--password-file` (its first line), else
    /// `$RINGQ_PASSWORD`.
    ///
    /// # Errors
    /// A file that cannot be read (status 2), naming the file, never its contents.
    pub fn password(&self) -> Result<Option<String>, Exit> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Exit::usage(format!("--password-file {}: {e}", path.display())))?;
            let first = text.lines().next().unwrap_or("");
            return Ok(Some(first.to_owned()));
        }
        Ok(std::env::var("RINGQ_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()))
    }

    /// The sentinels' own password: `--sentinel-password-file` (its first line), else
    /// `$RINGQ_SENTINEL_PASSWORD`.
    ///
    /// # Errors
    /// A file that cannot be read (status 2).
    pub fn sentinel_password(&self) -> Result<Option<String>, Exit> {
        if let Some(path) = &self.sentinel_password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Exit::usage(format!("--sentinel-password-file {}: {e}", path.display()))
            })?;
            return Ok(Some(text.lines().next().unwrap_or("").to_owned()));
        }
        Ok(std::env::var("RINGQ_SENTINEL_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()))
    }

    /// The server's address and credentials: the URL parsed, with the password given
    /// apart from it. Warns once when the password came inside `--url` on the command
    /// line.
    ///
    /// # Errors
    /// A bad URL or password file (status 2).
    pub fn info(&self) -> Result<ConnectionInfo, Exit> {
        let mut info = ConnectionInfo::parse(&self.url).map_err(Exit::engine)?;
        match self.password()? {
            Some(p) => info.password = Some(p),
            None if info.password.is_some() && url_on_command_line() => warn_password_in_url(),
            None => {}
        }
        Ok(info)
    }

    /// The TLS settings of the flags, for a `rediss://` URL (`None` with no flag: the
    /// system's roots). Warns when verification is off.
    ///
    /// # Errors
    /// A TLS flag with a URL that is not `rediss://` (status 2).
    pub fn tls(&self, info: &ConnectionInfo) -> Result<Option<Tls>, Exit> {
        let given = self.tls_ca_cert.is_some() || self.tls_cert.is_some() || self.tls_insecure;
        if !given {
            return Ok(None);
        }
        if !info.tls {
            return Err(Exit::usage(
                "the --tls-* flags need a rediss:// URL (TLS); the URL given is not one",
            ));
        }
        let mut t = Tls::new();
        if let Some(ca) = &self.tls_ca_cert {
            t = t.ca_cert(ca);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            t = t.client_cert(cert, key);
        }
        if self.tls_insecure {
            t = t.insecure_skip_verify();
        }
        Ok(Some(t))
    }

    /// An engine for this server, with the password given apart from the URL.
    ///
    /// # Errors
    /// As [`ServerArgs::info`].
    pub fn builder(&self) -> Result<EngineBuilder, Exit> {
        let info = self.info()?;
        let mut b = EngineBuilder::new(self.url.as_str());
        if let Some(t) = self.tls(&info)? {
            b = b.tls(t);
        }
        if let Some(p) = info.password {
            b = b.password(p);
        }
        if let Some(p) = self.sentinel_password()? {
            b = b.sentinel_password(p);
        }
        Ok(b)
    }
}

/// Whether `--url` was given as an argument (not from `$RINGQ_URL`).
fn url_on_command_line() -> bool {
    std::env::args_os().any(|a| {
        let a = a.to_string_lossy();
        a == "--url" || a.starts_with("--url=")
    })
}

fn warn_password_in_url() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        eprintln!(
            "ringq: warning: the password in --url is visible to other users (ps) and kept in \
             shell history; use --password-file FILE or $RINGQ_PASSWORD, or put the URL in \
             $RINGQ_URL"
        );
    });
}
