//! # switcher-asm: the world switch
//!
//! A CPU moves between Umbra and a guest through two pages of hand-written
//! assembly (`switcher.s`), mapped at the top 4 MB of the host's address
//! space and of every guest's. [`layout`] says where everything in that
//! region lives, as `#[repr(C)]` structs and constants; the assembly is
//! handed those constants directly, and checks at assembly time that its
//! own pieces sit where the layout says.
//!
//! This crate holds the only code that actually crosses: [`enter`]. The
//! rest of Umbra prepares the pages (through the firmware) and interprets
//! what comes back (in hv-core).
//!
//! The firmware's own exception entry builds the very frame the exit path
//! does ([`layout::GuestRegs`]), so the two share the assembler macros
//! that build it: [`trap_frame_macros!`].
#![no_std]

pub mod layout;

pub use layout::SWITCHER_BASE;

/// Assembler macros for an entry that turns whatever a trap pushed into a
/// [`layout::GuestRegs`], in place: `push_error_code_and_vector VECTOR`
/// (a zero where the CPU pushed no error code, which
/// [`layout::ERROR_CODE_VECTORS`] says, then the vector),
/// `push_general_registers`, and `pop_general_registers` for the way back.
/// `switcher.s` and the firmware's `traps.s` both start with them, so one
/// push order serves both frames; each `global_asm!` that uses them must
/// pass `ERROR_CODE_VECTORS` as a `const` operand, and end with
/// [`trap_frame_macros_end!`] so that no other assembly meets them (fat
/// LTO would put every crate's assembly into one file).
#[macro_export]
macro_rules! trap_frame_macros {
    () => {
        r#"
    .macro push_error_code_and_vector vector
    .set pushes_error_code, 0
    .if \vector < 32
    .set pushes_error_code, ({ERROR_CODE_VECTORS} >> \vector) & 1
    .endif
    .if pushes_error_code == 0
    push $0
    .endif
    push $\vector
    .endm

    .macro push_general_registers
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    .endm

    .macro pop_general_registers
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    .endm
"#
    };
}

/// The end of the assembly that began with [`trap_frame_macros!`]: its
/// macros are forgotten.
#[macro_export]
macro_rules! trap_frame_macros_end {
    () => {
        r#"
    .purgem push_error_code_and_vector
    .purgem push_general_registers
    .purgem pop_general_registers
"#
    };
}

#[cfg(target_os = "none")]
mod image {
    use crate::layout::*;

    core::arch::global_asm!(
        crate::trap_frame_macros!(),
        include_str!("switcher.s"),
        crate::trap_frame_macros_end!(),
        STUB_SIZE = const STUB_SIZE,
        ENTRY_OFFSET = const ENTRY_OFFSET,
        CODE_BYTES = const CODE_PAGES * PAGE_SIZE,
        STATE_HOST_RSP = const STATE_HOST_RSP,
        STATE_HOST_CR3 = const STATE_HOST_CR3,
        STATE_GUEST_CR3 = const STATE_GUEST_CR3,
        STATE_HOST_GDT = const STATE_HOST_GDT,
        STATE_HOST_IDT = const STATE_HOST_IDT,
        STATE_GUEST_GDT = const STATE_GUEST_GDT,
        STATE_GUEST_IDT = const STATE_GUEST_IDT,
        STATE_GUEST_TSS_ACCESS = const STATE_GUEST_TSS_ACCESS,
        STATE_HOST_TSS_DESCRIPTOR = const STATE_HOST_TSS_DESCRIPTOR,
        STATE_HOST_TSS_SELECTOR = const STATE_HOST_TSS_SELECTOR,
        TSS_SELECTOR = const TSS_SELECTOR,
        SWITCHER_DS = const SWITCHER_DS,
        ERROR_CODE_VECTORS = const ERROR_CODE_VECTORS,
        HOST_RFLAGS = const HOST_RFLAGS,
        GUEST_REGS_VA = const GUEST_REGS_VA,
        SYSCALL_OFFSET = const SYSCALL_OFFSET,
        SYSCALL_CLOSED_OFFSET = const SYSCALL_CLOSED_OFFSET,
        SYSCALL_END_OFFSET = const SYSCALL_END_OFFSET,
        SYSCALL_USER_RSP = const SYSCALL_USER_RSP_VA,
        STATE_SYSCALL_STACK = const STATE_SYSCALL_STACK,
        STATE_SYSCALL_ENTRY = const STATE_SYSCALL_ENTRY,
        SYSCALL_ENTRY_RFLAGS = const SYSCALL_ENTRY_RFLAGS,
        TRAP_STACK_TOP = const TRAP_STACK_TOP,
        USER_SS = const umbra_abi::GUEST_USER_SS,
        USER_CS = const umbra_abi::GUEST_USER_CS,
        KERNEL_SS = const umbra_abi::GUEST_KERNEL_SS,
        KERNEL_CS = const umbra_abi::GUEST_KERNEL_CS,
        options(att_syntax)
    );

    unsafe extern "C" {
        static switcher_start: u8;
        static switcher_end: u8;
    }

    /// The switcher code as linked into the image: page-aligned, and
    /// [`CODE_PAGES`] long (the assembly checks).
    pub fn code_physical_range() -> (u64, u64) {
        ((&raw const switcher_start) as u64, (&raw const switcher_end) as u64)
    }
}

#[cfg(target_os = "none")]
pub use image::code_physical_range;

/// Run the guest on this CPU until its next trap or interrupt.
///
/// `regs` is this CPU's registers page as the host maps it. The switcher
/// reads the guest's registers from that page and writes them back there,
/// through its own mapping of it; handing the pointer in tells the
/// compiler so, even while the caller holds a reference to the page.
///
/// # Safety
/// This CPU's switcher pages must be mapped at [`SWITCHER_BASE`] in the
/// current (host) page tables, its state page filled in (host CR3, the
/// host's descriptor tables, and `guest_cr3`: a shadow root that maps the
/// same switcher pages), and its registers page, `regs`, holding sane
/// guest registers (CS and SS at ring 1 or 3). Interrupts must be off.
#[cfg(target_os = "none")]
pub unsafe fn enter(regs: *mut layout::GuestRegs) {
    // SAFETY: per the contract above, the switcher returns here with every
    // callee-saved register and the stack as they were; the C ABI's
    // caller-saved registers are declared clobbered. `rdi` carries `regs`
    // only so the asm is known to use it: the switcher loads the guest's
    // own `rdi` over it.
    unsafe {
        core::arch::asm!(
            "call {entry}",
            entry = in(reg) layout::ENTRY_VA,
            in("rdi") regs,
            clobber_abi("C"),
        );
    }
}
