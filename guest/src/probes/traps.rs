//! # Our own trap handlers, through Umbra
//!
//! A guest kernel at ring 1 cannot load an IDT; it tells Umbra where its
//! handlers are (LOAD_IDT_ENTRY), and Umbra delivers its faults and its
//! interrupts to them, on its stack, in the frame the CPU would push. Two
//! test modes prove that path:
//!
//! - `test=reflect`: divide by zero, run `cli` at ring 1 (a #GP) and read
//!   an unmapped address (a #PF). Each handler counts, notes what it was
//!   told, steps over the faulting instruction and returns with `iretq`.
//! - `test=timer`: arm the clock (SET_CLOCKEVENT), turn the virtual
//!   interrupt flag on and HALT, five times; the IRQ 0 handler counts the
//!   ticks. It turns the flag back on just before its `iretq`, which is
//!   registered as `noirq_iret` so Umbra never interrupts that one
//!   instruction.
//!
//! Handlers must be kernel-half addresses: they run through the kernel
//! alias of our image, and RIP-relative data references follow them there.
//! [`alias`] gives that address and [`load_idt_entry`] installs it, for
//! these modes, the fuzzer's handlers and the attack suite's
//! (`attacks/`); [`handler_statics!`] declares what the handlers record.
//!
//! All of this is the probes' own, apart from the process kernel's traps
//! (`kernel/trap.rs`) on purpose: a probe's handler records exactly what
//! reached it, or steps over one known instruction, and comes back, where
//! the kernel's kill a process or run a system call. And the probes call
//! Umbra directly, as they do for everything, rather than through the
//! platform layer's `set_trap_handler`, whose gates are only the ones a
//! well-behaved kernel asks for.

use core::sync::atomic::Ordering;

use umbra_abi as abi;

use crate::platform::hypercall::{self, hypercall, shutdown};
use crate::probes::tables::{self, Frames, KERNEL_BASE};

/// Declares what the probes' trap handlers, written in assembly, count
/// and note by name: `NAME = initial value;`, each an `AtomicU64`
/// exported under its own name.
macro_rules! handler_statics {
    ($($(#[$attr:meta])* $name:ident = $init:expr;)*) => {
        $(
            $(#[$attr])*
            #[unsafe(no_mangle)]
            static $name: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new($init);
        )*
    };
}
pub(super) use handler_statics;

handler_statics! {
    TRAP_DE_COUNT = 0;
    TRAP_GP_COUNT = 0;
    TRAP_GP_ERROR = u64::MAX;
    TRAP_PF_COUNT = 0;
    TRAP_PF_ERROR = u64::MAX;
    CLOCK_TICKS = 0;
}

core::arch::global_asm!(
    r#"
    .pushsection .text.guest_traps, "ax"
    .global guest_trap_de, guest_trap_gp, guest_trap_pf, guest_irq0, guest_noirq_iret
guest_trap_de:
    lock incq TRAP_DE_COUNT(%rip)
    addq $3, (%rsp)                 /* over `div %rcx` (48 f7 f1) */
    iretq
guest_trap_gp:
    popq TRAP_GP_ERROR(%rip)
    lock incq TRAP_GP_COUNT(%rip)
    addq $1, (%rsp)                 /* over `cli` (fa) */
    iretq
guest_trap_pf:
    popq TRAP_PF_ERROR(%rip)
    lock incq TRAP_PF_COUNT(%rip)
    addq $3, (%rsp)                 /* over `mov (%rax), %rcx` (48 8b 08) */
    iretq
guest_irq0:
    lock incq CLOCK_TICKS(%rip)
    movl $1, GUEST_SHARED_PAGE+4(%rip)    /* irq_enabled */
guest_noirq_iret:
    iretq
    .popsection
"#,
    options(att_syntax)
);

unsafe extern "C" {
    fn guest_trap_de();
    fn guest_trap_gp();
    fn guest_trap_pf();
    fn guest_irq0();
    fn guest_noirq_iret();
}

/// The kernel-half alias of a function of our image: handlers must be
/// kernel addresses.
pub(super) fn alias(function: unsafe extern "C" fn()) -> u64 {
    KERNEL_BASE + function as usize as u64
}

/// LOAD_IDT_ENTRY of a handler of ours.
pub(super) fn load_idt_entry(vector: u64, handler: u64, flags: u64) {
    // SAFETY: a handler of ours, in the kernel half.
    unsafe { hypercall(abi::LOAD_IDT_ENTRY, vector, handler, flags, 0, 0) };
}

/// `test=reflect`.
pub fn reflect(memory_size: u64, frames: Frames) -> ! {
    tables::build_and_switch(memory_size, frames);
    let gate = abi::IDT_PRESENT;
    load_idt_entry(0, alias(guest_trap_de), gate);
    load_idt_entry(13, alias(guest_trap_gp), gate);
    load_idt_entry(14, alias(guest_trap_pf), gate);
    let unmapped = 0x0000_5000_0000_0000u64;
    // SAFETY: each instruction faults on purpose; its handler steps over
    // it and returns here. The encodings are the ones the handlers skip.
    unsafe {
        core::arch::asm!(".byte 0x48, 0xf7, 0xf1", in("rcx") 0u64, inout("rax") 1u64 => _, inout("rdx") 0u64 => _);
        core::arch::asm!(".byte 0xfa");
        core::arch::asm!(".byte 0x48, 0x8b, 0x08", in("rax") unmapped, out("rcx") _);
    }
    let counts = [&TRAP_DE_COUNT, &TRAP_GP_COUNT, &TRAP_PF_COUNT].map(|c| c.load(Ordering::Relaxed));
    let (gp_error, pf_error) = (TRAP_GP_ERROR.load(Ordering::Relaxed), TRAP_PF_ERROR.load(Ordering::Relaxed));
    let cr2 = hypercall::fault_address();
    say!(
        "reflected #DE x{}, #GP x{} (error {gp_error:#x}), #PF x{} at {cr2:#x} (error {pf_error:#x})",
        counts[0],
        counts[1],
        counts[2]
    );
    let all_once = counts == [1, 1, 1] && gp_error == 0 && cr2 == unmapped && pf_error == 0;
    shutdown(if all_once { 0 } else { 96 }, "reflect test")
}

/// `test=timer`.
pub fn timer(memory_size: u64, frames: Frames) -> ! {
    tables::build_and_switch(memory_size, frames);
    hypercall::set_noirq_iret(alias(guest_noirq_iret));
    load_idt_entry(abi::IRQ_BASE + abi::CLOCK_IRQ, alias(guest_irq0), abi::IDT_PRESENT);
    const TICKS: u64 = 5;
    for tick in 1..=TICKS {
        // The flag stays off until HALT, which turns it on and sleeps as
        // one step: a tick due before we get there waits, pending.
        hypercall::set_interrupts_enabled(false);
        // SAFETY: arming the clock and halting are requests to Umbra.
        unsafe { hypercall(abi::SET_CLOCKEVENT, 1_000_000, 0, 0, 0, 0) };
        // SAFETY: as above.
        unsafe { hypercall(abi::HALT, 0, 0, 0, 0, 0) };
        if CLOCK_TICKS.load(Ordering::Relaxed) < tick {
            say!("woke from HALT without a tick");
            shutdown(96, "timer test");
        }
    }
    say!("{} clock ticks, each after a HALT", CLOCK_TICKS.load(Ordering::Relaxed));
    shutdown(0, "timer test")
}

/// `test=bad-idt`: a handler in the switcher region. Umbra must refuse.
pub fn bad_idt(memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    load_idt_entry(13, super::SWITCHER_BASE, abi::IDT_PRESENT);
}

/// `test=halt-forever`: HALT with virtual interrupts off and no clock:
/// nothing could ever wake us. Umbra must not wait for ever.
pub fn halt_forever() {
    hypercall::set_interrupts_enabled(false);
    // SAFETY: a request to Umbra.
    unsafe { hypercall(abi::HALT, 0, 0, 0, 0, 0) };
}

/// `test=fault-on-bad-stack`: a #GP with the stack pointer on an unmapped
/// address, so the frame cannot be delivered: a double fault, which must
/// kill us rather than loop or reach the host.
pub fn fault_on_bad_stack(memory_size: u64, frames: Frames) -> ! {
    tables::build_and_switch(memory_size, frames);
    load_idt_entry(13, alias(guest_trap_gp), abi::IDT_PRESENT);
    // SAFETY: deliberately unrecoverable: Umbra must stop us here.
    unsafe {
        core::arch::asm!("mov rsp, {0}", "cli", "2: jmp 2b", in(reg) 0x0000_5000_0000_0000u64, options(noreturn))
    }
}
