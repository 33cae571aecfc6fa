//! The epoll backend: the same [`Backend`] contract as the io_uring driver, for hosts
//! that refuse io_uring (Docker's and containerd's default seccomp profiles,
//! `kernel.io_uring_disabled`, old kernels).
//!
//! Sockets are non-blocking and registered once, edge-triggered, for reading and writing.
//! Every operation is attempted as soon as it is started and again on each readiness edge
//! of its fd, and always until `EAGAIN`, so an edge is never missed (a receive started
//! while data waits reads it at once). A receive is "multishot": it stays armed and
//! completes with `more == true` for every buffer it fills, until end of stream, an
//! error or a cancel. A cancel completes the operation at once with `-ECANCELED`. The
//! wait rounds its timeout up to the next millisecond, so a timer never fires early.
//!
//! One difference from io_uring: a non-blocking connect to a Unix socket whose listener's
//! backlog is full fails at once with EAGAIN (a failed attempt, retried after the
//! backoff), where a blocking one waits.
//!
//! What the kernel reads or writes is owned here for the duration of the call only
//! (synchronous `read`/`send`/`connect`): nothing outlives a call, so this backend has no
//! lifecycle hazard beyond the contract's bookkeeping.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::Bytes;

use super::{sys, SockAddr};
use crate::backend::{Backend, Completion, OpId, OpKind};
use crate::error::Error;

/// Bytes one receive reads at a time.
const RECV_LEN: usize = 64 * 1024;
/// Most reads of one receive per readiness edge; past it, the rest is read next turn
/// (so one busy socket cannot starve the others).
const READS_PER_TURN: usize = 64;

/// Received bytes: an owned buffer, given back with [`Backend::release`].
#[derive(Debug)]
pub(crate) struct EpollData {
    buf: Box<[u8]>,
    len: usize,
}

enum Work {
    Connect,
    Send { buf: Bytes, sent: usize },
    Recv,
    Read { len: usize },
}

struct Op {
    token: u64,
    kind: OpKind,
    fd: RawFd,
    gen: u32,
    work: Work,
}

/// The ops waiting on one fd, by kind (at most one each).
#[derive(Default)]
struct FdOps {
    connect: Option<u32>,
    send: Option<u32>,
    recv: Option<u32>,
    read: Option<u32>,
}

/// One shard's epoll instance.
pub(crate) struct Epoll {
    epfd: RawFd,
    ops: Vec<Option<Op>>,
    free: Vec<u32>,
    next_gen: u32,
    in_flight: usize,
    fds: HashMap<RawFd, FdOps>,
    ready: Vec<Completion<EpollData>>,
    /// Receives that stopped at [`READS_PER_TURN`] with data left: read on next turn
    /// (slot and generation, so a slot reused meanwhile is not taken for them).
    resume: Vec<(u32, u32)>,
    events: Vec<libc::epoll_event>,
    spare: Vec<Box<[u8]>>,
    counters: crate::backend::IoCounters,
}

impl Epoll {
    /// A new epoll instance.
    ///
    /// # Errors
    /// `epoll_create1` failed.
    pub(crate) fn new() -> Result<Self, Error> {
        // SAFETY: plain syscall; returns a new fd or -1.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(Error::io("epoll_create1", io::Error::last_os_error()));
        }
        Ok(Self {
            epfd,
            ops: Vec::new(),
            free: Vec::new(),
            next_gen: 0,
            in_flight: 0,
            fds: HashMap::new(),
            ready: Vec::with_capacity(256),
            resume: Vec::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            spare: Vec::new(),
            counters: crate::backend::IoCounters::default(),
        })
    }

    fn alloc(&mut self, token: u64, kind: OpKind, fd: RawFd, work: Work) -> (u32, OpId) {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.ops.push(None);
                (self.ops.len() - 1) as u32
            }
        };
        self.ops[idx as usize] = Some(Op {
            token,
            kind,
            fd,
            gen,
            work,
        });
        self.in_flight += 1;
        (idx, OpId(u64::from(gen) << 32 | u64::from(idx)))
    }

    /// Registers a socket once, edge-triggered for both directions.
    fn watch(&mut self, fd: RawFd) -> Result<(), Error> {
        self.watch_for(fd, libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP)
    }

    /// Registers `fd` once, edge-triggered, for `interest`.
    fn watch_for(&mut self, fd: RawFd, interest: libc::c_int) -> Result<(), Error> {
        if self.fds.contains_key(&fd) {
            return Ok(());
        }
        let mut ev = libc::epoll_event {
            events: (interest | libc::EPOLLET) as u32,
            u64: fd as u64,
        };
        self.counters.syscalls += 1;
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(Error::io("epoll_ctl ADD", e));
            }
        }
        self.fds.insert(fd, FdOps::default());
        Ok(())
    }

    /// Ends operation `idx` with its final completion.
    fn finish(&mut self, idx: u32, result: i32, data: Option<EpollData>) {
        let Some(op) = self.ops.get_mut(idx as usize).and_then(Option::take) else {
            return;
        };
        if let Some(f) = self.fds.get_mut(&op.fd) {
            for slot in [&mut f.connect, &mut f.send, &mut f.recv, &mut f.read] {
                if *slot == Some(idx) {
                    *slot = None;
                }
            }
        }
        self.free.push(idx);
        self.in_flight -= 1;
        self.ready.push(Completion {
            token: op.token,
            kind: op.kind,
            result,
            more: false,
            data,
        });
    }

    fn buffer(&mut self, len: usize) -> Box<[u8]> {
        match self.spare.iter().position(|b| b.len() == len) {
            Some(i) => self.spare.swap_remove(i),
            None => vec![0u8; len].into_boxed_slice(),
        }
    }

    fn progress(&mut self, idx: u32) {
        let Some(op) = self.ops.get(idx as usize).and_then(Option::as_ref) else {
            return;
        };
        let fd = op.fd;
        match &op.work {
            Work::Connect => self.progress_connect(idx, fd),
            Work::Send { .. } => self.progress_send(idx, fd),
            Work::Recv => self.progress_recv(idx, fd),
            Work::Read { len } => {
                let len = *len;
                self.progress_read(idx, fd, len);
            }
        }
    }

    fn progress_connect(&mut self, idx: u32, fd: RawFd) {
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        self.counters.syscalls += 1;
        // SAFETY: `err` and `len` are live for the call and `len` is err's size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                std::ptr::addr_of_mut!(err).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            self.finish(idx, -e, None);
        } else if err == libc::EINPROGRESS || err == libc::EALREADY {
            // Not done yet: wait for the next edge.
        } else {
            self.finish(idx, -err, None);
        }
    }

    fn progress_send(&mut self, idx: u32, fd: RawFd) {
        loop {
            let Some(Op {
                work: Work::Send { buf, sent },
                ..
            }) = self.ops.get_mut(idx as usize).and_then(Option::as_mut)
            else {
                return;
            };
            if *sent >= buf.len() {
                let n = i32::try_from(*sent).unwrap_or(i32::MAX);
                self.finish(idx, n, None);
                return;
            }
            let rest = &buf[*sent..];
            self.counters.syscalls += 1;
            // SAFETY: `rest` is a live slice of the send's own buffer for the call.
            let n = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
            if n > 0 {
                *sent += n as usize;
                continue;
            }
            let e = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            match e {
                libc::EINTR => continue,
                libc::EAGAIN => {
                    // A short send completes with what went out (the caller sends the
                    // rest); nothing sent yet waits for the socket to drain.
                    if *sent > 0 {
                        let n = i32::try_from(*sent).unwrap_or(i32::MAX);
                        self.finish(idx, n, None);
                    }
                    return;
                }
                _ => {
                    self.finish(idx, -e, None);
                    return;
                }
            }
        }
    }

    fn progress_recv(&mut self, idx: u32, fd: RawFd) {
        for _ in 0..READS_PER_TURN {
            let Some(op) = self.ops.get(idx as usize).and_then(Option::as_ref) else {
                return;
            };
            let (token, kind) = (op.token, op.kind);
            let mut buf = self.buffer(RECV_LEN);
            self.counters.syscalls += 1;
            // SAFETY: `buf` is a live, owned buffer of `buf.len()` bytes for the call.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            // Read before anything else can change it (the pushes below may allocate).
            let errno = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if n > 0 {
                self.ready.push(Completion {
                    token,
                    kind,
                    result: i32::try_from(n).unwrap_or(i32::MAX),
                    more: true,
                    data: Some(EpollData {
                        buf,
                        len: n as usize,
                    }),
                });
                continue;
            }
            self.spare.push(buf);
            if n == 0 {
                self.finish(idx, 0, None);
                return;
            }
            match errno {
                libc::EINTR => {}
                libc::EAGAIN => return,
                e => {
                    self.finish(idx, -e, None);
                    return;
                }
            }
        }
        // Data may be left: read on next turn rather than wait for an edge that will not
        // come.
        if let Some(op) = self.ops.get(idx as usize).and_then(Option::as_ref) {
            self.resume.push((idx, op.gen));
        }
    }

    fn progress_read(&mut self, idx: u32, fd: RawFd, len: usize) {
        let mut buf = self.buffer(len);
        self.counters.syscalls += 1;
        // SAFETY: `buf` is a live, owned buffer of `buf.len()` bytes for the call.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if n > 0 {
            self.finish(
                idx,
                i32::try_from(n).unwrap_or(i32::MAX),
                Some(EpollData {
                    buf,
                    len: n as usize,
                }),
            );
            return;
        }
        self.spare.push(buf);
        if n == 0 {
            self.finish(idx, 0, None);
        } else if errno != libc::EAGAIN && errno != libc::EINTR {
            self.finish(idx, -errno, None);
        }
    }

    fn on_event(&mut self, fd: RawFd, flags: u32) {
        let Some(f) = self.fds.get(&fd) else {
            return;
        };
        let (connect, send, recv, read) = (f.connect, f.send, f.recv, f.read);
        let err = flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
        if flags & libc::EPOLLOUT as u32 != 0 || err {
            for idx in [connect, send].into_iter().flatten() {
                self.progress(idx);
            }
        }
        if flags & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0 || err {
            for idx in [recv, read].into_iter().flatten() {
                self.progress(idx);
            }
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        for (idx, gen) in std::mem::take(&mut self.resume) {
            let same = self
                .ops
                .get(idx as usize)
                .and_then(Option::as_ref)
                .is_some_and(|op| op.gen == gen);
            if same {
                self.progress(idx);
            }
        }
        let ms = if !self.ready.is_empty() {
            0
        } else {
            match timeout {
                // Rounded up: a timer must not wake the loop before it is due.
                Some(t) => i32::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
                None => -1,
            }
        };
        let cap = self.events.len() as i32;
        self.counters.syscalls += 1;
        // SAFETY: `events` has room for `cap` entries for the duration of the call.
        let n = unsafe { libc::epoll_wait(self.epfd, self.events.as_mut_ptr(), cap, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(());
            }
            return Err(Error::io("epoll_wait", e));
        }
        for i in 0..n as usize {
            let ev = self.events[i];
            self.on_event(ev.u64 as RawFd, ev.events);
        }
        Ok(())
    }
}

impl Backend for Epoll {
    type Data = EpollData;

    fn socket(&mut self, addr: &SockAddr) -> io::Result<RawFd> {
        // The socket, and fcntl(2)'s get and set of its flags.
        self.counters.syscalls += sys::socket_calls(addr) + 2;
        let fd = sys::stream_socket(addr)?;
        if let Err(e) = sys::set_nonblocking(fd) {
            sys::close(fd);
            return Err(e);
        }
        Ok(fd)
    }

    fn connect(&mut self, token: u64, fd: RawFd, addr: SockAddr) -> Result<OpId, Error> {
        self.watch(fd)?;
        let (idx, id) = self.alloc(token, OpKind::Connect, fd, Work::Connect);
        self.counters.syscalls += 1;
        // SAFETY: `addr` holds a valid sockaddr of `len` bytes for the call.
        let rc = unsafe { libc::connect(fd, addr.as_ptr(), addr.len()) };
        let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if rc == 0 {
            self.finish(idx, 0, None);
        } else if e == libc::EINPROGRESS || e == libc::EINTR {
            if let Some(f) = self.fds.get_mut(&fd) {
                f.connect = Some(idx);
            }
        } else {
            self.finish(idx, -e, None);
        }
        Ok(id)
    }

    fn send(&mut self, token: u64, fd: RawFd, buf: Bytes) -> Result<OpId, Error> {
        self.watch(fd)?;
        let (idx, id) = self.alloc(token, OpKind::Send, fd, Work::Send { buf, sent: 0 });
        if let Some(f) = self.fds.get_mut(&fd) {
            f.send = Some(idx);
        }
        self.progress_send(idx, fd);
        Ok(id)
    }

    fn recv(&mut self, token: u64, fd: RawFd) -> Result<OpId, Error> {
        self.watch(fd)?;
        let (idx, id) = self.alloc(token, OpKind::Recv, fd, Work::Recv);
        if let Some(f) = self.fds.get_mut(&fd) {
            f.recv = Some(idx);
        }
        self.progress_recv(idx, fd);
        Ok(id)
    }

    fn read(&mut self, token: u64, fd: RawFd, len: usize) -> Result<OpId, Error> {
        if !self.fds.contains_key(&fd) {
            // The eventfd is made non-blocking once: this backend reads it with read(2).
            // Readable only: an eventfd is always writable, and each read would wake us.
            sys::set_nonblocking(fd)
                .map_err(|e| Error::io("making the eventfd non-blocking", e))?;
            self.watch_for(fd, libc::EPOLLIN)?;
        }
        let (idx, id) = self.alloc(token, OpKind::Read, fd, Work::Read { len });
        if let Some(f) = self.fds.get_mut(&fd) {
            f.read = Some(idx);
        }
        self.progress_read(idx, fd, len);
        Ok(id)
    }

    fn cancel(&mut self, op: OpId) -> Result<(), Error> {
        let idx = (op.0 & u64::from(u32::MAX)) as u32;
        let gen = (op.0 >> 32) as u32;
        if self
            .ops
            .get(idx as usize)
            .and_then(Option::as_ref)
            .is_some_and(|o| o.gen == gen)
        {
            self.finish(idx, -libc::ECANCELED, None);
        }
        Ok(())
    }

    fn shutdown(&mut self, fd: RawFd) {
        self.counters.syscalls += 1;
        sys::shutdown(fd);
    }

    fn close(&mut self, fd: RawFd) {
        // A connection that never got a socket (a failed lookup) closes -1: no call.
        self.counters.syscalls += u64::from(fd >= 0);
        if self.fds.remove(&fd).is_some() {
            self.counters.syscalls += 1;
            let mut ev = libc::epoll_event { events: 0, u64: 0 };
            // SAFETY: `ev` is valid for the call; a failure (already gone) is harmless.
            unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_DEL, fd, &mut ev) };
        }
        sys::close(fd);
    }

    fn submit_and_wait(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        self.wait(timeout)
    }

    fn submit(&mut self) -> Result<(), Error> {
        self.wait(Some(Duration::ZERO))
    }

    fn reap(&mut self, out: &mut Vec<Completion<EpollData>>) {
        self.counters.completions += self.ready.len() as u64;
        out.append(&mut self.ready);
    }

    fn data<'a>(&'a self, d: &'a EpollData) -> &'a [u8] {
        d.buf.get(..d.len).unwrap_or(&[])
    }

    fn release(&mut self, d: EpollData) {
        if self.spare.len() < 64 {
            self.spare.push(d.buf);
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn counters(&self) -> crate::backend::IoCounters {
        self.counters
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        sys::close(self.epfd);
    }
}
