//! The demand fault, linear mode, and pinning.
//!
//! The shadow starts empty and is filled one page per fault. When the guest
//! faults, we walk its tables: if they do not allow the access the fault is
//! the guest's own and goes back to it; if they do, we copy the mapping into
//! the shadow and resume the guest, which never learns the fault happened.
//!
//! A read maps the page read-only even when the guest allows writes, unless
//! the guest's dirty bit is already set. The first write then faults again,
//! and that fault is where we set the dirty bit, so the guest's dirty bits
//! stay as honest as the hardware's would be. Accessed bits are set at every
//! level walked, as the CPU does.
//!
//! A leaf the guest marked accessed before any access was mapped ahead of
//! use: its kernel maps a program's pages in blocks (Linux's fault-around)
//! and marks them so. A fill of such a leaf maps its marked neighbours in
//! the shadow too (prefetch), each checked as a walk would check it, so
//! the program does not fault once per page all over again here.
//!
//! Until the guest's first `new_pagetable` it has no tables of its own, and
//! we pretend it has a 1:1 map of its memory (lguest's linear mode, which
//! spared the host any knowledge of where the guest keeps its kernel).
//!
//! Pinning makes sure a range, in practice the guest kernel stack, is
//! mapped writable in the current root, so that a trap pushing its frame
//! there cannot fault inside the fault.

use crate::address::{self, Level, PAGE_SIZE};
use crate::entry::{self, ACCESSED, DIRTY, HUGE, NO_EXECUTE, PRESENT, USER, WRITABLE};
use crate::memory::{FramePool, GuestMemory};
use crate::outcome::{Access, FaultOutcome, KillReason, Rights};
use crate::shadow::{Exhausted, LARGE_PAGE, MAX_PINNED_PAGES, ShadowMmu};
use crate::walk::{self, GuestMapping, WalkStop};

/// The aligned block of page-table entries a fill looks at for neighbours
/// to map ahead: the guest kernel's own block.
pub const PREFETCH_PAGES: usize = umbra_abi::MAP_AHEAD_BLOCK_PAGES;
const _: () = assert!(PREFETCH_PAGES.is_power_of_two() && 512 % PREFETCH_PAGES == 0);

/// The linear-mode pretence: the guest kernel may read, write and run its
/// whole memory; ring 3 gets nothing (the guest has no user space yet).
const LINEAR_RIGHTS: Rights = Rights { writable: true, user: false, executable: true };

/// What pinning one page found.
enum PinStop {
    Kill(KillReason),
    Exhausted,
}

impl<M: GuestMemory, P: FramePool> ShadowMmu<M, P> {
    /// Handles a guest page fault at `va` for `access` (decode the error
    /// code with [`Access::from_error_code`]).
    pub fn demand_fill(&mut self, va: u64, access: Access) -> FaultOutcome {
        let outcome = match self.fill_once(va, access) {
            Ok(outcome) => outcome,
            Err(Exhausted) => self.fill_after_clearing(va, access),
        };
        let outcome = match outcome {
            // A fill may have replaced a page of the pinned stack with a
            // leaf that allows less (a user read of a page the guest made
            // user-accessible behind our back maps it read-only; a 4 KiB
            // fill can take the place of a 2 MiB leaf around the stack):
            // the stack must stay writable, for traps from user mode land
            // on it with no chance to fault. Unless a leaf was replaced,
            // the root's record of its pins says there is nothing to do.
            FaultOutcome::Fixed => match self.repin() {
                Ok(()) => FaultOutcome::Fixed,
                Err(reason) => FaultOutcome::Kill(reason),
            },
            outcome => outcome,
        };
        match outcome {
            FaultOutcome::Fixed => {}
            FaultOutcome::Reflect => self.counters.reflects += 1,
            FaultOutcome::Kill(_) => self.counters.kills += 1,
        }
        outcome
    }

    /// The pool was dry even with every other root gone: clear the current
    /// root, fill again, and put the pinned stack back.
    fn fill_after_clearing(&mut self, va: u64, access: Access) -> FaultOutcome {
        self.counters.pressure_clears += 1;
        self.clear_root(self.current);
        let outcome = match self.fill_once(va, access) {
            Ok(outcome) => outcome,
            Err(Exhausted) => return FaultOutcome::Kill(KillReason::ShadowPoolExhausted),
        };
        match self.repin() {
            Ok(()) => outcome,
            Err(reason) => FaultOutcome::Kill(reason),
        }
    }

    /// One attempt at a fill in the current root.
    fn fill_once(&mut self, va: u64, access: Access) -> Result<FaultOutcome, Exhausted> {
        if !address::is_canonical(va) {
            return Ok(FaultOutcome::Kill(KillReason::NonCanonicalAddress));
        }
        if address::in_switcher(va) {
            return Ok(FaultOutcome::Kill(KillReason::SwitcherFault));
        }
        let Some(skeleton) = self.roots[self.current].skeleton else {
            return Err(Exhausted);
        };
        let page_va = va & !(PAGE_SIZE - 1);

        let mut prefetch_from = None;
        let (page, rights, writable, leaf_level) = if self.linear {
            if access.user || page_va >= self.limit {
                return Ok(FaultOutcome::Reflect);
            }
            // The pretend map is one kind of page throughout, so any 2 MiB
            // wholly inside guest memory may be one leaf: the guest's
            // early boot then faults a few times, not once per 4 KiB.
            let large_end = (va & !(LARGE_PAGE - 1)).checked_add(LARGE_PAGE);
            let whole = large_end.is_some_and(|end| end <= self.limit);
            (page_va, LINEAR_RIGHTS, true, if whole { Level::Pd } else { Level::Pt })
        } else {
            let Some(cr3) = self.roots[self.current].guest_cr3 else {
                return Ok(FaultOutcome::Reflect);
            };
            let mapping = match walk::walk(&self.memory, self.limit, cr3, va) {
                Ok(mapping) => mapping,
                Err(WalkStop::NotPresent) => return Ok(FaultOutcome::Reflect),
                Err(WalkStop::Kill(reason)) => return Ok(FaultOutcome::Kill(reason)),
            };
            if !mapping.rights.permit(access) {
                return Ok(FaultOutcome::Reflect);
            }
            if let Err(reason) = walk::mark_accessed(&mut self.memory, &mapping, access.write) {
                return Ok(FaultOutcome::Kill(reason));
            }
            // A leaf the guest marked accessed before any access was
            // mapped ahead of use, and likely its neighbours with it.
            if mapping.leaf_level == Level::Pt && mapping.leaf().value & ACCESSED != 0 {
                prefetch_from = Some(mapping);
            }
            // Writable only once the guest's dirty bit is honestly set.
            let writable = mapping.rights.writable && (access.write || mapping.leaf_dirty());
            (mapping.page, mapping.rights, writable, mapping.leaf_level)
        };

        if leaf_level != Level::Pt && self.large_leaf_fits(va) {
            // The 2 MiB piece of the guest's large page around `va`: one
            // leaf, the same rights throughout (they come from one walk).
            let large_va = va & !(LARGE_PAGE - 1);
            let large_page = page & !(LARGE_PAGE - 1);
            let leaf = self.shadow_leaf_value(large_page, rights, writable) | HUGE;
            if self.install_large_leaf(skeleton.pml4, large_va, leaf)? {
                self.count_fill();
                self.counters.large_fills += 1;
                return Ok(FaultOutcome::Fixed);
            }
        }
        let leaf = self.shadow_leaf_value(page, rights, writable);
        let table = self.install_leaf(skeleton.pml4, page_va, leaf)?;
        self.count_fill();
        if let Some(mapping) = prefetch_from {
            self.prefetch_neighbours(table, &mapping);
        }
        Ok(FaultOutcome::Fixed)
    }

    /// Fills the shadow page table `table` ahead of faults with the
    /// neighbours of the 4 KiB page `mapping` just filled there: those of
    /// the aligned block of [`PREFETCH_PAGES`] around it that the guest's
    /// page table holds present and accessed, and the shadow does not hold
    /// yet. A guest kernel that maps a program's pages ahead of use (as
    /// Linux's fault-around does) marks them accessed, as it marks the
    /// page it faulted in: each would otherwise cost a fault of its own.
    ///
    /// Each entry is checked as a walk would check it, and only empty
    /// shadow slots are written, so nothing the guest could not have had
    /// by faulting is mapped, and no leaf is replaced. The rights above
    /// the page table are the fault's walk's, the same for the whole
    /// table; a neighbour is writable only once its dirty bit is set.
    fn prefetch_neighbours(&mut self, table: u64, mapping: &GuestMapping) {
        let leaf = mapping.leaf();
        let guest_table = leaf.gpa & !(PAGE_SIZE - 1);
        let filled = ((leaf.gpa & (PAGE_SIZE - 1)) / 8) as usize;
        let above =
            mapping.steps[..mapping.depth - 1].iter().fold(Rights::ALL, |r, step| r.below(step.value));
        let block = filled & !(PREFETCH_PAGES - 1);
        for index in (block..block + PREFETCH_PAGES).filter(|&i| i != filled) {
            if self.pool.read_entry(table, index) & PRESENT != 0 {
                continue;
            }
            let Some(pte) = self.memory.read_u64(guest_table + 8 * index as u64) else { continue };
            let wanted = PRESENT | ACCESSED;
            if pte & wanted != wanted || pte & entry::reserved_bits(Level::Pt, pte) != 0 {
                continue;
            }
            let frame = entry::target(Level::Pt, pte);
            if frame.checked_add(PAGE_SIZE).is_none_or(|end| end > self.limit) {
                continue;
            }
            let rights = above.below(pte);
            let writable = rights.writable && pte & DIRTY != 0;
            let value = self.shadow_leaf_value(frame, rights, writable);
            self.pool.write_entry(table, index, value);
            self.counters.prefetches += 1;
        }
    }

    fn count_fill(&mut self) {
        if self.linear {
            self.counters.linear_fills += 1;
        } else {
            self.counters.fills += 1;
        }
    }

    /// Whether the 2 MiB around `va` may be one shadow leaf: the host
    /// backs guest memory with 2 MiB pages of its own, and the 2 MiB lies
    /// wholly on one side of the kernel boundary (which roots share it
    /// must not depend on the byte). The guest's large page lies inside
    /// guest memory: the walk checked all of it.
    fn large_leaf_fits(&self, va: u64) -> bool {
        let start = address::flat(va) & !(LARGE_PAGE - 1);
        let one_side = start >= self.kernel_flat || start + LARGE_PAGE <= self.kernel_flat;
        self.memory.host_large_pages() && one_side
    }

    /// The shadow PTE for guest page `page` with `rights`. The guest's
    /// caching bits are dropped (guest memory is ordinary write-back RAM to
    /// the host, and a second memory type for the same frame would be an
    /// alias the CPU forbids), and so is its global bit. Accessed and dirty
    /// are set in the shadow up front: the CPU need not write them there,
    /// since the guest's own copies are what the guest reads.
    pub(crate) fn shadow_leaf_value(&self, page: u64, rights: Rights, writable: bool) -> u64 {
        let mut leaf = self.memory.guest_to_host(page) | PRESENT | ACCESSED;
        if writable {
            leaf |= WRITABLE | DIRTY;
        }
        if rights.user {
            leaf |= USER;
        }
        if !rights.executable {
            leaf |= NO_EXECUTE;
        }
        leaf
    }

    /// Makes sure every page of `start..start + len` is mapped in the
    /// current root (writable if `writable`), faulting each one in as a
    /// guest-kernel access. Kills if a page cannot be.
    pub fn pin_range(&mut self, start: u64, len: u64, writable: bool) -> Result<(), KillReason> {
        let (first, pages) = self.check_pin_range(start, len)?;
        self.pin_pages(first, pages, writable).inspect_err(|_| self.counters.kills += 1)
    }

    /// Records the guest kernel stack and pins it. The MMU pins it again
    /// after anything that may have dropped it from the current root: a
    /// switch of tables, a flush, an invalidation, a clear under pressure.
    pub fn set_kernel_stack(&mut self, start: u64, len: u64) -> Result<(), KillReason> {
        let range = self.check_pin_range(start, len);
        let (first, pages) = range.inspect_err(|_| self.counters.kills += 1)?;
        self.pinned = (pages > 0).then_some((first, pages));
        self.repin().inspect_err(|_| self.counters.kills += 1)
    }

    /// Switches to the tables at `cr3` (as [`ShadowMmu::new_pagetable`])
    /// with a new kernel stack (as [`ShadowMmu::set_kernel_stack`]): the
    /// new stack is the only one pinned, in the new root.
    pub fn switch_context(&mut self, cr3: u64, start: u64, len: u64) -> Result<(), KillReason> {
        let range = self.check_pin_range(start, len);
        let (first, pages) = range.inspect_err(|_| self.counters.kills += 1)?;
        self.pinned = (pages > 0).then_some((first, pages));
        self.new_pagetable(cr3)
    }

    /// First page and page count of a range to pin, if it is acceptable.
    fn check_pin_range(&self, start: u64, len: u64) -> Result<(u64, u64), KillReason> {
        if len == 0 {
            return Ok((start & !(PAGE_SIZE - 1), 0));
        }
        let first = start & !(PAGE_SIZE - 1);
        let pages = (start - first).checked_add(len).map(|span| span.div_ceil(PAGE_SIZE));
        let Some(pages) = pages.filter(|&pages| pages <= MAX_PINNED_PAGES) else {
            return Err(KillReason::PinRangeTooLarge);
        };
        // Every context switch of the guest asks this, so it looks at the
        // two ends only, which is enough: the range is contiguous. Up from
        // a canonical first page, a lower-half range turns non-canonical
        // past the half's end, and an upper-half one reaches the switcher
        // (the top of the address space) before anything else.
        // Wrapping only where `first` is in the switcher, refused below
        // before `last` is looked at.
        let last = first.wrapping_add((pages - 1) * PAGE_SIZE);
        if !address::is_canonical(first) {
            return Err(KillReason::NonCanonicalAddress);
        }
        if address::in_switcher(first) {
            return Err(KillReason::SwitcherPin);
        }
        if first < address::KERNEL_HALF_START {
            if last >= address::LOWER_HALF_END {
                return Err(KillReason::NonCanonicalAddress);
            }
        } else if last >= address::SWITCHER_BASE {
            return Err(KillReason::SwitcherPin);
        }
        Ok((first, pages))
    }

    /// Pins the remembered kernel stack again, if there is one. A root
    /// that was found holding it, with no leaf removed or replaced
    /// anywhere since, still holds it: every context switch of the guest
    /// comes here, and the check would find nothing to do.
    #[inline]
    pub(crate) fn repin(&mut self) -> Result<(), KillReason> {
        match self.pinned {
            Some((first, pages))
                if self.roots[self.current].pins_checked != Some((first, pages, self.leaf_epoch)) =>
            {
                self.pin_again(first, pages)
            }
            _ => Ok(()),
        }
    }

    /// The rare half of [`Self::repin`], apart so that the common half
    /// stays a few instructions where it is inlined.
    #[inline(never)]
    fn pin_again(&mut self, first: u64, pages: u64) -> Result<(), KillReason> {
        self.pin_pages(first, pages, true)?;
        self.roots[self.current].pins_checked = Some((first, pages, self.leaf_epoch));
        Ok(())
    }

    /// Pins pages, clearing the current root once if the pool runs dry.
    fn pin_pages(&mut self, first: u64, pages: u64, writable: bool) -> Result<(), KillReason> {
        for attempt in 0..2 {
            match self.try_pin_pages(first, pages, writable) {
                Ok(()) => return Ok(()),
                Err(PinStop::Kill(reason)) => return Err(reason),
                Err(PinStop::Exhausted) if attempt == 0 => {
                    self.counters.pressure_clears += 1;
                    self.clear_root(self.current);
                }
                Err(PinStop::Exhausted) => {}
            }
        }
        Err(KillReason::ShadowPoolExhausted)
    }

    fn try_pin_pages(&mut self, first: u64, pages: u64, writable: bool) -> Result<(), PinStop> {
        let access = if writable { Access::KERNEL_WRITE } else { Access::KERNEL_READ };
        for i in 0..pages {
            let va = first + i * PAGE_SIZE;
            let already = self.shadow_entry(va).is_some_and(|leaf| !writable || leaf & WRITABLE != 0);
            if already {
                continue;
            }
            match self.fill_once(va, access) {
                Ok(FaultOutcome::Fixed) => self.counters.pins += 1,
                Ok(FaultOutcome::Reflect) => return Err(PinStop::Kill(KillReason::PinNotMapped)),
                Ok(FaultOutcome::Kill(reason)) => return Err(PinStop::Kill(reason)),
                Err(Exhausted) => return Err(PinStop::Exhausted),
            }
        }
        Ok(())
    }
}
