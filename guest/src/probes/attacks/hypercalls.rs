//! Hypercalls with bad numbers and bad arguments, a garbage async ring,
//! and a "hypercall" from guest user mode.
//!
//! Every argument of a hypercall is untrusted: a bad one kills the guest
//! with a reason naming the call and the argument, except where the ABI
//! gives it a harmless meaning (SET_CLOCKEVENT 0 cancels, a huge delay is
//! cut to an hour). Umbra keeps its own copy of whatever it relies on, so
//! bogus values written into the shared page change nothing.

use core::sync::atomic::Ordering;

use umbra_abi::{self as abi, ASYNC_SLOTS};

use super::{
    ATTACK_CS, ATTACK_TICKS, ATTACK_TRAPS, ATTACK_VECTOR, Attack, NON_CANONICAL, STATE_PAGE, SWITCHER_CODE_1,
    UNMAPPED, alias, attack_irq, attack_noirq_iret, attack_table, attack_trap_gp, install_handlers,
    load_idt_entry, run_at_ring3, works,
};
use crate::platform::hypercall::{self, hypercall};
use crate::probes::tables::{self, Frames, KERNEL_BASE};

/// A hypercall that Umbra must refuse by killing us.
fn call(number: u64, args: [u64; 5]) {
    // SAFETY: Umbra must kill us; if it does not, the call touched nothing
    // of ours but what its arguments name, which are all bogus.
    unsafe { hypercall(number, args[0], args[1], args[2], args[3], args[4]) };
}

fn hypercall_max(_: &'static str, _: u64, _: Frames) {
    call(u64::MAX, [0; 5]);
}

fn hypercall_first_free(_: &'static str, _: u64, _: Frames) {
    call(abi::CALL_COUNT, [0; 5]);
}

fn init_twice(_: &'static str, _: u64, _: Frames) {
    hypercall::init();
}

/// INIT naming the switcher's state page as the shared page. Only the
/// first call may be INIT, and ours came first, so this is INIT twice: the
/// address is never looked at.
fn init_at_switcher(_: &'static str, _: u64, _: Frames) {
    call(abi::INIT, [STATE_PAGE, 0, 0, 0, 0]);
}

fn console_huge(_: &'static str, _: u64, _: Frames) {
    call(abi::CONSOLE_WRITE, [b"x".as_ptr() as u64, u64::MAX, 0, 0, 0]);
}

/// A buffer that wraps past the top of the address space.
fn console_wrapping(_: &'static str, _: u64, _: Frames) {
    call(abi::CONSOLE_WRITE, [0xFFFF_FFFF_FFFF_F000, 4096, 0, 0, 0]);
}

fn console_unmapped(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    call(abi::CONSOLE_WRITE, [UNMAPPED, 16, 0, 0, 0]);
}

/// Asks Umbra to print the switcher's state page (host CR3, host RSP...):
/// the host must not read the switcher for us.
fn console_switcher(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    call(abi::CONSOLE_WRITE, [STATE_PAGE, 64, 0, 0, 0]);
}

fn idt_switcher(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    call(abi::LOAD_IDT_ENTRY, [13, SWITCHER_CODE_1, abi::IDT_PRESENT, 0, 0]);
}

fn idt_noncanonical(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    call(abi::LOAD_IDT_ENTRY, [13, NON_CANONICAL, abi::IDT_PRESENT, 0, 0]);
}

/// A handler below the kernel boundary: user code, which a ring-1 gate
/// must never run.
fn idt_user_half(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    call(abi::LOAD_IDT_ENTRY, [13, alias(attack_trap_gp) - KERNEL_BASE, abi::IDT_PRESENT, 0, 0]);
}

/// Type bits Umbra does not know (a DPL-0 gate, say): no way to name a
/// target outside ring 1.
fn idt_bad_type(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    call(abi::LOAD_IDT_ENTRY, [13, alias(attack_trap_gp), abi::IDT_PRESENT | 0x60, 0, 0]);
}

/// Letting user mode raise #GP itself with `int 13`.
fn idt_user_gp(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    call(abi::LOAD_IDT_ENTRY, [13, alias(attack_trap_gp), abi::IDT_PRESENT | abi::IDT_USER, 0, 0]);
}

fn idt_vector_256(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    call(abi::LOAD_IDT_ENTRY, [256, alias(attack_trap_gp), abi::IDT_PRESENT, 0, 0]);
}

/// A kernel-half stack that our tables do not map.
fn stack_unmapped(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    call(abi::SET_STACK, [KERNEL_BASE + (1 << 30), 4096, 0, 0, 0]);
}

/// The registers page and the state page above it, as a kernel stack.
fn stack_switcher(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    call(abi::SET_STACK, [STATE_PAGE + 0x1000, 8192, 0, 0, 0]);
}

fn stack_noncanonical(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    call(abi::SET_STACK, [NON_CANONICAL + 4096, 4096, 0, 0, 0]);
}

fn stack_too_big(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    let top = KERNEL_BASE + (8 << 20);
    call(abi::SET_STACK, [top, abi::KERNEL_STACK_MAX * 2, 0, 0, 0]);
}

/// Writes async slot `index` directly, `ready` last.
fn write_slot(index: usize, ready: u64, number: u64, args: [u64; 5]) {
    // SAFETY: an in-bounds slot of our own shared page; volatile because
    // Umbra reads it behind the compiler's back.
    unsafe {
        let slot = &raw mut (*hypercall::shared_page()).async_ring[index];
        (&raw mut (*slot).number).write_volatile(number);
        (&raw mut (*slot).args).write_volatile(args);
        (&raw mut (*slot).ready).write_volatile(ready);
    }
}

fn slot_ready(index: usize) -> u64 {
    // SAFETY: as in `write_slot`.
    unsafe { (&raw const (*hypercall::shared_page()).async_ring[index].ready).read_volatile() }
}

fn async_completed() -> u64 {
    // SAFETY: a field of our own shared page, which Umbra writes.
    unsafe { (&raw const (*hypercall::shared_page()).async_completed).read_volatile() }
}

/// A call number that does not exist, queued.
fn async_bad_number(_: &'static str, _: u64, _: Frames) {
    write_slot(0, 1, 0xdead, [0; 5]);
    hypercall::flush_async();
}

/// SHUTDOWN queued: a real call, but not one that may wait in the ring.
fn async_shutdown(_: &'static str, _: u64, _: Frames) {
    write_slot(0, 1, abi::SHUTDOWN, [0, 0, 0, 0, 0]);
    hypercall::flush_async();
}

/// A queued CONSOLE_WRITE of the switcher's state page: checked like the
/// synchronous one.
fn async_bad_pointer(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    write_slot(0, 1, abi::CONSOLE_WRITE, [STATE_PAGE, 64, 0, 0, 0]);
    hypercall::flush_async();
}

/// A slot whose `ready` is neither 0 nor 1: Umbra must leave it alone
/// (only 1 means ready), and go on once we clear it.
fn async_bad_ready(name: &'static str, _: u64, _: Frames) {
    write_slot(0, 0xdead_beef, abi::CONSOLE_WRITE, [b"X\n".as_ptr() as u64, 2, 0, 0, 0]);
    let before = async_completed();
    hypercall::flush_async();
    if slot_ready(0) != 0xdead_beef || async_completed() != before {
        say!("attack {name}: Umbra ran or rewrote the garbage slot");
        hypercall::shutdown(96, "attack: garbage slot");
    }
    write_slot(0, 0, 0, [0; 5]);
    let line = b"guest: queued line after the garbage slot\n";
    hypercall::queue_async(abi::CONSOLE_WRITE, [line.as_ptr() as u64, line.len() as u64, 0, 0, 0]);
    hypercall::flush_async();
    if async_completed() != before + 1 {
        hypercall::shutdown(96, "attack: ring stuck");
    }
    works(name, format_args!("garbage ready word left alone; the ring went on"))
}

/// Fills the whole ring, every slot ready, then has Umbra drain it; then
/// fills it again with different calls, so the host's cursor must wrap.
/// Each slot is read once: what a slot asked for when Umbra read it is
/// what runs, and every slot is cleared.
fn async_full_ring(name: &'static str, _: u64, _: Frames) {
    static LINE: &[u8] = b"";
    let before = async_completed();
    for round in 0..2u64 {
        for index in 0..ASYNC_SLOTS {
            // Round 0: empty console writes; round 1: the same slots
            // rewritten with a different call that does nothing either
            // (flushing the user half of the shadow).
            let (number, args) = match round {
                0 => (abi::CONSOLE_WRITE, [LINE.as_ptr() as u64, 0, 0, 0, 0]),
                _ => (abi::FLUSH_TLB, [0; 5]),
            };
            write_slot(index, 1, number, args);
        }
        hypercall::flush_async();
        if (0..ASYNC_SLOTS).any(|index| slot_ready(index) != 0) {
            hypercall::shutdown(96, "attack: ring not drained");
        }
    }
    let ran = async_completed() - before;
    if ran != 2 * ASYNC_SLOTS as u64 {
        say!("attack {name}: {ran} async calls ran, expected {}", 2 * ASYNC_SLOTS);
        hypercall::shutdown(96, "attack: wrong count");
    }
    works(name, format_args!("two full rings of 64 drained, each slot once"))
}

/// SET_CLOCKEVENT with u64::MAX (cut to an hour) and 0 (cancels): neither
/// kills, and a 1 ms event afterwards still ticks.
fn clock_extremes(name: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    hypercall::set_noirq_iret(alias(attack_noirq_iret));
    load_idt_entry(abi::IRQ_BASE + abi::CLOCK_IRQ, alias(attack_irq), abi::IDT_PRESENT);
    // SAFETY: requests to Umbra about our own clock.
    unsafe {
        hypercall(abi::SET_CLOCKEVENT, u64::MAX, 0, 0, 0, 0);
        hypercall(abi::SET_CLOCKEVENT, 0, 0, 0, 0, 0);
        hypercall(abi::SET_CLOCKEVENT, u64::MAX, 0, 0, 0, 0);
        hypercall(abi::SET_CLOCKEVENT, 1_000_000, 0, 0, 0, 0);
    }
    hypercall::set_interrupts_enabled(true);
    // SAFETY: the clock is armed, interrupts are on: HALT wakes.
    unsafe { hypercall(abi::HALT, 0, 0, 0, 0, 0) };
    if ATTACK_TICKS.load(Ordering::Relaxed) != 1 {
        hypercall::shutdown(96, "attack: no tick");
    }
    works(name, format_args!("u64::MAX and 0 accepted; a 1 ms event still ticked once"))
}

/// Bogus bits in `irq_pending`: every vector, including exceptions. Umbra
/// keeps its own bitmap and delivers nothing we were not sent.
fn bogus_pending(name: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    install_handlers();
    hypercall::set_noirq_iret(alias(attack_noirq_iret));
    for vector in [abi::IRQ_BASE, abi::IRQ_BASE + 1, 100, 255] {
        load_idt_entry(vector, alias(attack_irq), abi::IDT_PRESENT);
    }
    hypercall::set_interrupts_enabled(true);
    for _ in 0..10 {
        // SAFETY: plain writes of our own shared page.
        unsafe { (&raw mut (*hypercall::shared_page()).irq_pending).write_volatile([u64::MAX; 4]) };
        // SAFETY: a request to Umbra, without arguments.
        unsafe { hypercall(abi::SEND_INTERRUPTS, 0, 0, 0, 0, 0) };
    }
    let (traps, ticks) = (ATTACK_TRAPS.load(Ordering::Relaxed), ATTACK_TICKS.load(Ordering::Relaxed));
    if traps != 0 || ticks != 0 {
        say!("attack {name}: {traps} exceptions and {ticks} interrupts delivered");
        hypercall::shutdown(96, "attack: bogus delivery");
    }
    works(name, format_args!("nothing delivered for bogus pending bits"))
}

/// Runs `ud2` at ring 3 with rax = SHUTDOWN and rdi = 98: were it taken
/// for a hypercall, we would exit "survived". It is a #UD from user mode,
/// the guest kernel's to handle. `with_stack` says whether we named a
/// kernel stack first.
fn user_ud2(memory_size: u64, frames: Frames, with_stack: bool) {
    let mut space = tables::build_and_switch(memory_size, frames);
    install_handlers();
    let _ = run_at_ring3(&mut space, &abi::HYPERCALL_INSTRUCTION, with_stack);
}

fn user_hypercall(name: &'static str, memory_size: u64, frames: Frames) {
    user_ud2(memory_size, frames, true);
    let (traps, vector, cs) = (
        ATTACK_TRAPS.load(Ordering::Relaxed),
        ATTACK_VECTOR.load(Ordering::Relaxed),
        ATTACK_CS.load(Ordering::Relaxed),
    );
    if traps != 1 || vector != 6 || cs != u64::from(abi::GUEST_USER_CS) {
        say!("attack {name}: {traps} traps, vector {vector}, from cs {cs:#x}");
        hypercall::shutdown(96, "attack: wrong trap");
    }
    works(name, format_args!("#UD from ring 3 delivered to our handler, not taken as a hypercall"))
}

fn user_hypercall_no_stack(_: &'static str, memory_size: u64, frames: Frames) {
    user_ud2(memory_size, frames, false);
}

pub const ATTACKS: &[Attack] = attack_table! {
    hypercall_max, hypercall_first_free, init_twice, init_at_switcher,
    console_huge, console_wrapping, console_unmapped, console_switcher,
    idt_switcher, idt_noncanonical, idt_user_half, idt_bad_type, idt_user_gp, idt_vector_256,
    stack_unmapped, stack_switcher, stack_noncanonical, stack_too_big,
    async_bad_number, async_shutdown, async_bad_pointer, async_bad_ready, async_full_ring,
    clock_extremes, bogus_pending, user_hypercall, user_hypercall_no_stack,
};
