//! Server addresses: `redis://[user[:password]@]host[:port][/db]`, the same with
//! `rediss://` for TLS, `unix:///path/to/socket[?db=N]`, and a master found through
//! Sentinel: `redis+sentinel://[user[:password]@]host1[:26379][,host2[:26379]…]/<master
//! name>[/db]` (`rediss+sentinel://` for TLS to the sentinels and the data nodes alike),
//! with percent-decoding of the credentials. The credentials are the data nodes'; the
//! sentinels' own are set apart ([`crate::EngineBuilder::sentinel_password`]). A Redis or
//! Valkey Cluster: `redis+cluster://[user[:password]@]host1[:6379][,host2[:6379]…][/db]`
//! (`rediss+cluster://` for TLS); one seed node is enough, the others are discovered.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use crate::error::Error;

/// Where a server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A TCP host and port (resolved when the engine starts).
    Tcp {
        /// Host name or IP literal.
        host: String,
        /// Port, 6379 by default.
        port: u16,
    },
    /// A Unix domain socket path.
    Unix(PathBuf),
    /// The master named `master`, as the sentinels at `sentinels` (host, port) report it.
    Sentinel {
        /// The sentinels to ask, in order.
        sentinels: Vec<(String, u16)>,
        /// The master's name in the sentinels' configuration.
        master: String,
    },
    /// A Redis or Valkey Cluster, discovered from any of `seeds` (host, port).
    Cluster {
        /// Nodes asked for the topology at start, in order.
        seeds: Vec<(String, u16)>,
    },
}

/// A parsed server URL: address, credentials and database.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Where to connect.
    pub address: Address,
    /// ACL user name; `None` means the `default` user.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<String>,
    /// Logical database selected after the handshake.
    pub db: u32,
    /// `rediss://`: TLS, with the settings of [`crate::EngineBuilder::tls`] (the system's
    /// roots and the host's name by default).
    pub tls: bool,
}

impl fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish()
    }
}

impl fmt::Display for ConnectionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            Address::Tcp { host, port } => write!(f, "{}", HostPort(host, *port)),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Sentinel { sentinels, master } => {
                write!(f, "master '{master}' of sentinel")?;
                for (i, (h, p)) in sentinels.iter().enumerate() {
                    write!(f, "{}{}", if i == 0 { " " } else { "," }, HostPort(h, *p))?;
                }
                Ok(())
            }
            Address::Cluster { seeds } => {
                write!(f, "cluster")?;
                for (i, (h, p)) in seeds.iter().enumerate() {
                    write!(f, "{}{}", if i == 0 { " " } else { "," }, HostPort(h, *p))?;
                }
                Ok(())
            }
        }
    }
}

/// `host:port`, with brackets around an IPv6 host.
pub(crate) struct HostPort<'a>(pub &'a str, pub u16);

impl fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.contains(':') {
            write!(f, "[{}]:{}", self.0, self.1)
        } else {
            write!(f, "{}:{}", self.0, self.1)
        }
    }
}

impl ConnectionInfo {
    /// Parses a `redis://`, `rediss://`, `redis+sentinel://`, `rediss+sentinel://`,
    /// `redis+cluster://`, `rediss+cluster://` or `unix://` URL.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Config`] saying what part of the URL is wrong.
    pub fn parse(url: &str) -> Result<Self, Error> {
        Self::parse_parts(url)
            .map_err(|why| Error::config(format!("invalid server URL '{}': {why}", redact(url))))
    }

    fn parse_parts(url: &str) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix("unix://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if path.is_empty() {
                return Err("no socket path".into());
            }
            return Ok(Self {
                address: Address::Unix(PathBuf::from(path)),
                username: None,
                password: None,
                db: query_db(query)?.unwrap_or(0),
                tls: false,
            });
        }
        let schemes = [
            ("redis://", false, Kind::Node),
            ("rediss://", true, Kind::Node),
            ("redis+sentinel://", false, Kind::Sentinel),
            ("rediss+sentinel://", true, Kind::Sentinel),
            ("redis+cluster://", false, Kind::Cluster),
            ("rediss+cluster://", true, Kind::Cluster),
        ];
        let (rest, tls, kind) = schemes
            .iter()
            .find_map(|(s, tls, kind)| Some((url.strip_prefix(s)?, *tls, *kind)))
            .ok_or(
                "expected redis://, rediss://, redis+sentinel://, rediss+sentinel://, \
                 redis+cluster://, rediss+cluster:// or unix://",
            )?;
        // `redis://host:6379?db=1` (redis-py and redis-rs accept it) as well as `/1`.
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let query_db = query_db(query)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = userinfo.map_or(Ok((None, None)), credentials)?;
        let (address, path) = if kind == Kind::Cluster {
            let seeds = hostport
                .split(',')
                .map(|hp| host_port(hp, 6379))
                .collect::<Result<Vec<_>, _>>()?;
            (Address::Cluster { seeds }, path)
        } else if kind == Kind::Sentinel {
            let sentinels = hostport
                .split(',')
                .map(|hp| host_port(hp, 26379))
                .collect::<Result<Vec<_>, _>>()?;
            let (master, db) = path.split_once('/').unwrap_or((path, ""));
            if master.is_empty() {
                return Err(
                    "no master name: redis+sentinel://host:26379[,host2:26379]/<master name>[/db]"
                        .into(),
                );
            }
            let master = percent_decode(master).ok_or("bad percent-encoding in master name")?;
            (Address::Sentinel { sentinels, master }, db)
        } else {
            let (host, port) = host_port(hostport, 6379)?;
            (Address::Tcp { host, port }, path)
        };
        let path_db = if path.is_empty() {
            None
        } else {
            Some(
                path.parse::<u32>()
                    .map_err(|_| "database must be a number, as in /0")?,
            )
        };
        let db = match (path_db, query_db) {
            (Some(p), Some(q)) if p != q => {
                return Err("the database is given twice (/N and ?db=N) and differs".into())
            }
            (p, q) => p.or(q).unwrap_or(0),
        };
        Ok(Self {
            address,
            username,
            password,
            db,
            tls,
        })
    }

    /// Resolves a TCP address (blocking DNS, done once at start-up).
    pub(crate) fn resolve(&self) -> Result<ResolvedAddr, Error> {
        match &self.address {
            Address::Unix(p) => Ok(ResolvedAddr::Unix(p.clone())),
            Address::Sentinel { .. } => Err(Error::config(
                "a Sentinel address is found by asking the sentinels, not by a lookup",
            )),
            Address::Cluster { .. } => Err(Error::config(
                "a cluster node's address is found in the cluster's topology, not by a lookup",
            )),
            Address::Tcp { host, port } => {
                let mut addrs = (host.as_str(), *port).to_socket_addrs().map_err(|e| {
                    Error::new(
                        crate::ErrorKind::ConnectionLost,
                        format!("cannot resolve host '{host}': {e}"),
                    )
                })?;
                addrs
                    .next()
                    .map(|a| ResolvedAddr::Tcp(a, host.as_str().into()))
                    .ok_or_else(|| Error::config(format!("host '{host}' resolved to no address")))
            }
        }
    }
}

/// What a URL's scheme names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Node,
    Sentinel,
    Cluster,
}

/// A resolved address ready for `connect(2)`.
#[derive(Debug, Clone)]
pub(crate) enum ResolvedAddr {
    /// The address, and the host name (or IP) it was found for: the name a TLS
    /// certificate must carry.
    Tcp(SocketAddr, std::sync::Arc<str>),
    Unix(PathBuf),
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}<credentials>{}", &url[..s + 3], &url[a..]),
        _ => url.to_owned(),
    }
}

/// The database of a URL's query string (`db=N`, the only parameter understood).
fn query_db(query: &str) -> Result<Option<u32>, String> {
    let mut db = None;
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("db", v)) => {
                db = Some(
                    v.parse::<u32>()
                        .map_err(|_| "db must be a number, as in ?db=1")?,
                );
            }
            _ => {
                return Err(format!(
                    "unknown query parameter '{kv}' (only db=N is understood)"
                ))
            }
        }
    }
    Ok(db)
}

/// The user name and password of a URL's user info (percent-decoded).
fn credentials(userinfo: &str) -> Result<(Option<String>, Option<String>), String> {
    let (u, p) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (userinfo, None),
    };
    let u = percent_decode(u).ok_or("bad percent-encoding in user name")?;
    let p = match p {
        Some(p) => Some(percent_decode(p).ok_or("bad percent-encoding in password")?),
        None => None,
    };
    Ok(match p {
        // `redis://secret@host` is the common shorthand for a password alone.
        None if !u.is_empty() => (None, Some(u)),
        p => (Some(u).filter(|u| !u.is_empty()), p),
    })
}

/// The host and port of a URL's authority (`host`, `host:port`, `[v6]`, `[v6]:port`;
/// the port defaults to `default`).
fn host_port(hostport: &str, default: u16) -> Result<(String, u16), String> {
    const BAD_PORT: &str = "port must be a number from 1 to 65535";
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed [ in IPv6 host")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| BAD_PORT)?,
            None if after.is_empty() => default,
            None => return Err("junk after IPv6 host".into()),
        };
        (h.to_owned(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| BAD_PORT)?),
            None => (hostport.to_owned(), default),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if port == 0 {
        return Err(BAD_PORT.into());
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_credentials_and_db() {
        let c = ConnectionInfo::parse("redis://alice:s%40cret@example.com:6380/3").unwrap();
        assert_eq!(
            c.address,
            Address::Tcp {
                host: "example.com".into(),
                port: 6380
            }
        );
        assert_eq!(c.username.as_deref(), Some("alice"));
        assert_eq!(c.password.as_deref(), Some("s@cret"));
        assert_eq!(c.db, 3);
    }

    #[test]
    fn database_in_the_query_string() {
        let c = ConnectionInfo::parse("redis://host:6379?db=1").unwrap();
        assert_eq!(
            (c.address.clone(), c.db),
            (
                Address::Tcp {
                    host: "host".into(),
                    port: 6379
                },
                1
            )
        );
        assert_eq!(ConnectionInfo::parse("redis://host/2?db=2").unwrap().db, 2);
        let e = ConnectionInfo::parse("redis://host?db=x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("?db=1"), "{e}");
        let e = ConnectionInfo::parse("redis://host/1?db=2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
        let e = ConnectionInfo::parse("redis://host?tls=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown query parameter 'tls=1'"), "{e}");
    }

    #[test]
    fn rediss_is_tls_and_the_rest_is_the_same() {
        let c = ConnectionInfo::parse("rediss://u:pw@example.com:6380/2").unwrap();
        assert!(c.tls);
        assert_eq!(
            (c.address, c.username.as_deref(), c.db),
            (
                Address::Tcp {
                    host: "example.com".into(),
                    port: 6380
                },
                Some("u"),
                2
            )
        );
        assert!(!ConnectionInfo::parse("redis://h").unwrap().tls);
        assert!(!ConnectionInfo::parse("unix:///s").unwrap().tls);
    }

    #[test]
    fn cluster_urls_list_seed_nodes() {
        let c = ConnectionInfo::parse("rediss+cluster://u:p@10.0.0.1:7000,[::1],h:7002/0").unwrap();
        assert_eq!(
            c.address,
            Address::Cluster {
                seeds: vec![
                    ("10.0.0.1".into(), 7000),
                    ("::1".into(), 6379),
                    ("h".into(), 7002)
                ]
            }
        );
        assert!(c.tls);
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("u"), Some("p"))
        );
        assert_eq!(c.to_string(), "cluster 10.0.0.1:7000,[::1]:6379,h:7002");
        assert!(!ConnectionInfo::parse("redis+cluster://h").unwrap().tls);
        assert!(ConnectionInfo::parse("redis+cluster://h:x").is_err());
        assert!(ConnectionInfo::parse("redis+cluster://").is_err());
    }

    #[test]
    fn password_only_forms() {
        let c = ConnectionInfo::parse("redis://:pw@127.0.0.1").unwrap();
        assert_eq!((c.username, c.password.as_deref()), (None, Some("pw")));
        let c = ConnectionInfo::parse("redis://pw@127.0.0.1:7000").unwrap();
        assert_eq!((c.username, c.password.as_deref()), (None, Some("pw")));
    }

    #[test]
    fn defaults_and_ipv6_and_unix() {
        let c = ConnectionInfo::parse("redis://localhost").unwrap();
        assert_eq!(
            c.address,
            Address::Tcp {
                host: "localhost".into(),
                port: 6379
            }
        );
        assert_eq!(c.db, 0);
        let c = ConnectionInfo::parse("redis://[::1]:7001/2").unwrap();
        assert_eq!(
            c.address,
            Address::Tcp {
                host: "::1".into(),
                port: 7001
            }
        );
        let c = ConnectionInfo::parse("unix:///tmp/redis.sock?db=4").unwrap();
        assert_eq!(c.address, Address::Unix("/tmp/redis.sock".into()));
        assert_eq!(c.db, 4);
    }

    #[test]
    fn rejects_bad_urls_with_a_reason_and_no_password_leak() {
        for bad in [
            "http://x",
            "redis://",
            "redis://h:notaport",
            "redis://h:0",
            "redis://h/x",
            "rediss://h:bad",
        ] {
            let e = ConnectionInfo::parse(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config, "{bad}");
        }
        let e = ConnectionInfo::parse("redis://u:topsecret@h:bad").unwrap_err();
        assert!(!e.to_string().contains("topsecret"), "{e}");
        assert!(!format!(
            "{:?}",
            ConnectionInfo::parse("redis://u:topsecret@h").unwrap()
        )
        .contains("topsecret"));
    }
}
