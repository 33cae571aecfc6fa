//! The few plain system calls the engine makes outside the ring: creating sockets and
//! eventfds, socket options, close, and (for tests and benchmarks) poll and read of an
//! eventfd. Rare (per connection attempt, per shard), so they stay
//! synchronous; everything per message goes through the ring.

use std::io;
use std::os::fd::RawFd;

use super::SockAddr;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The system calls [`stream_socket`] makes for `addr`: `socket(2)`, and for TCP two
/// `setsockopt(2)`s.
pub(crate) fn socket_calls(addr: &SockAddr) -> u64 {
    match addr.family() {
        libc::AF_INET | libc::AF_INET6 => 3,
        _ => 1,
    }
}

/// A new stream socket for `addr`'s family, close-on-exec, with TCP_NODELAY and
/// SO_KEEPALIVE on TCP.
pub(crate) fn stream_socket(addr: &SockAddr) -> io::Result<RawFd> {
    let family = addr.family();
    // SAFETY: plain syscall with constant arguments; returns a new fd or -1.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    if family == libc::AF_INET || family == libc::AF_INET6 {
        let on: libc::c_int = 1;
        for (level, opt) in [
            (libc::IPPROTO_TCP, libc::TCP_NODELAY),
            (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        ] {
            // SAFETY: `fd` is our open socket; `on` outlives the call and its size is passed.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    level,
                    opt,
                    std::ptr::addr_of!(on).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if let Err(e) = cvt(rc) {
                close(fd);
                return Err(e);
            }
        }
    }
    Ok(fd)
}

/// Makes `fd` non-blocking (the epoll backend's sockets and wake-up eventfd).
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller owns; returns the flags or -1.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above, setting the flags just read plus O_NONBLOCK.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    }
    Ok(())
}

/// Shuts both directions of a socket so every operation on it ends promptly.
pub(crate) fn shutdown(fd: RawFd) {
    // SAFETY: `fd` is an open socket owned by the caller; errors (ENOTCONN) are harmless.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Closes an fd the caller owns and no in-flight operation uses any more.
pub(crate) fn close(fd: RawFd) {
    if fd >= 0 {
        // SAFETY: the caller owns `fd` and never uses it again.
        unsafe { libc::close(fd) };
    }
}

/// An eventfd for waking a shard. Blocking on purpose: an io_uring shard reads it with an
/// io_uring READ, and kernels before ~5.19 complete a READ of an `O_NONBLOCK` file with
/// `-EAGAIN` at once instead of waiting, which would spin the loop. (The epoll backend
/// makes it non-blocking and reads it with read(2) when it is readable.) A write only
/// blocks when the counter is about to overflow (never: each write adds 1).
pub(crate) fn eventfd() -> io::Result<RawFd> {
    // SAFETY: plain syscall; returns a new fd or -1.
    cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })
}

/// Adds 1 to an eventfd, waking whoever reads it. Safe to call from any thread.
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd the engine keeps open while any
    // handle that can signal it exists. EAGAIN (counter saturated) still leaves it readable.
    unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
}

/// Waits until `fd` is readable or `timeout_ms` passes (poll(2)); true when readable.
/// For tests and benchmarks that sleep as a shard would, outside a ring.
#[cfg(any(test, feature = "bench-support"))]
pub(crate) fn wait_readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, alive for the duration of the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    ready == 1
}

/// Reads (and so resets) an eventfd's counter with read(2). Blocks if it is zero: call it
/// after [`wait_readable`] said it is readable.
#[cfg(any(test, feature = "bench-support"))]
pub(crate) fn eventfd_read(fd: RawFd) {
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live 8-byte buffer from an eventfd we own.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 8) };
}
