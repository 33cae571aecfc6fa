//! TLS inside the connection state machine, with rustls's unbuffered client: the
//! engine's loop owns every buffer and every system call; rustls only turns bytes into
//! bytes.
//!
//! Received ciphertext (copied out of the provided-buffer ring as plaintext would be)
//! collects in `incoming`; `drive` decrypts every complete record and appends the
//! plaintext to the connection's read buffer, where the same decoder finds replies and
//! messages borrow from them as on a plaintext connection. What TLS costs beyond the
//! crypto is one more copy of each received byte (rustls decrypts in place into a
//! record-sized chunk, which is appended to the read buffer) and one of each sent byte
//! (the commands are encrypted from the write buffer into `out`). Records the protocol
//! itself needs sent (the handshake, a key update) go to `out` too, which the
//! connection sends before anything queued after them.
//!
//! kTLS would hand the record layer to the kernel after the handshake (rustls can give
//! the secrets up); this machine's kernel has no `CONFIG_TLS`, so it is not built: the
//! split between `handshake` and `seal`/`open` is where it would go.

use std::sync::Arc;

use bytes::BytesMut;
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use rustls::ClientConfig;

/// One connection's TLS session.
pub(crate) struct TlsLayer {
    conn: UnbufferedClientConnection,
    /// Ciphertext received and not yet decrypted: at most one incomplete record after
    /// every `drive`.
    incoming: Vec<u8>,
    ready: bool,
    peer_closed: bool,
}

/// A record larger than this cannot come (16 KiB of plaintext plus the largest
/// expansion TLS allows).
const MAX_RECORD: usize = 16 * 1024 + 2048 + 5;

impl TlsLayer {
    pub(crate) fn new(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Self, rustls::Error> {
        Ok(Self {
            conn: UnbufferedClientConnection::new(config, name)?,
            incoming: Vec::with_capacity(MAX_RECORD),
            ready: false,
            peer_closed: false,
        })
    }

    /// The handshake is complete: application data may flow.
    pub(crate) fn ready(&self) -> bool {
        self.ready
    }

    /// The server sent close_notify: nothing more will come.
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Ciphertext `data` arrived: decrypts every complete record into `plain` and queues
    /// what the protocol must send back in `out`.
    pub(crate) fn open(
        &mut self,
        data: &[u8],
        plain: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), rustls::Error> {
        self.incoming.extend_from_slice(data);
        self.drive(plain, out, &[])
    }

    /// Starts the handshake: the ClientHello goes to `out`.
    pub(crate) fn handshake(&mut self, out: &mut BytesMut) -> Result<(), rustls::Error> {
        self.drive(&mut BytesMut::new(), out, &[])
    }

    /// Encrypts `app` (the handshake must be complete) into `out`.
    pub(crate) fn seal(
        &mut self,
        app: &[u8],
        plain: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), rustls::Error> {
        debug_assert!(self.ready);
        self.drive(plain, out, app)
    }

    /// Runs rustls until it needs more input or may send application data (then encrypts
    /// `app`, if any, and stops). Consumed ciphertext is removed from `incoming`.
    fn drive(
        &mut self,
        plain: &mut BytesMut,
        out: &mut BytesMut,
        mut app: &[u8],
    ) -> Result<(), rustls::Error> {
        let mut start = 0;
        let result = loop {
            let status = self.conn.process_tls_records(&mut self.incoming[start..]);
            let discard = status.discard;
            let state = match status.state {
                Ok(s) => s,
                Err(e) => {
                    start += discard;
                    break Err(e);
                }
            };
            let stop = match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        plain.extend_from_slice(rec?.payload);
                    }
                    false
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    let mut need = 4096;
                    loop {
                        let at = out.len();
                        out.resize(at + need, 0);
                        match e.encode(&mut out[at..]) {
                            Ok(n) => {
                                out.truncate(at + n);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(s)) => {
                                out.truncate(at);
                                need = s.required_size;
                            }
                            Err(EncodeError::AlreadyEncoded) => {
                                out.truncate(at);
                                break;
                            }
                        }
                    }
                    false
                }
                // The records are in `out`, which the connection sends before anything
                // written after them.
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    false
                }
                ConnectionState::BlockedHandshake => true,
                ConnectionState::WriteTraffic(mut w) => {
                    self.ready = true;
                    if !app.is_empty() {
                        encrypt(&mut w, app, out)?;
                        app = &[];
                    }
                    true
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.peer_closed = true;
                    true
                }
                // Early data is a server's concern.
                _ => true,
            };
            start += discard;
            if stop {
                break Ok(());
            }
        };
        self.incoming.drain(..start);
        if result.is_ok() && !app.is_empty() {
            // Not writable (closed by the peer): the commands cannot go.
            return Err(rustls::Error::General(
                "the TLS session closed before the commands could be sent".into(),
            ));
        }
        result
    }
}

fn encrypt(
    w: &mut rustls::unbuffered::WriteTraffic<'_, rustls::client::ClientConnectionData>,
    app: &[u8],
    out: &mut BytesMut,
) -> Result<(), rustls::Error> {
    // Per 16 KiB record: a 5-byte header, the content type and a 16-byte tag (TLS 1.3);
    // TLS 1.2 adds an 8-byte explicit nonce. An undersized guess is corrected below.
    let mut need = app.len() + (app.len() / (16 * 1024) + 1) * 40;
    loop {
        let at = out.len();
        out.resize(at + need, 0);
        match w.encrypt(app, &mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(s)) => {
                out.truncate(at);
                need = s.required_size;
            }
            Err(e) => {
                out.truncate(at);
                return Err(rustls::Error::General(format!("TLS encryption: {e}")));
            }
        }
    }
}
