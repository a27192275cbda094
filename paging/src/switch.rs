//! Changing page tables, and mapping the switcher.
//!
//! The guest changes page tables on almost every context switch, so this
//! path must be quick when the new CR3 is one we shadowed recently: we keep
//! a small cache of roots keyed by guest CR3 and simply make the matching one
//! current. On a miss we take an empty slot or, failing that, the least
//! recently used root (lguest picked one at random). A reused root keeps its
//! kernel half, since the kernel half is the same in every guest address
//! space, and loses its user half, which belonged to another process.
//!
//! The guest's first switch also ends linear mode: everything built from
//! the fake 1:1 map is thrown away and the guest's real tables take over.
//!
//! Before the guest runs, the host installs its switcher into the current
//! root: the two page-directory entries covering the top 4 MiB, pointing at
//! that CPU's switcher page tables. A root remembers which CPU it was
//! prepared for, so running again on the same CPU costs nothing.

use crate::address::{self, SWITCHER_PD_SLOTS};
use crate::memory::{FramePool, GuestMemory};
use crate::outcome::KillReason;
use crate::shadow::{ROOT_CACHE_SIZE, RootSlot, ShadowMmu};

/// One host CPU's switcher: the two page-directory entries (host-physical
/// table address and flags) for `PD[510]` and `PD[511]` under `PML4[511]` ->
/// `PDPT[511]`. The host owns the tables they point to; the MMU never frees
/// or changes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitcherEntries(pub [u64; 2]);

impl<M: GuestMemory, P: FramePool> ShadowMmu<M, P> {
    /// The guest loads `cr3` (lguest's NEW_PGTABLE). Afterwards the current
    /// root shadows it.
    pub fn new_pagetable(&mut self, cr3: u64) -> Result<(), KillReason> {
        self.switch_to(cr3).inspect_err(|_| self.counters.kills += 1)
    }

    fn switch_to(&mut self, cr3: u64) -> Result<(), KillReason> {
        if !cr3.is_multiple_of(address::PAGE_SIZE) {
            return Err(KillReason::Cr3NotAligned);
        }
        if cr3 >= self.limit {
            return Err(KillReason::Cr3BeyondMemory);
        }

        if self.linear {
            // Nothing built so far came from real guest tables.
            self.release_every_root();
            self.linear = false;
            let skeleton = self.build_skeleton().ok_or(KillReason::ShadowPoolExhausted)?;
            self.roots[0] =
                RootSlot { skeleton: Some(skeleton), guest_cr3: Some(cr3), ..RootSlot::default() };
            self.current = 0;
            self.counters.root_misses += 1;
        } else if let Some(slot) = self.slot_for(cr3) {
            self.current = slot;
            self.counters.root_hits += 1;
        } else {
            self.counters.root_misses += 1;
            self.current = self.root_for_new_cr3(cr3);
        }
        self.touch(self.current);
        self.repin()
    }

    /// The slot shadowing `cr3`, if cached.
    pub(crate) fn slot_for(&self, cr3: u64) -> Option<usize> {
        self.roots.iter().position(|slot| slot.skeleton.is_some() && slot.guest_cr3 == Some(cr3))
    }

    /// A slot for a CR3 we have no root for: a fresh root in an empty slot
    /// if the pool allows, otherwise the least recently used root, reused.
    fn root_for_new_cr3(&mut self, cr3: u64) -> usize {
        if let Some(empty) = self.roots.iter().position(|slot| slot.skeleton.is_none())
            && let Some(skeleton) = self.build_skeleton()
        {
            self.roots[empty] =
                RootSlot { skeleton: Some(skeleton), guest_cr3: Some(cr3), ..RootSlot::default() };
            return empty;
        }
        // There is always at least the current root to reuse.
        let victim = (0..ROOT_CACHE_SIZE)
            .filter(|&i| self.roots[i].skeleton.is_some())
            .min_by_key(|&i| self.roots[i].last_used)
            .unwrap_or(self.current);
        self.clear_root_range(victim, 0, self.kernel_flat);
        self.roots[victim].guest_cr3 = Some(cr3);
        self.counters.evictions += 1;
        victim
    }

    /// Installs `cpu`'s switcher into the current root, unless the root was
    /// last prepared for that very CPU. Returns whether it wrote anything.
    pub fn prepare_switcher(&mut self, cpu: u32, entries: SwitcherEntries) -> bool {
        let slot = &mut self.roots[self.current];
        let Some(skeleton) = slot.skeleton else {
            return false;
        };
        if slot.prepared_cpu == Some(cpu) {
            self.counters.switcher_skips += 1;
            return false;
        }
        slot.prepared_cpu = Some(cpu);
        for (index, entry) in SWITCHER_PD_SLOTS.into_iter().zip(entries.0) {
            self.pool.write_entry(skeleton.top_pd, index, entry);
        }
        self.counters.switcher_installs += 1;
        true
    }

    /// Forgets which CPU every root was prepared for, so the next
    /// [`ShadowMmu::prepare_switcher`] writes the entries again (for a host
    /// that rebuilt its switcher tables).
    pub fn forget_switcher_preparations(&mut self) {
        for slot in &mut self.roots {
            slot.prepared_cpu = None;
        }
    }
}
