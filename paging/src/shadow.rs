//! The shadow MMU: its roots, and how shadow tables are built and torn down.
//!
//! A *root* is one shadow PML4 and stands for one guest CR3. We keep up to
//! [`ROOT_CACHE_SIZE`] of them, so that switching back to a recent address
//! space finds its shadow still filled in. Every root is born with the path
//! to the switcher already built (`PML4[511] -> PDPT -> PD`, three frames we
//! call its *skeleton*), and that path is never taken apart while the root
//! lives. Releasing guest mappings therefore always stops short of the two
//! switcher slots, the switcher stays mapped through every flush, and
//! installing it never needs a frame.
//!
//! The shadow always puts the restrictions in the leaf: upper shadow
//! entries allow everything, and each leaf carries the rights combined
//! from the guest's whole walk. That way one shadow table can hold leaves
//! with different rights, which it must when it shadows entries with
//! mixed flags. A leaf maps 4 KiB, or 2 MiB where it shadows a piece of a
//! guest large page over memory the host backs with 2 MiB pages of its
//! own (`GuestMemory::host_large_pages`): a guest kernel's direct map of
//! all its memory then costs a fault per 2 MiB, not per page. A 2 MiB
//! leaf is only ever put in an empty page-directory slot or over another
//! 2 MiB leaf, and anything that drops part of one drops all of it.
//!
//! Frames come from the pool. When the pool runs dry, we first give up the
//! least recently used other roots; if that is not enough the caller clears
//! the current root and tries again (see `fill`). The guest never dies for
//! the host's lack of memory, provided the pool holds [`MIN_POOL_FRAMES`].

use crate::address::{self, FLAT_END, Level, SWITCHER_FLAT, SWITCHER_PD_SLOTS};
use crate::counters::Counters;
use crate::entry::{ACCESSED, ADDRESS_MASK, HUGE, PRESENT, USER, WRITABLE};
use crate::memory::{FramePool, GuestMemory};
use crate::outcome::SetupError;

/// How many shadow roots are cached (lguest kept 4).
pub const ROOT_CACHE_SIZE: usize = 8;

/// The most pages the kernel stack may span: pinning keeps them all mapped.
pub const MAX_PINNED_PAGES: u64 = 4;

/// The smallest pool the MMU accepts. With every other root given up and
/// the current root cleared, a fault needs its root's skeleton (3 frames),
/// up to 3 tables for the fault itself and up to 6 for a pinned stack of
/// [`MAX_PINNED_PAGES`] pages straddling table boundaries: 12. We ask for
/// a little more.
pub const MIN_POOL_FRAMES: usize = 16;

/// Flags of every upper shadow entry: the leaf decides.
pub(crate) const SHADOW_TABLE_FLAGS: u64 = PRESENT | WRITABLE | USER | ACCESSED;

/// The span of a 2 MiB shadow leaf.
pub(crate) const LARGE_PAGE: u64 = 1 << 21;

/// Where a shadow leaf sits: its table, its index there, and whether it
/// is a 2 MiB leaf in a page directory rather than a 4 KiB one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeafSlot {
    pub table: u64,
    pub index: usize,
    pub large: bool,
}

/// The frames every root is born with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Skeleton {
    pub pml4: u64,
    pub top_pdpt: u64,
    pub top_pd: u64,
}

/// One slot of the root cache.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RootSlot {
    pub skeleton: Option<Skeleton>,
    /// The guest CR3 this root shadows; `None` for the linear-mode root.
    pub guest_cr3: Option<u64>,
    /// Logical time of last use, for LRU.
    pub last_used: u64,
    /// The host CPU whose switcher tables are installed in this root.
    pub prepared_cpu: Option<u32>,
    /// The pinned range (first page, page count) found mapped writable
    /// in this root, and the [`ShadowMmu::leaf_epoch`] it was found at:
    /// while neither has moved, pinning it again would find every page
    /// already there.
    pub pins_checked: Option<(u64, u64, u64)>,
}

/// A cached root, as reported by [`ShadowMmu::roots`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootInfo {
    /// The guest CR3 it shadows (`None` in linear mode).
    pub guest_cr3: Option<u64>,
    /// Host-physical address of its PML4: the value for the real CR3.
    pub root: u64,
    /// The CPU whose switcher it carries, if any.
    pub prepared_cpu: Option<u32>,
    /// Whether it is the current root.
    pub current: bool,
}

/// The pool ran dry even after giving up every other root.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Exhausted;

/// The shadow MMU of one guest.
pub struct ShadowMmu<M: GuestMemory, P: FramePool> {
    pub(crate) memory: M,
    pub(crate) pool: P,
    /// Guest memory size, read once.
    pub(crate) limit: u64,
    pub(crate) roots: [RootSlot; ROOT_CACHE_SIZE],
    pub(crate) current: usize,
    /// True until the guest's first `new_pagetable`.
    pub(crate) linear: bool,
    /// Flat addresses at or above this are the shared kernel half.
    pub(crate) kernel_flat: u64,
    pub(crate) clock: u64,
    /// The guest kernel stack: first page and page count, kept mapped.
    pub(crate) pinned: Option<(u64, u64)>,
    /// Moves on whenever a shadow leaf may have been removed or replaced,
    /// in any root: a pinned range checked at an older epoch must be
    /// checked again.
    pub(crate) leaf_epoch: u64,
    pub(crate) counters: Counters,
}

impl<M: GuestMemory, P: FramePool> ShadowMmu<M, P> {
    /// Builds the MMU in linear mode with one empty root. The pool must
    /// hold at least [`MIN_POOL_FRAMES`] frames and be this MMU's alone.
    pub fn new(memory: M, pool: P) -> Result<Self, SetupError> {
        let limit = memory.limit();
        if limit == 0 || !limit.is_multiple_of(address::PAGE_SIZE) {
            return Err(SetupError::LimitNotPageAligned);
        }
        if limit > 1 << crate::entry::GUEST_PHYSICAL_ADDRESS_BITS {
            return Err(SetupError::LimitTooLarge);
        }
        if pool.capacity() < MIN_POOL_FRAMES {
            return Err(SetupError::PoolTooSmall);
        }
        let mut mmu = ShadowMmu {
            memory,
            pool,
            limit,
            roots: [RootSlot::default(); ROOT_CACHE_SIZE],
            current: 0,
            linear: true,
            kernel_flat: address::flat(address::KERNEL_HALF_START),
            clock: 0,
            pinned: None,
            leaf_epoch: 0,
            counters: Counters::default(),
        };
        let skeleton = mmu.build_skeleton().ok_or(SetupError::PoolRefused)?;
        mmu.roots[0] = RootSlot { skeleton: Some(skeleton), guest_cr3: None, ..RootSlot::default() };
        Ok(mmu)
    }

    /// Releases every shadow frame back to the pool and hands back the
    /// memory and the pool. Afterwards the pool's use is what it was before
    /// [`ShadowMmu::new`].
    pub fn into_parts(mut self) -> (M, P) {
        self.release_every_root();
        (self.memory, self.pool)
    }

    /// Guest memory, for the hypervisor's own reads.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// Guest memory, for the hypervisor's own writes. Writing the guest's
    /// page tables here is like the guest writing them: the shadow learns
    /// of it only through an announcement.
    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.memory
    }

    /// The shadow frame pool.
    pub fn pool(&self) -> &P {
        &self.pool
    }

    /// The pool, mutably (the host may resize a pool it shares with
    /// nobody; the MMU copes with whatever the pool refuses).
    pub fn pool_mut(&mut self) -> &mut P {
        &mut self.pool
    }

    /// Running totals.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// True until the guest's first `new_pagetable`.
    pub fn is_linear(&self) -> bool {
        self.linear
    }

    /// The guest CR3 the current root shadows (`None` in linear mode).
    pub fn current_cr3(&self) -> Option<u64> {
        self.roots[self.current].guest_cr3
    }

    /// Host-physical address of the current shadow PML4: what the switcher
    /// loads into the real CR3.
    pub fn current_root(&self) -> u64 {
        self.roots[self.current].skeleton.map_or(0, |s| s.pml4)
    }

    /// Which of the [`ROOT_CACHE_SIZE`] root slots is current: the host
    /// may keep what it learned about a root by its slot (checking the
    /// root's address too, since a slot is reused for other roots).
    pub fn current_slot(&self) -> usize {
        self.current
    }

    /// The cached roots, in slot order.
    pub fn roots(&self) -> impl Iterator<Item = RootInfo> + '_ {
        self.roots.iter().enumerate().filter_map(|(i, slot)| {
            slot.skeleton.map(|s| RootInfo {
                guest_cr3: slot.guest_cr3,
                root: s.pml4,
                prepared_cpu: slot.prepared_cpu,
                current: i == self.current,
            })
        })
    }

    /// The shadow leaf for `va` in the current root, if one is present
    /// (never for the switcher region, which is the host's).
    pub fn shadow_entry(&self, va: u64) -> Option<u64> {
        let skeleton = self.roots[self.current].skeleton?;
        self.shadow_leaf(skeleton.pml4, va)
    }

    /// A number that moves on whenever a shadow leaf may have been
    /// removed or replaced, in any root (and never otherwise): while it
    /// and the current root stay the same, a leaf the host looked up
    /// still maps what it mapped, so the host may keep what it learned
    /// from it.
    pub fn leaf_epoch(&self) -> u64 {
        self.leaf_epoch
    }

    /// The first guest page of the pinned kernel stack and its page count.
    pub fn pinned_range(&self) -> Option<(u64, u64)> {
        self.pinned
    }

    // ---- frames ------------------------------------------------------

    /// A zeroed frame from the pool, counted.
    fn take_frame(&mut self) -> Option<u64> {
        let frame = self.pool.alloc_zeroed()?;
        self.counters.frames_in_use += 1;
        self.counters.frames_peak = self.counters.frames_peak.max(self.counters.frames_in_use);
        Some(frame)
    }

    /// Returns a frame to the pool, counted.
    pub(crate) fn give_back(&mut self, frame: u64) {
        self.pool.free(frame);
        self.counters.frames_in_use -= 1;
    }

    /// A frame for a new shadow table, giving up other roots, least
    /// recently used first, until the pool can supply one.
    pub(crate) fn frame_for_table(&mut self) -> Result<u64, Exhausted> {
        let mut counted = false;
        loop {
            if let Some(frame) = self.take_frame() {
                return Ok(frame);
            }
            if !counted {
                self.counters.pressure_events += 1;
                counted = true;
            }
            if !self.evict_least_recent_other_root() {
                return Err(Exhausted);
            }
        }
    }

    /// Frees the least recently used root other than the current one.
    /// False if there is none.
    fn evict_least_recent_other_root(&mut self) -> bool {
        let victim = (0..ROOT_CACHE_SIZE)
            .filter(|&i| i != self.current && self.roots[i].skeleton.is_some())
            .min_by_key(|&i| self.roots[i].last_used);
        match victim {
            Some(i) => {
                self.free_root(i);
                self.counters.evictions += 1;
                true
            }
            None => false,
        }
    }

    // ---- roots -------------------------------------------------------

    /// Allocates a root's skeleton: PML4, and the PDPT and PD on the way to
    /// the switcher. `None` (with nothing leaked) if the pool refuses.
    pub(crate) fn build_skeleton(&mut self) -> Option<Skeleton> {
        let pml4 = self.take_frame()?;
        let Some(top_pdpt) = self.take_frame() else {
            self.give_back(pml4);
            return None;
        };
        let Some(top_pd) = self.take_frame() else {
            self.give_back(top_pdpt);
            self.give_back(pml4);
            return None;
        };
        self.pool.write_entry(pml4, 511, top_pdpt | SHADOW_TABLE_FLAGS);
        self.pool.write_entry(top_pdpt, 511, top_pd | SHADOW_TABLE_FLAGS);
        Some(Skeleton { pml4, top_pdpt, top_pd })
    }

    /// Frees a root entirely and empties its slot.
    pub(crate) fn free_root(&mut self, slot: usize) {
        if let Some(skeleton) = self.roots[slot].skeleton {
            self.clear_range(skeleton.pml4, Level::Pml4, 0, 0, SWITCHER_FLAT);
            self.give_back(skeleton.top_pd);
            self.give_back(skeleton.top_pdpt);
            self.give_back(skeleton.pml4);
        }
        self.roots[slot] = RootSlot::default();
    }

    /// Frees every root. The MMU has no current root until one is built.
    pub(crate) fn release_every_root(&mut self) {
        for slot in 0..ROOT_CACHE_SIZE {
            self.free_root(slot);
        }
    }

    /// Marks a slot as just used.
    pub(crate) fn touch(&mut self, slot: usize) {
        self.clock += 1;
        self.roots[slot].last_used = self.clock;
    }

    // ---- shadow tables -----------------------------------------------

    /// Writes `leaf` as the shadow PTE for `va` under `pml4`, building the
    /// tables on the way (a 2 MiB leaf in the way gives its slot to a new
    /// table), and returns the page table it wrote into. Tables built
    /// before an exhaustion stay linked and are released with the root.
    pub(crate) fn install_leaf(&mut self, pml4: u64, va: u64, leaf: u64) -> Result<u64, Exhausted> {
        let mut table = pml4;
        for level in [Level::Pml4, Level::Pdpt, Level::Pd] {
            let index = level.index(va);
            let entry = self.pool.read_entry(table, index);
            table = if entry & PRESENT != 0 && entry & HUGE == 0 {
                entry & ADDRESS_MASK
            } else {
                let child = self.frame_for_table()?;
                if entry & PRESENT != 0 {
                    // A 2 MiB leaf goes, all of it.
                    self.leaf_epoch += 1;
                }
                self.pool.write_entry(table, index, child | SHADOW_TABLE_FLAGS);
                child
            };
        }
        let index = Level::Pt.index(va);
        if self.pool.read_entry(table, index) & PRESENT != 0 {
            // A leaf replaced may have allowed more than its successor.
            self.leaf_epoch += 1;
        }
        self.pool.write_entry(table, index, leaf);
        Ok(table)
    }

    /// Writes `leaf`, a 2 MiB leaf, into the page-directory slot for `va`
    /// under `pml4`, building the tables above it. False, with nothing
    /// written there, when that slot holds a page table: its 4 KiB leaves
    /// stay, and the caller maps a 4 KiB piece among them instead.
    pub(crate) fn install_large_leaf(&mut self, pml4: u64, va: u64, leaf: u64) -> Result<bool, Exhausted> {
        let mut table = pml4;
        for level in [Level::Pml4, Level::Pdpt] {
            let index = level.index(va);
            let entry = self.pool.read_entry(table, index);
            table = if entry & PRESENT != 0 {
                entry & ADDRESS_MASK
            } else {
                let child = self.frame_for_table()?;
                self.pool.write_entry(table, index, child | SHADOW_TABLE_FLAGS);
                child
            };
        }
        let index = Level::Pd.index(va);
        let entry = self.pool.read_entry(table, index);
        if entry & PRESENT != 0 {
            if entry & HUGE == 0 {
                return Ok(false);
            }
            self.leaf_epoch += 1;
        }
        self.pool.write_entry(table, index, leaf);
        Ok(true)
    }

    /// Where `va`'s leaf sits under `pml4`, if the tables on the way exist:
    /// a 4 KiB slot in a page table, or the 2 MiB leaf that covers `va`.
    pub(crate) fn shadow_leaf_slot(&self, pml4: u64, va: u64) -> Option<LeafSlot> {
        // The switcher slots point at the host's own tables, not at pool
        // frames: never follow them.
        if !address::is_canonical(va) || address::in_switcher(va) {
            return None;
        }
        let mut table = pml4;
        for level in [Level::Pml4, Level::Pdpt, Level::Pd] {
            let index = level.index(va);
            let entry = self.pool.read_entry(table, index);
            if entry & PRESENT == 0 {
                return None;
            }
            if level == Level::Pd && entry & HUGE != 0 {
                return Some(LeafSlot { table, index, large: true });
            }
            table = entry & ADDRESS_MASK;
        }
        Some(LeafSlot { table, index: Level::Pt.index(va), large: false })
    }

    /// The present shadow leaf for `va` under `pml4`. Where a 2 MiB leaf
    /// covers `va`, the 4 KiB leaf that would say the same of its page.
    pub(crate) fn shadow_leaf(&self, pml4: u64, va: u64) -> Option<u64> {
        let slot = self.shadow_leaf_slot(pml4, va)?;
        let leaf = self.pool.read_entry(slot.table, slot.index);
        if leaf & PRESENT == 0 {
            return None;
        }
        Some(if slot.large { (leaf & !HUGE) + (va & (LARGE_PAGE - 1) & ADDRESS_MASK) } else { leaf })
    }

    /// Removes every shadow mapping of flat addresses `start..end` from the
    /// table at `level` whose first entry maps flat address `base`. Tables
    /// wholly inside the range are freed; tables the range only clips are
    /// cleaned and kept. Callers never pass a range reaching into the
    /// switcher, so the skeleton and the switcher slots survive.
    pub(crate) fn clear_range(&mut self, table: u64, level: Level, base: u64, start: u64, end: u64) {
        let span = level.span();
        let table_end = base + span * 512;
        let from = start.max(base);
        let to = end.min(table_end);
        if from >= to {
            return;
        }
        let first = ((from - base) / span) as usize;
        let last = ((to - 1 - base) / span) as usize;
        let mut next = first;
        while let Some(index) = self.pool.next_present(table, next).filter(|&index| index <= last) {
            next = index + 1;
            let entry = self.pool.read_entry(table, index);
            let entry_base = base + index as u64 * span;
            self.leaf_epoch += 1;
            let Some(child_level) = level.next() else {
                self.pool.write_entry(table, index, 0);
                continue;
            };
            if level == Level::Pd && entry & HUGE != 0 {
                // A 2 MiB leaf: clipped or not, it goes whole.
                self.pool.write_entry(table, index, 0);
                continue;
            }
            let child = entry & ADDRESS_MASK;
            if start <= entry_base && entry_base + span <= end {
                self.free_table(child, child_level);
                self.pool.write_entry(table, index, 0);
            } else {
                self.clear_range(child, child_level, entry_base, start, end);
            }
        }
    }

    /// Frees a shadow table and every table below it.
    fn free_table(&mut self, table: u64, level: Level) {
        if let Some(child_level) = level.next() {
            let mut next = 0;
            while let Some(index) = self.pool.next_present(table, next) {
                next = index + 1;
                let entry = self.pool.read_entry(table, index);
                // A 2 MiB leaf points at guest memory, not at a table.
                if !(level == Level::Pd && entry & HUGE != 0) {
                    self.free_table(entry & ADDRESS_MASK, child_level);
                }
            }
        }
        self.give_back(table);
    }

    /// Clears a root's guest mappings in flat `start..end`, clipped below
    /// the switcher.
    pub(crate) fn clear_root_range(&mut self, slot: usize, start: u64, end: u64) {
        if let Some(skeleton) = self.roots[slot].skeleton {
            let end = end.min(SWITCHER_FLAT);
            self.clear_range(skeleton.pml4, Level::Pml4, 0, start, end);
        }
    }

    /// Clears every guest mapping of a root, keeping its skeleton and
    /// switcher.
    pub(crate) fn clear_root(&mut self, slot: usize) {
        self.clear_root_range(slot, 0, FLAT_END);
    }

    /// The switcher slots of the current root (for tests and debugging).
    pub fn switcher_slots(&self) -> Option<[u64; 2]> {
        let skeleton = self.roots[self.current].skeleton?;
        Some(SWITCHER_PD_SLOTS.map(|i| self.pool.read_entry(skeleton.top_pd, i)))
    }
}
