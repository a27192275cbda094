//! Counters: what the shadow MMU has been doing.
//!
//! The hypervisor prints these and the benchmarks read them. They cost an
//! add each, so they are always on.

/// Running totals since the MMU was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Faults fixed by filling the shadow from the guest's tables.
    pub fills: u64,
    /// Faults fixed from the fake 1:1 map of linear mode.
    pub linear_fills: u64,
    /// Of `fills`, those that mapped 2 MiB of a guest large page at once.
    pub large_fills: u64,
    /// Faults handed back to the guest.
    pub reflects: u64,
    /// Operations that ended in a kill.
    pub kills: u64,
    /// Shadow entries filled at once from an announced PTE.
    pub prefills: u64,
    /// Shadow entries filled ahead of a fault, next to a page filled for
    /// one: the guest had mapped them ahead and marked them accessed.
    pub prefetches: u64,
    /// Cached roots given up: reused for another CR3, or freed under
    /// memory pressure.
    pub evictions: u64,
    /// `new_pagetable` calls that found their root cached.
    pub root_hits: u64,
    /// `new_pagetable` calls that had to build or reuse a root.
    pub root_misses: u64,
    /// Times the pool ran dry and the MMU had to release shadows.
    pub pressure_events: u64,
    /// Times the current root was cleared to make room.
    pub pressure_clears: u64,
    /// Pages faulted in by pinning.
    pub pins: u64,
    /// Flushes of one root's user half.
    pub user_flushes: u64,
    /// Flushes of everything.
    pub full_flushes: u64,
    /// Switcher installs performed.
    pub switcher_installs: u64,
    /// Switcher installs skipped because the root was already prepared for
    /// that CPU.
    pub switcher_skips: u64,
    /// Shadow frames held now.
    pub frames_in_use: u64,
    /// The most shadow frames ever held at once.
    pub frames_peak: u64,
}
