//! The FS base: a guest's own, kept through everything, and never another
//! guest's.
//!
//! User programs keep their thread pointer in the FS base (`%fs:0`), set
//! with SET_FS_BASE. Umbra keeps it with the guest's registers and writes
//! IA32_FS_BASE when the guest starts a turn on a CPU, so hypercalls,
//! traps, interrupts and other guests' turns on the same CPU must all
//! leave `%fs:0` reading the guest's own data. A base no CPU accepts (a
//! non-canonical one) would fault in the host as it writes the MSR: Umbra
//! kills the guest for asking instead.

use core::sync::atomic::Ordering;

use umbra_abi as abi;

use super::{
    ATTACK_TICKS, ATTACK_TRAPS, Attack, alias, attack_irq, attack_noirq_iret, attack_table, faulting,
    install_handlers, load_idt_entry, works,
};
use crate::platform::hypercall::{self, hypercall, shutdown};
use crate::probes::tables::{self, Frames};

/// What the FS base points at: the first word is this guest's tag.
#[repr(C, align(4096))]
struct ThreadBlock([u64; 512]);
static mut THREAD_BLOCK: ThreadBlock = ThreadBlock([0; 512]);

/// Rounds of a hypercall, a trap and a clock tick.
const ROUNDS: u64 = 40;

fn fs_word() -> u64 {
    let value;
    // SAFETY: reads through the FS base, which names our thread block.
    unsafe { core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) value, options(nostack, readonly)) };
    value
}

/// `%fs:0` must still be `tag`; otherwise say what it was, and stop.
fn check(name: &str, tag: u64, after: &str) {
    let seen = fs_word();
    if seen != tag {
        say!("attack {name}: fs:0 holds {seen:#x} after {after}, not this guest's {tag:#x}");
        shutdown(96, "attack: FS base lost");
    }
}

/// SET_FS_BASE to a block of ours holding a tag of our own (the TSC at
/// start: each guest of a run has a different one), then, round after
/// round, a hypercall, a #GP our handler takes and a clock tick we HALT
/// for, reading `%fs:0` after each. Run as two guests on one CPU
/// (`guests=2 cpus=1`), every HALT lets the other guest, with its own FS
/// base, run on the same CPU in between.
fn fs_base_kept(name: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    install_handlers();
    hypercall::set_noirq_iret(alias(attack_noirq_iret));
    load_idt_entry(abi::IRQ_BASE + abi::CLOCK_IRQ, alias(attack_irq), abi::IDT_PRESENT);
    // SAFETY: reading the TSC has no side effects.
    let tag = unsafe { core::arch::x86_64::_rdtsc() } | 1;
    let block = &raw mut THREAD_BLOCK;
    // SAFETY: our own static, written before anything reads it.
    unsafe { (*block).0[0] = tag };
    hypercall::set_fs_base(block as u64);
    check(name, tag, "SET_FS_BASE");
    for _ in 0..ROUNDS {
        hypercall::flush_async();
        check(name, tag, "a hypercall");
        // SAFETY: `cli` at ring 1 is a #GP, which our handler takes and
        // returns from, past it.
        unsafe { faulting!("cli") };
        check(name, tag, "a trap");
        // SAFETY: requests to Umbra about our own clock. HALT turns the
        // virtual interrupt flag on itself, so a tick due before it stays
        // pending and wakes it rather than being taken before it (which
        // would leave HALT nothing to wait for).
        unsafe {
            hypercall(abi::SET_CLOCKEVENT, 200_000, 0, 0, 0, 0);
            hypercall(abi::HALT, 0, 0, 0, 0, 0);
        }
        hypercall::set_interrupts_enabled(false);
        check(name, tag, "a clock tick");
    }
    let (traps, ticks) = (ATTACK_TRAPS.load(Ordering::Relaxed), ATTACK_TICKS.load(Ordering::Relaxed));
    if traps != ROUNDS || ticks < ROUNDS {
        say!("attack {name}: {traps} traps and {ticks} ticks, not {ROUNDS} of each");
        shutdown(96, "attack: rounds missing");
    }
    works(
        name,
        format_args!("fs:0 intact after {ROUNDS} hypercalls, {ROUNDS} traps and {ROUNDS} clock ticks"),
    )
}

/// SET_FS_BASE with the first address past the lower canonical half.
fn fs_base_noncanonical(_: &'static str, _: u64, _: Frames) {
    // SAFETY: Umbra must kill us before the base is used.
    unsafe { hypercall(abi::SET_FS_BASE, 0x0000_8000_0000_0000, 0, 0, 0, 0) };
}

/// SET_FS_BASE with all ones but the canonical sign: still not canonical.
fn fs_base_high_noncanonical(_: &'static str, _: u64, _: Frames) {
    // SAFETY: as above.
    unsafe { hypercall(abi::SET_FS_BASE, 0xFFF0_0000_0000_0000 ^ (1 << 47), 0, 0, 0, 0) };
}

pub const ATTACKS: &[Attack] = attack_table! {
    fs_base_kept, fs_base_noncanonical, fs_base_high_noncanonical,
};
