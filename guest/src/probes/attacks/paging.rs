//! Page tables as a weapon: mapping the switcher, pointing outside guest
//! memory, reserved bits, bad CR3s; and two legal but tricky things that
//! must simply work: self-referencing tables, and more address spaces
//! than the shadow pool can hold.
//!
//! Umbra reads our tables, never trusts them, and builds its own shadow
//! from them; every entry it follows is checked as it is read.

use super::{Attack, SWITCHER_BASE, SWITCHER_PD511, SWITCHER_UNMAPPED, attack_table, peek, poke, works};
use crate::platform::hypercall::{self, hypercall};
use crate::probes::tables::{
    self, ACCESSED, ADDRESS, AddressSpace, DIRTY, Frames, HUGE, PAGE_SIZE, PD, PDPT, PML4, PRESENT, PT,
    WRITABLE, phys,
};

/// A PML4 slot nothing else uses, for fresh tables (user half).
const FRESH: u64 = 0x0000_2000_0000_0000;

/// Builds our tables and writes `entry` into the entry for `va` at
/// `level`, without telling Umbra. The entry is worked out once the
/// tables exist, so it may take a frame of theirs. Returns the tables and
/// the entry.
fn with_entry(
    memory_size: u64,
    frames: Frames,
    (va, level): (u64, u32),
    entry: impl FnOnce(&mut AddressSpace) -> u64,
) -> (AddressSpace, u64) {
    let mut space = tables::build_and_switch(memory_size, frames);
    let entry = entry(&mut space);
    space.set(va, level, entry);
    (space, entry)
}

/// A frame of ours over the switcher, announced with SET_PTE: the same as
/// `test=map-switcher`.
fn map_switcher_pte(_: &'static str, memory_size: u64, frames: Frames) {
    super::super::map_switcher(memory_size, frames);
}

/// The same, not announced: we just touch it, and the fault is Umbra's.
fn map_switcher_demand(_: &'static str, memory_size: u64, frames: Frames) {
    with_entry(memory_size, frames, (SWITCHER_UNMAPPED, PT), |space| {
        space.frames.alloc() | PRESENT | WRITABLE
    });
    poke(SWITCHER_UNMAPPED);
}

/// A 2 MiB page of ours over PD[511] of the switcher region, touched.
fn map_switcher_2m(_: &'static str, memory_size: u64, frames: Frames) {
    with_entry(memory_size, frames, (SWITCHER_PD511, PD), |_| PRESENT | WRITABLE | HUGE);
    peek(SWITCHER_PD511 + 0x1000);
}

/// The same large page, announced with SET_PMD instead.
fn map_switcher_2m_announced(_: &'static str, memory_size: u64, frames: Frames) {
    let (space, _) = with_entry(memory_size, frames, (SWITCHER_PD511, PD), |_| PRESENT | WRITABLE | HUGE);
    // SAFETY: an announcement Umbra must refuse.
    unsafe { hypercall(umbra_abi::SET_PMD, space.root, SWITCHER_PD511, 0, 0, 0) };
}

/// A 1 GiB page over the whole last gigabyte, switcher and all, then a
/// read of the switcher's unmapped part through it.
fn map_switcher_1g(_: &'static str, memory_size: u64, frames: Frames) {
    with_entry(memory_size, frames, (SWITCHER_BASE, PDPT), |_| PRESENT | WRITABLE | HUGE);
    peek(SWITCHER_UNMAPPED);
}

/// A 4 KiB page just past the end of guest memory.
fn pte_beyond_memory(_: &'static str, memory_size: u64, frames: Frames) {
    with_entry(memory_size, frames, (FRESH, PT), |_| memory_size | PRESENT | WRITABLE);
    peek(FRESH);
}

/// A page directory entry naming a page table past the end of memory.
fn pde_beyond_memory(_: &'static str, memory_size: u64, frames: Frames) {
    with_entry(memory_size, frames, (FRESH, PD), |_| (memory_size + (1 << 20)) | PRESENT | WRITABLE);
    peek(FRESH);
}

/// A PML4 entry naming a PDPT far beyond memory (at 1 TiB).
fn pml4e_beyond_memory(_: &'static str, memory_size: u64, frames: Frames) {
    with_entry(memory_size, frames, (FRESH, PML4), |_| (1 << 40) | PRESENT | WRITABLE);
    peek(FRESH);
}

/// A PTE with bit 51 set: above the guest's physical-address width.
fn pte_reserved(_: &'static str, memory_size: u64, frames: Frames) {
    with_entry(memory_size, frames, (FRESH, PT), reserved_pte);
    peek(FRESH);
}

/// The same PTE, announced with SET_PTE rather than touched.
fn pte_reserved_announced(_: &'static str, memory_size: u64, frames: Frames) {
    let (space, pte) = with_entry(memory_size, frames, (FRESH, PT), reserved_pte);
    hypercall::set_pte(space.root, FRESH, pte);
}

/// A fresh frame of ours, with bit 51 set.
fn reserved_pte(space: &mut AddressSpace) -> u64 {
    space.frames.alloc() | (1 << 51) | PRESENT | WRITABLE
}

/// A 2 MiB page whose address has bit 13 set: reserved, as a large page
/// must be 2 MiB-aligned.
fn pde_reserved(_: &'static str, memory_size: u64, frames: Frames) {
    with_entry(memory_size, frames, (FRESH, PD), |_| (1 << 13) | PRESENT | WRITABLE | HUGE);
    peek(FRESH);
}

/// The page-size bit in a PML4 entry, which has none.
fn pml4e_huge(_: &'static str, memory_size: u64, frames: Frames) {
    with_entry(memory_size, frames, (FRESH, PML4), |space| space.frames.alloc() | PRESENT | WRITABLE | HUGE);
    peek(FRESH);
}

/// A 2 MiB page whose start is inside guest memory and whose end is not.
/// Run with `guest_mem=65M`: the page at 64 MiB runs to 66 MiB.
fn large_2m_crosses_end(name: &'static str, memory_size: u64, frames: Frames) {
    let start = memory_size & !((2 << 20) - 1);
    if start == memory_size {
        say!("attack {name}: needs guest memory that is not a multiple of 2 MiB (guest_mem=65M)");
        hypercall::shutdown(97, "attack: wrong memory size");
    }
    with_entry(memory_size, frames, (FRESH, PD), |_| start | PRESENT | WRITABLE | HUGE);
    peek(FRESH);
}

/// A 1 GiB page from address 0, over a guest of less than 1 GiB.
fn large_1g_crosses_end(_: &'static str, memory_size: u64, frames: Frames) {
    with_entry(memory_size, frames, (FRESH, PDPT), |_| PRESENT | WRITABLE | HUGE);
    peek(FRESH);
}

fn cr3_beyond_memory(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    // SAFETY: Umbra must refuse this root, and kill us.
    unsafe { hypercall::new_pgtable(memory_size) };
}

fn cr3_unaligned(_: &'static str, memory_size: u64, frames: Frames) {
    let space = tables::build_and_switch(memory_size, frames);
    // SAFETY: as above.
    unsafe { hypercall::new_pgtable(space.root + 8) };
}

/// The recursive slot: PML4[RECURSIVE] points at the PML4 itself.
const RECURSIVE: u64 = 0x1FE;

/// The virtual address whose walk goes through PML4[RECURSIVE] `depth`
/// times before the indices in `rest` (most significant first).
fn recursive_va(depth: usize, rest: &[u64]) -> u64 {
    let mut va = 0u64;
    for level in 0..4 {
        let index = if level < depth { RECURSIVE } else { rest[level - depth] };
        va |= index << (39 - 9 * level);
    }
    // Sign-extend bit 47: RECURSIVE lies in the kernel half.
    if va & (1 << 47) != 0 { va | 0xFFFF_0000_0000_0000 } else { va }
}

/// Legal: a PML4 entry pointing at the PML4 itself, the trick many
/// kernels use to reach their own tables. Through it we read the PML4, a
/// PDPT and a page directory, and check each matches what we wrote (up
/// to the accessed and dirty bits, which Umbra sets as a CPU would). Then
/// we write a new entry through the recursive map, announce it, and use it.
fn recursive_tables(name: &'static str, memory_size: u64, frames: Frames) {
    let mut space = tables::build_and_switch(memory_size, frames);
    let root = space.root;
    // A new PML4 entry: it was not present, so no announcement is needed.
    // SAFETY: our own PML4, reached by the identity map.
    unsafe { phys::<u64>(root + 8 * RECURSIVE).write_volatile(root | PRESENT | WRITABLE) };
    let flags = !(ACCESSED | DIRTY);
    let read = |va: u64| {
        // SAFETY: mapped through the recursive entry, if Umbra follows it.
        unsafe { (va as *const u64).read_volatile() }
    };
    let real = |table: u64, index: u64| {
        // SAFETY: one of our own tables, reached by the identity map.
        unsafe { phys::<u64>((table & ADDRESS) + 8 * index).read_volatile() }
    };
    // The PML4 as a page: its entries 0 and RECURSIVE.
    let pml4_page = recursive_va(4, &[]);
    let same_pml4 = read(pml4_page) & flags == real(root, 0) & flags
        && read(pml4_page + 8 * RECURSIVE) & flags == real(root, RECURSIVE) & flags;
    // The PDPT under PML4[0], and the page directory under it.
    let pdpt = real(root, 0);
    let pd = real(pdpt, 0);
    let same_pdpt = read(recursive_va(3, &[0])) & flags == real(pdpt, 0) & flags;
    let same_pd = read(recursive_va(2, &[0, 0]) + 8) & flags == real(pd, 1) & flags;
    if !(same_pml4 && same_pdpt && same_pd) {
        say!("attack {name}: recursive reads differ: pml4 {same_pml4}, pdpt {same_pdpt}, pd {same_pd}");
        hypercall::shutdown(96, "attack: recursive mismatch");
    }
    // Write a PTE through the recursive map: map FRESH to a new frame with
    // a known word in it. The tables under FRESH are made first (through
    // the identity map), then the PTE itself goes in through the loop.
    let frame = space.frames.alloc();
    // SAFETY: a fresh frame of ours.
    unsafe { phys::<u64>(frame).write_volatile(0x1234_5678) };
    let pt_slot = space.entry(FRESH, PT) as u64;
    let index = |level: u32| (FRESH >> (12 + 9 * level)) & 511;
    let pte_va = recursive_va(1, &[index(3), index(2), index(1)]) + 8 * index(0);
    let pte = frame | PRESENT | WRITABLE;
    // SAFETY: the PTE for FRESH, through the recursive map.
    unsafe { (pte_va as *mut u64).write_volatile(pte) };
    // SAFETY: the same slot, through the identity map.
    let written = unsafe { (pt_slot as *const u64).read_volatile() };
    hypercall::set_pte(root, FRESH, pte);
    if written != pte || read(FRESH) != 0x1234_5678 {
        hypercall::shutdown(96, "attack: write through the recursive map lost");
    }
    works(name, format_args!("read PML4, PDPT and PD through the self-map, and mapped a page through it"))
}

/// How many address spaces `shadow-pool` switches through.
const SPACES: u64 = 2000;

/// Legal: 2000 address spaces, each a PML4 and a PDPT of its own sharing
/// the rest, switched to in turn and each touched at a different page.
/// That is more roots and tables than the shadow pool holds: Umbra must
/// evict old shadows rather than fail, and stay correct.
fn shadow_pool(name: &'static str, memory_size: u64, frames: Frames) {
    let mut space = tables::build_and_switch(memory_size, frames);
    let main = space.root;
    // A slot of one of our own tables, reached by the identity map.
    let real = |table: u64, index: u64| phys::<u64>((table & ADDRESS) + 8 * index);
    // The kernel half's PML4 entries, shared by every space.
    let kernel_slots: [(u64, u64); 1] = {
        let index = (tables::KERNEL_BASE >> 39) & 511;
        // SAFETY: as in `real`.
        [(index, unsafe { real(main, index).read_volatile() })]
    };
    // SAFETY: as in `real`.
    let pdpt0 = unsafe { real(main, 0).read_volatile() } & ADDRESS;
    let mut sum = 0u64;
    for i in 0..SPACES {
        let root = space.frames.alloc();
        let pdpt = space.frames.alloc();
        // SAFETY: two fresh frames of ours, and the main PDPT, reached by
        // the identity map.
        unsafe {
            core::ptr::copy_nonoverlapping(phys::<u8>(pdpt0), phys::<u8>(pdpt), PAGE_SIZE as usize);
            real(root, 0).write_volatile(pdpt | PRESENT | WRITABLE);
            for (index, value) in kernel_slots {
                real(root, index).write_volatile(value);
            }
            hypercall::new_pgtable(root);
        }
        // A different page each time, all over memory.
        let page = (i * 37 % (memory_size / PAGE_SIZE / 2)) * PAGE_SIZE;
        // SAFETY: identity-mapped guest memory.
        sum = sum.wrapping_add(unsafe { phys::<u64>(page).read_volatile() });
    }
    // SAFETY: the main tables map everything, as before.
    unsafe { hypercall::new_pgtable(main) };
    core::hint::black_box(sum);
    works(name, format_args!("switched through {SPACES} address spaces and back"))
}

pub const ATTACKS: &[Attack] = attack_table! {
    map_switcher_pte, map_switcher_demand, map_switcher_2m, map_switcher_2m_announced, map_switcher_1g,
    pte_beyond_memory, pde_beyond_memory, pml4e_beyond_memory,
    pte_reserved, pte_reserved_announced, pde_reserved, pml4e_huge,
    large_2m_crosses_end, large_1g_crosses_end, cr3_beyond_memory, cr3_unaligned,
    recursive_tables, shadow_pool,
};
