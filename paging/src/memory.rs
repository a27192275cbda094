//! The two doors through which the shadow MMU touches memory.
//!
//! The crate owns no memory of its own. Guest memory is reached through
//! [`GuestMemory`], which speaks guest-physical addresses; shadow tables live
//! in frames handed out by a [`FramePool`], which speaks host-physical
//! addresses, since those are what a shadow entry must hold. The firmware
//! implements both over real RAM; the tests implement them over maps.

/// The guest's physical memory: one range, `0..limit()`.
pub trait GuestMemory {
    /// The size of guest memory in bytes. Guest-physical addresses at or
    /// beyond it do not exist. Must not change while the MMU is in use.
    fn limit(&self) -> u64;

    /// Reads the 8-byte-aligned word at `gpa`, or `None` if it cannot.
    fn read_u64(&self, gpa: u64) -> Option<u64>;

    /// Writes the 8-byte-aligned word at `gpa`; false if it cannot.
    fn write_u64(&mut self, gpa: u64, value: u64) -> bool;

    /// The host-physical address backing guest-physical `gpa` (for an
    /// address below `limit()`). The firmware's guest memory is one
    /// contiguous host range, so this is a base plus `gpa`.
    fn guest_to_host(&self, gpa: u64) -> u64;

    /// Whether every 2 MiB-aligned 2 MiB of guest memory is 2 MiB of
    /// host memory, contiguous and 2 MiB-aligned: then the shadow may map
    /// a piece of a guest large page with one 2 MiB leaf, where it would
    /// otherwise take 512 faults and a table. False unless the memory
    /// says so.
    fn host_large_pages(&self) -> bool {
        false
    }
}

/// A pool of 4 KiB frames for shadow page tables, named by their
/// host-physical addresses.
pub trait FramePool {
    /// A zero-filled frame, or `None` when the pool is exhausted.
    fn alloc_zeroed(&mut self) -> Option<u64>;

    /// Returns a frame obtained from [`FramePool::alloc_zeroed`].
    fn free(&mut self, frame: u64);

    /// Entry `index` (0..512) of `frame`.
    fn read_entry(&self, frame: u64, index: usize) -> u64;

    /// Sets entry `index` (0..512) of `frame`.
    fn write_entry(&mut self, frame: u64, index: usize, value: u64);

    /// The index of the first present entry of `frame` at `from` or after
    /// it. Freeing and clearing shadow tables asks this of tables that
    /// are mostly empty; a pool that can lend the frame as an array
    /// answers with `umbra_abi::tables::next_present`, eight entries a
    /// step.
    fn next_present(&self, frame: u64, from: usize) -> Option<usize> {
        (from..512).find(|&index| self.read_entry(frame, index) & crate::entry::PRESENT != 0)
    }

    /// How many frames the pool may hand out at once.
    fn capacity(&self) -> usize;

    /// How many frames are handed out now.
    fn in_use(&self) -> usize;
}

impl<T: GuestMemory + ?Sized> GuestMemory for &mut T {
    fn limit(&self) -> u64 {
        (**self).limit()
    }
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        (**self).read_u64(gpa)
    }
    fn write_u64(&mut self, gpa: u64, value: u64) -> bool {
        (**self).write_u64(gpa, value)
    }
    fn guest_to_host(&self, gpa: u64) -> u64 {
        (**self).guest_to_host(gpa)
    }
    fn host_large_pages(&self) -> bool {
        (**self).host_large_pages()
    }
}

impl<T: FramePool + ?Sized> FramePool for &mut T {
    fn alloc_zeroed(&mut self) -> Option<u64> {
        (**self).alloc_zeroed()
    }
    fn free(&mut self, frame: u64) {
        (**self).free(frame)
    }
    fn read_entry(&self, frame: u64, index: usize) -> u64 {
        (**self).read_entry(frame, index)
    }
    fn write_entry(&mut self, frame: u64, index: usize, value: u64) {
        (**self).write_entry(frame, index, value)
    }
    fn next_present(&self, frame: u64, from: usize) -> Option<usize> {
        (**self).next_present(frame, from)
    }
    fn capacity(&self) -> usize {
        (**self).capacity()
    }
    fn in_use(&self) -> usize {
        (**self).in_use()
    }
}
