//! Building an io_uring with the best flags this kernel takes, and explaining why when it
//! cannot be built at all.
//!
//! Each optional setup flag is tried from the most capable set down; the kernel answers
//! EINVAL for flags it does not know. A failure of the plainest setup is io_uring being
//! unavailable, and the error says which cause applies and what to do.

use std::fmt;
use std::io;

use io_uring::{opcode, IoUring, Probe};

use crate::error::Error;

/// What the kernel offered when a shard's ring was built. Printed by `ringq` at start-up
/// and by the tests, so a run on an older kernel shows what it fell back from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingFeatures {
    /// `IORING_SETUP_SINGLE_ISSUER` (Linux 6.0).
    pub single_issuer: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` (Linux 6.1).
    pub defer_taskrun: bool,
    /// `IORING_SETUP_COOP_TASKRUN` (Linux 5.19).
    pub coop_taskrun: bool,
    /// Multishot recv into a provided-buffer ring (Linux 6.0); otherwise single-shot recv.
    pub multishot_recv: bool,
    /// `IORING_FEAT_EXT_ARG`: wait with a timeout without a timeout SQE (Linux 5.11).
    pub ext_arg: bool,
    /// The kernel release, from uname.
    pub kernel: String,
}

impl fmt::Display for RingFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "io_uring on Linux {}: single_issuer={} defer_taskrun={} coop_taskrun={} multishot_recv={} ext_arg={}",
            self.kernel,
            yn(self.single_issuer),
            yn(self.defer_taskrun),
            yn(self.coop_taskrun),
            yn(self.multishot_recv),
            yn(self.ext_arg)
        )
    }
}

/// Builds a ring of `entries` SQEs with the richest flag set the kernel accepts.
pub(crate) fn build_ring(entries: u32) -> Result<(IoUring, RingFeatures), Error> {
    // (single_issuer, defer_taskrun, coop_taskrun), most capable first.
    const TRIES: [(bool, bool, bool); 4] = [
        (true, true, false),
        (true, false, true),
        (false, false, true),
        (false, false, false),
    ];
    let mut last_err = None;
    for (single, defer, coop) in TRIES {
        let mut b = IoUring::builder();
        b.setup_cqsize(entries.saturating_mul(4)).setup_clamp();
        if single {
            b.setup_single_issuer();
        }
        if defer {
            b.setup_defer_taskrun();
        }
        if coop {
            b.setup_coop_taskrun();
        }
        match b.build(entries) {
            Ok(ring) => {
                let kernel = kernel_release();
                let features = RingFeatures {
                    single_issuer: single,
                    defer_taskrun: defer,
                    coop_taskrun: coop,
                    multishot_recv: supports_multishot_recv(&ring, &kernel),
                    ext_arg: ring.params().is_feature_ext_arg(),
                    kernel,
                };
                if !features.ext_arg {
                    return Err(Error::uring_unavailable(format!(
                        "this kernel ({}) lacks IORING_FEAT_EXT_ARG; ringq needs Linux 5.11 or newer",
                        features.kernel
                    )));
                }
                return Ok((ring, features));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last_err = Some(e),
            Err(e) => return Err(explain_setup_failure(&e)),
        }
    }
    Err(explain_setup_failure(&last_err.unwrap_or_else(|| {
        io::Error::from_raw_os_error(libc::EINVAL)
    })))
}

/// Checks that io_uring can be set up at all, without keeping a ring.
///
/// # Errors
/// [`crate::ErrorKind::UringUnavailable`] naming the cause (seccomp, sysctl, old kernel,
/// memlock limit) and what to do.
pub fn probe() -> Result<RingFeatures, Error> {
    build_ring(8).map(|(_, f)| f)
}

fn supports_multishot_recv(ring: &IoUring, kernel: &str) -> bool {
    let mut probe = Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err()
        || !probe.is_supported(opcode::RecvMulti::CODE)
    {
        return false;
    }
    // Multishot recv and provided-buffer rings arrived in 6.0; the opcode probe cannot see
    // the multishot flag, so the release decides.
    kernel_at_least(kernel, 6, 0)
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let maj: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let min: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (maj, min) >= (major, minor)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn explain_setup_failure(e: &io::Error) -> Error {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|s| s.trim().to_owned());
    let why = match e.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring_setup is not implemented: the kernel is older than 5.1, \
             was built without CONFIG_IO_URING, or a seccomp profile answers ENOSYS"
            .to_owned(),
        Some(libc::EPERM) | Some(libc::EACCES) => match sysctl.as_deref() {
            Some("2") => "io_uring is disabled (kernel.io_uring_disabled=2): set it to 0 \
                 (sysctl -w kernel.io_uring_disabled=0) or run on a host that allows io_uring"
                .to_owned(),
            Some("1") => "io_uring is restricted (kernel.io_uring_disabled=1): only members of \
                 the group in kernel.io_uring_group may use it; add this user to that group or set \
                 the sysctl to 0"
                .to_owned(),
            _ => "io_uring_setup was refused (EPERM): most likely a seccomp profile such as \
                 Docker's default blocks it; run the container with a profile that allows \
                 io_uring_setup/io_uring_enter/io_uring_register"
                .to_owned(),
        },
        Some(libc::ENOMEM) => {
            let limit = memlock_limit().map_or_else(|| "unknown".to_owned(), |l| l.to_string());
            format!(
                "io_uring_setup failed with ENOMEM: RLIMIT_MEMLOCK is too low ({limit} bytes); \
                 raise it (ulimit -l, or LimitMEMLOCK= in systemd) or use fewer ring entries"
            )
        }
        _ => format!("io_uring_setup failed: {e}"),
    };
    Error::uring_unavailable(why).with_source(io::Error::new(e.kind(), e.to_string()))
}

fn memlock_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and keeps no pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    (rc == 0).then_some(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::kernel_at_least;

    #[test]
    fn kernel_release_comparison_reads_major_and_minor() {
        assert!(kernel_at_least("6.18.44-fc-v782", 6, 0));
        assert!(kernel_at_least("6.0.0", 6, 0));
        assert!(!kernel_at_least("5.19.17-generic", 6, 0));
        assert!(!kernel_at_least("garbage", 6, 0));
    }
}
