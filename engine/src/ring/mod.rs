//! The ring layer: the only code that builds SQEs or reads CQEs.
//!
//! [`Driver`] implements the engine's backend interface ([`crate::backend::Backend`], whose
//! contract it keeps) on io_uring: connect, send, multishot recv into a provided-buffer
//! ring, read, cancel, one `io_uring_enter` per loop turn.
//!
//! # The lifecycle invariant
//! A buffer or address handed to the kernel must stay valid until the CQE that ends the
//! operation. Every in-flight operation has an [`OpSlot`] in `ops`, and the slot *owns*
//! what the kernel may read or write (the send's `Bytes`, the connect's sockaddr, a
//! single-shot recv's buffer). A slot is freed only by the CQE without `IORING_CQE_F_MORE`
//! that ends its operation — never by a cancel, never by the connection closing — or at
//! once when its SQE could not be queued at all (`Driver::start`: the kernel never saw it). The
//! `user_data` of an SQE is its slot index plus a generation, so a late cancel can never
//! hit a newer operation that reused the slot.

mod bufring;
pub(crate) mod epoll;
mod probe;
pub(crate) mod sys;

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::Bytes;
use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

pub use probe::{probe, RingFeatures};

use crate::backend::{Backend, OpId, OpKind};
use crate::error::Error;
use bufring::BufRing;

/// `user_data` of cancel SQEs: their CQEs carry nothing we act on.
const USER_DATA_CANCEL: u64 = u64::MAX;
/// The buffer group id of the shard's provided-buffer ring.
const BUF_GROUP: u16 = 0;
/// Size of the owned buffer a single-shot recv reads into.
const SINGLE_SHOT_RECV_LEN: usize = 64 * 1024;

/// Sizes for one shard's ring.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingConfig {
    pub entries: u32,
    pub recv_buffers: u16,
    pub recv_buffer_size: usize,
}

/// Received bytes, still in a kernel-visible buffer until [`Driver::release`].
#[derive(Debug)]
pub(crate) enum RecvData {
    Ring { bid: u16, len: usize },
    Owned { buf: Box<[u8]>, len: usize },
}

/// A completion of this driver.
pub(crate) type Completion = crate::backend::Completion<RecvData>;

enum Held {
    Nothing,
    Send(#[allow(dead_code, reason = "kept alive for the kernel until the CQE")] Bytes),
    Connect(#[allow(dead_code, reason = "kept alive for the kernel until the CQE")] Box<SockAddr>),
    Buffer(Box<[u8]>),
}

struct OpSlot {
    token: u64,
    kind: OpKind,
    gen: u32,
    held: Held,
}

/// A socket address in the form `connect(2)` takes.
pub(crate) struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    pub(crate) fn from_std(addr: &std::net::SocketAddr) -> Self {
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            std::net::SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe {
                    std::ptr::write(
                        std::ptr::addr_of_mut!(storage).cast::<libc::sockaddr_in>(),
                        sin,
                    )
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            std::net::SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe {
                    std::ptr::write(
                        std::ptr::addr_of_mut!(storage).cast::<libc::sockaddr_in6>(),
                        sin6,
                    )
                };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        Self {
            storage,
            len: len as libc::socklen_t,
        }
    }

    pub(crate) fn unix(path: &std::path::Path) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        // SAFETY: as above.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_un.
        let sun = unsafe { &mut *std::ptr::addr_of_mut!(storage).cast::<libc::sockaddr_un>() };
        if bytes.len() >= sun.sun_path.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unix socket path too long",
            ));
        }
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
        Ok(Self {
            storage,
            len: len as libc::socklen_t,
        })
    }

    pub(crate) fn family(&self) -> libc::c_int {
        libc::c_int::from(self.storage.ss_family)
    }

    /// The address for `connect(2)`; valid while `self` is.
    pub(crate) fn as_ptr(&self) -> *const libc::sockaddr {
        std::ptr::addr_of!(self.storage).cast()
    }

    /// Its length.
    pub(crate) fn len(&self) -> libc::socklen_t {
        self.len
    }
}

/// One shard's io_uring. `!Send` (raw pointers inside): it lives and dies on its shard.
pub(crate) struct Driver {
    // Field order matters for drop: the ring (and so the kernel's view of the buffer
    // ring) goes before the buffer memory.
    ring: IoUring,
    bufring: Option<BufRing>,
    features: RingFeatures,
    ops: Vec<Option<OpSlot>>,
    free: Vec<u32>,
    next_gen: u32,
    in_flight: usize,
    cqes: Vec<(u64, i32, u32)>,
    spare_buffers: Vec<Box<[u8]>>,
    spare_small: Vec<Box<[u8]>>,
    counters: crate::backend::IoCounters,
}

impl Driver {
    pub(crate) fn new(cfg: RingConfig) -> Result<Self, Error> {
        let (ring, mut features) = probe::build_ring(cfg.entries)?;
        let bufring = if features.multishot_recv {
            match BufRing::register(&ring, BUF_GROUP, cfg.recv_buffers, cfg.recv_buffer_size) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!(
                        "provided-buffer ring unavailable ({e}); using single-shot recv"
                    );
                    features.multishot_recv = false;
                    None
                }
            }
        } else {
            None
        };
        Ok(Self {
            ring,
            bufring,
            features,
            ops: Vec::new(),
            free: Vec::new(),
            next_gen: 0,
            in_flight: 0,
            cqes: Vec::with_capacity(256),
            spare_buffers: Vec::new(),
            spare_small: Vec::new(),
            counters: crate::backend::IoCounters::default(),
        })
    }

    pub(crate) fn features(&self) -> &RingFeatures {
        &self.features
    }

    fn alloc(&mut self, token: u64, kind: OpKind, held: Held) -> OpId {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.ops.push(None);
                (self.ops.len() - 1) as u32
            }
        };
        self.ops[idx as usize] = Some(OpSlot {
            token,
            kind,
            gen,
            held,
        });
        self.in_flight += 1;
        OpId(u64::from(gen) << 32 | u64::from(idx))
    }

    /// Records an operation's slot and queues its SQE (`entry`, whose pointers refer to
    /// memory `held` owns). If the SQE cannot be queued, the kernel never saw it: the slot
    /// is freed at once instead of waiting forever for a CQE that will not come.
    fn start(
        &mut self,
        token: u64,
        kind: OpKind,
        held: Held,
        entry: squeue::Entry,
    ) -> Result<OpId, Error> {
        let id = self.alloc(token, kind, held);
        if let Err(e) = self.push(entry.user_data(id.0)) {
            let idx = (id.0 & u64::from(u32::MAX)) as usize;
            if self.ops.get_mut(idx).and_then(Option::take).is_some() {
                self.free.push(idx as u32);
                self.in_flight -= 1;
            }
            return Err(e);
        }
        Ok(id)
    }

    fn push(&mut self, entry: squeue::Entry) -> Result<(), Error> {
        // SAFETY: every pointer in `entry` refers to memory owned by an OpSlot (or the
        // buffer ring) that stays alive until the operation's final CQE; see the module docs.
        if unsafe { self.ring.submission().push(&entry) }.is_ok() {
            return Ok(());
        }
        // The SQ is full: hand what is queued to the kernel and try once more.
        self.counters.syscalls += 1;
        self.ring
            .submit()
            .map_err(|e| Error::io("io_uring_enter (submit)", e))?;
        // SAFETY: as above.
        unsafe { self.ring.submission().push(&entry) }.map_err(|_| {
            Error::io(
                "io_uring SQ push",
                io::Error::other("submission queue still full after submit"),
            )
        })
    }

    fn resolve(&mut self, user_data: u64, result: i32, flags: u32) -> Option<Completion> {
        let bid = cqueue::buffer_select(flags);
        if user_data == USER_DATA_CANCEL {
            return None;
        }
        let idx = (user_data & 0xffff_ffff) as usize;
        let gen = (user_data >> 32) as u32;
        let matches = self
            .ops
            .get(idx)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.gen == gen);
        if !matches {
            // Not ours (cannot happen while slots outlive their ops); still return any
            // buffer the kernel picked so the ring does not leak it.
            tracing::error!(user_data, result, "CQE for an unknown operation");
            if let (Some(bid), Some(br)) = (bid, self.bufring.as_mut()) {
                br.recycle(bid);
                br.publish();
            }
            return None;
        }
        let more = cqueue::more(flags);
        let (token, kind) = {
            let slot = self.ops[idx].as_ref()?;
            (slot.token, slot.kind)
        };
        let mut data = None;
        if let Some(bid) = bid {
            data = Some(RecvData::Ring {
                bid,
                len: usize::try_from(result.max(0)).unwrap_or(0),
            });
        }
        if !more {
            let slot = self.ops[idx].take()?;
            self.free.push(idx as u32);
            self.in_flight -= 1;
            if let Held::Buffer(buf) = slot.held {
                if result > 0 {
                    data = Some(RecvData::Owned {
                        buf,
                        len: result as usize,
                    });
                } else if kind == OpKind::Recv {
                    self.spare_buffers.push(buf);
                }
            }
        }
        Some(Completion {
            token,
            kind,
            result,
            more,
            data,
        })
    }
}

impl Backend for Driver {
    type Data = RecvData;

    fn socket(&mut self, addr: &SockAddr) -> io::Result<RawFd> {
        self.counters.syscalls += sys::socket_calls(addr);
        sys::stream_socket(addr)
    }

    fn shutdown(&mut self, fd: RawFd) {
        self.counters.syscalls += 1;
        sys::shutdown(fd);
    }

    fn close(&mut self, fd: RawFd) {
        // A connection that never got a socket (a failed lookup) closes -1: no call.
        self.counters.syscalls += u64::from(fd >= 0);
        sys::close(fd);
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn counters(&self) -> crate::backend::IoCounters {
        self.counters
    }

    fn connect(&mut self, token: u64, fd: RawFd, addr: SockAddr) -> Result<OpId, Error> {
        let addr = Box::new(addr);
        let ptr = std::ptr::addr_of!(addr.storage).cast::<libc::sockaddr>();
        let len = addr.len;
        let entry = opcode::Connect::new(Fd(fd), ptr, len).build();
        self.start(token, OpKind::Connect, Held::Connect(addr), entry)
    }

    fn send(&mut self, token: u64, fd: RawFd, buf: Bytes) -> Result<OpId, Error> {
        let (ptr, len) = (buf.as_ptr(), u32::try_from(buf.len()).unwrap_or(u32::MAX));
        let entry = opcode::Send::new(Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        self.start(token, OpKind::Send, Held::Send(buf), entry)
    }

    /// Arms a receive: multishot into the buffer ring where available, else one recv into
    /// an owned buffer.
    fn recv(&mut self, token: u64, fd: RawFd) -> Result<OpId, Error> {
        if let Some(group) = self.bufring.as_ref().map(BufRing::group) {
            let entry = opcode::RecvMulti::new(Fd(fd), group).build();
            return self.start(token, OpKind::Recv, Held::Nothing, entry);
        }
        let mut buf = self
            .spare_buffers
            .pop()
            .unwrap_or_else(|| vec![0u8; SINGLE_SHOT_RECV_LEN].into_boxed_slice());
        let (ptr, len) = (buf.as_mut_ptr(), buf.len() as u32);
        let entry = opcode::Recv::new(Fd(fd), ptr, len).build();
        self.start(token, OpKind::Recv, Held::Buffer(buf), entry)
    }

    /// One `read(2)` of up to `len` bytes into an owned buffer (for eventfds).
    fn read(&mut self, token: u64, fd: RawFd, len: usize) -> Result<OpId, Error> {
        let mut buf = match self.spare_small.iter().position(|b| b.len() == len) {
            Some(i) => self.spare_small.swap_remove(i),
            None => vec![0u8; len].into_boxed_slice(),
        };
        let (ptr, n) = (buf.as_mut_ptr(), buf.len() as u32);
        let entry = opcode::Read::new(Fd(fd), ptr, n).build();
        self.start(token, OpKind::Read, Held::Buffer(buf), entry)
    }

    /// Asks the kernel to end `op` early. Its final CQE (often `-ECANCELED`) still arrives
    /// and still frees the slot; a cancel of an operation already finished is harmless.
    fn cancel(&mut self, op: OpId) -> Result<(), Error> {
        self.push(
            opcode::AsyncCancel::new(op.0)
                .build()
                .user_data(USER_DATA_CANCEL),
        )
    }

    /// Submits every queued SQE and waits for at least one CQE or the timeout. The one
    /// system call of a loop turn.
    fn submit_and_wait(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        self.counters.syscalls += 1;
        let res = match timeout {
            Some(t) => {
                let ts = Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submitter().submit_and_wait(1),
        };
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::io("io_uring_enter", e)),
        }
    }

    /// Submits without waiting.
    fn submit(&mut self) -> Result<(), Error> {
        self.counters.syscalls += 1;
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::io("io_uring_enter", e)),
        }
    }

    /// Moves every ready CQE out of the completion queue and resolves them.
    fn reap(&mut self, out: &mut Vec<Completion>) {
        self.cqes.clear();
        self.cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        self.counters.completions += self.cqes.len() as u64;
        for i in 0..self.cqes.len() {
            let (ud, res, flags) = self.cqes[i];
            if let Some(c) = self.resolve(ud, res, flags) {
                out.push(c);
            }
        }
    }

    /// The bytes of a recv completion.
    fn data<'a>(&'a self, d: &'a RecvData) -> &'a [u8] {
        match d {
            RecvData::Ring { bid, len } => self
                .bufring
                .as_ref()
                .map_or(&[][..], |b| b.data(*bid, *len)),
            RecvData::Owned { buf, len } => buf.get(..*len).unwrap_or(&[]),
        }
    }

    /// Gives a recv buffer back for reuse.
    fn release(&mut self, d: RecvData) {
        match d {
            RecvData::Ring { bid, .. } => {
                if let Some(b) = self.bufring.as_mut() {
                    b.recycle(bid);
                    b.publish();
                }
            }
            RecvData::Owned { buf, .. } => {
                if buf.len() == SINGLE_SHOT_RECV_LEN {
                    if self.spare_buffers.len() < 64 {
                        self.spare_buffers.push(buf);
                    }
                } else if self.spare_small.len() < 8 {
                    // The wake-up eventfd read, re-armed every time it fires.
                    self.spare_small.push(buf);
                }
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The shard waits for every operation to end before dropping the driver; should
        // it not have (a fatal error), make the kernel drop the buffer ring first.
        if let Some(b) = self.bufring.as_mut() {
            b.unregister(&self.ring);
        }
        if self.in_flight > 0 {
            // Slots still own their buffers: leak them rather than free memory the kernel
            // might write to while the ring is torn down.
            std::mem::forget(std::mem::take(&mut self.ops));
            if let Some(b) = self.bufring.take() {
                std::mem::forget(b);
            }
        }
    }
}
