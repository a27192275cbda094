//! A simulated machine for the shadow MMU's tests: guest memory as a sparse
//! map of words, a frame pool that catches double frees and use after free,
//! and a small builder for guest page tables.
//!
//! Guest memory sits at a host offset, not at zero, so a shadow entry that
//! holds a guest-physical address where a host-physical one belongs shows
//! up at once.
#![allow(dead_code)]

use paging::entry::{ADDRESS_MASK, HUGE, PRESENT, USER, WRITABLE};
use paging::{FramePool, GuestMemory, Level, ShadowMmu};
use std::collections::{HashMap, HashSet};

/// Where guest-physical 0 lives in host-physical space.
pub const HOST_OFFSET: u64 = 0x10_0000_0000;

/// Where the pool's frames live in host-physical space.
pub const POOL_BASE: u64 = 0x80_0000_0000;

/// Guest memory: a limit and a sparse map of words (absent words read 0).
#[derive(Clone, Debug, Default)]
pub struct SimMemory {
    pub limit: u64,
    pub words: HashMap<u64, u64>,
    /// When set, every write fails (to provoke the unwritable kill).
    pub refuse_writes: bool,
    /// When set, every read fails (to provoke the unreadable kill).
    pub refuse_reads: bool,
    /// When set, the memory says the host backs it with 2 MiB pages
    /// (`HOST_OFFSET` is 2 MiB-aligned), and the MMU may use 2 MiB leaves.
    pub large: bool,
}

impl SimMemory {
    pub fn new(limit: u64) -> Self {
        SimMemory { limit, ..Default::default() }
    }

    pub fn get(&self, gpa: u64) -> u64 {
        self.words.get(&gpa).copied().unwrap_or(0)
    }

    pub fn set(&mut self, gpa: u64, value: u64) {
        if value == 0 {
            self.words.remove(&gpa);
        } else {
            self.words.insert(gpa, value);
        }
    }
}

impl GuestMemory for SimMemory {
    fn limit(&self) -> u64 {
        self.limit
    }
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        (!self.refuse_reads && gpa.is_multiple_of(8) && gpa < self.limit).then(|| self.get(gpa))
    }
    fn write_u64(&mut self, gpa: u64, value: u64) -> bool {
        if self.refuse_writes || !gpa.is_multiple_of(8) || gpa >= self.limit {
            return false;
        }
        self.set(gpa, value);
        true
    }
    fn guest_to_host(&self, gpa: u64) -> u64 {
        gpa + HOST_OFFSET
    }
    fn host_large_pages(&self) -> bool {
        self.large
    }
}

/// The shadow frame pool, with a cap that may change at any time.
#[derive(Debug)]
pub struct SimPool {
    pub cap: usize,
    frames: HashMap<u64, Box<[u64; 512]>>,
    free_list: Vec<u64>,
    next: u64,
    pub allocations: u64,
}

impl SimPool {
    pub fn new(cap: usize) -> Self {
        SimPool { cap, frames: HashMap::new(), free_list: Vec::new(), next: POOL_BASE, allocations: 0 }
    }

    pub fn is_frame(&self, frame: u64) -> bool {
        self.frames.contains_key(&frame)
    }

    /// All 512 entries of a frame in use.
    pub fn entries(&self, frame: u64) -> &[u64; 512] {
        self.frames.get(&frame).unwrap_or_else(|| panic!("read of a frame not in use: {frame:#x}"))
    }
}

impl FramePool for SimPool {
    fn alloc_zeroed(&mut self) -> Option<u64> {
        if self.frames.len() >= self.cap {
            return None;
        }
        let frame = self.free_list.pop().unwrap_or_else(|| {
            let frame = self.next;
            self.next += 4096;
            frame
        });
        self.frames.insert(frame, Box::new([0; 512]));
        self.allocations += 1;
        Some(frame)
    }
    fn free(&mut self, frame: u64) {
        assert!(self.frames.remove(&frame).is_some(), "freed a frame not in use: {frame:#x}");
        self.free_list.push(frame);
    }
    fn read_entry(&self, frame: u64, index: usize) -> u64 {
        self.frames.get(&frame).unwrap_or_else(|| panic!("read of a frame not in use: {frame:#x}"))[index]
    }
    fn write_entry(&mut self, frame: u64, index: usize, value: u64) {
        self.frames.get_mut(&frame).unwrap_or_else(|| panic!("write to a frame not in use: {frame:#x}"))
            [index] = value;
    }
    fn next_present(&self, frame: u64, from: usize) -> Option<usize> {
        let table =
            self.frames.get(&frame).unwrap_or_else(|| panic!("scan of a frame not in use: {frame:#x}"));
        umbra_abi::tables::next_present(table, from)
    }
    fn capacity(&self) -> usize {
        self.cap
    }
    fn in_use(&self) -> usize {
        self.frames.len()
    }
}

pub type Mmu = ShadowMmu<SimMemory, SimPool>;

/// Guest memory size used by most tests: 1 GiB and 8 MiB, enough for a
/// whole 1 GiB page plus room, while the map stays sparse.
pub const LIMIT: u64 = 0x4080_0000;

pub fn mmu_with(limit: u64, cap: usize) -> Mmu {
    ShadowMmu::new(SimMemory::new(limit), SimPool::new(cap)).expect("setup")
}

pub fn mmu() -> Mmu {
    mmu_with(LIMIT, 256)
}

/// An MMU whose memory the host backs with 2 MiB pages: it may shadow
/// guest large pages with 2 MiB leaves.
pub fn mmu_large(limit: u64, cap: usize) -> Mmu {
    let memory = SimMemory { large: true, ..SimMemory::new(limit) };
    ShadowMmu::new(memory, SimPool::new(cap)).expect("setup")
}

/// Flags of a guest table pointer that allows everything below it.
pub const TABLE: u64 = PRESENT | WRITABLE | USER;

/// Builds guest page tables in guest memory, taking table pages from a bump
/// allocator starting at `next_table`.
pub struct Builder {
    pub next_table: u64,
}

impl Builder {
    pub fn new() -> Self {
        Builder { next_table: 0x10_0000 }
    }

    pub fn table(&mut self) -> u64 {
        let t = self.next_table;
        self.next_table += 4096;
        t
    }

    /// The guest-physical address of the entry at `level` for `va`,
    /// creating tables on the way with `upper` flags. Stops early (returns
    /// the entry address at `level`) without creating it.
    pub fn entry_addr(&mut self, mem: &mut SimMemory, cr3: u64, va: u64, level: Level, upper: u64) -> u64 {
        let mut table = cr3;
        for l in Level::WALK_ORDER {
            let addr = table + 8 * l.index(va) as u64;
            if l == level {
                return addr;
            }
            let e = mem.get(addr);
            table = if e & PRESENT != 0 && e & HUGE == 0 {
                e & ADDRESS_MASK
            } else {
                let t = self.table();
                mem.set(addr, t | upper);
                t
            };
        }
        unreachable!()
    }

    /// Maps 4 KiB page `va` to `gpa` with leaf `flags`.
    pub fn map(&mut self, mem: &mut SimMemory, cr3: u64, va: u64, gpa: u64, flags: u64) -> u64 {
        let addr = self.entry_addr(mem, cr3, va, Level::Pt, TABLE);
        mem.set(addr, gpa | flags);
        addr
    }

    /// Writes a leaf at `level` (a 2 MiB or 1 GiB page, with HUGE added).
    pub fn map_large(
        &mut self,
        mem: &mut SimMemory,
        cr3: u64,
        va: u64,
        level: Level,
        gpa: u64,
        flags: u64,
    ) -> u64 {
        let addr = self.entry_addr(mem, cr3, va, level, TABLE);
        mem.set(addr, gpa | flags | HUGE);
        addr
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts the frames reachable from every cached root (switcher tables
/// excluded) and checks no frame is reachable twice.
pub fn reachable_frames(mmu: &Mmu) -> usize {
    let mut seen = HashSet::new();
    for root in mmu.roots() {
        count_table(mmu.pool(), root.root, Level::Pml4, 0, &mut seen);
    }
    seen.len()
}

fn count_table(pool: &SimPool, table: u64, level: Level, base: u64, seen: &mut HashSet<u64>) {
    assert!(seen.insert(table), "shadow table {table:#x} reachable twice");
    let Some(next) = level.next() else { return };
    for (i, &e) in pool.entries(table).iter().enumerate() {
        let entry_base = base + i as u64 * level.span();
        // The two switcher slots point at host-owned tables.
        if level == Level::Pd && entry_base >= 0xFFFF_FFC0_0000 {
            continue;
        }
        // A 2 MiB leaf points at guest memory, not at a table.
        if e & PRESENT != 0 && !(level == Level::Pd && e & HUGE != 0) {
            count_table(pool, e & ADDRESS_MASK, next, entry_base, seen);
        }
    }
}

/// Every present shadow leaf under a root: (canonical page address, entry).
/// A 2 MiB leaf comes once, at its first address, with HUGE set.
pub fn shadow_leaves(pool: &SimPool, root: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    collect(pool, root, Level::Pml4, 0, &mut out);
    out
}

fn collect(pool: &SimPool, table: u64, level: Level, base: u64, out: &mut Vec<(u64, u64)>) {
    for (i, &e) in pool.entries(table).iter().enumerate() {
        let entry_base = base + i as u64 * level.span();
        if level == Level::Pd && entry_base >= 0xFFFF_FFC0_0000 {
            continue;
        }
        if e & PRESENT == 0 {
            continue;
        }
        let va = if entry_base & (1 << 47) != 0 { entry_base | 0xFFFF_0000_0000_0000 } else { entry_base };
        match level.next() {
            _ if level == Level::Pd && e & HUGE != 0 => out.push((va, e)),
            Some(next) => collect(pool, e & ADDRESS_MASK, next, entry_base, out),
            None => out.push((va, e)),
        }
    }
}
