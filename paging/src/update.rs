//! Updates the guest announces, and flushes.
//!
//! The guest writes its tables itself, then tells us what it changed (a
//! hypercall, or a batch of them). We do not re-read the world: we drop the
//! shadow entries the change could affect and let faults bring back what is
//! still wanted. An announcement for an address in the kernel half concerns
//! every cached root, since they all share that half; one in the user half
//! concerns only the root for the CR3 named, and if we have no root for that
//! CR3 there is nothing to do.
//!
//! A PTE announced with its accessed or dirty bit already set is about to be
//! used (kernels set these bits early to spare the CPU the work), so we
//! fill the shadow at once, as lguest did, sparing a fault.
//!
//! Announcements are checked before anything else: an update that names the
//! switcher, a non-canonical address or a broken PTE kills the guest even if
//! no cached root would have been touched.

use crate::address::{self, FLAT_END, Level, SWITCHER_FLAT};
use crate::entry::{self, ACCESSED, DIRTY, PRESENT};
use crate::memory::{FramePool, GuestMemory};
use crate::outcome::KillReason;
use crate::shadow::{LARGE_PAGE, ROOT_CACHE_SIZE, ShadowMmu};
use crate::walk;

impl<M: GuestMemory, P: FramePool> ShadowMmu<M, P> {
    /// The guest set the PTE mapping `va` in the tables at `cr3` to `pte`
    /// (lguest's SET_PTE). The guest's memory already holds the new value.
    pub fn set_pte(&mut self, cr3: u64, va: u64, pte: u64) -> Result<(), KillReason> {
        self.announce_pte(cr3, va, pte).inspect_err(|_| self.counters.kills += 1)
    }

    fn announce_pte(&mut self, cr3: u64, va: u64, pte: u64) -> Result<(), KillReason> {
        if !address::is_canonical(va) {
            return Err(KillReason::NonCanonicalAddress);
        }
        if address::in_switcher(va) {
            return Err(KillReason::SwitcherPteUpdate);
        }
        if pte & PRESENT != 0 {
            if pte & entry::reserved_bits(Level::Pt, pte) != 0 {
                return Err(KillReason::ReservedBits(Level::Pt));
            }
            if entry::target(Level::Pt, pte) >= self.limit {
                return Err(KillReason::FrameBeyondMemory(Level::Pt));
            }
        }
        let page_va = va & !(address::PAGE_SIZE - 1);
        let mut pinned_dropped = false;
        for slot in self.slots_concerned(cr3, address::flat(va)) {
            let span = self.update_leaf(slot, page_va, pte);
            let flat = address::flat(page_va) & !(span - 1);
            pinned_dropped |= slot == self.current && self.pinned_overlaps(flat, flat + span);
        }
        if pinned_dropped {
            self.repin()?;
        }
        Ok(())
    }

    /// Replaces one root's shadow leaf for `va` after an announced `pte`:
    /// dropped, or filled at once if the guest marked it used. Returns the
    /// span the leaf dropped there covered: 4 KiB, or 2 MiB.
    fn update_leaf(&mut self, slot: usize, va: u64, pte: u64) -> u64 {
        let Some(skeleton) = self.roots[slot].skeleton else {
            return address::PAGE_SIZE;
        };
        // No shadow table reaches this address: nothing to drop, and a
        // prefill is not worth building tables for.
        let Some(slot_of_leaf) = self.shadow_leaf_slot(skeleton.pml4, va) else {
            return address::PAGE_SIZE;
        };
        let (table, index) = (slot_of_leaf.table, slot_of_leaf.index);
        self.pool.write_entry(table, index, 0);
        self.leaf_epoch += 1;
        if slot_of_leaf.large {
            // The PTE lies under a 2 MiB leaf of ours, which is dropped
            // whole; the next fault maps what the tables say now.
            return LARGE_PAGE;
        }

        if pte & PRESENT == 0 || pte & (ACCESSED | DIRTY) == 0 {
            return address::PAGE_SIZE;
        }
        let Some(cr3) = self.roots[slot].guest_cr3 else {
            return address::PAGE_SIZE;
        };
        // The rights come from the whole walk, so walk; and prefill only if
        // the walk ends at exactly the PTE announced. Anything else (a large
        // page, a table that no longer leads here, a stale announcement) is
        // left to the next fault to sort out.
        let Ok(mapping) = walk::walk(&self.memory, self.limit, cr3, va) else {
            return address::PAGE_SIZE;
        };
        if mapping.leaf_level != Level::Pt || mapping.leaf().value != pte {
            return address::PAGE_SIZE;
        }
        let writable = mapping.rights.writable && pte & DIRTY != 0;
        let leaf = self.shadow_leaf_value(mapping.page, mapping.rights, writable);
        self.pool.write_entry(table, index, leaf);
        self.counters.prefills += 1;
        address::PAGE_SIZE
    }

    /// The guest changed the entry at `level` that covers `va` in the
    /// tables at `cr3` (a PML4E, PDPTE or PDE, or with [`Level::Pt`] a
    /// single PTE): drop every shadow mapping under it.
    pub fn invalidate_entry(&mut self, cr3: u64, va: u64, level: Level) -> Result<(), KillReason> {
        self.invalidate(cr3, va, level).inspect_err(|_| self.counters.kills += 1)
    }

    /// [`ShadowMmu::invalidate_entry`] for a PML4 entry named by index, as
    /// a hypercall might pass it. An index of 512 or more kills.
    pub fn invalidate_pml4_index(&mut self, cr3: u64, index: u64) -> Result<(), KillReason> {
        if index >= 512 {
            self.counters.kills += 1;
            return Err(KillReason::Pml4IndexOutOfRange);
        }
        let va = address::canonical(index << Level::Pml4.shift());
        self.invalidate_entry(cr3, va, Level::Pml4)
    }

    fn invalidate(&mut self, cr3: u64, va: u64, level: Level) -> Result<(), KillReason> {
        if !address::is_canonical(va) {
            return Err(KillReason::NonCanonicalAddress);
        }
        let start = address::flat(va) & !(level.span() - 1);
        let end = start + level.span();
        if start >= SWITCHER_FLAT {
            return Err(KillReason::SwitcherInvalidation);
        }
        let end = end.min(SWITCHER_FLAT);

        // The part below the kernel boundary belongs to `cr3` alone; the
        // part above it to every root.
        let user_end = end.min(self.kernel_flat);
        if start < user_end
            && let Some(slot) = self.known_slot(cr3)
        {
            self.clear_root_range(slot, start, user_end);
        }
        let kernel_start = start.max(self.kernel_flat);
        if kernel_start < end {
            for slot in 0..ROOT_CACHE_SIZE {
                self.clear_root_range(slot, kernel_start, end);
            }
        }
        // A 2 MiB leaf the range only clips goes whole: look a little wider.
        if self.pinned_overlaps(start & !(LARGE_PAGE - 1), end.next_multiple_of(LARGE_PAGE)) {
            self.repin()?;
        }
        Ok(())
    }

    /// Drops the user half of the current root (lguest's FLUSH_TLB with 0).
    pub fn flush_user_half(&mut self) -> Result<(), KillReason> {
        self.counters.user_flushes += 1;
        self.clear_root_range(self.current, 0, self.kernel_flat);
        self.repin().inspect_err(|_| self.counters.kills += 1)
    }

    /// Drops every guest mapping of every root; the switcher stays.
    pub fn flush_all(&mut self) -> Result<(), KillReason> {
        self.counters.full_flushes += 1;
        for slot in 0..ROOT_CACHE_SIZE {
            self.clear_root_range(slot, 0, FLAT_END);
        }
        self.repin().inspect_err(|_| self.counters.kills += 1)
    }

    /// The guest declares where its kernel half begins (lguest's
    /// `kernel_address`); until it does, the canonical upper half is assumed.
    /// Moving the boundary changes what every root shares, so everything is
    /// flushed.
    pub fn set_kernel_boundary(&mut self, boundary: u64) -> Result<(), KillReason> {
        if !address::is_canonical(boundary) || address::in_switcher(boundary) {
            self.counters.kills += 1;
            return Err(KillReason::BadKernelBoundary);
        }
        let boundary_flat = address::flat(boundary);
        if boundary_flat == self.kernel_flat {
            return Ok(());
        }
        self.kernel_flat = boundary_flat;
        self.flush_all()
    }

    /// The kernel-half boundary, in canonical form.
    pub fn kernel_boundary(&self) -> u64 {
        address::canonical(self.kernel_flat)
    }

    /// The slots an update at flat address `flat_va` concerns.
    fn slots_concerned(&self, cr3: u64, flat_va: u64) -> impl Iterator<Item = usize> + use<M, P> {
        let kernel = flat_va >= self.kernel_flat;
        let only = if kernel { None } else { self.known_slot(cr3) };
        let live: [bool; ROOT_CACHE_SIZE] =
            core::array::from_fn(|i| self.roots[i].skeleton.is_some() && (kernel || only == Some(i)));
        (0..ROOT_CACHE_SIZE).filter(move |&i| live[i])
    }

    /// The slot for `cr3` when the guest has real tables; in linear mode no
    /// root shadows any guest CR3.
    fn known_slot(&self, cr3: u64) -> Option<usize> {
        if self.linear { None } else { self.slot_for(cr3) }
    }

    /// Whether the pinned stack meets flat `start..end`.
    fn pinned_overlaps(&self, start: u64, end: u64) -> bool {
        self.pinned.is_some_and(|(first, pages)| {
            let first = address::flat(first);
            first < end && start < first + pages * address::PAGE_SIZE
        })
    }
}
