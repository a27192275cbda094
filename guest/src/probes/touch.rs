//! # Touching pages: the default run
//!
//! With our own tables in place, we use memory every way the ABI allows
//! and check that Umbra's shadow tables agree with ours each time:
//!
//! 1. Demand fill. We write a pattern into scratch pages through the kernel
//!    alias and read it back through the identity map. Neither mapping is
//!    in the shadow yet; each first touch faults, and Umbra fills the
//!    shadow from our tables without us noticing.
//! 2. SET_PTE. We map fresh pages in a new region, announcing each entry
//!    with a synchronous SET_PTE as soon as it is written. The entries go in
//!    with accessed and dirty already set, which tells Umbra the page is
//!    about to be used, so it may fill the shadow at once.
//! 3. The async ring. Sixty-four more entries, announced through the ring,
//!    and one FLUSH_ASYNC to have Umbra run them all.
//! 4. Invalidation. We unmap one page, announce it, map it to another frame
//!    and check that we see the new frame: the shadow followed.
//!
//! Every access is volatile, so each one really reaches memory.

use umbra_abi as abi;

use crate::platform::hypercall::{self, shutdown};
use crate::probes::tables::{
    ACCESSED, AddressSpace, DIRTY, KERNEL_ALIAS_SIZE, KERNEL_BASE, PAGE_SIZE, PRESENT, PT, WRITABLE,
};

const DEMAND_PAGES: usize = 200;
const SYNC_PAGES: usize = 64;
const ASYNC_PAGES: usize = 64;
const NEW_PAGES: usize = SYNC_PAGES + ASYNC_PAGES;
/// Where the new mappings go: a part of the kernel half nothing used yet.
const NEW_REGION: u64 = 0xFFFF_9000_0000_0000;

/// The pattern for page `i` of a group (`salt` tells groups apart).
fn pattern(salt: u64, i: usize) -> u64 {
    0x5547_0000_0000_0000 ^ (salt << 32) ^ i as u64
}

/// The word at virtual address `va`.
fn word(va: u64) -> *mut u64 {
    va as *mut u64
}

/// Writes `value` into the first word of the page at `va`, and its
/// complement into the last.
fn write_page(va: u64, value: u64) {
    // SAFETY: callers pass pages mapped writable in our tables, used for
    // nothing else.
    unsafe {
        word(va).write_volatile(value);
        word(va + PAGE_SIZE - 8).write_volatile(!value);
    }
}

/// Checks what `write_page` left at `va`.
fn check_page(va: u64, value: u64, what: &str) {
    // SAFETY: as for `write_page`.
    let (first, last) = unsafe { (word(va).read_volatile(), word(va + PAGE_SIZE - 8).read_volatile()) };
    assert!(
        first == value && last == !value,
        "{what}: page {va:#x} holds {first:#x}/{last:#x}, expected {value:#x}"
    );
}

/// A present, writable PTE for `frame`, marked used so Umbra may prefill.
fn used_pte(frame: u64) -> u64 {
    frame | PRESENT | WRITABLE | ACCESSED | DIRTY
}

pub fn run(mut space: AddressSpace) -> ! {
    let demand = demand_fill(&mut space);

    let mut frames = [0u64; NEW_PAGES];
    for frame in frames.iter_mut() {
        *frame = space.frames.alloc();
    }
    let sync = map_with_set_pte(&mut space, &frames[..SYNC_PAGES]);
    let queued = map_through_ring(&mut space, &frames[SYNC_PAGES..]);
    for (i, &frame) in frames.iter().enumerate() {
        check_page(new_va(i), pattern(2, i), "new mapping");
        check_page(frame, pattern(2, i), "new mapping, identity alias");
    }
    remap(&mut space);

    say!(
        "touched {} pages: {demand} demand-filled, {sync} by SET_PTE, {queued} through the async ring; all verified",
        demand + sync + queued
    );
    shutdown(0, "done")
}

/// Step 1: scratch pages written through the kernel alias, read back
/// through the identity map. Returns the page count.
fn demand_fill(space: &mut AddressSpace) -> usize {
    let mut frames = [0u64; DEMAND_PAGES];
    for (i, frame) in frames.iter_mut().enumerate() {
        *frame = space.frames.alloc();
        assert!(*frame < KERNEL_ALIAS_SIZE, "frame {frame:#x} is beyond the kernel alias");
        write_page(KERNEL_BASE + *frame, pattern(1, i));
    }
    for (i, &frame) in frames.iter().enumerate() {
        check_page(frame, pattern(1, i), "demand fill, identity alias");
        check_page(KERNEL_BASE + frame, pattern(1, i), "demand fill, kernel alias");
    }
    DEMAND_PAGES
}

/// The `i`th page of the new region.
fn new_va(i: usize) -> u64 {
    NEW_REGION + i as u64 * PAGE_SIZE
}

/// Step 2: each new entry announced with a synchronous SET_PTE.
fn map_with_set_pte(space: &mut AddressSpace, frames: &[u64]) -> usize {
    for (i, &frame) in frames.iter().enumerate() {
        let pte = used_pte(frame);
        space.set(new_va(i), PT, pte);
        hypercall::set_pte(space.root, new_va(i), pte);
        write_page(new_va(i), pattern(2, i));
    }
    frames.len()
}

/// Step 3: the entries queued in the async ring, then one flush.
fn map_through_ring(space: &mut AddressSpace, frames: &[u64]) -> usize {
    for (j, &frame) in frames.iter().enumerate() {
        let va = new_va(SYNC_PAGES + j);
        let pte = used_pte(frame);
        space.set(va, PT, pte);
        hypercall::queue_async(abi::SET_PTE, [space.root, va, pte, 0, 0]);
    }
    hypercall::flush_async();
    assert!(hypercall::async_pending() == 0, "FLUSH_ASYNC left calls in the async ring");
    for j in 0..frames.len() {
        write_page(new_va(SYNC_PAGES + j), pattern(2, SYNC_PAGES + j));
    }
    frames.len()
}

/// Step 4: unmap the first new page, then map it to a fresh frame. If
/// Umbra had kept the old shadow entry we would read the old frame.
fn remap(space: &mut AddressSpace) {
    let va = new_va(0);
    space.set(va, PT, 0);
    hypercall::set_pte(space.root, va, 0);

    let frame = space.frames.alloc();
    write_page(frame, pattern(3, 0));
    let pte = used_pte(frame);
    space.set(va, PT, pte);
    hypercall::set_pte(space.root, va, pte);
    check_page(va, pattern(3, 0), "remapped page");
    say!("remapped {va:#x} to {frame:#x}: the shadow followed");
}
