//! # Page tables: the probes' own address space
//!
//! The guest starts in linear mode, where Umbra pretends it has a 1:1 map
//! of its memory. Most probes want more: their own tables, and the guest
//! in the upper half of the address space. So we build four-level x86_64
//! tables the ordinary way and hand them over with NEW_PGTABLE. Umbra
//! never uses them directly; it reads them to build its shadow tables, one
//! page per fault.
//!
//! These are the probes' own, not the process kernel's (`kernel/mem.rs`),
//! on purpose. The kernel's tables go through the platform layer, map all
//! memory in 2 MiB pages at its higher half, and come from a frame
//! allocator with reference counts for copy-on-write. The probes call
//! Umbra directly, run on from the low addresses they were linked at, and
//! depend on exactly this shape: a 4 KiB kernel alias whose pages are
//! demand-filled one by one, PML4 slots left free for their own tables,
//! entries written and announced in the order each probe chooses. Sharing
//! the kernel's would change what the attacks and the fuzzer test.
//!
//! The tables map guest memory twice:
//! - an identity map with 2 MiB pages, so this code, its stack and its
//!   data keep running at the low addresses they were linked at;
//! - the kernel alias, guest-physical `pa` at `KERNEL_BASE + pa`, with
//!   4 KiB pages, the way a kernel maps memory for itself. Only the first
//!   `KERNEL_ALIAS_SIZE` of it: that holds the image, the tables and every
//!   page we touch, and a 4 KiB map of all memory costs an entry per page
//!   to build, which is slow where ring 1 is emulated.
//!
//! Table frames come from a bump allocator over the free memory between
//! the end of the image and the stack. Memory is never freed. Every table
//! is reached through the identity map, so a guest-physical address is
//! also a pointer, before the switch and after.
//!
//! The entries are written with accessed and dirty clear, as an OS writes
//! them for hardware: Umbra sets them when it walks, as a CPU would.

use crate::platform::hypercall;

// The architecture's entry bits, and the kernel half, which the process
// kernel declares too, by the kernel's names.
pub use crate::kernel::mem::{ADDRESS, KERNEL_BASE, PAGE as PAGE_SIZE, PRESENT, WRITABLE};

/// Entry bits the kernel does not export. The probes set accessed and
/// dirty to tell Umbra a page is about to be used.
pub const ACCESSED: u64 = 1 << 5;
pub const DIRTY: u64 = 1 << 6;
pub const HUGE: u64 = 1 << 7;

const LARGE_PAGE: u64 = 2 << 20;
/// How much of guest memory the kernel alias maps.
pub const KERNEL_ALIAS_SIZE: u64 = 16 << 20;

/// A pointer to guest-physical `pa`, good in linear mode and under our
/// identity map alike.
pub fn phys<T>(pa: u64) -> *mut T {
    pa as *mut T
}

/// Frames of free memory, handed out one page at a time.
pub struct Frames {
    next: u64,
    end: u64,
}

impl Frames {
    /// The frames in the free memory `[start, end)`, page-aligned.
    pub fn new(start: u64, end: u64) -> Frames {
        Frames { next: start, end }
    }

    /// One zeroed frame.
    pub fn alloc(&mut self) -> u64 {
        assert!(self.next < self.end, "out of free frames");
        let frame = self.next;
        self.next += PAGE_SIZE;
        // SAFETY: the frame is free memory nobody else uses, mapped as
        // described in `phys`.
        unsafe { core::ptr::write_bytes(phys::<u8>(frame), 0, PAGE_SIZE as usize) };
        frame
    }

    /// The free frames not handed out yet, as `[start, end)`.
    pub fn range(&self) -> (u64, u64) {
        (self.next, self.end)
    }

    fn next(&self) -> u64 {
        self.next
    }
}

/// Table levels, by how far they are from the page: a page table maps
/// 4 KiB pages, a page directory 2 MiB ones.
pub const PT: u32 = 0;
pub const PD: u32 = 1;
pub const PDPT: u32 = 2;
pub const PML4: u32 = 3;

/// Our tables, and the frames to grow them.
pub struct AddressSpace {
    /// Guest-physical address of the PML4: our CR3.
    pub root: u64,
    pub frames: Frames,
}

impl AddressSpace {
    /// The entry for `va` in its table at `level`, making the tables above
    /// it as needed. Making a table after the switch needs no announcement:
    /// an entry that was not present cannot have been shadowed.
    pub fn entry(&mut self, va: u64, level: u32) -> *mut u64 {
        let mut table = self.root;
        for upper in (level + 1..=PML4).rev() {
            let slot = slot(table, va, upper);
            // SAFETY: `table` is one of ours (see `phys`).
            let mut value = unsafe { slot.read_volatile() };
            if value & PRESENT == 0 {
                value = self.frames.alloc() | PRESENT | WRITABLE;
                // SAFETY: as above.
                unsafe { slot.write_volatile(value) };
            }
            assert!(value & HUGE == 0, "{va:#x} lies in a large page");
            table = value & ADDRESS;
        }
        slot(table, va, level)
    }

    /// Writes `value` into the entry for `va` at `level`.
    pub fn set(&mut self, va: u64, level: u32, value: u64) {
        // SAFETY: `entry` returns a slot in one of our tables.
        unsafe { self.entry(va, level).write_volatile(value) };
    }
}

/// The slot for `va` in the table at `table`, at `level`.
fn slot(table: u64, va: u64, level: u32) -> *mut u64 {
    let index = (va >> (12 + 9 * level)) & 511;
    phys(table + 8 * index)
}

/// Builds the identity map and the kernel alias of `memory_size` bytes of
/// guest memory, declares the kernel half, and switches to the tables.
pub fn build_and_switch(memory_size: u64, mut frames: Frames) -> AddressSpace {
    let first = frames.next();
    let mut space = AddressSpace { root: frames.alloc(), frames };

    // A large page must lie wholly inside guest memory, so a last partial
    // 2 MiB is mapped in 4 KiB pages.
    let pages_end = memory_size & !(PAGE_SIZE - 1);
    let large_end = memory_size & !(LARGE_PAGE - 1);
    for pa in (0..large_end).step_by(LARGE_PAGE as usize) {
        space.set(pa, PD, pa | PRESENT | WRITABLE | HUGE);
    }
    for pa in (large_end..pages_end).step_by(PAGE_SIZE as usize) {
        space.set(pa, PT, pa | PRESENT | WRITABLE);
    }
    let alias_end = pages_end.min(KERNEL_ALIAS_SIZE);
    for pa in (0..alias_end).step_by(PAGE_SIZE as usize) {
        space.set(KERNEL_BASE + pa, PT, pa | PRESENT | WRITABLE);
    }
    say!(
        "page tables: {} KiB at {:#x}; identity map, and the first {} MiB at {:#x}",
        (space.frames.next() - first) >> 10,
        space.root,
        alias_end >> 20,
        KERNEL_BASE
    );

    // Umbra reads the boundary once, at the first NEW_PGTABLE.
    hypercall::set_kernel_boundary(KERNEL_BASE);
    // SAFETY: the identity map covers all guest memory, so the code, stack
    // and data stay where they are.
    unsafe { hypercall::new_pgtable(space.root) };
    say!("running on our own page tables");
    space
}
