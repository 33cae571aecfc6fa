//! TLS settings for `rediss://` servers: where the trust comes from (a CA file or the
//! system's roots), a client certificate for mutual TLS, the loud opt-out of
//! verification, or a `rustls::ClientConfig` the user built; and what each TLS failure
//! means for the person who has to fix it.
//!
//! The crypto provider is always chosen here (`ring`), never taken from a process-wide
//! default, so linking ringq next to other rustls users cannot panic with "no
//! process-level CryptoProvider available". The handshake and record layer run inside the
//! connection state machine (`conn/tls.rs`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct};

use crate::error::{Error, ErrorKind};

/// TLS settings for a `rediss://` server.
///
/// By default the server's certificate is verified against the system's root
/// certificates and its name (the URL's host: a DNS name, sent as SNI, or an IP address
/// matched against the certificate's IP SANs).
///
/// ```
/// use ringq::{EngineBuilder, Tls};
///
/// let builder = EngineBuilder::new("rediss://redis.internal:6380")
///     .tls(Tls::new().ca_cert("/etc/ringq/ca.pem").client_cert("client.pem", "client.key"));
/// # drop(builder);
/// ```
#[derive(Clone, Default)]
pub struct Tls {
    ca_cert: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    insecure: bool,
    config: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("insecure", &self.insecure)
            .field("config", &self.config.as_ref().map(|_| "<ClientConfig>"))
            .finish()
    }
}

impl Tls {
    /// Verification against the system's roots, no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificates in this PEM file instead of the system's roots.
    pub fn ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_cert = Some(path.into());
        self
    }

    /// Mutual TLS: presents this certificate chain (PEM) with its private key (PEM:
    /// PKCS#8, PKCS#1 or SEC1) when the server asks for one.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// **Test set-ups only**: accepts any certificate for any name, so anyone on the path
    /// can read and change the traffic. The engine warns at every start while this is on.
    /// (Handshake signatures are still checked: the peer must hold the key of the
    /// certificate it shows, whatever that certificate is.)
    pub fn insecure_skip_verify(mut self) -> Self {
        self.insecure = true;
        self
    }

    /// Uses a `rustls::ClientConfig` built by the caller (its verifier, roots, client
    /// certificate and crypto provider) instead of the settings above.
    pub fn config(config: Arc<ClientConfig>) -> Self {
        Self {
            config: Some(config),
            ..Self::default()
        }
    }

    /// What a TLS failure with `peer` means and what to do about it, as the engine
    /// reports it ([`ErrorKind::Tls`]): for tools that drive a rustls connection of their
    /// own with these settings (the `ringq` CLI's admin commands do).
    pub fn explain_error(peer: &str, e: rustls::Error) -> Error {
        explain(peer, e)
    }

    /// The name a `rediss://` host's certificate must carry (a DNS name, sent as SNI, or
    /// an IP address).
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for a host that is neither.
    pub fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
        server_name(host)
    }

    /// Whether verification is turned off.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// The rustls configuration these settings stand for.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] naming the file that cannot be read or parsed, or the
    /// combination that makes no sense.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        if let Some(c) = &self.config {
            if self.ca_cert.is_some() || self.client_cert.is_some() || self.insecure {
                return Err(Error::config(
                    "TLS: a ready-made rustls ClientConfig cannot be combined with CA, client \
                     certificate or insecure settings; put them in the ClientConfig",
                ));
            }
            return Ok(c.clone());
        }
        // `ring`, chosen here: a small C build with no cmake, and no process-wide default
        // to race for. rustls deprecates it for offering no post-quantum key exchange; a
        // user who needs that passes a ClientConfig with the aws-lc-rs provider
        // (`Tls::config`).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config(format!("TLS: {e}")))?;
        let builder = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        } else {
            builder.with_root_certificates(self.roots()?)
        };
        let config = match &self.client_cert {
            Some((cert, key_path)) => {
                let chain = read_certs(cert, "client certificate")?;
                let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                    Error::config(format!(
                        "TLS: cannot read the client key {}: {e}; it must be a PEM private key \
                         (PKCS#8, PKCS#1 or SEC1)",
                        key_path.display()
                    ))
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    Error::config(format!(
                        "TLS: the client key {} cannot be used with the certificate {}: {e}; \
                         it must be the certificate's own key, in PEM (PKCS#8, PKCS#1 or SEC1)",
                        key_path.display(),
                        cert.display()
                    ))
                })?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    fn roots(&self) -> Result<rustls::RootCertStore, Error> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = &self.ca_cert {
            for c in read_certs(path, "CA certificate")? {
                roots.add(c).map_err(|e| {
                    Error::config(format!("TLS: a certificate in {}: {e}", path.display()))
                })?;
            }
            return Ok(roots);
        }
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map_or_else(String::new, |e| format!(" ({e})"));
            return Err(Error::config(format!(
                "TLS: no system root certificates found{why}; install ca-certificates or name \
                 the server's CA with a CA file (--tls-ca-cert)"
            )));
        }
        Ok(roots)
    }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            Error::config(format!(
                "TLS: cannot read the {what} {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::config(format!(
            "TLS: the {what} file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The name the server's certificate must carry: the URL's host.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_owned())
        .map_err(|e| Error::config(format!("TLS: '{host}' is not a valid server name: {e}")))
}

/// What a TLS failure with `peer` means, and what to do about it.
pub(crate) fn explain(peer: &str, e: rustls::Error) -> Error {
    use rustls::Error as E;
    let hint = match &e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => format!(
                "the certificate of {peer} is not signed by a trusted CA: name its CA with \
                 --tls-ca-cert (Tls::ca_cert)"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the certificate of {peer} is not valid for that name: connect with a name \
                     (or IP address) the certificate lists"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the certificate of {peer} has expired: renew it on the server")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!(
                    "the certificate of {peer} is not valid yet: check the clocks of both hosts"
                )
            }
            _ => format!("the certificate of {peer} was rejected"),
        },
        E::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::HandshakeFailure
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown,
        ) => format!(
            "{peer} refused the handshake: it may require a client certificate \
             (--tls-cert and --tls-key) or not trust the one given"
        ),
        E::InvalidMessage(_) => format!(
            "{peer} did not answer in TLS: is it a plaintext port? (use redis:// for a \
             plaintext server)"
        ),
        _ => format!("TLS with {peer} failed"),
    };
    Error::new(ErrorKind::Tls, format!("{hint} ({e})")).with_source(e)
}

/// Accepts any certificate (`Tls::insecure_skip_verify`), still checking that the peer
/// signed the handshake with the key of the certificate it showed.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
