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

use core::fmt;

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
    // The IST stacks live in the image's .bss; anything in the image is
    // mapped, and the boot stack is where frames normally are.
    boot.contains_range(&range) || image.contains_range(&range)
}

/// The frame pool, once [`init`] has built it.
pub static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);

/// Physical address of the PD that covers the top 1 GiB; its last two
/// entries are the switcher's two 2 MiB slots.
pub static SWITCHER_PD: Mutex<Option<u64>> = Mutex::new(None);

#[derive(Debug)]
pub enum MemoryError {
    TooLittle { usable: u64 },
    NoRoomForBitmap,
    NoLowFrame,
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
    let bitmap = frames::carve(&mut free, words as u64 * 8).ok_or(MemoryError::NoRoomForBitmap)?;
    if bitmap.end > BOOT_MAPPED {
        return Err(MemoryError::NoRoomForBitmap);
    }
    // SAFETY: the bitmap's frames were just carved out of free RAM below
    // 4 GiB (identity-mapped); nothing else refers to them, and they live
    // as long as the firmware.
    let bits = unsafe { core::slice::from_raw_parts_mut(bitmap.start as *mut u64, words) };
    let mut allocator = FrameAllocator::new(bits, &free);
    let usable_bytes = allocator.free_frames() as u64 * PAGE_SIZE;

    let top = ram_top.clamp(BOOT_MAPPED, MAX_PHYS);
    let pml4 = build_host_tables(&mut allocator, top)?;
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

fn build_host_tables(allocator: &mut FrameAllocator, top: u64) -> Result<u64, MemoryError> {
    let nx = nx_bit();
    let pml4 = table_frame(allocator)?;
    let low_pdpt = table_frame(allocator)?;
    set_entry(pml4, 0, low_pdpt | PRESENT | WRITABLE);

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

    // The switcher's corner: PML4[511] -> PDPT[511] -> PD[510..=511].
    let high_pdpt = table_frame(allocator)?;
    let high_pd = table_frame(allocator)?;
    set_entry(pml4, 511, high_pdpt | PRESENT | WRITABLE);
    set_entry(high_pdpt, 511, high_pd | PRESENT | WRITABLE);
    *SWITCHER_PD.lock() = Some(high_pd);
    Ok(pml4)
}
