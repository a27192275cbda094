//! Vectors: the host's own, and instructions that name a vector.
//!
//! Vectors 0xe0 to 0xff are the host's on every CPU: its timer (0xef),
//! the local APIC's spurious interrupt (0xff), the legacy PICs (moved to
//! 0xf0 and 0xf8). A direct gate (IDT_USER) is written into the real IDT,
//! so one on the timer's vector handed the host's own tick to the guest
//! (before the fix, a guest spinning with virtual interrupts off was then
//! never preempted). A plain entry there is only the guest's virtual
//! vector. `into` names vector 4, but 64-bit mode has no `into`: it is a
//! #UD. `int n` at ring 1 through a gate we do not own is a #GP naming the
//! gate.

use core::sync::atomic::Ordering;

use umbra_abi as abi;

use super::{
    ATTACK_CS, ATTACK_TICKS, ATTACK_TRAPS, ATTACK_VECTOR, Attack, alias, attack_irq, attack_noirq_iret,
    attack_table, attack_trap_of, expect_delivered, faulting, install_handlers, load_idt_entry, run_at_ring3,
    survived, works,
};
use crate::platform::hypercall::{self, hypercall};
use crate::probes::tables::{self, Frames};

const TIMER: u64 = 0xef;

/// LOAD_IDT_ENTRY making host vector `vector` a direct gate, which Umbra
/// must refuse by killing us.
fn direct_gate(memory_size: u64, frames: Frames, vector: u64) {
    tables::build_and_switch(memory_size, frames);
    // SAFETY: a handler of ours, in the kernel half; Umbra must kill us.
    unsafe {
        hypercall(abi::LOAD_IDT_ENTRY, vector, alias(attack_irq), abi::IDT_PRESENT | abi::IDT_USER, 0, 0)
    };
}

/// The host's timer as a direct gate, then virtual interrupts off and a
/// loop for ever. The kill must come at LOAD_IDT_ENTRY: should the entry
/// be taken, the spin shows whether the host still gets its tick (the
/// watchdog fires) or not (the machine hangs).
fn host_vector_timer(_: &'static str, memory_size: u64, frames: Frames) {
    direct_gate(memory_size, frames, TIMER);
    say!("survived");
    hypercall::set_interrupts_enabled(false);
    loop {
        core::hint::spin_loop();
    }
}

fn host_vector_spurious(_: &'static str, memory_size: u64, frames: Frames) {
    direct_gate(memory_size, frames, 0xff);
}

fn host_vector_first(_: &'static str, memory_size: u64, frames: Frames) {
    direct_gate(memory_size, frames, 0xe0);
}

/// The master PIC's spurious IRQ 7, at 0xf0 + 7.
fn host_vector_pic(_: &'static str, memory_size: u64, frames: Frames) {
    direct_gate(memory_size, frames, 0xf7);
}

/// How many exits the plain-entry attack watches with virtual interrupts
/// on: each of them, in a loop that makes none of its own, is the host's
/// tick.
const TICKS_WATCHED: u64 = 20;

/// Legal: a plain entry on the timer's vector. It is only our virtual
/// vector, so the host's ticks never reach it, even with virtual
/// interrupts on; and with them off, the host still preempts us (the
/// watchdog fires). Run with guest_timeout=.
fn host_vector_plain(name: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    hypercall::set_noirq_iret(alias(attack_noirq_iret));
    load_idt_entry(TIMER, alias(attack_irq), abi::IDT_PRESENT);
    hypercall::set_interrupts_enabled(true);
    let start = hypercall::exits();
    while hypercall::exits() < start + TICKS_WATCHED {
        core::hint::spin_loop();
    }
    let ticks = ATTACK_TICKS.load(Ordering::Relaxed);
    if ticks != 0 {
        say!("attack {name}: {ticks} host ticks delivered to our vector 0xef");
        hypercall::shutdown(96, "attack: host tick delivered");
    }
    say!("attack {name}: {TICKS_WATCHED} exits, none delivered to our vector 0xef; now spinning");
    hypercall::set_interrupts_enabled(false);
    loop {
        core::hint::spin_loop();
    }
}

/// `into` (0xce) at ring 3, with a direct gate on vector 4 as a kernel
/// that wants `into` would set: 64-bit mode has no `into`, so it is a #UD
/// for our handler, and never vector 4.
fn into_user(name: &'static str, memory_size: u64, frames: Frames) {
    let mut space = tables::build_and_switch(memory_size, frames);
    install_handlers();
    load_idt_entry(4, alias(attack_trap_of), abi::IDT_PRESENT | abi::IDT_TRAP_GATE | abi::IDT_USER);
    run_at_ring3(&mut space, &[0xce], true);
    let (traps, vector, cs) = (
        ATTACK_TRAPS.load(Ordering::Relaxed),
        ATTACK_VECTOR.load(Ordering::Relaxed),
        ATTACK_CS.load(Ordering::Relaxed),
    );
    if traps == 0 {
        survived();
    }
    if traps != 1 || vector != 6 || cs != u64::from(abi::GUEST_USER_CS) {
        say!("attack {name}: {traps} traps, vector {vector}, from cs {cs:#x}");
        hypercall::shutdown(96, "attack: wrong trap");
    }
    works(name, format_args!("#UD from ring 3 delivered to our handler, not vector 4"))
}

/// `int 0x1f` at ring 1: every gate we do not own is DPL 0, so this is a
/// #GP naming IDT entry 0x1f, as hardware encodes it.
fn int_1f(name: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    install_handlers();
    // SAFETY: the `int` faults at ring 1; our handler records the #GP and
    // resumes right after it.
    unsafe { faulting!("int 0x1f") };
    expect_delivered(name, 13)
}

pub const ATTACKS: &[Attack] = attack_table! {
    host_vector_timer, host_vector_spurious, host_vector_first, host_vector_pic, host_vector_plain,
    into_user, int_1f,
};
