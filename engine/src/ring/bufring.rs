//! The provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19): a ring of receive
//! buffers the kernel picks from when a multishot recv has data.
//!
//! Shape: one page-aligned array of `io_uring_buf` entries shared with the kernel, and one
//! contiguous allocation holding every buffer. The kernel consumes entries from the head;
//! we publish returned buffers at the tail with a release store. A buffer handed to us in
//! a CQE is copied out and recycled before the next CQE is looked at, so the ring only
//! runs dry (ENOBUFS) when the kernel fills every buffer within one loop turn.
//!
//! Unsafe lives here and in `ring/mod.rs` only. The invariant: the entry array and the
//! buffers stay allocated until the ring is unregistered, which `Drop` does first.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

const PAGE: usize = 4096;

/// A registered provided-buffer ring. `!Send`: it belongs to the shard that owns the ring.
pub(crate) struct BufRing {
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    bufs: *mut u8,
    bufs_layout: Layout,
    count: u16,
    mask: u16,
    buf_size: usize,
    /// Our copy of the tail; published to the kernel after each batch of recycles.
    tail: u16,
    group: u16,
}

impl BufRing {
    /// Allocates `count` buffers of `buf_size` bytes and registers them as group `group`.
    ///
    /// `count` must be a power of two between 1 and 32768.
    pub(crate) fn register(
        ring: &IoUring,
        group: u16,
        count: u16,
        buf_size: usize,
    ) -> io::Result<Self> {
        if !count.is_power_of_two()
            || count > 32768
            || buf_size == 0
            || buf_size > u32::MAX as usize
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring: count must be a power of two ≤ 32768",
            ));
        }
        let entries_size = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        let entries_layout = Layout::from_size_align(entries_size.max(PAGE), PAGE)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let bufs_total = usize::from(count)
            .checked_mul(buf_size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer ring too large"))?;
        let bufs_layout = Layout::from_size_align(bufs_total, 64)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: both layouts have a non-zero size (count ≥ 1, buf_size ≥ 1, entries ≥ PAGE).
        let entries = unsafe { alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        // SAFETY: as above.
        let bufs = unsafe { alloc_zeroed(bufs_layout) };
        if entries.is_null() || bufs.is_null() {
            // SAFETY: each pointer is freed only if it was allocated, with its own layout.
            unsafe {
                if !entries.is_null() {
                    dealloc(entries.cast(), entries_layout);
                }
                if !bufs.is_null() {
                    dealloc(bufs, bufs_layout);
                }
            }
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "buffer ring allocation failed",
            ));
        }
        let mut this = Self {
            entries,
            entries_layout,
            bufs,
            bufs_layout,
            count,
            mask: count - 1,
            buf_size,
            tail: 0,
            group,
        };
        // SAFETY: `entries` is page-aligned, zeroed and `count` entries long; it and the
        // buffers stay allocated until `Drop`, which unregisters the group before freeing.
        let reg = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, group, 0)
        };
        if let Err(e) = reg {
            // `this` drops here; `registered` is not tracked separately, so free by hand.
            // SAFETY: the kernel never saw these allocations (registration failed).
            unsafe {
                dealloc(this.entries.cast(), this.entries_layout);
                dealloc(this.bufs, this.bufs_layout);
            }
            this.entries = std::ptr::null_mut();
            this.bufs = std::ptr::null_mut();
            std::mem::forget(this);
            return Err(e);
        }
        for bid in 0..count {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    /// The buffer group id to put in recv SQEs.
    pub(crate) fn group(&self) -> u16 {
        self.group
    }

    /// The first `len` bytes of buffer `bid`, as filled by the kernel.
    ///
    /// Returns an empty slice for an out-of-range id or length (a kernel contract breach we
    /// refuse to turn into an out-of-bounds read).
    pub(crate) fn data(&self, bid: u16, len: usize) -> &[u8] {
        if bid >= self.count || len > self.buf_size {
            return &[];
        }
        // SAFETY: `bid < count` and `len ≤ buf_size`, so the range lies inside the buffer
        // allocation. The kernel finished writing this buffer before posting the CQE that
        // named it, and will not touch it again until we give it back with `recycle`.
        unsafe { std::slice::from_raw_parts(self.bufs.add(usize::from(bid) * self.buf_size), len) }
    }

    /// Gives buffer `bid` back to the kernel (visible after the next `publish`).
    pub(crate) fn recycle(&mut self, bid: u16) {
        if bid < self.count {
            self.push(bid);
        }
    }

    fn push(&mut self, bid: u16) {
        let idx = usize::from(self.tail & self.mask);
        // SAFETY: `idx < count`, so the entry is inside the array; the kernel only reads
        // entries between its head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.add(idx) };
        // SAFETY: `bid < count`, so the address is inside the buffer allocation.
        entry.set_addr(unsafe { self.bufs.add(usize::from(bid) * self.buf_size) } as u64);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes every recycled buffer to the kernel with one release store.
    pub(crate) fn publish(&mut self) {
        // SAFETY: the tail field sits inside entry 0 of our live, aligned array, and the
        // kernel reads it atomically; AtomicU16 has u16's size and alignment.
        let tail = unsafe { &*(BufRingEntry::tail(self.entries).cast::<AtomicU16>()) };
        tail.store(self.tail, Ordering::Release);
    }

    /// Unregisters the group. Call before the ring itself is dropped.
    pub(crate) fn unregister(&mut self, ring: &IoUring) {
        let _ = ring.submitter().unregister_buf_ring(self.group);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // The owner unregisters (or drops the whole io_uring) before dropping us; after
        // that the kernel holds no pointer into these allocations.
        // SAFETY: allocated in `register` with exactly these layouts, freed once.
        unsafe {
            if !self.entries.is_null() {
                dealloc(self.entries.cast(), self.entries_layout);
            }
            if !self.bufs.is_null() {
                dealloc(self.bufs, self.bufs_layout);
            }
        }
    }
}
