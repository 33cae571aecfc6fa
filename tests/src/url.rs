//! `redis://` URLs: [`ConnectionInfo`] parses them for [`crate::TestClient`], and
//! `url_encode` builds them for [`crate::RedisServer::url`].

use crate::error::{Error, Result};

/// What a `redis://` URL says: where to connect and how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// `host:port` as written in the URL.
    pub host_port: String,
    /// ACL user name, if the URL has one (`redis://user:pass@...`).
    pub user: Option<String>,
    /// Password, if the URL has one (`redis://:pass@...` or `redis://user:pass@...`).
    pub password: Option<String>,
    /// Database number from the path (`redis://host:port/2`).
    pub db: Option<u32>,
}

impl ConnectionInfo {
    /// Parses `redis://[[user][:password]@]host[:port][/db]`. User and password may be
    /// percent-encoded. The port defaults to 6379.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] for another scheme (`rediss://` included: the harness has no
    /// TLS) or a malformed authority or database.
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| invalid("the scheme must be redis://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, host_port) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (mut user, mut password) = (None, None);
        if let Some(info) = userinfo {
            let (u, p) = match info.find(':') {
                Some(i) => (&info[..i], Some(&info[i + 1..])),
                None => (info, None),
            };
            if !u.is_empty() {
                user = Some(
                    percent_decode(u).ok_or_else(|| invalid("bad percent-encoding in the user"))?,
                );
            }
            if let Some(p) = p {
                password = Some(
                    percent_decode(p)
                        .ok_or_else(|| invalid("bad percent-encoding in the password"))?,
                );
            }
        }
        if host_port.is_empty() {
            return Err(invalid("no host"));
        }
        let has_port = match host_port.rfind(']') {
            Some(close) => host_port[close..].contains(':'),
            None => host_port.contains(':'),
        };
        let host_port = if has_port {
            host_port.to_owned()
        } else {
            format!("{host_port}:6379")
        };
        let db = match path.trim_end_matches('/') {
            "" => None,
            d => Some(
                d.parse()
                    .map_err(|_| invalid("the path must be a database number"))?,
            ),
        };
        Ok(Self {
            host_port,
            user,
            password,
            db,
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes a URL user or password.
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_and_without_credentials() {
        let plain = ConnectionInfo::parse("redis://127.0.0.1:7000").unwrap();
        assert_eq!(plain.host_port, "127.0.0.1:7000");
        assert_eq!((plain.user, plain.password, plain.db), (None, None, None));

        let pass_only = ConnectionInfo::parse("redis://:s%40cret@localhost/3").unwrap();
        assert_eq!(pass_only.host_port, "localhost:6379");
        assert_eq!(pass_only.user, None);
        assert_eq!(pass_only.password.as_deref(), Some("s@cret"));
        assert_eq!(pass_only.db, Some(3));

        let acl = ConnectionInfo::parse("redis://alice:pw@[::1]:7001/").unwrap();
        assert_eq!(acl.host_port, "[::1]:7001");
        assert_eq!(acl.user.as_deref(), Some("alice"));

        assert!(ConnectionInfo::parse("rediss://h:1").is_err());
        assert!(ConnectionInfo::parse("redis://h:1/x").is_err());
        assert!(ConnectionInfo::parse("redis://").is_err());
    }

    #[test]
    fn url_encoding_round_trips_through_the_parser() {
        let url = format!(
            "redis://{}:{}@h:1",
            url_encode("us er"),
            url_encode("p@ss:w/rd%")
        );
        let info = ConnectionInfo::parse(&url).unwrap();
        assert_eq!(info.user.as_deref(), Some("us er"));
        assert_eq!(info.password.as_deref(), Some("p@ss:w/rd%"));
    }
}
