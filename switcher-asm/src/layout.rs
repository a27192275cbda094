//! # Where everything in the switcher region lives
//!
//! The top 4 MB of every address space, host and guest alike, belong to
//! the switcher. Only the first 2 MiB slot (PD[510]) is used:
//!
//! ```text
//! 0xFFFF_FFFF_FFC0_0000  code page 0: 256 exit stubs, 16 bytes each     RX   shared by all CPUs
//! 0xFFFF_FFFF_FFC0_1000  code page 1: switcher_enter, exit_common       RX
//! 0xFFFF_FFFF_FFC0_2000  registers page: GuestRegs at its very end      RW   this CPU's
//! 0xFFFF_FFFF_FFC0_3000  state page: host state, guest GDT and TSS      RW host, RO guest
//! 0xFFFF_FFFF_FFC0_4000  IDT page: the 256 gates the guest runs under   RW host, RO guest
//! 0xFFFF_FFFF_FFE0_0000  PD[511]: reserved, never mapped
//! ```
//!
//! Every CPU sees *its own* per-CPU pages at these same addresses: each
//! CPU has its own page-table page for the region (two, in fact: a host
//! view where the state is writable, and a guest view where it is not).
//! A guest running on CPU k can therefore reach only CPU k's pages, and
//! the switcher's code can use fixed addresses.
//!
//! The assembly in `switcher.s` receives every address and offset below as
//! a `const` operand, so Rust and the assembly cannot disagree; the
//! assertions here check the few facts the hardware imposes.
//!
//! The addresses a guest may know (the region's base and its pages) are
//! the ABI's, `umbra_abi::SWITCHER_*`, named here the layout's way; the
//! assertions below hold them to the layout (code pages first, then the
//! registers, state and IDT pages, one each).

use core::mem::{offset_of, size_of};

pub const PAGE_SIZE: u64 = 4096;
/// The top 4 MB.
pub use umbra_abi::SWITCHER_BASE;
/// Pages of switcher code, mapped first.
pub const CODE_PAGES: u64 = 2;
/// Bytes per exit stub; the stubs start the code.
pub const STUB_SIZE: u64 = 16;
/// Where `switcher_enter` starts, from the start of the code.
pub const ENTRY_OFFSET: u64 = PAGE_SIZE;
pub use umbra_abi::{
    SWITCHER_IDT_PAGE as IDT_PAGE, SWITCHER_REGS_PAGE as REGS_PAGE, SWITCHER_STATE_PAGE as STATE_PAGE,
};
/// Pages the region maps, code included.
pub const MAPPED_PAGES: u64 = CODE_PAGES + 3;

const _: () = assert!(umbra_abi::SWITCHER_CODE == SWITCHER_BASE);
const _: () = assert!(REGS_PAGE == SWITCHER_BASE + CODE_PAGES * PAGE_SIZE);
const _: () = assert!(STATE_PAGE == REGS_PAGE + PAGE_SIZE);
const _: () = assert!(IDT_PAGE == STATE_PAGE + PAGE_SIZE);
const _: () = assert!(umbra_abi::SWITCHER_MAPPED_END == SWITCHER_BASE + MAPPED_PAGES * PAGE_SIZE);
// Only the first 2 MiB slot (PD[510]) is used; the second is reserved.
const _: () = assert!(umbra_abi::SWITCHER_RESERVED == SWITCHER_BASE + (2 << 20));

/// Where the switcher's own code is entered from the host.
pub const ENTRY_VA: u64 = SWITCHER_BASE + ENTRY_OFFSET;

/// Where `syscall` from guest user mode lands (IA32_LSTAR): the direct
/// path into the guest kernel, in the second code page after the world
/// switch's two paths.
pub const SYSCALL_OFFSET: u64 = ENTRY_OFFSET + 0x400;
pub const SYSCALL_VA: u64 = SWITCHER_BASE + SYSCALL_OFFSET;
/// Where a `syscall` from compatibility mode would land (IA32_CSTAR):
/// no guest can reach that mode (every code segment it may use is
/// 64-bit), and were it to, the call would exit as the #UD it was before
/// EFER.SCE: the direct path's closed branch.
pub const SYSCALL_CLOSED_OFFSET: u64 = SYSCALL_OFFSET + 0x100;
pub const SYSCALL_CLOSED_VA: u64 = SWITCHER_BASE + SYSCALL_CLOSED_OFFSET;
/// The end of the direct path's code: an exit whose RIP lies in
/// `SYSCALL_VA..SYSCALL_END_VA` at ring 0 interrupted it (see hv-core).
pub const SYSCALL_END_OFFSET: u64 = SYSCALL_CLOSED_OFFSET + 0x100;
pub const SYSCALL_END_VA: u64 = SWITCHER_BASE + SYSCALL_END_OFFSET;

/// Whether `rip`, at ring 0, lies in the direct path's code.
pub const fn in_syscall_path(rip: u64) -> bool {
    rip >= SYSCALL_VA && rip < SYSCALL_END_VA
}

/// IA32_STAR: `syscall` loads CS 0x08 and SS 0x10, the switcher's ring-0
/// selectors (the direct path runs there, briefly); `sysret` would load
/// the guest's user selectors, 0x33 and 0x2b, but nothing here runs it.
pub const STAR: u64 = (SYSRET_SELECTOR_BASE as u64) << 48 | (SWITCHER_CS as u64) << 32;
const SYSRET_SELECTOR_BASE: u16 = umbra_abi::GUEST_USER_CS - 16;
/// IA32_FMASK: the flags `syscall` clears on the way to the direct path:
/// TF (no single-step trap at ring 0), IF (no interrupt before the stack
/// is the guest kernel's), DF and AC (nor the string or alignment
/// behaviour a user left), IOPL and NT.
pub const SYSCALL_FLAGS_MASK: u64 = 0x100 | 0x200 | 0x400 | 0x3000 | 0x4000 | 0x4_0000;
/// The flags the guest kernel's syscall handler starts with: interrupts
/// on (the real flag, which stays on at ring 1 so that the host keeps
/// its timer), nothing else but the always-one bit.
pub const SYSCALL_ENTRY_RFLAGS: u64 = 0x202;

// `sysret`'s selectors are the guest's user ones; `syscall`'s are the
// switcher's (STAR's SS is CS + 8 both ways).
const _: () = assert!((SYSRET_SELECTOR_BASE + 8) | 3 == umbra_abi::GUEST_USER_SS);
const _: () = assert!(SWITCHER_CS + 8 == SWITCHER_DS);

/// The guest's registers, as the exit path leaves them: the general
/// registers the stub pushes, the vector and error code, then the frame
/// the CPU pushed on the way in. It sits at the very end of the registers
/// page, so TSS.RSP0 (the page's end) makes the CPU push its frame
/// straight into place.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Offset of [`GuestRegs`] within the registers page.
pub const GUEST_REGS_OFFSET: u64 = PAGE_SIZE - size_of::<GuestRegs>() as u64;
pub const GUEST_REGS_VA: u64 = REGS_PAGE + GUEST_REGS_OFFSET;
/// The word just below [`GuestRegs`], where the direct `syscall` path
/// keeps the user's stack pointer while it builds the guest kernel's
/// frame: it is this CPU's, writable at ring 0, and no exit writes
/// there, so after an exit that interrupted the path the host finds it.
pub const SYSCALL_USER_RSP_OFFSET: u64 = GUEST_REGS_OFFSET - 8;
pub const SYSCALL_USER_RSP_VA: u64 = REGS_PAGE + SYSCALL_USER_RSP_OFFSET;
/// Where traps from the guest start pushing: TSS.RSP0, and the IST stack
/// for NMI, #DF and #MC (so even a trap in the switcher itself, whatever
/// RSP holds, lands in a known place).
pub const TRAP_STACK_TOP: u64 = REGS_PAGE + PAGE_SIZE;
/// Where the vector sits: the exit path's stack pointer after the stub.
pub const VECTOR_VA: u64 = GUEST_REGS_VA + offset_of!(GuestRegs, vector) as u64;

// The CPU pushes SS, RSP, RFLAGS, CS, RIP (and an error code) down from
// a 16-byte-aligned RSP0; the stub pushes the rest below them.
const _: () = assert!(TRAP_STACK_TOP.is_multiple_of(16));
const _: () = assert!(offset_of!(GuestRegs, ss) as u64 + 8 == size_of::<GuestRegs>() as u64);
const _: () = assert!(offset_of!(GuestRegs, rip) == offset_of!(GuestRegs, error_code) + 8);
const _: () = assert!(offset_of!(GuestRegs, vector) == 15 * 8);

/// `lgdt`/`lidt` operand: 2-byte limit then 8-byte base. The padding puts
/// the base on an 8-byte boundary; the instruction is pointed at `limit`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TablePointer {
    pub padding: [u16; 3],
    pub limit: u16,
    pub base: u64,
}

/// The 64-bit task-state segment. Only RSP0 and IST1 matter to Umbra.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Tss {
    pub reserved0: u32,
    pub rsp: [u64; 3],
    pub reserved1: u64,
    pub ist: [u64; 7],
    pub reserved2: u64,
    pub reserved3: u16,
    /// Beyond the TSS limit: no I/O permission bitmap, so every port is
    /// refused to the guest.
    pub iomap_base: u16,
}

const _: () = assert!(size_of::<Tss>() == 104);

/// Guest GDT slots. Accessed bits are pre-set in every descriptor: the
/// GDT is read-only while the guest runs, and the CPU would otherwise try
/// to set them.
pub const GDT_ENTRIES: usize = 9;
pub const SWITCHER_CS: u16 = 0x08;
pub const SWITCHER_DS: u16 = 0x10;
/// The TSS descriptor's slot (two entries) and selector.
pub const TSS_SLOT: usize = 7;
pub const TSS_SELECTOR: u16 = (TSS_SLOT * 8) as u16;

/// Flat 64-bit descriptors, accessed bit set: ring-0 code and data for
/// the switcher, ring-1 for the guest kernel, ring-3 for guest users.
pub const GDT_TEMPLATE: [u64; TSS_SLOT] = [
    0,
    0x00af_9b00_0000_ffff, // 0x08: ring-0 code
    0x00cf_9300_0000_ffff, // 0x10: ring-0 data
    0x00af_bb00_0000_ffff, // 0x18: ring-1 code (selector 0x19)
    0x00cf_b300_0000_ffff, // 0x20: ring-1 data (selector 0x21)
    0x00cf_f300_0000_ffff, // 0x28: ring-3 data (selector 0x2b)
    0x00af_fb00_0000_ffff, // 0x30: ring-3 code (selector 0x33)
];

/// Whether the descriptor `selector` names in [`GDT_TEMPLATE`] is code
/// (`code`) or data, at the ring the selector's RPL asks for.
const fn descriptor_fits(selector: u16, code: bool) -> bool {
    let descriptor = GDT_TEMPLATE[(selector >> 3) as usize];
    let dpl = (descriptor >> 45) & 3;
    let executable = descriptor & (1 << 43) != 0;
    dpl == (selector & 3) as u64 && executable == code
}

// The ABI's selectors name the guest's descriptors here, each at its ring.
const _: () = assert!(descriptor_fits(umbra_abi::GUEST_KERNEL_CS, true));
const _: () = assert!(descriptor_fits(umbra_abi::GUEST_KERNEL_SS, false));
const _: () = assert!(descriptor_fits(umbra_abi::GUEST_USER_CS, true));
const _: () = assert!(descriptor_fits(umbra_abi::GUEST_USER_SS, false));

/// The per-CPU state page. The host fills it; the switcher reads it on
/// both sides and writes only `host_rsp`, while still on the host's
/// tables, where the page is writable.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug)]
pub struct SwitcherState {
    /// The host's CR3, restored on every exit.
    pub host_cr3: u64,
    /// The host's stack at entry, saved by `switcher_enter`.
    pub host_rsp: u64,
    /// The shadow root the guest runs on.
    pub guest_cr3: u64,
    /// The host's TSS selector, and the address of its GDT descriptor:
    /// `ltr` marks a TSS busy, so the busy bit is cleared before reloading.
    pub host_tss_selector: u64,
    pub host_tss_descriptor: u64,
    pub host_gdt: TablePointer,
    pub host_idt: TablePointer,
    pub guest_gdt: TablePointer,
    pub guest_idt: TablePointer,
    pub gdt: [u64; GDT_ENTRIES],
    pub tss: Tss,
    /// The direct `syscall` path's stack: the guest kernel stack (as in
    /// TSS.RSP1) while the guest has a syscall entry and a kernel stack,
    /// else 0, which closes the path (`syscall` exits as a #UD).
    pub syscall_stack: u64,
    /// The guest kernel's syscall entry (SET_SYSCALL_ENTRY).
    pub syscall_entry: u64,
}

const _: () = assert!(size_of::<SwitcherState>() as u64 <= PAGE_SIZE);
const _: () = assert!(offset_of!(SwitcherState, gdt).is_multiple_of(8));

/// Offsets the assembly uses, as addresses in the switcher region.
pub const STATE_HOST_CR3: u64 = STATE_PAGE + offset_of!(SwitcherState, host_cr3) as u64;
pub const STATE_HOST_RSP: u64 = STATE_PAGE + offset_of!(SwitcherState, host_rsp) as u64;
pub const STATE_GUEST_CR3: u64 = STATE_PAGE + offset_of!(SwitcherState, guest_cr3) as u64;
pub const STATE_HOST_TSS_SELECTOR: u64 = STATE_PAGE + offset_of!(SwitcherState, host_tss_selector) as u64;
pub const STATE_HOST_TSS_DESCRIPTOR: u64 = STATE_PAGE + offset_of!(SwitcherState, host_tss_descriptor) as u64;
/// `lgdt`/`lidt` operands point at the limit, 6 bytes into the pointer.
pub const STATE_HOST_GDT: u64 = STATE_PAGE + offset_of!(SwitcherState, host_gdt) as u64 + 6;
pub const STATE_HOST_IDT: u64 = STATE_PAGE + offset_of!(SwitcherState, host_idt) as u64 + 6;
pub const STATE_GUEST_GDT: u64 = STATE_PAGE + offset_of!(SwitcherState, guest_gdt) as u64 + 6;
pub const STATE_GUEST_IDT: u64 = STATE_PAGE + offset_of!(SwitcherState, guest_idt) as u64 + 6;
/// The access byte of the guest TSS descriptor, whose busy bit is cleared
/// before each `ltr`.
pub const STATE_GUEST_TSS_ACCESS: u64 =
    STATE_PAGE + offset_of!(SwitcherState, gdt) as u64 + TSS_SLOT as u64 * 8 + 5;
pub const GUEST_GDT_VA: u64 = STATE_PAGE + offset_of!(SwitcherState, gdt) as u64;
pub const STATE_SYSCALL_STACK: u64 = STATE_PAGE + offset_of!(SwitcherState, syscall_stack) as u64;
pub const STATE_SYSCALL_ENTRY: u64 = STATE_PAGE + offset_of!(SwitcherState, syscall_entry) as u64;
pub const GUEST_TSS_VA: u64 = STATE_PAGE + offset_of!(SwitcherState, tss) as u64;

/// The exceptions that push an error code, one bit per vector (all are
/// below 32): #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX. The
/// switcher's stubs push a zero for every other vector, so every exit
/// looks the same; the assembly reads this very mask.
pub const ERROR_CODE_VECTORS: u32 =
    1 << 8 | 1 << 10 | 1 << 11 | 1 << 12 | 1 << 13 | 1 << 14 | 1 << 17 | 1 << 21 | 1 << 29 | 1 << 30;

/// Does the CPU push an error code for `vector`?
pub const fn has_error_code(vector: u8) -> bool {
    vector < 32 && ERROR_CODE_VECTORS & (1 << vector) != 0
}

/// RFLAGS as the host's code runs: only the always-one bit 1. DF clear
/// (the ABI every compiled function assumes), AC clear, IOPL 0, no trap
/// or nested-task flag, and interrupts off (the host turns them on only
/// around `hlt`). The exit path loads it before anything else.
pub const HOST_RFLAGS: u64 = 0x2;
/// The flags whose value the host's code depends on (TF, IF, DF, IOPL,
/// NT, RF, AC): the arithmetic ones change with every instruction, so a
/// check of the exit path looks at these.
pub const HOST_SYSTEM_FLAGS: u64 = 0x100 | 0x200 | 0x400 | 0x3000 | 0x4000 | 0x1_0000 | 0x4_0000;

/// One 16-byte interrupt gate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gate {
    pub offset_low: u16,
    pub selector: u16,
    pub ist: u8,
    pub type_attributes: u8,
    pub offset_middle: u16,
    pub offset_high: u32,
    pub reserved: u32,
}

const _: () = assert!(size_of::<Gate>() == 16);
const _: () = assert!(256 * size_of::<Gate>() as u64 == PAGE_SIZE);

/// Present, DPL 0, 64-bit interrupt gate: interrupts stay off on exit.
pub const INTERRUPT_GATE: u8 = 0x8e;

impl Gate {
    pub const fn interrupt(handler: u64, selector: u16, ist: u8) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector,
            ist,
            type_attributes: INTERRUPT_GATE,
            offset_middle: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }

    pub const fn handler(&self) -> u64 {
        self.offset_low as u64 | (self.offset_middle as u64) << 16 | (self.offset_high as u64) << 32
    }
}

/// The address of the exit stub for `vector`.
pub const fn stub_address(vector: u8) -> u64 {
    SWITCHER_BASE + vector as u64 * STUB_SIZE
}

/// The IDT the guest runs under: every vector exits to the host, on
/// IST1, the registers page's trap stack. From ring 1 or 3 that is where
/// TSS.RSP0 would put the frame anyway; what IST adds is the same place
/// for a trap taken at ring 0, whatever RSP holds: in the switcher (NMI,
/// #DF, #MC) or on the direct `syscall` path, which runs at ring 0 on
/// the guest's stack pointer for an instruction and then on the guest
/// kernel's stack (a pending debug trap, a fault while it pushes). Such
/// an exit lands in `GuestRegs` like any other, and the host sees where
/// it came from.
pub fn guest_idt() -> [Gate; 256] {
    let mut idt = [Gate::default(); 256];
    for (vector, gate) in idt.iter_mut().enumerate() {
        *gate = Gate::interrupt(stub_address(vector as u8), SWITCHER_CS, 1);
    }
    idt
}

/// The guest GDT, with a TSS descriptor for the state page's TSS.
pub fn guest_gdt() -> [u64; GDT_ENTRIES] {
    let mut gdt = [0u64; GDT_ENTRIES];
    gdt[..TSS_SLOT].copy_from_slice(&GDT_TEMPLATE);
    let (low, high) = tss_descriptor(GUEST_TSS_VA, size_of::<Tss>() as u32 - 1);
    gdt[TSS_SLOT] = low;
    gdt[TSS_SLOT + 1] = high;
    gdt
}

/// A 64-bit available-TSS descriptor (two GDT slots).
pub const fn tss_descriptor(base: u64, limit: u32) -> (u64, u64) {
    let low = (limit as u64 & 0xffff)
        | (base & 0xff_ffff) << 16
        | 0x89 << 40
        | ((limit as u64 >> 16) & 0xf) << 48
        | ((base >> 24) & 0xff) << 56;
    (low, base >> 32)
}

/// The guest TSS: traps from the guest push onto the registers page.
pub fn guest_tss() -> Tss {
    let mut tss = Tss { iomap_base: size_of::<Tss>() as u16, ..Tss::default() };
    tss.rsp[0] = TRAP_STACK_TOP;
    tss.ist[0] = TRAP_STACK_TOP;
    tss
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_fit_in_the_first_slot() {
        const { assert!(IDT_PAGE + PAGE_SIZE <= SWITCHER_BASE + (2 << 20)) };
        assert_eq!(GUEST_REGS_VA + size_of::<GuestRegs>() as u64, TRAP_STACK_TOP);
    }

    #[test]
    fn gates_point_at_their_stubs() {
        let idt = guest_idt();
        assert_eq!(idt[0].handler(), SWITCHER_BASE);
        assert_eq!(idt[255].handler(), SWITCHER_BASE + 255 * 16);
        assert!(idt.iter().all(|gate| gate.ist == 1));
        const { assert!(stub_address(255) + STUB_SIZE <= SWITCHER_BASE + ENTRY_OFFSET) };
    }

    #[test]
    fn every_descriptor_is_pre_accessed() {
        for descriptor in &GDT_TEMPLATE[1..] {
            assert_ne!(descriptor & (1 << 40), 0, "{descriptor:#x}");
        }
    }

    #[test]
    fn tss_descriptor_encodes_base_and_limit() {
        let (low, high) = tss_descriptor(0xffff_ffff_ffc0_3100, 103);
        assert_eq!(low & 0xffff, 103);
        assert_eq!((low >> 16) & 0xff_ffff, 0xc0_3100);
        assert_eq!((low >> 40) & 0xff, 0x89);
        assert_eq!(low >> 56, 0xff);
        assert_eq!(high, 0xffff_ffff);
    }

    #[test]
    fn the_syscall_path_fits_its_page() {
        const { assert!(SYSCALL_END_VA <= SWITCHER_BASE + CODE_PAGES * PAGE_SIZE) };
        const { assert!(SYSCALL_USER_RSP_VA >= REGS_PAGE) };
        assert!(in_syscall_path(SYSCALL_VA) && in_syscall_path(SYSCALL_CLOSED_VA));
        assert!(!in_syscall_path(ENTRY_VA) && !in_syscall_path(SYSCALL_END_VA));
        // sysret would go to the guest's user selectors.
        assert_eq!(((STAR >> 48) as u16 + 16) | 3, umbra_abi::GUEST_USER_CS);
        assert_eq!(((STAR >> 48) as u16 + 8) | 3, umbra_abi::GUEST_USER_SS);
        assert_eq!((STAR >> 32) as u16, SWITCHER_CS);
    }

    #[test]
    fn selectors_match_the_abi_layout() {
        // Ring-1 code at slot 3, ring-3 code at slot 6: RPL in the low bits.
        assert_eq!((GDT_TEMPLATE[3] >> 45) & 3, 1);
        assert_eq!((GDT_TEMPLATE[6] >> 45) & 3, 3);
        assert_eq!(TSS_SELECTOR, 0x38);
    }
}
