//! # umbra-abi: what a guest and Umbra agree on
//!
//! A guest kernel and Umbra meet at a few fixed points: the hypercalls and
//! their limits, the page they share, the block the guest finds at its
//! start, the selectors it runs with, the vectors it may and may not
//! claim, the addresses of the switcher it can see but never own, and the
//! exit statuses that end every run. This crate holds those and nothing
//! else, so a guest author needs only it, and the host (hv-core, the
//! firmware) compiles the very same words: the two cannot drift apart.
//! `docs/abi.md` explains each piece; this crate is the truth.
//!
//! It is the leaf of the workspace: it depends on nothing, and every other
//! crate may depend on it (`docs/design.md` has the map).
//!
//! - the crate root: the calls, the shared page, the boot information, the
//!   ELF note that names a guest's entry, selectors and vectors, the
//!   switcher region;
//! - [`status`]: the exit statuses, `umbra: exit status N`;
//! - `rng` (feature `rng`): the seeded generator the fuzzers and probes
//!   draw from; with feature `fuzz`, the host fuzzers' driver too;
//! - `acpi` (feature `acpi`): powering off the ACPI way, the logic alone,
//!   which Umbra and the guest's native backend share;
//! - [`clock`]: measuring the TSC's rate against another timer;
//! - [`tables`]: finding a page table's present entries quickly, for the
//!   shadow MMU and the guest kernel alike.
//!
//! ## Making a call
//! The guest kernel, at ring 1, puts the call number in `rax` and up to
//! five arguments in `rdi, rsi, rdx, r10, r8`, then executes `ud2`. The
//! resulting invalid-opcode exception is the trap into Umbra: an exception
//! frame records the ring it came from, so a `ud2` from guest user mode
//! (ring 3) is never taken for a hypercall. Umbra steps over the 2-byte
//! `ud2` and puts the result in `rax`. (`int n` below ring 3 kills the VM
//! on some nested KVMs; `syscall` would not tell ring 1 from ring 3.)
//!
//! ## Starting
//! The guest starts at its ELF entry in 64-bit mode at ring 1, in linear
//! mode (virtual = guest-physical), interrupts enabled, with `rdi` and
//! `rsp` both holding the guest-physical address of a [`BootInfo`] at the
//! top page of its memory; the stack grows down from there. Its first
//! call must be [`INIT`], naming its [`SharedPage`].
#![no_std]
#![forbid(unsafe_code)]

#[cfg(any(feature = "fuzz", test))]
extern crate std;

#[cfg(feature = "acpi")]
pub mod acpi;
pub mod clock;
#[cfg(feature = "rng")]
pub mod rng;
pub mod status;
pub mod tables;

/// Bumped on any incompatible change.
pub const ABI_VERSION: u32 = 4;

/// Pages mapped ahead come in aligned blocks of this many last-level
/// entries (256 KiB): the guest kernel maps a program's pages around a
/// fault in such a block, marked accessed, and Umbra's fill of a page
/// marked so looks at the rest of its block (docs/abi.md, SET_PTE's
/// section).
pub const MAP_AHEAD_BLOCK_PAGES: usize = 64;

/// The hypercall instruction, `ud2`, and its length.
pub const HYPERCALL_INSTRUCTION: [u8; 2] = [0x0f, 0x0b];

/// INIT(shared_page): register the [`SharedPage`] (page-aligned guest
/// virtual address). Must be the first call, and only once.
pub const INIT: u64 = 0;
/// SHUTDOWN(status, message, message_len): stop the guest; `status`
/// (0-99) becomes the firmware's exit status.
pub const SHUTDOWN: u64 = 1;
/// CONSOLE_WRITE(buffer, len): print `len` bytes (at most
/// [`CONSOLE_WRITE_MAX`]); returns the count written.
pub const CONSOLE_WRITE: u64 = 2;
/// NEW_PGTABLE(cr3): switch to the page tables rooted at guest-physical `cr3`.
pub const NEW_PGTABLE: u64 = 3;
/// SET_PTE(cr3, va, pte): the guest wrote `pte` as the last-level entry
/// for `va` in the tables rooted at `cr3`.
pub const SET_PTE: u64 = 4;
/// SET_PMD(cr3, va): the page-directory entry covering `va` changed.
pub const SET_PMD: u64 = 5;
/// SET_PUD(cr3, va): the PDPT entry covering `va` changed.
pub const SET_PUD: u64 = 6;
/// SET_PGD(cr3, va): the PML4 entry covering `va` changed.
pub const SET_PGD: u64 = 7;
/// FLUSH_TLB(all): drop shadow mappings: the user half (`all` = 0), or
/// everything (`all` = 1).
pub const FLUSH_TLB: u64 = 8;
/// FLUSH_ASYNC(): nothing but a chance for Umbra to drain the async ring.
pub const FLUSH_ASYNC: u64 = 9;
/// LOAD_IDT_ENTRY(vector, handler, flags): the guest's handler for
/// `vector`, a kernel-half address; `flags` from the `IDT_*` constants.
pub const LOAD_IDT_ENTRY: u64 = 10;
/// SET_STACK(top, len): the kernel stack for traps from guest user mode:
/// `len` bytes (a page multiple, at most [`KERNEL_STACK_MAX`]) below `top`,
/// kept mapped by Umbra.
pub const SET_STACK: u64 = 11;
/// SET_CLOCKEVENT(delta_ns): raise guest IRQ 0 once, after `delta_ns`
/// (0 cancels).
pub const SET_CLOCKEVENT: u64 = 12;
/// HALT(): turn the virtual interrupt flag on and sleep until an interrupt
/// is pending, as one step (`sti; hlt`): check for work with the flag off,
/// then HALT, and no interrupt raised in between is lost. Nothing armed
/// and nothing pending would mean sleeping for ever: that kills, except
/// for the guest that owns the console, which console input wakes.
pub const HALT: u64 = 13;
/// SEND_INTERRUPTS(): deliver whatever is pending.
pub const SEND_INTERRUPTS: u64 = 14;
/// SET_FS_BASE(base): the FS segment base the guest runs with from now
/// on (thread-local storage: `%fs:0`), at ring 1 and ring 3 alike. Umbra
/// keeps it with the guest's registers and puts it into IA32_FS_BASE
/// before entering the guest wherever it may differ. A non-canonical base
/// kills the guest.
pub const SET_FS_BASE: u64 = 15;
/// SWITCH_CONTEXT(cr3, top, len): NEW_PGTABLE(cr3) and SET_STACK(top,
/// len) in one call, checked as each would be: a context switch of the
/// guest's processes, one exit where the two calls take two. Only the new
/// stack is pinned, in the new address space.
pub const SWITCH_CONTEXT: u64 = 16;
/// SET_SYSCALL_ENTRY(handler): where `syscall` from guest user mode
/// enters the guest kernel, at ring 1, on the stack SET_STACK named,
/// with no exit to Umbra (a kernel-half address, as LOAD_IDT_ENTRY's
/// handlers); 0 turns the direct path off, and `syscall` raises #UD
/// again. `docs/abi.md` has the frame.
pub const SET_SYSCALL_ENTRY: u64 = 17;
/// One past the last call number.
pub const CALL_COUNT: u64 = 18;

/// Names for statistics and messages.
pub fn call_name(number: u64) -> &'static str {
    match number {
        INIT => "INIT",
        SHUTDOWN => "SHUTDOWN",
        CONSOLE_WRITE => "CONSOLE_WRITE",
        NEW_PGTABLE => "NEW_PGTABLE",
        SET_PTE => "SET_PTE",
        SET_PMD => "SET_PMD",
        SET_PUD => "SET_PUD",
        SET_PGD => "SET_PGD",
        FLUSH_TLB => "FLUSH_TLB",
        FLUSH_ASYNC => "FLUSH_ASYNC",
        LOAD_IDT_ENTRY => "LOAD_IDT_ENTRY",
        SET_STACK => "SET_STACK",
        SET_CLOCKEVENT => "SET_CLOCKEVENT",
        HALT => "HALT",
        SEND_INTERRUPTS => "SEND_INTERRUPTS",
        SET_FS_BASE => "SET_FS_BASE",
        SWITCH_CONTEXT => "SWITCH_CONTEXT",
        SET_SYSCALL_ENTRY => "SET_SYSCALL_ENTRY",
        _ => "unknown",
    }
}

/// Results in `rax`: 0 or a count for success, these for refusals that
/// do not kill (most bad arguments kill instead).
pub const RESULT_OK: u64 = 0;
/// The call exists but is not implemented yet.
pub const RESULT_UNSUPPORTED: u64 = u64::MAX;

/// The most CONSOLE_WRITE prints in one call.
pub const CONSOLE_WRITE_MAX: u64 = 4096;
/// The most SHUTDOWN's message may hold.
pub const SHUTDOWN_MESSAGE_MAX: u64 = 256;
/// Statuses a guest may exit with; 100 and up are Umbra's own
/// ([`status::FIRST_RESERVED`]).
pub const GUEST_STATUS_MAX: u64 = 99;

/// Selectors the guest runs with: a slot of the GDT Umbra gives it, and
/// the ring (RPL) it runs at there.
pub const GUEST_KERNEL_CS: u16 = selector(3, 1);
pub const GUEST_KERNEL_SS: u16 = selector(4, 1);
pub const GUEST_USER_SS: u16 = selector(5, 3);
pub const GUEST_USER_CS: u16 = selector(6, 3);

/// The selector of GDT slot `slot` at ring `rpl`.
const fn selector(slot: u16, rpl: u16) -> u16 {
    slot << 3 | rpl
}

/// LOAD_IDT_ENTRY's flags. Every handler runs at ring 1, in the guest
/// kernel: there is no way to name any other target.
pub const IDT_PRESENT: u64 = 1 << 0;
/// A trap gate: delivery leaves the virtual interrupt flag alone. Without
/// it the entry is an interrupt gate, and delivery clears the flag.
pub const IDT_TRAP_GATE: u64 = 1 << 1;
/// Guest user code may raise this vector itself (`int n`): the system-call
/// vector, and `int3`/`into` (3, 4). Never other exception vectors.
pub const IDT_USER: u64 = 1 << 2;
/// Every flag LOAD_IDT_ENTRY knows; any other bit set kills the guest.
pub const IDT_FLAGS: u64 = IDT_PRESENT | IDT_TRAP_GATE | IDT_USER;

/// The vectors the host keeps for itself on every CPU: its timer (0xef),
/// the local APIC's spurious (0xff) and error interrupts, the legacy
/// PICs' (moved here and masked), and the IPIs several CPUs will use. The
/// real IDT always routes them to the host, so a guest may not make one
/// a direct gate: LOAD_IDT_ENTRY with [`IDT_USER`] on one of them kills
/// the guest. A plain entry there is the guest's own virtual vector, and
/// only ever receives what Umbra delivers to it.
pub const HOST_VECTORS: core::ops::RangeInclusive<u8> = 0xe0..=0xff;

/// Does the host own `vector`?
pub const fn is_host_vector(vector: u8) -> bool {
    vector >= *HOST_VECTORS.start()
}

/// Guest interrupt n arrives at vector `IRQ_BASE + n`; the clock is IRQ 0.
pub const IRQ_BASE: u64 = 32;
pub const CLOCK_IRQ: u64 = 0;
/// Console input arrived in the shared page's input ring (the guest that
/// owns the console only): IRQ 4, COM1's on a PC.
pub const CONSOLE_IRQ: u64 = 4;

/// Bytes in the shared page's console input ring.
pub const CONSOLE_INPUT_SIZE: usize = 256;

/// SET_STACK's largest stack, which Umbra keeps mapped.
pub const KERNEL_STACK_MAX: u64 = 16 * 1024;
/// SET_CLOCKEVENT's longest delay; longer ones are cut to it.
pub const CLOCK_DELTA_MAX_NS: u64 = 3_600 * 1_000_000_000;

/// Slots in the async ring.
pub const ASYNC_SLOTS: usize = 64;

/// One queued call. The guest fills `number` and `args`, then sets
/// `ready` to 1; Umbra runs it, then sets `ready` back to 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncCall {
    pub ready: u64,
    pub number: u64,
    pub args: [u64; 5],
}

/// The page the guest registers with INIT. Both sides write it, so Umbra
/// reads every field as untrusted and keeps its own copy of anything it
/// relies on (the ring position, the kernel boundary once set).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SharedPage {
    /// Written by Umbra at INIT.
    pub abi_version: u32,
    /// The virtual interrupt flag: nonzero when the guest accepts interrupts.
    pub irq_enabled: u32,
    /// Interrupts waiting for delivery (bit n = vector n), set by Umbra.
    pub irq_pending: [u64; 4],
    /// The faulting address of the last page fault reflected to the guest.
    pub cr2: u64,
    /// Nanoseconds since boot, updated by Umbra before each entry.
    pub time_ns: u64,
    /// The TSC frequency, written by Umbra at INIT.
    pub tsc_khz: u64,
    /// Where the guest's kernel half starts. Read by Umbra at the first
    /// NEW_PGTABLE; later changes are ignored.
    pub kernel_boundary: u64,
    /// The address of the guest's `iretq` (for interrupts in its window).
    pub noirq_iret: u64,
    /// Umbra's view of how many async calls it has run (informational).
    pub async_completed: u64,
    /// Calls queued for Umbra, run in ring order before every
    /// synchronous call.
    pub async_ring: [AsyncCall; ASYNC_SLOTS],
    /// How many times this guest has left for Umbra (every trap,
    /// hypercall and interrupt exit), updated by Umbra before each entry.
    /// Informational: benchmarks read it to count exits per operation.
    pub exits: u64,
    /// Console input, for the guest that owns the console. Umbra appends
    /// bytes at `input[input_written % CONSOLE_INPUT_SIZE]` and then moves
    /// `input_written` on; the guest takes bytes from
    /// `input[input_read % CONSOLE_INPUT_SIZE]` and moves `input_read` on.
    /// Both count bytes since INIT and wrap at 2^32. Umbra writes only
    /// where the guest has read (`input_written - input_read` never
    /// exceeds the ring's size) and raises [`CONSOLE_IRQ`] when it adds.
    pub input_written: u32,
    pub input_read: u32,
    pub input: [u8; CONSOLE_INPUT_SIZE],
}

/// What the guest finds at `rdi` when it starts.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: u64,
    pub abi_version: u32,
    pub reserved: u32,
    /// Bytes of guest-physical memory, from 0.
    pub memory_size: u64,
    /// Guest-physical address and length of the guest's command line
    /// (not NUL-terminated).
    pub cmdline_addr: u64,
    pub cmdline_len: u64,
    /// Guest-physical address and length of the root filesystem, a cpio
    /// archive (newc, [`CPIO_NEWC_MAGIC`]) the VMM passed as a PVH module;
    /// both 0 when there is none. Umbra copies it page-aligned right after
    /// the guest's image: the guest's free memory starts after it.
    pub rootfs_addr: u64,
    pub rootfs_len: u64,
}

/// The first bytes of a cpio archive in the "newc" format: a PVH module
/// that starts with them is a root filesystem, not a guest kernel.
pub const CPIO_NEWC_MAGIC: &[u8; 6] = b"070701";

/// The first bytes of an ELF file: a PVH module that starts with them is a
/// guest kernel.
pub const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// The ELF note that names a guest's paravirtual entry, so one image can
/// also boot natively (its PVH note and `e_entry` name the native one).
/// The payload is the 64-bit entry address, little-endian.
pub const PV_ENTRY_NOTE_NAME: &[u8] = b"Umbra\0";
pub const PV_ENTRY_NOTE_TYPE: u32 = 1;

/// "UMBRABOO" in little-endian ASCII.
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"UMBRABOO");

const _: () = assert!(core::mem::size_of::<SharedPage>() <= 4096);
const _: () = assert!(core::mem::size_of::<AsyncCall>() == 56);

/// The switcher region: the top 4 MiB of every address space, the guest's
/// included, from here to the end. It belongs to Umbra: its code moves the
/// CPU between host and guest, and its pages hold this CPU's saved
/// registers and state. A guest may not map, announce, fault on, hand
/// Umbra a pointer into, or install a handler in any of it; each kills.
/// It may know where the pages are: it reads them, and its attack
/// probes aim at them.
pub const SWITCHER_BASE: u64 = 0xFFFF_FFFF_FFC0_0000;
/// The switcher's code, two pages from [`SWITCHER_BASE`]: the 256 exit
/// stubs, then the paths in and out. Mapped read-only and executable.
pub const SWITCHER_CODE: u64 = SWITCHER_BASE;
/// This CPU's registers page: the guest's registers are saved at its very
/// end at every exit. The guest may write it; Umbra reads nothing there
/// it has not just written itself.
pub const SWITCHER_REGS_PAGE: u64 = SWITCHER_BASE + 0x2000;
/// This CPU's state page: the host's saved state, the guest GDT and TSS.
/// Read-only for the guest; a write kills it.
pub const SWITCHER_STATE_PAGE: u64 = SWITCHER_BASE + 0x3000;
/// This CPU's IDT page: the 256 gates the guest runs under, each leading
/// to an exit stub. Read-only for the guest.
pub const SWITCHER_IDT_PAGE: u64 = SWITCHER_BASE + 0x4000;
/// The end of what is mapped: the rest of the region is mapped for nobody.
pub const SWITCHER_MAPPED_END: u64 = SWITCHER_BASE + 0x5000;
/// The region's second 2 MiB (the last page-directory slot): reserved,
/// never mapped.
pub const SWITCHER_RESERVED: u64 = SWITCHER_BASE + 0x20_0000;

// The region is the top 4 MiB: two 2 MiB page-directory slots, the last.
const _: () = assert!(SWITCHER_BASE.wrapping_add(4 << 20) == 0);
const _: () = assert!(SWITCHER_MAPPED_END <= SWITCHER_RESERVED);
