//! What an access asks for, and what the shadow MMU answers.
//!
//! A page fault is either ours to fix (the shadow was merely lazy), the
//! guest's to handle (its own tables say no), or proof that the guest is
//! broken. The last case carries a [`KillReason`] that names the cause, so
//! the hypervisor can print something better than "bad page table".

use crate::address::Level;
use crate::entry::{NO_EXECUTE, USER, WRITABLE};
use core::fmt;

/// The kind of access that faulted, or that the hypervisor wants to make on
/// the guest's behalf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Access {
    /// A write rather than a read.
    pub write: bool,
    /// Made from ring 3. The guest kernel runs at ring 1, which the CPU
    /// counts as supervisor, so its accesses have `user: false`.
    pub user: bool,
    /// An instruction fetch.
    pub fetch: bool,
}

impl Access {
    /// A guest-kernel read.
    pub const KERNEL_READ: Access = Access { write: false, user: false, fetch: false };
    /// A guest-kernel write.
    pub const KERNEL_WRITE: Access = Access { write: true, user: false, fetch: false };

    /// Decodes the write (bit 1), user (bit 2) and fetch (bit 4) bits of a
    /// page-fault error code.
    pub const fn from_error_code(code: u64) -> Access {
        Access { write: code & (1 << 1) != 0, user: code & (1 << 2) != 0, fetch: code & (1 << 4) != 0 }
    }

    /// The page-fault error code the guest should see for this access;
    /// `present` says whether a translation existed but forbade it.
    pub const fn error_code(self, present: bool) -> u64 {
        (present as u64) | (self.write as u64) << 1 | (self.user as u64) << 2 | (self.fetch as u64) << 4
    }
}

/// What a mapping allows, combined over every level of a walk the way the
/// CPU combines it: an access needs permission at *every* level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rights {
    /// R/W set at every level.
    pub writable: bool,
    /// U/S set at every level.
    pub user: bool,
    /// NX clear at every level.
    pub executable: bool,
}

impl Rights {
    /// Everything allowed; the starting point of a walk.
    pub const ALL: Rights = Rights { writable: true, user: true, executable: true };

    /// Whether these rights admit `access`. Supervisor accesses may touch
    /// user pages (we assume the guest runs without SMEP and SMAP) and obey
    /// R/W (we assume CR0.WP, as every modern kernel sets it).
    pub const fn permit(self, access: Access) -> bool {
        (!access.write || self.writable) && (!access.user || self.user) && (!access.fetch || self.executable)
    }

    /// What is left of these rights below a paging entry holding `entry`:
    /// each level can only take rights away.
    pub(crate) const fn below(self, entry: u64) -> Rights {
        Rights {
            writable: self.writable && entry & WRITABLE != 0,
            user: self.user && entry & USER != 0,
            executable: self.executable && entry & NO_EXECUTE == 0,
        }
    }
}

/// The answer to a guest page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// The shadow now maps the address for this access: resume the guest.
    Fixed,
    /// The guest's own tables forbid the access: deliver the page fault to
    /// the guest, with its original error code and address.
    Reflect,
    /// The guest broke the rules: stop it.
    Kill(KillReason),
}

/// Why a guest-virtual address could not be translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslateError {
    /// The guest's tables do not allow the access; had the guest made it
    /// itself, it would have taken a page fault with this error code.
    PageFault {
        /// Page-fault error code (present, write, user, fetch bits).
        error_code: u64,
    },
    /// The guest broke the rules.
    Kill(KillReason),
}

/// Why a guest must die. Each reason names one precise cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KillReason {
    /// An address whose bits 48..63 do not copy bit 47.
    NonCanonicalAddress,
    /// A page fault inside the switcher region.
    SwitcherFault,
    /// A page-table entry update announced for the switcher region.
    SwitcherPteUpdate,
    /// An invalidation of a table entry that lies wholly in the switcher
    /// region.
    SwitcherInvalidation,
    /// A request to pin pages of the switcher region.
    SwitcherPin,
    /// A request for the host to access the switcher region for the guest.
    SwitcherTranslate,
    /// A PML4 index of 512 or more.
    Pml4IndexOutOfRange,
    /// A CR3 value that is not 4 KiB aligned.
    Cr3NotAligned,
    /// A CR3 value at or beyond the end of guest memory.
    Cr3BeyondMemory,
    /// A present guest entry with reserved bits set.
    ReservedBits(Level),
    /// A guest table entry pointing to a table at or beyond the end of
    /// guest memory.
    TableBeyondMemory(Level),
    /// A guest leaf mapping a page (or part of a large page) at or beyond
    /// the end of guest memory.
    FrameBeyondMemory(Level),
    /// Guest memory refused a read inside its own limit.
    GuestMemoryUnreadable,
    /// Guest memory refused the write of an accessed or dirty bit.
    GuestMemoryUnwritable,
    /// A page to be pinned (the guest kernel stack) is not mapped, or not
    /// writable, in the guest's own tables.
    PinNotMapped,
    /// A pin request for more pages than the host keeps pinned.
    PinRangeTooLarge,
    /// A kernel-half boundary that is non-canonical or inside the switcher.
    BadKernelBoundary,
    /// The shadow frame pool could not supply a frame even after every
    /// shadow mapping was released: the host gave the pool fewer than
    /// [`crate::MIN_POOL_FRAMES`] frames, or shares it.
    ShadowPoolExhausted,
}

impl KillReason {
    /// A one-line description of the cause.
    pub const fn description(self) -> &'static str {
        use KillReason::*;
        match self {
            NonCanonicalAddress => "non-canonical address",
            SwitcherFault => "guest faulted in the switcher region",
            SwitcherPteUpdate => "guest set a page-table entry in the switcher region",
            SwitcherInvalidation => "guest invalidated a table entry of the switcher region",
            SwitcherPin => "guest asked to pin the switcher region",
            SwitcherTranslate => "guest asked the host to access the switcher region",
            Pml4IndexOutOfRange => "PML4 index out of range",
            Cr3NotAligned => "CR3 not page-aligned",
            Cr3BeyondMemory => "CR3 beyond guest memory",
            ReservedBits(Level::Pml4) => "reserved bits set in guest PML4E",
            ReservedBits(Level::Pdpt) => "reserved bits set in guest PDPTE",
            ReservedBits(Level::Pd) => "reserved bits set in guest PDE",
            ReservedBits(Level::Pt) => "reserved bits set in guest PTE",
            TableBeyondMemory(Level::Pml4) => {
                "guest page-table walk left guest memory (PML4E points beyond it)"
            }
            TableBeyondMemory(Level::Pdpt) => {
                "guest page-table walk left guest memory (PDPTE points beyond it)"
            }
            TableBeyondMemory(Level::Pd) => "guest page-table walk left guest memory (PDE points beyond it)",
            TableBeyondMemory(Level::Pt) => "guest page-table walk left guest memory",
            FrameBeyondMemory(Level::Pdpt) => "guest 1 GiB page extends beyond guest memory",
            FrameBeyondMemory(Level::Pd) => "guest 2 MiB page extends beyond guest memory",
            FrameBeyondMemory(_) => "guest PTE frame beyond guest memory",
            GuestMemoryUnreadable => "guest memory unreadable inside its limit",
            GuestMemoryUnwritable => "guest memory refused an accessed/dirty update",
            PinNotMapped => "guest kernel stack page not mapped writable by the guest",
            PinRangeTooLarge => "guest kernel stack larger than the pinned limit",
            BadKernelBoundary => "kernel-half boundary non-canonical or inside the switcher",
            ShadowPoolExhausted => "shadow frame pool exhausted even after releasing every shadow",
        }
    }
}

impl fmt::Display for KillReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// Why a [`crate::ShadowMmu`] could not be built. These are host
/// configuration mistakes, not guest misbehaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// The pool's capacity is below [`crate::MIN_POOL_FRAMES`].
    PoolTooSmall,
    /// The pool refused the first root's frames.
    PoolRefused,
    /// Guest memory's limit is zero or not a multiple of 4 KiB.
    LimitNotPageAligned,
    /// Guest memory's limit is beyond the guest's physical-address width.
    LimitTooLarge,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetupError::PoolTooSmall => "shadow frame pool below the minimum size",
            SetupError::PoolRefused => "shadow frame pool refused the first root",
            SetupError::LimitNotPageAligned => "guest memory size is zero or not page-aligned",
            SetupError::LimitTooLarge => "guest memory larger than the guest physical-address width",
        })
    }
}
