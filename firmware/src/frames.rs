//! # Physical page frames
//!
//! Umbra owns all the RAM the memory map calls RAM, except what is
//! already in use when it boots: the first megabyte (real-mode leftovers,
//! BIOS data, sometimes ACPI), the image itself, `start_info` and what
//! hangs from it, the modules, and the ACPI tables. [`free_ranges`] takes
//! those out of the memory map; [`FrameAllocator`] then hands out 4 KiB
//! frames from what is left, one bit per frame. A bitmap rather than a
//! free list because guests need long contiguous runs of frames too, and
//! because a bitmap can tell a double free from a real one.
//!
//! A second bitmap remembers which free frames may still hold data: every
//! frame given back is *dirty* until it is scrubbed, and a frame nobody
//! has had since the machine started is *clean*, as the VMM made it (a
//! new VM's RAM reads as zeros). Guest memory is scrubbed as it is handed
//! out, and only where it is dirty ([`FrameAllocator::alloc_contiguous_clean`]),
//! so a guest's memory is never cleared twice, and memory that is never
//! used again (power-off follows the last guest) is not cleared at all.
//! `memory.rs` keeps the "as the VMM made it" promise honest across a
//! reset of the VM: see `RAM_USED_MAGIC` there.

use core::fmt;

use heapless::Vec;

use crate::PhysRange;
use crate::bootinfo::{MemRegion, RegionKind};

pub const PAGE_SIZE: u64 = 4096;
/// Nothing below 1 MiB is ever handed out.
pub const LOW_MEMORY_END: u64 = 0x10_0000;
/// How many separate free ranges we track; a memory map rarely has ten.
pub const MAX_FREE_RANGES: usize = 64;

pub type FreeRanges = Vec<PhysRange, MAX_FREE_RANGES>;

const fn align_down(value: u64) -> u64 {
    value & !(PAGE_SIZE - 1)
}

const fn align_up(value: u64) -> u64 {
    align_down(value.saturating_add(PAGE_SIZE - 1))
}

/// The page-aligned RAM left over once every non-RAM region of the map,
/// every range in `occupied`, and everything below 1 MiB or at and above
/// `limit` are taken out. The result is sorted and merged.
pub fn free_ranges(map: &[MemRegion], occupied: &[PhysRange], limit: u64) -> FreeRanges {
    let mut free = FreeRanges::new();
    for region in map.iter().filter(|r| r.kind == RegionKind::Ram) {
        let start = align_up(region.range.start.max(LOW_MEMORY_END));
        let end = align_down(region.range.end.min(limit));
        if start < end {
            let _ = free.push(PhysRange { start, end });
        }
    }
    let holes =
        map.iter().filter(|r| r.kind != RegionKind::Ram).map(|r| r.range).chain(occupied.iter().copied());
    for hole in holes {
        let hole = PhysRange { start: align_down(hole.start), end: align_up(hole.end) };
        subtract(&mut free, hole);
    }
    free.sort_unstable_by_key(|r| r.start);
    merge_adjacent(&mut free);
    free
}

/// Remove `hole` from every range. When a split would overflow the list,
/// the smaller half is dropped: losing memory is safe, handing out a
/// frame that is in use is not.
fn subtract(free: &mut FreeRanges, hole: PhysRange) {
    let mut index = 0;
    while index < free.len() {
        let range = free[index];
        if !range.overlaps(&hole) {
            index += 1;
            continue;
        }
        let below = PhysRange { start: range.start, end: hole.start };
        let above = PhysRange { start: hole.end, end: range.end };
        match (below.is_empty(), above.is_empty()) {
            (true, true) => {
                free.swap_remove(index);
                continue;
            }
            (false, true) => free[index] = below,
            (true, false) => free[index] = above,
            (false, false) => {
                let (larger, smaller) =
                    if below.len() >= above.len() { (below, above) } else { (above, below) };
                free[index] = larger;
                let _ = free.push(smaller);
            }
        }
        index += 1;
    }
}

fn merge_adjacent(free: &mut FreeRanges) {
    let mut merged = FreeRanges::new();
    for range in free.iter() {
        match merged.last_mut() {
            Some(last) if last.end >= range.start => last.end = last.end.max(range.end),
            _ => {
                let _ = merged.push(*range);
            }
        }
    }
    *free = merged;
}

/// Conventional memory ends at 640 KiB; above it lie the VGA window and
/// the BIOS, whatever the memory map says.
pub const CONVENTIONAL_END: u64 = 0xa_0000;

/// The page where the application processors start (see the firmware's
/// `smp.rs`). A startup IPI names its start address by page number, one
/// byte of it, so the page must lie below 1 MiB; we keep to conventional
/// memory, skip page 0 (the real-mode interrupt table, and the null page),
/// and take the highest page that the memory map calls RAM, that no
/// non-RAM region touches, and that holds nothing in `occupied` (the boot
/// structures, the ACPI tables). The frame pool never hands out anything
/// below [`LOW_MEMORY_END`] anyway; the firmware also lists this page as
/// occupied, so that no later change to that rule can hand it out.
pub fn trampoline_page(map: &[MemRegion], occupied: &[PhysRange]) -> Option<u64> {
    (1..CONVENTIONAL_END / PAGE_SIZE).rev().map(|page| page * PAGE_SIZE).find(|&start| {
        let page = PhysRange { start, end: start + PAGE_SIZE };
        let in_ram = map.iter().any(|r| r.kind == RegionKind::Ram && r.range.contains_range(&page));
        let touched = map.iter().filter(|r| r.kind != RegionKind::Ram).map(|r| &r.range).chain(occupied);
        in_ram && !touched.clone().any(|r| r.overlaps(&page))
    })
}

/// Carve `bytes` (rounded up to pages) from the start of the first free
/// range big enough, for the allocator's own bitmap.
pub fn carve(free: &mut FreeRanges, bytes: u64) -> Option<PhysRange> {
    carve_above(free, bytes, 0)
}

/// Like [`carve`], from free memory at or above `floor` only.
pub fn carve_above(free: &mut FreeRanges, bytes: u64, floor: u64) -> Option<PhysRange> {
    let bytes = align_up(bytes.max(1));
    let floor = align_up(floor);
    let index = free.iter().position(|r| r.end > floor && r.end - r.start.max(floor) >= bytes)?;
    let range = free[index];
    let carved = PhysRange { start: range.start.max(floor), end: range.start.max(floor) + bytes };
    subtract(free, carved);
    free.sort_unstable_by_key(|r| r.start);
    Some(carved)
}

/// Bitmap words needed to cover every frame up to the end of `free`.
/// The words [`FrameAllocator::new`] needs for `free`: two bitmaps, the
/// free frames and the dirty ones.
pub fn bitmap_words(free: &[PhysRange]) -> usize {
    let frames = free.iter().map(|r| r.end).max().unwrap_or(0) / PAGE_SIZE;
    2 * frames.div_ceil(64) as usize
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    Misaligned(u64),
    NotManaged(u64),
    AlreadyFree(u64),
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Misaligned(addr) => write!(f, "frame {addr:#x} is not page-aligned"),
            Self::NotManaged(addr) => write!(f, "frame {addr:#x} was never the allocator's"),
            Self::AlreadyFree(addr) => write!(f, "frame {addr:#x} freed twice"),
        }
    }
}

/// Hands out 4 KiB frames. A set bit in `bits` means the frame is free;
/// a set bit in `dirty` means it may hold a previous owner's data.
pub struct FrameAllocator<'bits> {
    bits: &'bits mut [u64],
    dirty: &'bits mut [u64],
    managed: FreeRanges,
    total: usize,
    free: usize,
    /// Where the next single-frame search starts, so allocation does not
    /// rescan the full words at the bottom every time.
    hint: usize,
}

impl<'bits> FrameAllocator<'bits> {
    /// Manage the frames in `free`, all of them clean. `bits` must hold at
    /// least [`bitmap_words`]`(free)` words; frames it cannot describe are
    /// left out.
    pub fn new(bits: &'bits mut [u64], free: &[PhysRange]) -> Self {
        bits.fill(0);
        let (bits, dirty) = bits.split_at_mut(bits.len() / 2);
        let mut allocator =
            FrameAllocator { bits, dirty, managed: FreeRanges::new(), total: 0, free: 0, hint: 0 };
        let coverable = allocator.bits.len() as u64 * 64 * PAGE_SIZE;
        for range in free {
            let range = PhysRange { start: align_up(range.start), end: align_down(range.end.min(coverable)) };
            if range.is_empty() || allocator.managed.push(range).is_err() {
                continue;
            }
            set_bits(
                allocator.bits,
                (range.start / PAGE_SIZE) as usize,
                (range.end / PAGE_SIZE) as usize,
                true,
            );
            allocator.total += (range.len() / PAGE_SIZE) as usize;
        }
        allocator.free = allocator.total;
        allocator
    }

    pub fn total_frames(&self) -> usize {
        self.total
    }

    pub fn free_frames(&self) -> usize {
        self.free
    }

    /// The ranges this allocator manages (free or not).
    pub fn managed(&self) -> &[PhysRange] {
        &self.managed
    }

    fn is_free(&self, frame: usize) -> bool {
        self.bits[frame / 64] & (1 << (frame % 64)) != 0
    }

    fn set_free(&mut self, frame: usize, free: bool) {
        set_bit(self.bits, frame, free);
    }

    fn is_dirty(&self, frame: usize) -> bool {
        self.dirty[frame / 64] & (1 << (frame % 64)) != 0
    }

    /// Forget that any frame is clean: for RAM an earlier boot may have
    /// used.
    pub fn mark_all_dirty(&mut self) {
        self.dirty.fill(u64::MAX);
    }

    /// Free frames that may hold data.
    pub fn dirty_free_frames(&self) -> usize {
        (0..self.bits.len() * 64).filter(|&f| self.is_free(f) && self.is_dirty(f)).count()
    }

    /// One frame's physical address. The frame's contents are whatever a
    /// previous owner left; callers that hand it on must clear it.
    pub fn alloc(&mut self) -> Option<u64> {
        let words = self.bits.len();
        for step in 0..words {
            let word = (self.hint + step) % words;
            let bits = self.bits[word];
            if bits != 0 {
                let frame = word * 64 + bits.trailing_zeros() as usize;
                self.set_free(frame, false);
                self.free -= 1;
                self.hint = word;
                return Some(frame as u64 * PAGE_SIZE);
            }
        }
        None
    }

    /// `count` contiguous frames whose first frame number is a multiple
    /// of `align` frames.
    pub fn alloc_contiguous(&mut self, count: usize, align: usize) -> Option<u64> {
        if count == 0 || count > self.free {
            return None;
        }
        let align = align.max(1);
        let frames = self.bits.len() * 64;
        let mut start = 0;
        while start + count <= frames {
            match self.last_used_in(start, start + count) {
                None => {
                    set_bits(self.bits, start, start + count, false);
                    self.free -= count;
                    return Some(start as u64 * PAGE_SIZE);
                }
                // Restart just past the used frame, aligned up.
                Some(used) => start = (used + 1).div_ceil(align) * align,
            }
        }
        None
    }

    /// The highest frame in `[start, end)` that is not free, looking at
    /// whole words where it can (see [`set_bits`] for why that matters).
    fn last_used_in(&self, start: usize, end: usize) -> Option<usize> {
        let mut frame = end;
        while frame > start {
            if frame.is_multiple_of(64) && frame - 64 >= start {
                let word = self.bits[frame / 64 - 1];
                if word != u64::MAX {
                    return Some(frame - 1 - (!word).leading_zeros() as usize);
                }
                frame -= 64;
            } else {
                frame -= 1;
                if !self.is_free(frame) {
                    return Some(frame);
                }
            }
        }
        None
    }

    /// Like [`alloc_contiguous`](Self::alloc_contiguous), and every frame
    /// of the run that may hold data is handed to `scrub` (as runs:
    /// address and length in bytes) before the run is returned, and is
    /// clean from then on. The frames never scrubbed are ones nobody has
    /// had since the machine started. Returns the run and the bytes
    /// scrubbed.
    pub fn alloc_contiguous_clean(
        &mut self,
        count: usize,
        align: usize,
        mut scrub: impl FnMut(u64, u64),
    ) -> Option<(u64, u64)> {
        let base = self.alloc_contiguous(count, align)?;
        let (first, end) = ((base / PAGE_SIZE) as usize, (base / PAGE_SIZE) as usize + count);
        let mut scrubbed = 0;
        let mut frame = first;
        while frame < end {
            // A run of dirty frames from `frame`, and the clean ones after
            // it, each stepped over a whole word at a time where it can.
            let run_start = frame;
            frame = next_with(self.dirty, frame, end, false);
            if frame > run_start {
                set_bits(self.dirty, run_start, frame, false);
                let bytes = (frame - run_start) as u64 * PAGE_SIZE;
                scrub(run_start as u64 * PAGE_SIZE, bytes);
                scrubbed += bytes;
            }
            frame = next_with(self.dirty, frame, end, true);
        }
        Some((base, scrubbed))
    }

    /// The runs of wholly free blocks of `block` frames (each starting at
    /// a multiple of `block` frames), as their lengths in blocks: where
    /// [`alloc_contiguous`](Self::alloc_contiguous) with that alignment can
    /// place a run. When there are more than [`MAX_FREE_RANGES`], the
    /// longest are kept.
    pub fn free_block_runs(&self, block: usize) -> Vec<u64, MAX_FREE_RANGES> {
        let mut runs: Vec<u64, MAX_FREE_RANGES> = Vec::new();
        let block = block.max(1);
        let blocks = self.bits.len() * 64 / block;
        let mut keep = |length: u64| {
            if length == 0 {
                return;
            }
            if runs.push(length).is_err()
                && let Some(shortest) = runs.iter_mut().min().filter(|shortest| **shortest < length)
            {
                *shortest = length;
            }
        };
        let mut length = 0;
        for index in 0..blocks {
            let frames = index * block..(index + 1) * block;
            // Whole bitmap words at a time where the block is made of them.
            let free = if block.is_multiple_of(64) {
                self.bits[frames.start / 64..frames.end / 64].iter().all(|&word| word == u64::MAX)
            } else {
                frames.clone().all(|frame| self.is_free(frame))
            };
            if free {
                length += 1;
            } else {
                keep(length);
                length = 0;
            }
        }
        keep(length);
        runs
    }

    /// Give back `count` frames from `base` on, as [`free`](Self::free)
    /// does one by one, but a word of the bitmap at a time: a guest's
    /// memory is thousands of frames. Nothing changes unless every frame
    /// may be given back.
    pub fn free_run(&mut self, base: u64, count: usize) -> Result<(), FreeError> {
        if !base.is_multiple_of(PAGE_SIZE) {
            return Err(FreeError::Misaligned(base));
        }
        let end = base.saturating_add(count as u64 * PAGE_SIZE);
        if !self.managed.iter().any(|r| r.start <= base && end <= r.end) {
            return Err(FreeError::NotManaged(base));
        }
        let first = (base / PAGE_SIZE) as usize;
        let free = next_with(self.bits, first, first + count, true);
        if free < first + count {
            return Err(FreeError::AlreadyFree(free as u64 * PAGE_SIZE));
        }
        set_bits(self.bits, first, first + count, true);
        set_bits(self.dirty, first, first + count, true);
        self.free += count;
        Ok(())
    }

    pub fn free(&mut self, addr: u64) -> Result<(), FreeError> {
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(FreeError::Misaligned(addr));
        }
        if !self.managed.iter().any(|r| r.start <= addr && addr < r.end) {
            return Err(FreeError::NotManaged(addr));
        }
        let frame = (addr / PAGE_SIZE) as usize;
        if self.is_free(frame) {
            return Err(FreeError::AlreadyFree(addr));
        }
        self.set_free(frame, true);
        // Whatever its owner did with it, it may hold data now.
        set_bit(self.dirty, frame, true);
        self.free += 1;
        Ok(())
    }
}

/// Sets bits `[start, end)`, a word at a time where it can: the bitmap
/// lives in RAM that a nested hypervisor may make slow to write, so fewer
/// writes pay (measured: a bit at a time, 256 MiB took a second under a
/// nested KVM).
fn set_bits(bits: &mut [u64], start: usize, end: usize, value: bool) {
    let mut index = start;
    while index < end {
        if index.is_multiple_of(64) && index + 64 <= end {
            bits[index / 64] = if value { u64::MAX } else { 0 };
            index += 64;
        } else {
            set_bit(bits, index, value);
            index += 1;
        }
    }
}

/// The first index in `[start, end)` whose bit is `value`, or `end`.
fn next_with(bits: &[u64], start: usize, end: usize, value: bool) -> usize {
    let mut index = start;
    while index < end {
        let word = if value { bits[index / 64] } else { !bits[index / 64] };
        if index.is_multiple_of(64) && word == 0 {
            index += 64;
        } else if word & (1 << (index % 64)) != 0 {
            return index;
        } else {
            index += 1;
        }
    }
    end
}

fn set_bit(bits: &mut [u64], index: usize, value: bool) {
    if value {
        bits[index / 64] |= 1 << (index % 64);
    } else {
        bits[index / 64] &= !(1 << (index % 64));
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use super::*;

    fn ram(start: u64, end: u64) -> MemRegion {
        MemRegion { range: PhysRange { start, end }, kind: RegionKind::Ram }
    }

    fn reserved(start: u64, end: u64) -> MemRegion {
        MemRegion { range: PhysRange { start, end }, kind: RegionKind::Reserved }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn low_memory_and_occupied_ranges_are_excluded() {
        let map = [ram(0, 0x9fc00), ram(MIB, 64 * MIB)];
        let image = PhysRange { start: MIB, end: MIB + 0x23456 };
        let module = PhysRange { start: 10 * MIB + 5, end: 11 * MIB };
        let free = free_ranges(&map, &[image, module], u64::MAX);
        assert_eq!(
            free.as_slice(),
            &[
                PhysRange { start: MIB + 0x24000, end: 10 * MIB },
                PhysRange { start: 11 * MIB, end: 64 * MIB }
            ]
        );
    }

    #[test]
    fn reserved_wins_over_overlapping_ram_and_limit_applies() {
        let map = [ram(MIB, 32 * MIB), reserved(4 * MIB + 1, 5 * MIB), ram(4096 * MIB, 4352 * MIB)];
        let free = free_ranges(&map, &[], 4096 * MIB);
        assert_eq!(
            free.as_slice(),
            &[PhysRange { start: MIB, end: 4 * MIB }, PhysRange { start: 5 * MIB, end: 32 * MIB }]
        );
    }

    #[test]
    fn many_holes_never_hand_out_a_hole() {
        let map = [ram(MIB, 512 * MIB)];
        let holes: std::vec::Vec<PhysRange> =
            (0..200).map(|i| PhysRange { start: MIB + i * 2 * MIB, end: MIB + i * 2 * MIB + 4096 }).collect();
        let free = free_ranges(&map, &holes, u64::MAX);
        for range in &free {
            for hole in &holes {
                assert!(!range.overlaps(hole));
            }
        }
    }

    #[test]
    fn trampoline_page_is_the_highest_free_conventional_page() {
        // QEMU's pc, q35 and microvm: RAM up to the EBDA.
        let map = [ram(0, 0x9fc00), reserved(0x9fc00, 0xa0000), ram(MIB, 64 * MIB)];
        assert_eq!(trampoline_page(&map, &[]), Some(0x9e000));
        // start_info and its memory map in the way: the next page down.
        let boot = [PhysRange { start: 0x9e800, end: 0x9e900 }];
        assert_eq!(trampoline_page(&map, &boot), Some(0x9d000));
        // Cloud Hypervisor: all 640 KiB are RAM.
        assert_eq!(trampoline_page(&[ram(0, 0xa0000)], &[]), Some(0x9f000));
        // A reserved region inside RAM wins over it.
        let map = [ram(0, 0x9fc00), reserved(0x9d000, 0x9e001)];
        assert_eq!(trampoline_page(&map, &[]), Some(0x9c000));
        // RAM above 640 KiB is never chosen: a SIPI could reach it, but
        // the VGA window and the BIOS live there.
        let map = [ram(0xa0000, 0x100000)];
        assert_eq!(trampoline_page(&map, &[]), None);
        // Page 0 is never chosen either; no RAM below 1 MiB, no page.
        assert_eq!(trampoline_page(&[ram(0, 0x1000)], &[]), None);
        assert_eq!(trampoline_page(&[ram(0x1000, 0x2000)], &[]), Some(0x1000));
        assert_eq!(trampoline_page(&[ram(MIB, 64 * MIB)], &[]), None);
        // Every page taken: none.
        let all = [PhysRange { start: 0, end: 0xa0000 }];
        assert_eq!(trampoline_page(&[ram(0, 0x9fc00)], &all), None);
    }

    #[test]
    fn carve_takes_from_the_first_fitting_range() {
        let mut free = FreeRanges::new();
        free.push(PhysRange { start: MIB, end: MIB + 4096 }).unwrap();
        free.push(PhysRange { start: 8 * MIB, end: 16 * MIB }).unwrap();
        let carved = carve(&mut free, 5000).unwrap();
        assert_eq!(carved, PhysRange { start: 8 * MIB, end: 8 * MIB + 8192 });
        assert_eq!(free[1].start, 8 * MIB + 8192);
        assert!(carve(&mut free, 64 * MIB).is_none());
    }

    fn allocator_over<'a>(bits: &'a mut [u64], ranges: &[PhysRange]) -> FrameAllocator<'a> {
        FrameAllocator::new(bits, ranges)
    }

    #[test]
    fn alloc_free_round_trip_and_double_free() {
        let ranges = [PhysRange { start: MIB, end: MIB + 8 * PAGE_SIZE }];
        let mut bits = vec![0u64; bitmap_words(&ranges)];
        let mut frames = allocator_over(&mut bits, &ranges);
        assert_eq!(frames.total_frames(), 8);
        let taken: std::vec::Vec<u64> = (0..8).map(|_| frames.alloc().unwrap()).collect();
        assert!(frames.alloc().is_none());
        assert!(taken.iter().all(|&a| (MIB..MIB + 8 * PAGE_SIZE).contains(&a)));
        frames.free(taken[3]).unwrap();
        assert_eq!(frames.free(taken[3]), Err(FreeError::AlreadyFree(taken[3])));
        assert_eq!(frames.free(0x1000), Err(FreeError::NotManaged(0x1000)));
        assert_eq!(frames.free(MIB + 1), Err(FreeError::Misaligned(MIB + 1)));
        assert_eq!(frames.alloc(), Some(taken[3]));
    }

    #[test]
    fn contiguous_runs_respect_alignment_and_gaps() {
        let ranges =
            [PhysRange { start: MIB, end: MIB + 3 * PAGE_SIZE }, PhysRange { start: 2 * MIB, end: 6 * MIB }];
        let mut bits = vec![0u64; bitmap_words(&ranges)];
        let mut frames = allocator_over(&mut bits, &ranges);
        let run = frames.alloc_contiguous(512, 512).unwrap();
        assert_eq!(run, 2 * MIB);
        let before = frames.free_frames();
        assert!(frames.alloc_contiguous(2048, 1).is_none());
        assert_eq!(frames.free_frames(), before);
        let small = frames.alloc_contiguous(3, 1).unwrap();
        assert_eq!(small, MIB);
    }

    #[test]
    fn free_block_runs_are_where_aligned_runs_fit() {
        // 1 MiB to 7 MiB free: the 2 MiB blocks at 2 and 4 MiB are whole,
        // the first and last halves are not.
        let ranges = [PhysRange { start: MIB, end: 7 * MIB }, PhysRange { start: 10 * MIB, end: 16 * MIB }];
        let mut bits = vec![0u64; bitmap_words(&ranges)];
        let mut frames = allocator_over(&mut bits, &ranges);
        assert_eq!(frames.free_block_runs(512).as_slice(), &[2, 3]);
        // A run placed, and one frame taken out of the 12 MiB block.
        assert_eq!(frames.alloc_contiguous(1024, 512), Some(2 * MIB));
        assert_eq!(frames.alloc_contiguous(1, 3072), Some(12 * MIB));
        assert_eq!(frames.free_block_runs(512).as_slice(), &[1, 1]);
    }

    #[test]
    fn free_block_runs_of_blocks_smaller_than_a_word() {
        // Frames 256 to 265: the 3-frame blocks at 258 and 261 are whole.
        let ranges = [PhysRange { start: MIB, end: MIB + 10 * PAGE_SIZE }];
        let mut bits = vec![0u64; bitmap_words(&ranges)];
        let frames = allocator_over(&mut bits, &ranges);
        assert_eq!(frames.free_block_runs(3).as_slice(), &[2]);
    }

    #[test]
    fn free_block_runs_keep_the_longest_when_there_are_many() {
        // 2 MiB blocks 1 to 160 free, then a frame taken from every other
        // block up to 140: 70 runs of one block, and one of 20 at the end.
        let ranges = [PhysRange { start: 2 * MIB, end: 322 * MIB }];
        let mut bits = vec![0u64; bitmap_words(&ranges)];
        let mut frames = allocator_over(&mut bits, &ranges);
        for block in 1..=70 {
            assert_eq!(frames.alloc_contiguous(1, 1024), Some(block * 4 * MIB));
        }
        let runs = frames.free_block_runs(512);
        assert_eq!(runs.len(), MAX_FREE_RANGES);
        assert_eq!(runs.iter().filter(|&&r| r == 1).count(), MAX_FREE_RANGES - 1);
        assert!(runs.contains(&20));
    }

    #[test]
    fn short_bitmap_leaves_the_rest_out() {
        let ranges = [PhysRange { start: MIB, end: 64 * MIB }];
        let mut bits = vec![0u64; 1];
        let frames = allocator_over(&mut bits, &ranges);
        assert_eq!(frames.total_frames(), 0);
    }

    /// The runs `alloc_contiguous_clean` asked to scrub, as (frame index
    /// from `MIB`, frames).
    fn scrubbed_runs(frames: &mut FrameAllocator, count: usize) -> (u64, std::vec::Vec<(u64, u64)>) {
        let mut runs = std::vec::Vec::new();
        let (base, bytes) = frames
            .alloc_contiguous_clean(count, 1, |start, len| {
                runs.push(((start - MIB) / PAGE_SIZE, len / PAGE_SIZE))
            })
            .expect("room for the run");
        assert_eq!(bytes, runs.iter().map(|r| r.1).sum::<u64>() * PAGE_SIZE);
        (base, runs)
    }

    #[test]
    fn fresh_frames_are_not_scrubbed_and_given_back_ones_are_once() {
        let ranges = [PhysRange { start: MIB, end: MIB + 16 * PAGE_SIZE }];
        let mut bits = vec![0u64; bitmap_words(&ranges)];
        let mut frames = allocator_over(&mut bits, &ranges);
        let (base, runs) = scrubbed_runs(&mut frames, 8);
        assert_eq!((base, runs), (MIB, vec![]), "frames nobody had are clean");
        // A guest used frames 2-4 and 6 and gave everything back.
        for frame in 0..8 {
            frames.free(MIB + frame * PAGE_SIZE).unwrap();
        }
        assert_eq!(frames.dirty_free_frames(), 8, "every frame given back may hold data");
        let (_, runs) = scrubbed_runs(&mut frames, 10);
        assert_eq!(runs, vec![(0, 8)], "the dirty frames in one run; the fresh two left alone");
        assert_eq!(frames.dirty_free_frames(), 0);
        for frame in 0..10 {
            frames.free(MIB + frame * PAGE_SIZE).unwrap();
        }
        // Single frames taken by their owner do not change the rule.
        let single = frames.alloc().unwrap();
        frames.free(single).unwrap();
        assert_eq!(frames.dirty_free_frames(), 10);
    }

    #[test]
    fn dirty_frames_in_the_middle_are_scrubbed_as_runs() {
        let ranges = [PhysRange { start: MIB, end: MIB + 16 * PAGE_SIZE }];
        let mut bits = vec![0u64; bitmap_words(&ranges)];
        let mut frames = allocator_over(&mut bits, &ranges);
        let taken: std::vec::Vec<u64> = (0..8).map(|_| frames.alloc().unwrap()).collect();
        for &frame in [&taken[1], &taken[2], &taken[5]] {
            frames.free(frame).unwrap();
        }
        // Frames 0, 3, 4, 6 and 7 are still taken: the only run of 8 starts at 8.
        let (base, runs) = scrubbed_runs(&mut frames, 8);
        assert_eq!((base, runs), (MIB + 8 * PAGE_SIZE, vec![]));
        for frame in [0, 3, 4, 6, 7] {
            frames.free(taken[frame]).unwrap();
        }
        let (_, runs) = scrubbed_runs(&mut frames, 8);
        assert_eq!(runs, vec![(0, 8)]);
    }

    #[test]
    fn after_mark_all_dirty_everything_is_scrubbed() {
        let ranges = [PhysRange { start: MIB, end: MIB + 16 * PAGE_SIZE }];
        let mut bits = vec![0u64; bitmap_words(&ranges)];
        let mut frames = allocator_over(&mut bits, &ranges);
        frames.mark_all_dirty();
        assert_eq!(frames.dirty_free_frames(), 16);
        let (_, runs) = scrubbed_runs(&mut frames, 16);
        assert_eq!(runs, vec![(0, 16)]);
    }

    #[test]
    fn free_run_gives_back_a_run_or_nothing() {
        let ranges = [PhysRange { start: MIB, end: MIB + 200 * PAGE_SIZE }];
        let mut bits = vec![0u64; bitmap_words(&ranges)];
        let mut frames = allocator_over(&mut bits, &ranges);
        let base = frames.alloc_contiguous(150, 1).unwrap();
        frames.free(base + 100 * PAGE_SIZE).unwrap();
        assert_eq!(frames.free_run(base, 150), Err(FreeError::AlreadyFree(base + 100 * PAGE_SIZE)));
        assert_eq!(frames.free_frames(), 51, "a refused run changes nothing");
        assert_eq!(frames.free_run(base + 1, 2), Err(FreeError::Misaligned(base + 1)));
        assert_eq!(frames.free_run(base, 300), Err(FreeError::NotManaged(base)));
        frames.free_run(base, 100).unwrap();
        frames.free_run(base + 101 * PAGE_SIZE, 49).unwrap();
        assert_eq!(frames.free_frames(), 200);
        assert_eq!(frames.dirty_free_frames(), 150);
    }

    /// The word-at-a-time searches against a bit-at-a-time model, over
    /// seeded random allocations and frees at odd offsets.
    #[test]
    fn word_searches_match_a_bit_model() {
        let ranges = [PhysRange { start: MIB + 3 * PAGE_SIZE, end: MIB + 1000 * PAGE_SIZE }];
        let mut bits = vec![0u64; bitmap_words(&ranges)];
        let mut frames = allocator_over(&mut bits, &ranges);
        let first = ((MIB + 3 * PAGE_SIZE) / PAGE_SIZE) as usize;
        let mut model = std::vec![false; first + 1000];
        model[first..first + 997].fill(true);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        let mut held: std::vec::Vec<(u64, usize)> = std::vec::Vec::new();
        for _ in 0..2000 {
            if next(3) != 0 || held.is_empty() {
                let (count, align) = (1 + next(90) as usize, [1, 8, 64][next(3) as usize]);
                let expected = (0..model.len())
                    .step_by(align)
                    .find(|&s| s + count <= model.len() && model[s..s + count].iter().all(|&f| f));
                let got = frames.alloc_contiguous(count, align);
                assert_eq!(got, expected.map(|s| s as u64 * PAGE_SIZE), "{count} frames aligned {align}");
                if let Some(s) = expected {
                    model[s..s + count].iter_mut().for_each(|f| *f = false);
                    held.push((s as u64 * PAGE_SIZE, count));
                }
            } else {
                let (base, count) = held.swap_remove(next(held.len() as u64) as usize);
                frames.free_run(base, count).unwrap();
                let s = (base / PAGE_SIZE) as usize;
                model[s..s + count].iter_mut().for_each(|f| *f = true);
            }
            assert_eq!(frames.free_frames(), model.iter().filter(|&&f| f).count());
        }
    }
}
