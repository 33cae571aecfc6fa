//! The driver interface: everything a shard asks of the operating system's I/O, so that a
//! backend other than io_uring (epoll, for hosts that refuse io_uring) is one new module
//! with no change to connections, pipelines or dispatch. io_uring
//! ([`crate::ring::Driver`]) is the first implementation, epoll ([`crate::ring::epoll`])
//! the second; [`IoBackend`] chooses between them.
//!
//! # The contract
//! A backend runs asynchronous *operations* — connect, send, receive, read — each started
//! with an owner's `token` (a connection's id and generation, or the wake-up token) and
//! identified by the [`OpId`] it returns.
//!
//! 1. **Exactly one final completion per started operation**, cancelled ones included. The
//!    final completion is the one with `more == false`; a multishot receive may deliver
//!    any number of completions with `more == true` before it. An operation whose start
//!    returned an error never completes (it never started).
//! 2. **The backend owns what the operation uses** (the send's bytes, the address, the
//!    receive buffer) until that final completion: nothing the caller drops or closes can
//!    free memory the kernel may still touch. The caller closes an fd only after every
//!    operation on it has completed.
//! 3. **Cancel** ([`Backend::cancel`]) asks for an early end and is harmless on an
//!    operation that has already ended. The operation still completes exactly once, with
//!    `-ECANCELED` or with whatever it had done. Pausing a connection's reading is
//!    cancelling its receive; resuming is starting a new one.
//! 4. **Results** are the system call's: bytes transferred, `0` (a receive at end of
//!    stream), or a negated errno. `-ENOBUFS` from a receive means the backend ran out of
//!    receive buffers and ended the receive; the caller starts another.
//! 5. **Received bytes** come with the completion as [`Backend::Data`], readable with
//!    [`Backend::data`] until given back with [`Backend::release`]; every `Data` is given
//!    back exactly once.
//! 6. **Waiting.** [`Backend::submit_and_wait`] starts everything queued this turn and
//!    returns once at least one completion is ready or `timeout` has passed (`None`: no
//!    timeout). A backend with coarser timeouts than nanoseconds rounds *up* (epoll:
//!    to the next millisecond), so the loop never wakes before a timer is due and spins.
//!    Interrupted waits (`EINTR`) return normally.
//! 7. **Completions** are handed out by [`Backend::reap`] in the order the backend
//!    learned of them; a completion for an operation started in this turn may come in the
//!    same reap as older ones.
//!
//! Timeouts of commands (block timeouts, reply deadlines) are the shard's timers, not the
//! backend's: they are rounded to milliseconds where they go on the wire (a block timeout
//! of BRPOP/BLMPOP is sent in seconds with millisecond resolution, at least 1 ms).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Error;
pub(crate) use crate::ring::SockAddr;

/// Which I/O backend an engine uses ([`EngineBuilder::backend`](crate::EngineBuilder::backend)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IoBackend {
    /// io_uring when the kernel and the sandbox allow it, else epoll, with one warning
    /// naming why io_uring could not be used (the default).
    #[default]
    Auto,
    /// io_uring only: the engine refuses to start where it is unavailable.
    IoUring,
    /// epoll: for containers whose seccomp profile refuses io_uring, and for comparison.
    Epoll,
}

impl IoBackend {
    /// Parses `auto`, `io_uring` (or `io-uring`, `iouring`) and `epoll`, as `--backend`
    /// and `RINGQ_BACKEND` take them.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Some(IoBackend::Auto),
            "io_uring" | "io-uring" | "iouring" | "uring" => Some(IoBackend::IoUring),
            "epoll" => Some(IoBackend::Epoll),
            _ => None,
        }
    }

    /// `io_uring`, `epoll` or `auto`.
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::IoUring => "io_uring",
            IoBackend::Epoll => "epoll",
        }
    }
}

impl std::fmt::Display for IoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Identifies a started operation (for [`Backend::cancel`]); the backend's own encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpId(pub(crate) u64);

/// What an operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    Connect,
    Send,
    Recv,
    Read,
}

/// A completion, resolved to its owner's token.
#[derive(Debug)]
pub(crate) struct Completion<D> {
    pub token: u64,
    pub kind: OpKind,
    /// Bytes transferred, 0, or a negated errno.
    pub result: i32,
    /// The operation continues (multishot) and will complete again.
    pub more: bool,
    /// Received bytes, to give back with [`Backend::release`].
    pub data: Option<D>,
}

/// One shard's I/O backend. See the module docs for the contract every method keeps.
pub(crate) trait Backend {
    /// Received bytes, held for the caller until released.
    type Data;

    /// A new non-inheritable stream socket for `addr`'s family (TCP gets `TCP_NODELAY` and
    /// `SO_KEEPALIVE`).
    ///
    /// # Errors
    /// The `socket(2)` error.
    fn socket(&mut self, addr: &SockAddr) -> io::Result<RawFd>;

    /// Starts connecting `fd` to `addr`.
    ///
    /// # Errors
    /// The operation could not be started (it will not complete).
    fn connect(&mut self, token: u64, fd: RawFd, addr: SockAddr) -> Result<OpId, Error>;

    /// Starts sending `buf` (a short send completes with the count sent).
    ///
    /// # Errors
    /// As [`Backend::connect`].
    fn send(&mut self, token: u64, fd: RawFd, buf: Bytes) -> Result<OpId, Error>;

    /// Starts receiving on `fd`: multishot where the backend can (many completions), or
    /// one receive.
    ///
    /// # Errors
    /// As [`Backend::connect`].
    fn recv(&mut self, token: u64, fd: RawFd) -> Result<OpId, Error>;

    /// Starts one `read(2)` of up to `len` bytes (the shard's wake-up eventfd).
    ///
    /// # Errors
    /// As [`Backend::connect`].
    fn read(&mut self, token: u64, fd: RawFd, len: usize) -> Result<OpId, Error>;

    /// Asks for `op` to end early (see the contract).
    ///
    /// # Errors
    /// The cancel itself could not be queued.
    fn cancel(&mut self, op: OpId) -> Result<(), Error>;

    /// Shuts both directions of a socket, so its operations end promptly.
    fn shutdown(&mut self, fd: RawFd);

    /// Closes an fd that no operation uses any more.
    fn close(&mut self, fd: RawFd);

    /// Starts what was queued and waits for a completion or `timeout`.
    ///
    /// # Errors
    /// The backend failed (the shard stops).
    fn submit_and_wait(&mut self, timeout: Option<Duration>) -> Result<(), Error>;

    /// Starts what was queued without waiting.
    ///
    /// # Errors
    /// As [`Backend::submit_and_wait`].
    fn submit(&mut self) -> Result<(), Error>;

    /// Moves every ready completion to `out`.
    fn reap(&mut self, out: &mut Vec<Completion<Self::Data>>);

    /// The bytes of a receive's data.
    fn data<'a>(&'a self, d: &'a Self::Data) -> &'a [u8];

    /// Gives received data back.
    fn release(&mut self, d: Self::Data);

    /// Operations started and not finally completed.
    fn in_flight(&self) -> usize;

    /// The system calls this backend made and the completions it produced, so far.
    fn counters(&self) -> IoCounters;
}

/// What a shard's I/O cost in the kernel's currency: the system calls its backend made
/// (`io_uring_enter` on io_uring; `epoll_wait`, `read`, `send`, `epoll_ctl`… on epoll;
/// socket set-up and `close` on both) and the completions the loop handled (CQEs on
/// io_uring, finished operations and received chunks on epoll). Divided by messages, they
/// say how much each backend leans on the kernel per message (see `ringq-bench drain`).
/// The shard's other system calls (its wake-up eventfd's write from another thread,
/// futexes of a dispatch channel) are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IoCounters {
    /// System calls made by the backend.
    pub syscalls: u64,
    /// Completions handed to the loop.
    pub completions: u64,
}
