//! Faults that a careless or hostile guest kernel makes of its own: a
//! fault that cannot be delivered, a storm of single-step traps, a fault
//! with no handler, and a guest that never gives the CPU back.

use core::sync::atomic::Ordering;

use umbra_abi as abi;

use super::{
    ATTACK_STEPS, Attack, NON_CANONICAL, UNMAPPED, alias, attack_table, attack_trap_db, load_idt_entry,
    trap_with_stack_at, works,
};
use crate::platform::hypercall;
use crate::probes::tables::{self, Frames, KERNEL_BASE};

/// The stack is unmapped when the #GP is delivered: a double fault.
fn double_fault(_: &'static str, memory_size: u64, frames: Frames) {
    trap_with_stack_at(memory_size, frames, UNMAPPED);
}

/// The stack pointer is not even canonical.
fn double_fault_noncanonical(_: &'static str, memory_size: u64, frames: Frames) {
    trap_with_stack_at(memory_size, frames, NON_CANONICAL + 0x1000);
}

/// The #GP handler is a kernel-half address our tables do not map: the
/// delivery succeeds, and fetching the handler is a page fault, for which
/// we have no handler.
fn handler_unmapped(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    load_idt_entry(13, KERNEL_BASE + (1 << 30), abi::IDT_PRESENT);
    // SAFETY: Umbra must kill us.
    unsafe { core::arch::asm!("cli") };
}

/// How many loop rounds the storm single-steps through.
const STORM_ROUNDS: u64 = 1000;

/// Sets the trap flag and runs a loop of `STORM_ROUNDS` rounds (two
/// instructions each) with a hypercall in the middle, then clears it.
fn storm() {
    // SAFETY: single-stepping our own code; the #DB handler, if any, only
    // counts. The trap flag is cleared again before the block ends.
    unsafe {
        core::arch::asm!(
            "pushfq",
            "or qword ptr [rsp], 0x100",
            "popfq",
            "2:",
            "dec {n}",
            "jnz 2b",
            "mov eax, {flush}",
            "ud2",
            "pushfq",
            "and qword ptr [rsp], ~0x100",
            "popfq",
            n = inout(reg) STORM_ROUNDS => _,
            flush = const abi::FLUSH_ASYNC,
            out("rax") _,
        )
    };
}

/// Legal: 2000 and more single-step traps, each delivered to our #DB
/// handler, and the guest finishes.
fn trap_flag_storm(name: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    load_idt_entry(1, alias(attack_trap_db), abi::IDT_PRESENT | abi::IDT_TRAP_GATE);
    storm();
    let steps = ATTACK_STEPS.load(Ordering::Relaxed);
    if steps < 2 * STORM_ROUNDS {
        say!("attack {name}: only {steps} single-step traps");
        hypercall::shutdown(96, "attack: too few traps");
    }
    works(name, format_args!("at least {} single-step traps delivered to our handler", 2 * STORM_ROUNDS))
}

fn trap_flag_no_handler(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    storm();
}

fn divide_no_handler(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    // SAFETY: a divide by zero, which Umbra must turn into a kill.
    unsafe { core::arch::asm!("div {z}", z = in(reg) 0u64, inout("rax") 1u64 => _, inout("rdx") 0u64 => _) };
}

fn page_fault_no_handler(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    // SAFETY: an unmapped read, which Umbra must turn into a kill.
    unsafe { (UNMAPPED as *const u64).read_volatile() };
}

/// Virtual interrupts off, and a loop that never ends and never traps.
/// Only the host's own timer gets the CPU back; run with guest_timeout=.
fn spin_interrupts_off(_: &'static str, _: u64, _: Frames) {
    hypercall::set_interrupts_enabled(false);
    loop {
        core::hint::spin_loop();
    }
}

pub const ATTACKS: &[Attack] = attack_table! {
    double_fault, double_fault_noncanonical, handler_unmapped,
    trap_flag_storm, trap_flag_no_handler, divide_no_handler, page_fault_no_handler,
    spin_interrupts_off,
};
