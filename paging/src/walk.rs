//! Reading the guest's page tables the way the CPU would.
//!
//! Every service of the crate starts here: a fault, a translation, a
//! prefill. The walk goes from the guest's CR3 down to the entry that maps
//! the address, checking as it goes that each entry is sane and that it
//! never strays outside guest memory, and combining the permissions of every
//! level. It does not judge the access; callers do that with the combined
//! [`Rights`]. It writes nothing: setting accessed and dirty bits is a
//! separate step, taken only when an access really succeeds.

use crate::address::Level;
use crate::entry::{self, ACCESSED, DIRTY, PRESENT};
use crate::memory::GuestMemory;
use crate::outcome::{KillReason, Rights};

/// One entry the walk used: where it lives and what it held.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Step {
    pub gpa: u64,
    pub value: u64,
}

/// A successful walk: the guest maps the address, with these rights.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GuestMapping {
    /// The entries used, outermost first; `steps[..depth]` are valid.
    pub steps: [Step; 4],
    pub depth: usize,
    /// The level of the leaf (a PTE, or a large-page PDE or PDPTE).
    pub leaf_level: Level,
    /// Guest-physical address of the 4 KiB page holding the address.
    pub page: u64,
    pub rights: Rights,
}

impl GuestMapping {
    pub fn leaf(&self) -> Step {
        self.steps[self.depth - 1]
    }

    pub fn leaf_dirty(&self) -> bool {
        self.leaf().value & DIRTY != 0
    }
}

/// Why a walk stopped short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WalkStop {
    /// An entry on the way is not present: the guest's own page fault.
    NotPresent,
    /// The tables are broken.
    Kill(KillReason),
}

/// Walks the guest tables rooted at `cr3` for `va`. The caller has checked
/// that `va` is canonical and that `cr3` is an aligned address inside guest
/// memory.
pub(crate) fn walk<M: GuestMemory + ?Sized>(
    memory: &M,
    limit: u64,
    cr3: u64,
    va: u64,
) -> Result<GuestMapping, WalkStop> {
    let mut steps = [Step::default(); 4];
    let mut rights = Rights::ALL;
    let mut table = cr3;

    for (depth, level) in Level::WALK_ORDER.into_iter().enumerate() {
        let gpa = table + 8 * level.index(va) as u64;
        let value = memory.read_u64(gpa).ok_or(WalkStop::Kill(KillReason::GuestMemoryUnreadable))?;
        steps[depth] = Step { gpa, value };

        if value & PRESENT == 0 {
            return Err(WalkStop::NotPresent);
        }
        if value & entry::reserved_bits(level, value) != 0 {
            return Err(WalkStop::Kill(KillReason::ReservedBits(level)));
        }

        rights = rights.below(value);

        let target = entry::target(level, value);
        if entry::is_leaf(level, value) {
            // The whole page must be guest memory, not just the part the
            // fault touched: the shadow may later map any 4 KiB of it.
            let page_end = target.checked_add(level.span());
            if page_end.is_none_or(|end| end > limit) {
                return Err(WalkStop::Kill(KillReason::FrameBeyondMemory(level)));
            }
            let offset_in_page = va & (level.span() - 1) & !(crate::address::PAGE_SIZE - 1);
            return Ok(GuestMapping {
                steps,
                depth: depth + 1,
                leaf_level: level,
                page: target + offset_in_page,
                rights,
            });
        }
        if target >= limit {
            return Err(WalkStop::Kill(KillReason::TableBeyondMemory(level)));
        }
        table = target;
    }
    // A page-table entry is always a leaf, so the loop returns before here.
    Err(WalkStop::NotPresent)
}

/// Marks a successful access in the guest's tables as the CPU would:
/// accessed in every entry used, dirty in the leaf if the access writes.
/// Bits already set are not written again.
pub(crate) fn mark_accessed<M: GuestMemory + ?Sized>(
    memory: &mut M,
    mapping: &GuestMapping,
    write: bool,
) -> Result<(), KillReason> {
    for (depth, step) in mapping.steps[..mapping.depth].iter().enumerate() {
        let is_leaf = depth + 1 == mapping.depth;
        let wanted = if is_leaf && write { ACCESSED | DIRTY } else { ACCESSED };
        if step.value & wanted != wanted {
            // A table may appear at two levels of one walk (a recursive
            // mapping); re-reading keeps the bits an earlier step set.
            let current = memory.read_u64(step.gpa).ok_or(KillReason::GuestMemoryUnreadable)?;
            if !memory.write_u64(step.gpa, current | wanted) {
                return Err(KillReason::GuestMemoryUnwritable);
            }
        }
    }
    Ok(())
}
