//! A throw-away certificate authority for TLS tests: a CA, a server certificate for
//! `localhost` and `127.0.0.1`, a client certificate, and the bad ones the error tests
//! need (expired, for another name, from a CA nobody trusts), written as PEM files into
//! a temp dir that lives as long as the [`TestPki`].
//!
//! ```no_run
//! # fn main() -> ringq_tests::Result<()> {
//! let pki = ringq_tests::TestPki::generate()?;
//! let server = ringq_tests::RedisServer::builder().tls(&pki, false).start()?;
//! assert!(server.tls_url().starts_with("rediss://127.0.0.1:"));
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// PEM files of a test CA and the certificates it signed. Removed on drop.
#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
}

struct Issued {
    cert: Certificate,
    key: KeyPair,
}

fn pki_error(what: &str, e: rcgen::Error) -> Error {
    Error::io(
        format!("generating the test {what}"),
        std::io::Error::other(e.to_string()),
    )
}

fn ca(name: &str) -> Result<Issued> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| pki_error(name, e))?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let key = KeyPair::generate().map_err(|e| pki_error(name, e))?;
    let cert = p.self_signed(&key).map_err(|e| pki_error(name, e))?;
    Ok(Issued { cert, key })
}

/// A leaf certificate for `names`, signed by `ca`, valid `from`..`to` (years).
fn leaf(
    ca: &Issued,
    key: &KeyPair,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    years: (i32, i32),
) -> Result<Certificate> {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let mut p = CertificateParams::new(names).map_err(|e| pki_error("certificate", e))?;
    p.distinguished_name.push(DnType::CommonName, "ringq test");
    p.extended_key_usages = vec![usage];
    p.not_before = rcgen::date_time_ymd(years.0, 1, 1);
    p.not_after = rcgen::date_time_ymd(years.1, 1, 1);
    p.signed_by(key, &ca.cert, &ca.key)
        .map_err(|e| pki_error("certificate", e))
}

impl TestPki {
    /// Generates the CA and every certificate (ECDSA P-256) into a new temp dir.
    ///
    /// # Errors
    /// I/O errors writing the files; certificate generation errors.
    pub fn generate() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ringq-pki-")
            .tempdir()
            .map_err(|e| Error::io("creating a temp dir for certificates", e))?;
        let pki = Self { dir };
        let other = ca("ringq untrusted CA")?;
        let ca = ca("ringq test CA")?;
        let server_key = KeyPair::generate().map_err(|e| pki_error("server key", e))?;
        let client_key = KeyPair::generate().map_err(|e| pki_error("client key", e))?;
        let server = ExtendedKeyUsagePurpose::ServerAuth;
        let localhost = ["localhost", "127.0.0.1"];
        let files = [
            ("ca.pem", ca.cert.pem()),
            ("other-ca.pem", other.cert.pem()),
            ("server.key", server_key.serialize_pem()),
            (
                "server.pem",
                leaf(&ca, &server_key, &localhost, server.clone(), (2020, 2100))?.pem(),
            ),
            (
                "expired.pem",
                leaf(&ca, &server_key, &localhost, server.clone(), (2001, 2002))?.pem(),
            ),
            (
                "wrong-name.pem",
                leaf(
                    &ca,
                    &server_key,
                    &["elsewhere.invalid"],
                    server,
                    (2020, 2100),
                )?
                .pem(),
            ),
            ("client.key", client_key.serialize_pem()),
            (
                "client.pem",
                leaf(
                    &ca,
                    &client_key,
                    &["ringq-client"],
                    ExtendedKeyUsagePurpose::ClientAuth,
                    (2020, 2100),
                )?
                .pem(),
            ),
        ];
        for (name, pem) in files {
            let path = pki.path(name);
            std::fs::write(&path, pem)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        Ok(pki)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate that signed every certificate here.
    pub fn ca_cert(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A CA that signed nothing here: trusting only it, no server certificate verifies.
    pub fn other_ca_cert(&self) -> PathBuf {
        self.path("other-ca.pem")
    }

    /// The server's certificate, for `localhost` and `127.0.0.1`.
    pub fn server_cert(&self) -> PathBuf {
        self.path("server.pem")
    }

    /// The key of every server certificate here.
    pub fn server_key(&self) -> PathBuf {
        self.path("server.key")
    }

    /// A server certificate that expired in 2002 (same key).
    pub fn expired_cert(&self) -> PathBuf {
        self.path("expired.pem")
    }

    /// A server certificate for `elsewhere.invalid` only (same key).
    pub fn wrong_name_cert(&self) -> PathBuf {
        self.path("wrong-name.pem")
    }

    /// A client certificate (mutual TLS) signed by the CA.
    pub fn client_cert(&self) -> PathBuf {
        self.path("client.pem")
    }

    /// The client certificate's key.
    pub fn client_key(&self) -> PathBuf {
        self.path("client.key")
    }
}
