//! Page-table entry bits, and which of them the guest may not set.
//!
//! Guest entries and shadow entries share the hardware format. The guest's
//! are read with suspicion: an entry with a reserved bit set would make the
//! real CPU raise a reserved-bit fault, and lguest's rule, which we keep, is
//! that a guest that writes such an entry is broken and is killed.

use crate::address::Level;

/// The entry is in use.
pub const PRESENT: u64 = 1 << 0;
/// Writes are allowed (at this level; all levels must agree).
pub const WRITABLE: u64 = 1 << 1;
/// Ring 3 may use it (at this level; all levels must agree).
pub const USER: u64 = 1 << 2;
/// Write-through caching.
pub const WRITE_THROUGH: u64 = 1 << 3;
/// Caching disabled.
pub const CACHE_DISABLE: u64 = 1 << 4;
/// Set by the CPU when the entry is used by a walk.
pub const ACCESSED: u64 = 1 << 5;
/// Set by the CPU in the leaf when the page is written.
pub const DIRTY: u64 = 1 << 6;
/// In a PDPTE or PDE: the entry maps a 1 GiB or 2 MiB page. Reserved in a
/// PML4E. (In a PTE this bit is PAT, which the shadow drops.)
pub const HUGE: u64 = 1 << 7;
/// Keep the translation across CR3 loads (leaf only). The shadow drops it:
/// every guest address space gets its own shadow root, so a global shadow
/// mapping could leak one address space's pages into another.
pub const GLOBAL: u64 = 1 << 8;
/// Instruction fetches are forbidden (EFER.NXE is assumed on).
pub const NO_EXECUTE: u64 = 1 << 63;

/// The physical-address field of a table entry or a 4 KiB leaf.
pub const ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// The physical-address width the guest is told it has. Address bits above
/// it, up to bit 51, are reserved in every entry.
pub const GUEST_PHYSICAL_ADDRESS_BITS: u32 = 46;

/// Bits GUEST_PHYSICAL_ADDRESS_BITS..=51.
const RESERVED_HIGH: u64 = ((1 << 52) - 1) & !((1 << GUEST_PHYSICAL_ADDRESS_BITS) - 1);

/// In a large-page leaf, the address bits between the PAT bit (12) and the
/// page's alignment must be zero.
const fn large_page_alignment_bits(level: Level) -> u64 {
    match level {
        Level::Pdpt => ((1 << 30) - 1) & !((1 << 13) - 1),
        Level::Pd => ((1 << 21) - 1) & !((1 << 13) - 1),
        _ => 0,
    }
}

/// The reserved bits of a present guest entry at `level`, given its own
/// value (a large-page leaf reserves more than a table pointer does).
pub const fn reserved_bits(level: Level, entry: u64) -> u64 {
    match level {
        Level::Pml4 => RESERVED_HIGH | HUGE,
        Level::Pdpt | Level::Pd if entry & HUGE != 0 => RESERVED_HIGH | large_page_alignment_bits(level),
        _ => RESERVED_HIGH,
    }
}

/// True when a present entry at `level` maps a page rather than a table.
pub const fn is_leaf(level: Level, entry: u64) -> bool {
    match level {
        Level::Pml4 => false,
        Level::Pdpt | Level::Pd => entry & HUGE != 0,
        Level::Pt => true,
    }
}

/// The guest-physical base of the page or table an entry points to.
pub const fn target(level: Level, entry: u64) -> u64 {
    if is_leaf(level, entry) { entry & ADDRESS_MASK & !(level.span() - 1) } else { entry & ADDRESS_MASK }
}
