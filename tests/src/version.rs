//! [`Version`]: the server version from `INFO server`, so tests can tell which commands
//! exist (BLMPOP and LMPOP arrived in Redis 7.0).

use std::fmt;

/// A server version, as `INFO server` reports it in `redis_version`.
///
/// Valkey reports the Redis version it is compatible with there (7.2.4 for Valkey 8 and
/// 9), which is what decides whether a command such as BLMPOP exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl Version {
    /// Parses `7.0.15` (missing parts are 0).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.').map(|p| p.parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next().transpose().ok()?.unwrap_or(0);
        let patch = parts.next().transpose().ok()?.unwrap_or(0);
        Some(Self {
            major,
            minor,
            patch,
        })
    }

    /// Whether this is `major.minor` or later.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// Whether the server has BLMPOP and LMPOP (Redis 7.0).
    pub fn has_blmpop(&self) -> bool {
        self.at_least(7, 0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}
