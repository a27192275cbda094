//! The shape of an x86_64 virtual address under 4-level paging.
//!
//! A virtual address has 48 meaningful bits, split into four 9-bit table
//! indices and a 12-bit page offset; bits 48..63 must copy bit 47, or the
//! address is *non-canonical* and no table can map it. Inside the crate we
//! often work with the "flat" form, the low 48 bits alone, because then the
//! whole address space is one ordered range `0..2^48` and the kernel half,
//! the switcher and every table entry's reach are plain intervals.

/// Size of a page, the unit every shadow mapping is made of.
pub const PAGE_SIZE: u64 = 4096;

/// Entries in one table at any level.
pub const ENTRIES_PER_TABLE: usize = 512;

/// One past the highest flat address.
pub(crate) const FLAT_END: u64 = 1 << 48;

/// Where the upper (kernel) half of the canonical address space begins, and
/// the default boundary of the guest's kernel half until it declares its own.
pub const KERNEL_HALF_START: u64 = 0xFFFF_8000_0000_0000;

/// One past the lower half's last canonical address.
pub(crate) const LOWER_HALF_END: u64 = 1 << 47;

/// The switcher region: the top 4 MiB of every address space, reached
/// through `PML4[511] -> PDPT[511] -> PD[510..=511]`. It belongs to the host;
/// the guest may never map, update, fault on or pin anything in it. Where
/// it starts is the ABI's to say.
pub use umbra_abi::SWITCHER_BASE;

/// The switcher region's start in flat form.
pub(crate) const SWITCHER_FLAT: u64 = SWITCHER_BASE & (FLAT_END - 1);

/// The two page-directory slots that hold the switcher's page tables.
pub(crate) const SWITCHER_PD_SLOTS: [usize; 2] = [510, 511];

// The region is exactly those two slots' reach, under the last PML4 and
// PDPT entries, to the top of the address space.
const _: () = assert!(Level::Pml4.index(SWITCHER_BASE) == 511 && Level::Pdpt.index(SWITCHER_BASE) == 511);
const _: () = assert!(Level::Pd.index(SWITCHER_BASE) == SWITCHER_PD_SLOTS[0] && SWITCHER_PD_SLOTS[1] == 511);
const _: () = assert!(SWITCHER_BASE.is_multiple_of(1 << 21));

/// True when bits 48..63 of `va` all equal bit 47.
pub const fn is_canonical(va: u64) -> bool {
    let upper = va >> 47;
    upper == 0 || upper == 0x1_FFFF
}

/// The low 48 bits of a canonical address.
pub(crate) const fn flat(va: u64) -> u64 {
    va & (FLAT_END - 1)
}

/// Turns a flat address back into its canonical form.
pub(crate) const fn canonical(flat_va: u64) -> u64 {
    if flat_va & (1 << 47) != 0 { flat_va | !(FLAT_END - 1) } else { flat_va }
}

/// True when a (canonical) address falls in the switcher region.
pub(crate) const fn in_switcher(va: u64) -> bool {
    flat(va) >= SWITCHER_FLAT
}

/// The four levels of an x86_64 page-table walk, outermost first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// The root table, indexed by bits 39..47.
    Pml4,
    /// Page-directory-pointer table, bits 30..38; may map a 1 GiB page.
    Pdpt,
    /// Page directory, bits 21..29; may map a 2 MiB page.
    Pd,
    /// Page table, bits 12..20; maps 4 KiB pages.
    Pt,
}

impl Level {
    /// All levels, in the order a walk meets them.
    pub const WALK_ORDER: [Level; 4] = [Level::Pml4, Level::Pdpt, Level::Pd, Level::Pt];

    /// The lowest address bit this level's index uses.
    pub const fn shift(self) -> u32 {
        match self {
            Level::Pml4 => 39,
            Level::Pdpt => 30,
            Level::Pd => 21,
            Level::Pt => 12,
        }
    }

    /// How much address space one entry at this level reaches.
    pub const fn span(self) -> u64 {
        1 << self.shift()
    }

    /// This level's index for `va`.
    pub const fn index(self, va: u64) -> usize {
        ((va >> self.shift()) & 0x1FF) as usize
    }

    /// The level below, or `None` under a page table.
    pub const fn next(self) -> Option<Level> {
        match self {
            Level::Pml4 => Some(Level::Pdpt),
            Level::Pdpt => Some(Level::Pd),
            Level::Pd => Some(Level::Pt),
            Level::Pt => None,
        }
    }

    /// A short name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Level::Pml4 => "PML4E",
            Level::Pdpt => "PDPTE",
            Level::Pd => "PDE",
            Level::Pt => "PTE",
        }
    }
}

impl core::fmt::Display for Level {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}
