//! # Memory: reading what the VMM gave us, frames, and the host's tables
//!
//! Three jobs, in boot order:
//! 1. [`BootMemory`] lets the boot parsers read physical memory through
//!    the boot stub's identity map of the first 4 GiB, refusing anything
//!    beyond it instead of faulting.
//! 2. [`init`] builds the frame pool from the memory map, keeping out the
//!    image, the boot structures, the modules and the ACPI tables.
//! 3. It then replaces the boot page tables with the host's own: all RAM
//!    (and the first 4 GiB, for ACPI and device registers) identity-
//!    mapped; the image mapped with 4 KiB pages so code is read-only,
//!    data is not executable, and the null page and the page under the
//!    boot stack are absent; and the top 4 MB left empty for the switcher.
//!
//! Every CPU gets a top-level table of its own ([`new_cpu_root`]): all of
//! them share the identity map below (PML4[0]), and each has its own path
//! to the switcher's slot at the top, so each can map its own switcher
//! pages there. The application processors' start page below 1 MiB is
//! chosen and kept out of the frame pool here too ([`trampoline_page`]).

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;
use umbra_firmware::PhysRange;
use umbra_firmware::bootinfo::{BootInfo, PhysMemory};
use umbra_firmware::frames::{self, FrameAllocator, PAGE_SIZE};
use umbra_firmware::guestmem::{self, FreeMemory, GuestMemPlan};
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::PhysFrame;
use x86_64::{PhysAddr, instructions::tlb};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// The boot stub maps this much; the host tables map at least as much.
pub const BOOT_MAPPED: u64 = 4 * GIB;
/// RAM above this is left alone (and said so).
pub const MAX_PHYS: u64 = 64 * GIB;
/// Below this much usable memory Umbra refuses to run. Its own tables and
/// one guest of the smallest size with its shadow tables need about 12
/// MiB; the rest is headroom, so that a machine of 32 MiB (about 30
/// usable) runs the default guest in 24 MiB, and a smaller one is
/// refused in one line rather than squeezed.
pub const MIN_USABLE: u64 = 24 * MIB;

/// Physical memory as the boot code may read it: identity-mapped, and
/// only within the boot stub's 4 GiB.
pub struct BootMemory;

impl PhysMemory for BootMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return false;
        };
        if end > BOOT_MAPPED {
            return false;
        }
        for (offset, byte) in buf.iter_mut().enumerate() {
            // SAFETY: addr..end lies inside the identity-mapped first 4 GiB;
            // volatile because this is memory the VMM wrote, not Rust.
            *byte = unsafe { core::ptr::read_volatile((addr as usize + offset) as *const u8) };
        }
        true
    }
}

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __data_start: u8;
    static boot_stack_guard: u8;
    static boot_stack_bottom: u8;
    static boot_stack_top: u8;
}

fn symbol(address: *const u8) -> u64 {
    address as u64
}

/// The image's physical extent, from the linker script.
pub fn image_range() -> PhysRange {
    PhysRange { start: symbol(&raw const __image_start), end: symbol(&raw const __image_end) }
}

/// Is `addr..addr+len` inside one of the host's own stacks?
pub fn is_host_stack(addr: u64, len: u64) -> bool {
    let boot =
        PhysRange { start: symbol(&raw const boot_stack_bottom), end: symbol(&raw const boot_stack_top) };
    let image = image_range();
    let Some(range) = PhysRange::from_len(addr, len) else {
        return false;
    };
    // The boot CPU's IST stacks live in the image's .bss; anything in the
    // image is mapped, and the boot stack is where frames normally are.
    // The application processors' stacks come from the frame pool.
    boot.contains_range(&range) || image.contains_range(&range) || crate::smp::is_ap_stack(&range)
}

/// Written after the frame bitmaps at every boot: found there at boot,
/// it says this RAM is not as the VMM made it (see `frames.rs`).
const RAM_USED_MAGIC: u64 = u64::from_le_bytes(*b"UMBRAram");

/// The frame pool, once [`init`] has built it.
pub static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);

/// One CPU's top-level page table and the PD under its switcher corner
/// (PML4[511] -> PDPT[511] -> PD), whose entries 510 and 511 are the
/// switcher's two 2 MiB slots. Everything below the corner is shared.
#[derive(Clone, Copy, Debug)]
pub struct HostRoot {
    pub pml4: u64,
    pub switcher_pd: u64,
}

/// The boot CPU's root, the one [`init`] loads.
static BOOT_ROOT: Mutex<Option<HostRoot>> = Mutex::new(None);

/// The PDPT under PML4[0], the identity map every CPU's root shares.
static LOW_PDPT: AtomicU64 = AtomicU64::new(0);

/// The application processors' start page (0: none was free).
static TRAMPOLINE_PAGE: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
pub enum MemoryError {
    TooLittle { usable: u64 },
    NoRoomForBitmap,
    NoLowFrame,
    NotMapped(u64),
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLittle { usable } => write!(
                f,
                "too little memory: {} MiB usable, Umbra needs at least {} MiB",
                usable / MIB,
                MIN_USABLE / MIB
            ),
            Self::NoRoomForBitmap => write!(f, "no free range large enough for the frame bitmap"),
            Self::NoLowFrame => write!(f, "no free frame below 4 GiB for the host page tables"),
            Self::NotMapped(addr) => write!(f, "page {addr:#x} is not in the host's identity map"),
        }
    }
}

pub struct MemorySummary {
    pub usable_bytes: u64,
    pub ignored_above: Option<u64>,
}

/// Build the frame pool and switch to the host page tables.
pub fn init(info: &BootInfo, acpi_regions: &[PhysRange]) -> Result<MemorySummary, MemoryError> {
    let mut occupied: heapless::Vec<PhysRange, 96> = heapless::Vec::new();
    let _ = occupied.push(image_range());
    for range in info.occupied.iter().chain(acpi_regions) {
        // Overflow would lose a reservation; refuse to go on instead.
        if occupied.push(*range).is_err() {
            return Err(MemoryError::NoRoomForBitmap);
        }
    }
    // The application processors' start page (smp.rs). Nothing below
    // 1 MiB is ever a free frame, but the page is reserved by name as
    // well: it must stay out of the pool whatever that rule becomes.
    if let Some(page) = frames::trampoline_page(&info.memory_map, &occupied) {
        if occupied.push(PhysRange { start: page, end: page + PAGE_SIZE }).is_err() {
            return Err(MemoryError::NoRoomForBitmap);
        }
        TRAMPOLINE_PAGE.store(page, Ordering::Relaxed);
    }
    let mut free = frames::free_ranges(&info.memory_map, &occupied, MAX_PHYS);
    let ram_top = info
        .memory_map
        .iter()
        .filter(|r| r.kind == umbra_firmware::bootinfo::RegionKind::Ram)
        .map(|r| r.range.end)
        .max()
        .unwrap_or(0);
    let ignored_above = (ram_top > MAX_PHYS).then_some(MAX_PHYS);

    let usable: u64 = free.iter().map(|r| r.len()).sum();
    if usable < MIN_USABLE {
        return Err(MemoryError::TooLittle { usable });
    }
    let words = frames::bitmap_words(&free);
    // The bitmaps, then one word: the mark of RAM an earlier boot used.
    let bitmap =
        frames::carve_above(&mut free, (words as u64 + 1) * 8, image_range().end.next_multiple_of(2 * MIB))
            .ok_or(MemoryError::NoRoomForBitmap)?;
    if bitmap.end > BOOT_MAPPED {
        return Err(MemoryError::NoRoomForBitmap);
    }
    // SAFETY: the bitmap's frames were just carved out of free RAM below
    // 4 GiB (identity-mapped); nothing else refers to them, and they live
    // as long as the firmware.
    let words_and_mark = unsafe { core::slice::from_raw_parts_mut(bitmap.start as *mut u64, words + 1) };
    let (bits, mark) = words_and_mark.split_at_mut(words);
    // A new VM's RAM reads as zeros, so the frames are clean, unless this
    // RAM has been Umbra's before: a reset of the VM (from its monitor)
    // keeps RAM as it was, guests' data included, and the same machine
    // carves the same word here. Then every frame counts as dirty.
    let used_before = mark[0] == RAM_USED_MAGIC;
    mark[0] = RAM_USED_MAGIC;
    let mut allocator = FrameAllocator::new(bits, &free);
    if used_before {
        allocator.mark_all_dirty();
        log::info!(
            "memory: this RAM was used by an earlier boot; guest memory is scrubbed as it is handed out"
        );
    }
    let usable_bytes = allocator.free_frames() as u64 * PAGE_SIZE;

    let top = ram_top.clamp(BOOT_MAPPED, MAX_PHYS);
    let root = build_host_tables(&mut allocator, top)?;
    let pml4 = root.pml4;
    *BOOT_ROOT.lock() = Some(root);
    // SAFETY: the new tables identity-map everything the old ones did that
    // the host uses (the image, its stacks, RAM, the first 4 GiB), so
    // execution continues at the same addresses.
    unsafe {
        Cr3::write(PhysFrame::containing_address(PhysAddr::new(pml4)), Cr3Flags::empty());
    }
    tlb::flush_all();
    *FRAMES.lock() = Some(allocator);
    Ok(MemorySummary { usable_bytes, ignored_above })
}

/// Each guest's memory, from `guest_mem=` (`given`) or from what the
/// frame pool has room for now, with `at_once` guests together (see
/// `umbra_firmware::guestmem`). `None` when not even one guest fits.
pub fn plan_guest_memory(given: Option<u64>, default: u64, at_once: usize) -> Option<GuestMemPlan> {
    let frames = FRAMES.lock();
    let frames = frames.as_ref()?;
    let runs = frames.free_block_runs((guestmem::BLOCK / PAGE_SIZE) as usize);
    let free = FreeMemory { bytes: frames.free_frames() as u64 * PAGE_SIZE, block_runs: &runs };
    guestmem::plan(given, default, at_once, &free)
}

/// Free memory in MiB, for messages.
pub fn free_mib() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |frames| frames.free_frames() as u64 * PAGE_SIZE / MIB)
}

pub const PRESENT: u64 = 1 << 0;
pub const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
pub const NO_EXECUTE: u64 = 1 << 63;

/// The no-execute bit, or 0 where the CPU lacks it (it is reserved then).
pub fn nx_bit() -> u64 {
    if nx_supported() { NO_EXECUTE } else { 0 }
}

fn nx_supported() -> bool {
    let max = core::arch::x86_64::__cpuid(0x8000_0000).eax;
    max >= 0x8000_0001 && core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 20) != 0
}

/// A zeroed page-table frame below 4 GiB, where the boot map reaches.
fn table_frame(allocator: &mut FrameAllocator) -> Result<u64, MemoryError> {
    let frame = allocator.alloc().ok_or(MemoryError::NoLowFrame)?;
    if frame + PAGE_SIZE > BOOT_MAPPED {
        return Err(MemoryError::NoLowFrame);
    }
    // SAFETY: a fresh frame from the pool, identity-mapped, owned by us.
    unsafe { core::ptr::write_bytes(frame as *mut u8, 0, PAGE_SIZE as usize) };
    Ok(frame)
}

fn set_entry(table: u64, index: usize, value: u64) {
    debug_assert!(index < 512);
    // SAFETY: `table` is a page-table frame we allocated and zeroed; the
    // index is within its 512 entries.
    unsafe { core::ptr::write_volatile((table as *mut u64).add(index), value) };
}

/// The flags for one 4 KiB page in the slots that hold the image.
fn low_page_flags(addr: u64, nx: u64) -> u64 {
    let text = symbol(&raw const __text_start)..symbol(&raw const __text_end);
    let read_only = symbol(&raw const __image_start)..symbol(&raw const __data_start);
    let guard = symbol(&raw const boot_stack_guard);
    if addr == 0 || addr == guard {
        0
    } else if text.contains(&addr) {
        PRESENT
    } else if read_only.contains(&addr) {
        PRESENT | nx
    } else {
        PRESENT | WRITABLE | nx
    }
}

fn build_host_tables(allocator: &mut FrameAllocator, top: u64) -> Result<HostRoot, MemoryError> {
    let nx = nx_bit();
    let low_pdpt = table_frame(allocator)?;
    LOW_PDPT.store(low_pdpt, Ordering::Relaxed);

    // Every 2 MiB slot the image touches gets 4 KiB pages; so does the
    // first, whose page 0 stays absent to catch null pointers.
    let fine_grained_below = image_range().end;
    let gigabytes = top.div_ceil(GIB) as usize;
    for gib in 0..gigabytes {
        let pd = table_frame(allocator)?;
        set_entry(low_pdpt, gib, pd | PRESENT | WRITABLE);
        for slot in 0..512 {
            let base = gib as u64 * GIB + slot as u64 * 2 * MIB;
            if base < fine_grained_below {
                let pt = table_frame(allocator)?;
                for page in 0..512 {
                    let addr = base + page as u64 * PAGE_SIZE;
                    let flags = low_page_flags(addr, nx);
                    set_entry(pt, page, if flags == 0 { 0 } else { addr | flags });
                }
                set_entry(pd, slot, pt | PRESENT | WRITABLE);
            } else {
                set_entry(pd, slot, base | PRESENT | WRITABLE | HUGE | nx);
            }
        }
    }

    root_over(allocator, low_pdpt)
}

/// A top-level table over the shared identity map, with a switcher corner
/// of its own: PML4[511] -> PDPT[511] -> PD[510..=511], left empty. The
/// PML4 is below 4 GiB (every table frame is): an application processor
/// loads it while still in 32-bit mode.
fn root_over(allocator: &mut FrameAllocator, low_pdpt: u64) -> Result<HostRoot, MemoryError> {
    let pml4 = table_frame(allocator)?;
    let high_pdpt = table_frame(allocator)?;
    let switcher_pd = table_frame(allocator)?;
    set_entry(pml4, 0, low_pdpt | PRESENT | WRITABLE);
    set_entry(pml4, 511, high_pdpt | PRESENT | WRITABLE);
    set_entry(high_pdpt, 511, switcher_pd | PRESENT | WRITABLE);
    Ok(HostRoot { pml4, switcher_pd })
}

/// The boot CPU's root, once [`init`] has loaded it.
pub fn boot_root() -> Option<HostRoot> {
    *BOOT_ROOT.lock()
}

/// A root of its own for another CPU (three frames from the pool).
pub fn new_cpu_root() -> Result<HostRoot, MemoryError> {
    let mut frames = FRAMES.lock();
    let allocator = frames.as_mut().ok_or(MemoryError::NoLowFrame)?;
    root_over(allocator, LOW_PDPT.load(Ordering::Relaxed))
}

/// The application processors' start page, if conventional memory had a
/// free one.
pub fn trampoline_page() -> Option<u64> {
    Some(TRAMPOLINE_PAGE.load(Ordering::Relaxed)).filter(|&page| page != 0)
}

/// `pages` contiguous frames from the pool, not cleared.
pub fn alloc_run(pages: usize) -> Option<u64> {
    FRAMES.lock().as_mut()?.alloc_contiguous(pages, 1)
}

/// Take the page at `addr` out of the identity map that every CPU shares,
/// so that touching it faults: a guard page below a stack. A 2 MiB
/// mapping around it is first split into 4 KiB pages with the same
/// rights. Meant for before the application processors start: it flushes
/// only this CPU's TLB.
pub fn unmap_guard_page(addr: u64) -> Result<(), MemoryError> {
    const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
    let low_pdpt = LOW_PDPT.load(Ordering::Relaxed);
    let gib = (addr / GIB) as usize;
    if low_pdpt == 0 || gib >= 512 || !addr.is_multiple_of(PAGE_SIZE) {
        return Err(MemoryError::NotMapped(addr));
    }
    let pd = read_entry(low_pdpt, gib) & ADDRESS;
    if pd == 0 {
        return Err(MemoryError::NotMapped(addr));
    }
    let slot = ((addr % GIB) / (2 * MIB)) as usize;
    let pd_entry = read_entry(pd, slot);
    if pd_entry & PRESENT == 0 {
        return Err(MemoryError::NotMapped(addr));
    }
    let pt = if pd_entry & HUGE != 0 {
        let mut frames = FRAMES.lock();
        let pt = table_frame(frames.as_mut().ok_or(MemoryError::NoLowFrame)?)?;
        let base = pd_entry & ADDRESS & !(2 * MIB - 1);
        // The same rights as the 2 MiB page; bit 7 of a PTE is PAT, not
        // "huge", so it is not carried over.
        let rights = pd_entry & (PRESENT | WRITABLE | NO_EXECUTE);
        for page in 0..512 {
            set_entry(pt, page, (base + page as u64 * PAGE_SIZE) | rights);
        }
        set_entry(pd, slot, pt | PRESENT | WRITABLE);
        pt
    } else {
        pd_entry & ADDRESS
    };
    set_entry(pt, ((addr % (2 * MIB)) / PAGE_SIZE) as usize, 0);
    tlb::flush_all();
    Ok(())
}

fn read_entry(table: u64, index: usize) -> u64 {
    debug_assert!(index < 512);
    // SAFETY: `table` is one of the host's page-table frames, identity-
    // mapped; the index is within its 512 entries.
    unsafe { core::ptr::read_volatile((table as *const u64).add(index)) }
}
