//! Lua scripts of the at-least-once modes, as one set per mode that loads and checks
//! itself on a connection: `SCRIPT LOAD` of each right after the handshake (so a
//! connection always has them, whatever the server did to its script cache), the SHA-1
//! in each reply compared with the one computed here, and `EVALSHA` by that SHA-1 from
//! then on. A `NOSCRIPT` (SCRIPT FLUSH, a restart, a new primary after a failover) is
//! classified by `conn::classify` as a reason to reconnect, and the new connection loads
//! the set again. On a cluster the same set loads on each node's connections.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringq_resp::{CommandWriter, Frame};

use crate::conn::{Conn, Failure, Tag};
use crate::error::{Error, ErrorKind};

/// A script and its SHA-1 (hex), as `EVALSHA` names it.
pub(crate) struct Script {
    pub name: &'static str,
    pub src: &'static str,
    pub sha: String,
}

impl Script {
    pub(crate) fn new(name: &'static str, src: &'static str) -> Self {
        Self {
            name,
            src,
            sha: sha1_smol::Sha1::from(src).digest().to_string(),
        }
    }
}

/// A mode's scripts, in load order: `SCRIPT LOAD` of script `n` is answered by its
/// SHA-1.
#[derive(Clone, Copy)]
pub(crate) struct ScriptSet(pub &'static [&'static std::sync::LazyLock<Script>]);

impl ScriptSet {
    /// Queues `SCRIPT LOAD` of every script on `conn`, tagged `tag(n)` for script `n`.
    pub(crate) fn load<C: Copy + std::fmt::Debug>(
        self,
        conn: &mut Conn<C>,
        now: Instant,
        allow: Duration,
        tag: impl Fn(u8) -> C,
    ) {
        for (n, s) in self.0.iter().enumerate() {
            conn.command(Tag::Pipe(tag(n as u8)), now, allow, |buf| {
                CommandWriter::new(buf, 3)
                    .arg("SCRIPT")
                    .arg("LOAD")
                    .arg(s.src)
                    .finish();
            });
        }
    }

    /// Checks the reply `f` to `SCRIPT LOAD` of script `n`: its SHA-1, as computed here.
    ///
    /// # Errors
    /// A protocol failure when the server answered anything else (a proxy that rewrites
    /// scripts, a server that hashes differently): `EVALSHA` would then run nothing.
    pub(crate) fn check_loaded(self, n: u8, f: &Frame) -> Result<(), Failure> {
        let Some(script) = self.0.get(n as usize) else {
            return Ok(());
        };
        let got = f.as_bytes().map_or(&b""[..], Bytes::as_ref);
        if got == script.sha.as_bytes() {
            return Ok(());
        }
        Err(Failure::Fatal(Error::new(
            ErrorKind::Protocol,
            format!(
                "SCRIPT LOAD of the {} script answered {f:?}, not its SHA-1 {}",
                script.name, script.sha
            ),
        )))
    }
}
