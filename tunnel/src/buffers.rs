//! TCP socket buffers, each connection's in an anonymous mapping of its own.
//!
//! Why not `vec![0; n]`: a large zeroed allocation from the heap is zeroed by the allocator once the heap has
//! been used (every page touched, whatever the connection carries), and freed heap memory mostly stays with
//! the process. A private mapping costs nothing until a page is written, so a connection's memory follows
//! what it has had in flight, and `munmap` gives all of it back to the OS the moment the connection ends —
//! with glibc and musl alike. [`Buffers::release`] returns the pages of an idle connection early.

use std::ffi::c_void;
use std::ptr::NonNull;

/// One mapping holding a socket's receive and send rings.
pub(crate) struct Buffers {
    base: NonNull<u8>,
    len: usize,
}

// The mapping is plain memory owned by whoever holds the `Buffers`; nothing about it is tied to a thread.
unsafe impl Send for Buffers {}

/// The rings carved out of a [`Buffers`] mapping, handed to smoltcp.
pub(crate) type Rings = (&'static mut [u8], &'static mut [u8]);

impl Buffers {
    /// Maps `rx + tx` bytes (rounded up to whole pages) and returns the two rings.
    ///
    /// # Safety
    /// The returned slices point into the mapping: the caller must stop using them (drop the smoltcp socket
    /// that holds them) before dropping the [`Buffers`].
    pub(crate) unsafe fn map(rx: usize, tx: usize) -> std::io::Result<(Buffers, Rings)> {
        use rustix::mm::{MapFlags, ProtFlags};
        let len = (rx + tx).max(1).next_multiple_of(page_size());
        // SAFETY: a fresh private anonymous mapping at an address of the kernel's choosing aliases nothing.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )?
        };
        let base = NonNull::new(base.cast::<u8>()).expect("mmap never returns null on success");
        // SAFETY: the mapping is `len >= rx + tx` bytes, readable and writable, zero-filled, and the two
        // slices do not overlap.
        let rings = unsafe {
            (
                std::slice::from_raw_parts_mut(base.as_ptr(), rx),
                std::slice::from_raw_parts_mut(base.as_ptr().add(rx), tx),
            )
        };
        Ok((Buffers { base, len }, rings))
    }

    /// Gives the mapping's pages back to the OS; they read as zeros when next touched.
    ///
    /// # Safety
    /// Nothing stored in the rings may still be needed: call it only when the socket holds no data in either
    /// ring (see `tcp::Socket::buffers_empty` in the in-tree smoltcp).
    pub(crate) unsafe fn release(&self) {
        // SAFETY: the range is exactly our mapping; MADV_DONTNEED on private anonymous memory only replaces
        // page contents with zeros, which the caller guarantees nobody needs.
        let _ = unsafe {
            rustix::mm::madvise(self.base.as_ptr().cast::<c_void>(), self.len, rustix::mm::Advice::LinuxDontNeed)
        };
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: `map`'s contract: the rings are no longer in use; the range is exactly our mapping.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast::<c_void>(), self.len) };
    }
}

fn page_size() -> usize {
    rustix::param::page_size()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_zeroed_disjoint_and_survive_release_as_zeros() {
        // SAFETY: the rings are dropped before the mapping.
        let (buffers, (rx, tx)) = unsafe { Buffers::map(10_000, 5_000).unwrap() };
        assert_eq!((rx.len(), tx.len()), (10_000, 5_000));
        assert!(rx.iter().chain(tx.iter()).all(|&b| b == 0));
        rx.fill(1);
        tx.fill(2);
        assert!(rx.iter().all(|&b| b == 1) && tx.iter().all(|&b| b == 2));
        // SAFETY: nothing in the rings is needed after this point.
        unsafe { buffers.release() };
        assert!(rx.iter().chain(tx.iter()).all(|&b| b == 0));
        drop(buffers);
    }
}
