//! # Memory: frames, the kernel's tables and every process's address space
//!
//! Frames come from one allocator: a bump pointer over the free memory
//! between the end of the image and the boot stack, plus a free list of
//! frames given back (linked through the frames themselves). Every frame
//! has a reference count, because copy-on-write lets processes share one.
//!
//! The kernel reaches memory through its higher half: guest-physical `pa`
//! is at `KERNEL_BASE + pa` (2 MiB pages, all of guest memory). Until the
//! first switch of page tables the guest runs in linear mode, where only
//! `pa` itself works; [`ptr`] knows which applies.
//!
//! Every address space has the same PML4 layout:
//! - slot 0: the identity map of guest memory, supervisor-only. The image
//!   is linked low (Umbra loads it where it is linked, in linear mode),
//!   so function pointers baked into its data point there.
//! - slots 1-255: the process's own user half, from `USER_BASE`.
//! - slots 256-511: the kernel half, the same PDPT pages in every space.
//!
//! The kernel-half and identity entries never change after boot. A change
//! to a present user entry is announced (`platform::set_pte`), since the
//! shadow may hold it; an address space torn down is flushed while current.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::platform;

pub const PAGE: u64 = 4096;
pub const KERNEL_BASE: u64 = 0xFFFF_8000_0000_0000;
/// Where user programs live: PML4 slot 1 and up (see `user/user.ld`).
pub const USER_BASE: u64 = 0x0000_0080_0000_0000;
/// The top of every user stack, the end of PML4 slot 1.
pub const USER_STACK_TOP: u64 = 0x0000_0100_0000_0000;
/// How far a user stack may grow on demand.
pub const USER_STACK_MAX: u64 = 1 << 20;

pub const PRESENT: u64 = 1 << 0;
pub const WRITABLE: u64 = 1 << 1;
pub const USER: u64 = 1 << 2;
/// Set by the kernel on a page it maps ahead of any access (fault-around),
/// so that the platform may map it ahead too (the shadow MMU's prefetch).
pub const ACCESSED: u64 = 1 << 5;
/// Set by the kernel on a private page it maps writable ahead of any
/// write, so that the platform may map it writable ahead too.
pub const DIRTY: u64 = 1 << 6;
const HUGE: u64 = 1 << 7;
/// A software bit: this read-only page is copy-on-write.
pub const COW: u64 = 1 << 9;
pub const ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;
const LARGE: u64 = 2 << 20;

/// What to add to a guest-physical address to reach it: 0 in linear mode,
/// `KERNEL_BASE` once our tables are in.
static DIRECT_MAP: AtomicU64 = AtomicU64::new(0);

/// A pointer to guest-physical `pa`.
pub fn ptr<T>(pa: u64) -> *mut T {
    (DIRECT_MAP.load(Ordering::Relaxed) + pa) as *mut T
}

/// The kernel-half address of something in the image, whichever alias
/// the caller runs at.
pub fn high(addr: u64) -> u64 {
    if addr >= KERNEL_BASE { addr } else { KERNEL_BASE + addr }
}

/// The frame allocator.
pub struct Frames {
    next: u64,
    end: u64,
    free_list: u64,
    free_listed: u64,
    refs: u64,
    ref_count: u64,
    /// Gives back frames kept only to save work later (the Linux layer's
    /// program pages) when none are left.
    reclaim: Option<fn(&mut Frames)>,
}

impl Frames {
    pub const fn empty() -> Frames {
        Frames { next: 0, end: 0, free_list: 0, free_listed: 0, refs: 0, ref_count: 0, reclaim: None }
    }

    /// What [`Frames::alloc`] calls before it gives up.
    pub fn set_reclaim(&mut self, reclaim: fn(&mut Frames)) {
        self.reclaim = Some(reclaim);
    }

    /// The frames in `[start, end)`; the reference counts take the first
    /// few of them.
    pub fn init(&mut self, start: u64, end: u64) {
        *self = Frames { next: start.next_multiple_of(PAGE), end: end & !(PAGE - 1), ..Frames::empty() };
        self.ref_count = self.end / PAGE;
        let bytes = (self.ref_count * 2).next_multiple_of(PAGE);
        self.refs = self.contiguous(bytes / PAGE);
    }

    /// `count` zeroed frames in a row, from the bump region (boot only).
    pub fn contiguous(&mut self, count: u64) -> u64 {
        let start = self.next;
        assert!(start + count * PAGE <= self.end, "out of memory at boot");
        self.next += count * PAGE;
        // SAFETY: fresh frames nobody uses yet.
        unsafe { core::ptr::write_bytes(ptr::<u8>(start), 0, (count * PAGE) as usize) };
        start
    }

    /// `count` frames in a row from the bump region, left as they are
    /// (boot only): the kernel heap, which needs no zeros, and whose first
    /// touch of every page is slow on a nested hypervisor.
    pub fn take(&mut self, count: u64) -> u64 {
        let start = self.next;
        assert!(start + count * PAGE <= self.end, "out of memory at boot");
        self.next += count * PAGE;
        start
    }

    /// Frames still to be had.
    pub fn available(&self) -> u64 {
        (self.end - self.next) / PAGE + self.free_listed
    }

    /// One zeroed frame with a reference count of 1.
    pub fn alloc(&mut self) -> Option<u64> {
        if self.free_list == 0
            && self.next >= self.end
            && let Some(reclaim) = self.reclaim
        {
            reclaim(self);
        }
        let frame = if self.free_list != 0 {
            let frame = self.free_list;
            // SAFETY: a free frame holds the address of the next one.
            self.free_list = unsafe { ptr::<u64>(frame).read() };
            self.free_listed -= 1;
            frame
        } else if self.next < self.end {
            self.next += PAGE;
            self.next - PAGE
        } else {
            return None;
        };
        // SAFETY: the frame is ours now.
        unsafe { core::ptr::write_bytes(ptr::<u8>(frame), 0, PAGE as usize) };
        self.set_refs(frame, 1);
        Some(frame)
    }

    fn ref_slot(&self, frame: u64) -> *mut u16 {
        let index = frame / PAGE;
        assert!(index < self.ref_count, "frame {frame:#x} out of range");
        ptr::<u16>(self.refs + 2 * index)
    }

    fn set_refs(&mut self, frame: u64, count: u16) {
        // SAFETY: the counts live in frames we set aside for them.
        unsafe { self.ref_slot(frame).write(count) };
    }

    pub fn refs(&self, frame: u64) -> u16 {
        // SAFETY: as above.
        unsafe { self.ref_slot(frame).read() }
    }

    /// One more user of `frame`.
    pub fn get(&mut self, frame: u64) {
        let count = self.refs(frame);
        self.set_refs(frame, count + 1);
    }

    /// One user fewer; the last one frees it.
    pub fn put(&mut self, frame: u64) {
        let count = self.refs(frame);
        assert!(count > 0, "frame {frame:#x} freed twice");
        self.set_refs(frame, count - 1);
        if count == 1 {
            // SAFETY: nobody maps the frame any more.
            unsafe { ptr::<u64>(frame).write(self.free_list) };
            self.free_list = frame;
            self.free_listed += 1;
        }
    }
}

fn slot(table: u64, va: u64, level: u32) -> *mut u64 {
    ptr(table + 8 * ((va >> (12 + 9 * level)) & 511))
}

fn read(entry: *mut u64) -> u64 {
    // SAFETY: callers pass slots of our own tables.
    unsafe { entry.read_volatile() }
}

fn write(entry: *mut u64, value: u64) {
    // SAFETY: as above.
    unsafe { entry.write_volatile(value) }
}

/// Maps `[0, memory_size)` at `base` in `root`, in 2 MiB pages where they
/// fit and 4 KiB pages for a last partial 2 MiB.
fn map_memory(frames: &mut Frames, root: u64, base: u64, memory_size: u64) {
    let large_end = memory_size & !(LARGE - 1);
    for pa in (0..large_end).step_by(LARGE as usize) {
        let pd = walk(frames, root, base + pa, 1, PRESENT | WRITABLE).expect("out of memory at boot");
        write(pd, pa | PRESENT | WRITABLE | HUGE);
    }
    for pa in (large_end..memory_size & !(PAGE - 1)).step_by(PAGE as usize) {
        let pt = walk(frames, root, base + pa, 0, PRESENT | WRITABLE).expect("out of memory at boot");
        write(pt, pa | PRESENT | WRITABLE);
    }
}

/// The kernel's own tables: the identity map and the direct map of all
/// guest memory. Not switched to yet.
pub fn build_kernel_tables(frames: &mut Frames, memory_size: u64) -> u64 {
    let root = frames.alloc().expect("out of memory at boot");
    map_memory(frames, root, 0, memory_size);
    map_memory(frames, root, KERNEL_BASE, memory_size);
    SHARED_IDENTITY.store(read(ptr::<u64>(root)), Ordering::Relaxed);
    root
}

/// Switches to the kernel's tables for the first time and starts using
/// the direct map.
pub fn enter_kernel_tables(root: u64) {
    platform::set_kernel_boundary(KERNEL_BASE);
    // SAFETY: the identity map keeps the running code, stack and data where
    // they are.
    unsafe { platform::switch_root(root) };
    DIRECT_MAP.store(KERNEL_BASE, Ordering::Relaxed);
}

/// The entry for `va` at `level` (0 = the page table), making the tables
/// above it with `flags` when `flags` is nonzero; None if a table is
/// missing and may not be made, or memory ran out.
pub fn walk(frames: &mut Frames, root: u64, va: u64, level: u32, flags: u64) -> Option<*mut u64> {
    let mut table = root;
    for upper in (level + 1..=3).rev() {
        let entry = slot(table, va, upper);
        let mut value = read(entry);
        if value & PRESENT == 0 {
            if flags == 0 {
                return None;
            }
            value = frames.alloc()? | flags;
            write(entry, value);
        }
        assert!(value & HUGE == 0, "{va:#x} lies in a large page");
        table = value & ADDRESS;
    }
    Some(slot(table, va, level))
}

/// A new address space: an empty user half, and the kernel's shared
/// identity and kernel-half entries.
pub fn new_space(frames: &mut Frames, kernel_root: u64) -> Option<u64> {
    let root = frames.alloc()?;
    for index in core::iter::once(0).chain(256..512) {
        write(ptr::<u64>(root + 8 * index), read(ptr::<u64>(kernel_root + 8 * index)));
    }
    Some(root)
}

/// Maps frame `pa` at user address `va` (the frame's reference passes to
/// the mapping); returns the leaf entry written.
pub fn map_user(frames: &mut Frames, root: u64, va: u64, pa: u64, flags: u64) -> Option<*mut u64> {
    let entry = walk(frames, root, va, 0, PRESENT | WRITABLE | USER)?;
    write(entry, pa | flags | PRESENT | USER);
    Some(entry)
}

/// The leaf entry for user address `va`, if its tables exist.
pub fn leaf(frames: &mut Frames, root: u64, va: u64) -> Option<*mut u64> {
    walk(frames, root, va, 0, 0)
}

/// Removes the page at `va`, if any, announcing the change.
pub fn unmap_user(frames: &mut Frames, root: u64, va: u64) {
    if let Some(entry) = leaf(frames, root, va) {
        let old = read(entry);
        if old & PRESENT != 0 {
            write(entry, 0);
            platform::set_pte(root, va, 0, false);
            frames.put(old & ADDRESS);
        }
    }
}

/// Where Linux programs may live: from 4 MiB (busybox is linked at
/// 0x400000) to the top of the lower half, less a guard page.
pub const LINUX_USER_BASE: u64 = 0x40_0000;
pub const LINUX_USER_TOP: u64 = 0x7fff_ffff_f000;
/// The kernel image's own 2 MiB page (`link.ld`), which a Linux space
/// keeps identity-mapped (supervisor-only): function pointers and vtables
/// baked into the image point there.
const IMAGE_PAGE: u64 = 0x20_0000;

unsafe extern "C" {
    static __image_end: u8;
}

// The image must fit in its 2 MiB page: user space starts right after.
// (A link-time check would need the linker; this one runs at boot.)
/// Checks the kernel image ends below `LINUX_USER_BASE`.
pub fn image_fits_below_user() -> bool {
    (&raw const __image_end as u64 & !KERNEL_BASE) <= LINUX_USER_BASE
}

/// The page just above user space, read-only in every Linux space: a
/// `ud2` where a `syscall` that does not fault lands (see
/// `platform::set_syscall_landing`).
pub const SYSCALL_LANDING: u64 = LINUX_USER_TOP;
static LANDING_FRAME: AtomicU64 = AtomicU64::new(0);

/// Makes the landing page's frame (once, at boot).
pub fn make_syscall_landing(frames: &mut Frames) {
    let frame = frames.alloc().expect("out of memory at boot");
    // SAFETY: a fresh frame of ours.
    unsafe { ptr::<[u8; 2]>(frame).write([0x0f, 0x0b]) };
    LANDING_FRAME.store(frame, Ordering::Relaxed);
    platform::set_syscall_landing(SYSCALL_LANDING);
}

/// The PML4 slot-0 entry of the kernel's tables (the shared identity map),
/// which walks of a user half must skip.
static SHARED_IDENTITY: AtomicU64 = AtomicU64::new(0);

/// A new address space for a Linux program: slot 0 is the process's own,
/// holding only the image's 2 MiB page (supervisor-only) below user space.
pub fn new_linux_space(frames: &mut Frames, kernel_root: u64) -> Option<u64> {
    let root = new_space(frames, kernel_root)?;
    write(ptr::<u64>(root), 0);
    let Some(pd) = walk(frames, root, IMAGE_PAGE, 1, PRESENT | WRITABLE | USER) else {
        free_root(frames, root);
        return None;
    };
    write(pd, IMAGE_PAGE | PRESENT | WRITABLE | HUGE);
    let landing = LANDING_FRAME.load(Ordering::Relaxed);
    if landing != 0 {
        frames.get(landing);
        if map_user(frames, root, SYSCALL_LANDING, landing, 0).is_none() {
            frames.put(landing);
            free_space(frames, root);
            free_root(frames, root);
            return None;
        }
    }
    Some(root)
}

/// Whether `root` is a Linux space (slot 0 its own). The table address
/// tells: the entry's flags change (the CPU sets its accessed bit).
pub fn is_linux_space(root: u64) -> bool {
    read(ptr::<u64>(root)) & ADDRESS != SHARED_IDENTITY.load(Ordering::Relaxed) & ADDRESS
}

/// Frees the root of a space whose user half is already freed, with the
/// tables a Linux space keeps for the image's page.
pub fn free_root(frames: &mut Frames, root: u64) {
    if is_linux_space(root) {
        let pdpt_entry = read(ptr::<u64>(root));
        if pdpt_entry & PRESENT != 0 {
            let pdpt = pdpt_entry & ADDRESS;
            let pd_entry = read(ptr::<u64>(pdpt));
            if pd_entry & PRESENT != 0 {
                frames.put(pd_entry & ADDRESS);
            }
            frames.put(pdpt);
        }
        write(ptr::<u64>(root), 0);
    }
    frames.put(root);
}

/// What [`walk_user_half`] shows its caller.
enum Visit {
    /// A present leaf: its address and its entry.
    Leaf(u64, *mut u64),
    /// A table below the PML4, after all its entries were visited.
    TableDone(u64),
}

/// Walks every present entry of the user half, depth first, telling
/// `visit` about each leaf and, once its entries are done, each table.
/// In a Linux space, slot 0 is walked too, except the image's large page
/// and the two tables above it, which live as long as the root.
fn walk_user_half(root: u64, mut visit: impl FnMut(Visit)) {
    let first = if is_linux_space(root) { 0 } else { 1 };
    for l4 in present_entries(root, first, 256) {
        let e4 = read(ptr::<u64>(root + 8 * l4));
        for l3 in present_entries(e4 & ADDRESS, 0, 512) {
            let e3 = read(ptr::<u64>((e4 & ADDRESS) + 8 * l3));
            for l2 in present_entries(e3 & ADDRESS, 0, 512) {
                let e2 = read(ptr::<u64>((e3 & ADDRESS) + 8 * l2));
                if e2 & HUGE != 0 {
                    continue;
                }
                for l1 in present_entries(e2 & ADDRESS, 0, 512) {
                    let entry = ptr::<u64>((e2 & ADDRESS) + 8 * l1);
                    visit(Visit::Leaf(l4 << 39 | l3 << 30 | l2 << 21 | l1 << 12, entry));
                }
                visit(Visit::TableDone(e2 & ADDRESS));
            }
            if l4 != 0 || l3 != 0 {
                visit(Visit::TableDone(e3 & ADDRESS));
            }
        }
        if l4 != 0 {
            visit(Visit::TableDone(e4 & ADDRESS));
        }
    }
}

/// The indexes of the present entries of the table at `table`, from
/// `from` up to `end`, in order. A table is mostly empty, and looked at
/// eight entries a step (`umbra_abi::tables`), an empty stretch is cheap;
/// the table is looked at afresh at every step, so the caller may change
/// it in between.
fn present_entries(table: u64, from: u64, end: u64) -> impl Iterator<Item = u64> {
    let mut next = from as usize;
    core::iter::from_fn(move || {
        // SAFETY: one of our own page-table pages, a whole page; the
        // reference lives for this one scan, and nothing writes the table
        // while it does (the caller's changes come between steps).
        let table = unsafe { &*ptr::<[u64; umbra_abi::tables::ENTRIES]>(table) };
        let found = umbra_abi::tables::next_present(table, next)?;
        next = found + 1;
        (found < end as usize).then_some(found as u64)
    })
}

/// Calls `f(va, entry)` for every present leaf of the user half.
fn each_user_leaf(root: u64, mut f: impl FnMut(u64, *mut u64)) {
    walk_user_half(root, |visit| {
        if let Visit::Leaf(va, entry) = visit {
            f(va, entry);
        }
    });
}

/// The child's copy of `parent`'s user half for fork: every page shared,
/// the writable ones turned copy-on-write in both (and announced in the
/// parent, whose shadow may hold them writable).
pub fn fork_space(frames: &mut Frames, kernel_root: u64, parent: u64) -> Option<u64> {
    let child = if is_linux_space(parent) {
        new_linux_space(frames, kernel_root)?
    } else {
        new_space(frames, kernel_root)?
    };
    let mut pages = 0u64;
    each_user_leaf(parent, |_, _| pages += 1);
    // Every table the child needs, at most three per page, plus slack:
    // refuse the fork up front rather than fail half way.
    if frames.available() < 3 * pages + 8 {
        free_space(frames, child);
        free_root(frames, child);
        return None;
    }
    each_user_leaf(parent, |va, entry| {
        let mut pte = read(entry);
        if pte & WRITABLE != 0 {
            pte = (pte & !WRITABLE) | COW;
            write(entry, pte);
            platform::set_pte(parent, va, pte, false);
        }
        frames.get(pte & ADDRESS);
        let target = walk(frames, child, va, 0, PRESENT | WRITABLE | USER).expect("checked above");
        write(target, pte);
    });
    platform::sync();
    Some(child)
}

/// Frees every page and table of the user half. The caller flushes (the
/// space must be current) or never uses the root again.
pub fn free_space(frames: &mut Frames, root: u64) {
    walk_user_half(root, |visit| match visit {
        Visit::Leaf(_, entry) => {
            frames.put(read(entry) & ADDRESS);
            write(entry, 0);
        }
        Visit::TableDone(table) => frames.put(table),
    });
    for l4 in 1..256u64 {
        write(ptr::<u64>(root + 8 * l4), 0);
    }
    if is_linux_space(root) {
        // Only the image's tables stay in slot 0.
        let pdpt = read(ptr::<u64>(root)) & ADDRESS;
        for l3 in 1..512u64 {
            write(ptr::<u64>(pdpt + 8 * l3), 0);
        }
        let pd = read(ptr::<u64>(pdpt)) & ADDRESS;
        for l2 in 0..512u64 {
            if read(ptr::<u64>(pd + 8 * l2)) & HUGE == 0 {
                write(ptr::<u64>(pd + 8 * l2), 0);
            }
        }
    }
}

/// What a user page fault was, once handled.
pub enum Fault {
    DemandZero,
    CopyOnWrite,
    OutOfMemory,
    Bad,
}

/// Resolves a user page fault at `va` in `root`: demand-zero when the page
/// is missing and `may_grow` (the address lies in the heap or stack),
/// copy-on-write when a write hit a COW page.
pub fn handle_fault(frames: &mut Frames, root: u64, va: u64, write_access: bool, may_grow: bool) -> Fault {
    let page = va & !(PAGE - 1);
    let entry = leaf(frames, root, page);
    let pte = entry.map(read).unwrap_or(0);
    if pte & PRESENT == 0 {
        if !may_grow {
            return Fault::Bad;
        }
        let Some(frame) = frames.alloc() else { return Fault::OutOfMemory };
        if map_user(frames, root, page, frame, WRITABLE).is_none() {
            frames.put(frame);
            return Fault::OutOfMemory;
        }
        return Fault::DemandZero;
    }
    if !(write_access && pte & COW != 0) {
        return Fault::Bad;
    }
    let entry = entry.expect("present, so the tables exist");
    let old = pte & ADDRESS;
    let new_pte = if frames.refs(old) == 1 {
        // The last sharer keeps the page.
        (pte & !COW) | WRITABLE
    } else {
        let Some(copy) = frames.alloc() else { return Fault::OutOfMemory };
        // SAFETY: two distinct frames, both ours.
        unsafe { core::ptr::copy_nonoverlapping(ptr::<u8>(old), ptr::<u8>(copy), PAGE as usize) };
        frames.put(old);
        (pte & !(COW | ADDRESS)) | copy | WRITABLE
    };
    write(entry, new_pte);
    platform::set_pte(root, page, new_pte, true);
    Fault::CopyOnWrite
}
