//! RFLAGS as a weapon: flags a ring-1 guest may set, left set across an
//! exit.
//!
//! The CPU clears only TF, NT, RF and IF when it delivers the exit into
//! the switcher: DF and AC come through into the host, whose compiled code
//! assumes DF clear at every call (before the fix, `std` and then
//! CONSOLE_WRITE crashed Umbra). The exit path now loads the host's own
//! flags first. On the way back Umbra restores ours exactly, except NT,
//! which it clears (an `iretq` with NT set is a #GP in long mode), and RF,
//! which it does not keep.
//!
//! Rust requires DF clear wherever an `asm!` block ends, so each attack
//! sets and clears its flags inside one block, with the exit in between.

use core::sync::atomic::Ordering;

use umbra_abi as abi;

use super::{
    ATTACK_RFLAGS, ATTACK_STEPS, ATTACK_TRAPS, ATTACK_VECTOR, Attack, alias, attack_table, attack_trap_db,
    faulting, install_handlers, load_idt_entry, works,
};
use crate::platform::hypercall;
use crate::probes::tables::{self, Frames, KERNEL_BASE, phys};

/// Names the RFLAGS bits the attacks use, each once: a constant each,
/// and `FLAG_NAMES` to print them by.
macro_rules! flags {
    ($($name:ident = $bits:expr),* $(,)?) => {
        $(const $name: u64 = $bits;)*
        const FLAG_NAMES: &[(u64, &str)] = &[$(($name, stringify!($name))),*];
    };
}

flags! {
    CF = 1 << 0, PF = 1 << 2, AF = 1 << 4, ZF = 1 << 6, SF = 1 << 7, TF = 1 << 8, DF = 1 << 10,
    OF = 1 << 11, IOPL = 3 << 12, NT = 1 << 14, RF = 1 << 16, AC = 1 << 18, ID = 1 << 21,
}

/// Every flag `popfq` at ring 1 sets and Umbra must give back, TF aside.
const GUEST_FLAGS: u64 = CF | PF | AF | ZF | SF | DF | OF | AC | ID;
/// The flags a round trip compares: ours, and the ones that must stay
/// clear.
const COMPARED: u64 = GUEST_FLAGS | TF | IOPL | NT;

/// The names of the flags in `bits`, for a failure line.
struct Names(u64);

impl core::fmt::Display for Names {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut first = true;
        for (bit, name) in FLAG_NAMES {
            if self.0 & bit != 0 {
                write!(f, "{}{name}", if first { "" } else { " " })?;
                first = false;
            }
        }
        if first { write!(f, "none") } else { Ok(()) }
    }
}

/// Runs the instructions `body` with the flags `set` added to RFLAGS by
/// `popfq` (for DF, the same as `std`), and gives the flags `pushfq` sees
/// right after them. The block then goes back to the flags it began with,
/// DF clear as Rust requires wherever an `asm!` block ends. The operands
/// `body` names follow it.
macro_rules! with_flags {
    ($set:expr, $body:literal $(, $($operands:tt)*)?) => {{
        let after: u64;
        core::arch::asm!(
            "pushfq",
            "pushfq",
            "or qword ptr [rsp], {flags_set}",
            "popfq",
            $body,
            "pushfq",
            "pop {flags_after}",
            "popfq",
            flags_set = in(reg) $set,
            flags_after = out(reg) after,
            $($($operands)*)?
        );
        after
    }};
}

/// A word of a fresh frame, written through the identity map, and the
/// address of the same word in the kernel alias, which nothing has
/// touched yet: reading it is a page fault Umbra fills.
fn untouched_alias(memory_size: u64, frames: Frames) -> (u64, u64) {
    const WORD: u64 = 0x5afe_f1a9_5afe_f1a9;
    let mut space = tables::build_and_switch(memory_size, frames);
    let frame = space.frames.alloc();
    // SAFETY: a frame we just allocated, reached by the identity map.
    unsafe { phys::<u64>(frame).write_volatile(WORD) };
    (WORD, KERNEL_BASE + frame)
}

/// DF set, then CONSOLE_WRITE: the host copies our text with our DF, if
/// the exit path leaves it.
fn std_console(name: &'static str, _: u64, _: Frames) {
    static TEXT: &[u8] =
        b"guest: std-console text: 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n";
    let written: u64;
    // SAFETY: CONSOLE_WRITE only reads TEXT.
    let flags = unsafe {
        with_flags!(
            DF,
            "ud2",
            inout("rax") abi::CONSOLE_WRITE => written,
            in("rdi") TEXT.as_ptr(),
            in("rsi") TEXT.len(),
        )
    };
    if flags & DF == 0 || written != TEXT.len() as u64 {
        say!("attack {name}: DF {} after CONSOLE_WRITE, which wrote {written} bytes", flags & DF != 0);
        hypercall::shutdown(96, "attack: DF lost");
    }
    works(name, format_args!("DF still set after CONSOLE_WRITE, which wrote all {} bytes", TEXT.len()))
}

/// DF set, then a read Umbra must demand-fill (and not take for a fault
/// of ours).
fn std_page_fault(name: &'static str, memory_size: u64, frames: Frames) {
    let (word, at) = untouched_alias(memory_size, frames);
    let before = hypercall::exits();
    let (read, flags) = read_with_flags(DF, at);
    if hypercall::exits() == before {
        say!("attack {name}: the read at {at:#x} did not exit: nothing was tested");
        hypercall::shutdown(96, "attack: no page fault");
    }
    if flags & DF == 0 || read != word {
        say!("attack {name}: DF {} after the page fault, read {read:#x}", flags & DF != 0);
        hypercall::shutdown(96, "attack: DF lost");
    }
    works(name, format_args!("DF still set after a demand-filled page fault"))
}

/// `std`, then `cli`: a #GP that Umbra reflects to our handler, whose
/// frame must carry our DF, and whose `iretq` gives it back.
fn std_trap(name: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    install_handlers();
    let flags: u64;
    // SAFETY: `cli` faults at ring 1; our handler resumes right after it.
    // DF is clear again before the block ends.
    unsafe { faulting!("std\ncli"; then "pushfq\npop {flags}\ncld", flags = out(reg) flags) };
    let (traps, vector, framed) = (
        ATTACK_TRAPS.load(Ordering::Relaxed),
        ATTACK_VECTOR.load(Ordering::Relaxed),
        ATTACK_RFLAGS.load(Ordering::Relaxed),
    );
    if traps != 1 || vector != 13 || framed & DF == 0 || flags & DF == 0 {
        say!(
            "attack {name}: {traps} trap(s), vector {vector}; DF {} in the frame, {} after",
            framed & DF != 0,
            flags & DF != 0
        );
        hypercall::shutdown(96, "attack: DF lost");
    }
    works(name, format_args!("DF set in the #GP frame our handler got, and still set after its iretq"))
}

/// `std`, virtual interrupts off, and a loop for ever: only the host's
/// timer takes the CPU back, and its exit must not run Umbra with DF set.
/// Run with guest_timeout=.
fn std_watchdog(_: &'static str, _: u64, _: Frames) {
    hypercall::set_interrupts_enabled(false);
    // SAFETY: spins until Umbra's watchdog kills us; never returns, so DF
    // is never seen by compiled code.
    unsafe { core::arch::asm!("std", "2:", "jmp 2b", options(noreturn)) }
}

/// `std`, then SHUTDOWN with a message: Umbra prints it and stops, with
/// our DF until its exit path clears it.
fn std_shutdown(name: &'static str, _: u64, _: Frames) {
    const MESSAGE: &str = "DF set at SHUTDOWN; this message must arrive whole";
    say!("attack {name}: shutting down with DF set");
    // SAFETY: SHUTDOWN only reads the message, and does not come back;
    // should it, DF is clear again before the block ends.
    unsafe {
        core::arch::asm!(
            "std",
            "ud2",
            "cld",
            inout("rax") abi::SHUTDOWN => _,
            in("rdi") 0u64,
            in("rsi") MESSAGE.as_ptr(),
            in("rdx") MESSAGE.len(),
        )
    };
}

/// Sets `set` in RFLAGS with `popfq`, makes a FLUSH_ASYNC hypercall, and
/// returns the flags `pushfq` saw just before the call and just after it.
/// The block ends with the flags it began with.
fn across_hypercall(set: u64) -> (u64, u64) {
    let before: u64;
    // SAFETY: a hypercall without arguments; the flags we set change
    // nothing at ring 1 but the string direction, which nothing here uses,
    // and the trap flag, whose traps go to our #DB handler.
    let after = unsafe {
        with_flags!(set, "pushfq\npop {before}\nud2", before = out(reg) before, inout("rax") abi::FLUSH_ASYNC => _)
    };
    (before, after)
}

/// AC at ring 1 checks nothing (only ring 3 is alignment-checked), but it
/// is a flag the host must not run with: with SMAP it would open user
/// pages to the host.
fn ac_hypercall(name: &'static str, _: u64, _: Frames) {
    let (before, after) = across_hypercall(AC);
    if before & AC == 0 {
        say!("attack {name}: popfq did not set AC");
        hypercall::shutdown(96, "attack: AC not set");
    }
    if after & AC == 0 {
        say!("attack {name}: AC lost across the hypercall");
        hypercall::shutdown(96, "attack: AC lost");
    }
    works(name, format_args!("AC still set after a hypercall"))
}

/// NT: an `iretq` with NT set is a #GP in long mode, so Umbra does not
/// enter with it, and we get it back clear.
fn nt_hypercall(name: &'static str, _: u64, _: Frames) {
    let (before, after) = across_hypercall(NT);
    if before & NT == 0 {
        say!("attack {name}: popfq did not set NT");
        hypercall::shutdown(96, "attack: NT not set");
    }
    if after & NT != 0 {
        say!("attack {name}: NT still set after the hypercall");
        hypercall::shutdown(96, "attack: NT kept");
    }
    works(name, format_args!("NT set by popfq, clear after a hypercall (Umbra clears it at every entry)"))
}

/// TF across a hypercall: the CPU clears it when the `ud2` traps, and
/// Umbra must give it back, so single-step traps go on after the call.
fn tf_hypercall(name: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    load_idt_entry(1, alias(attack_trap_db), abi::IDT_PRESENT | abi::IDT_TRAP_GATE);
    let (before, after): (u64, u64);
    // SAFETY: single-stepping our own code; the #DB handler only counts.
    unsafe {
        with_flags!(
            TF,
            "nop\nmov {before}, qword ptr [rip + {steps}]\nud2\nnop\nmov {after}, qword ptr [rip + {steps}]",
            steps = sym ATTACK_STEPS,
            before = out(reg) before,
            after = out(reg) after,
            inout("rax") abi::FLUSH_ASYNC => _,
        )
    };
    if before == 0 || after <= before {
        say!("attack {name}: {before} single-step traps before the hypercall, {after} after it");
        hypercall::shutdown(96, "attack: TF lost");
    }
    works(name, format_args!("#DB traps delivered to our handler before and after a hypercall"))
}

/// An `iretq` to the very next instruction with RF set in the frame it
/// pops, so RF is still set while that instruction runs: the hypercall,
/// if `with_hypercall`, and then `cli`, whose #GP frame shows the RF we
/// had; else `cli` at once. Returns the frame's RFLAGS.
fn rf_then_cli(with_hypercall: bool) -> u64 {
    ATTACK_TRAPS.store(0, Ordering::Relaxed);
    // SAFETY: an `iretq` to ourselves at ring 1, on our own stack, with the
    // flags we have plus RF, to FLUSH_ASYNC or straight to `cli`, which
    // faults, and our handler resumes right after it. The frame's RIP is
    // picked before the `iretq`: nothing may run between it and the
    // instruction that must see RF.
    unsafe {
        faulting!(
            "mov {t}, rsp
             push {ss}
             push {t}
             pushfq
             or qword ptr [rsp], {rf}
             push {cs}
             lea {t}, [rip + 3f]
             lea {direct}, [rip + 4f]
             test {hypercall}, {hypercall}
             cmovz {t}, {direct}
             push {t}
             iretq
             3: ud2
             4: cli",
            t = out(reg) _,
            direct = out(reg) _,
            hypercall = in(reg) u64::from(with_hypercall),
            ss = const abi::GUEST_KERNEL_SS as u64,
            cs = const abi::GUEST_KERNEL_CS as u64,
            rf = const RF,
            inout("rax") abi::FLUSH_ASYNC => _,
        )
    };
    if ATTACK_TRAPS.load(Ordering::Relaxed) != 1 {
        hypercall::shutdown(96, "attack: no #GP");
    }
    ATTACK_RFLAGS.load(Ordering::Relaxed)
}

/// `cli` alone: the RF a #GP frame shows when nobody set it.
fn plain_cli() -> u64 {
    ATTACK_TRAPS.store(0, Ordering::Relaxed);
    // SAFETY: `cli` faults at ring 1; our handler resumes right after it.
    unsafe { faulting!("cli") };
    ATTACK_RFLAGS.load(Ordering::Relaxed)
}

/// RF: resume without instruction breakpoints for one instruction, and
/// cleared as soon as one completes, so only the frame of a fault on the
/// very next instruction can show it. Umbra does not keep it: the
/// hypercall comes back with it clear. Two controls say what the frame can
/// show: `cli` right after the `iretq`, and `cli` alone. (Hardware sets RF
/// in the frame of every fault, so under KVM all three show it set.)
fn rf_hypercall(name: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    install_handlers();
    let shown = |flags: u64| if flags & RF != 0 { "set" } else { "clear" };
    let (after_iretq, alone) = (rf_then_cli(false), plain_cli());
    say!(
        "attack {name}: RF {} in the #GP frame of cli right after the iretq, {} of cli alone",
        shown(after_iretq),
        shown(alone)
    );
    let after = rf_then_cli(true);
    works(name, format_args!("hypercall made with RF set; RF {} in the next #GP frame", shown(after)))
}

/// Sets every flag in GUEST_FLAGS, spins (flags untouched: `jrcxz` tests
/// nothing but rcx) until the exit count in our shared page moves, which
/// only the host's timer can make it do here, and returns the flags after.
fn across_host_interrupt() -> u64 {
    let exits = {
        let page = hypercall::shared_page();
        // SAFETY: a field of our own shared page.
        unsafe { &raw const (*page).exits }
    };
    // SAFETY: reads of our own shared page. rcx = exits - before, as
    // ~before + 1 + exits: `not` and `lea` leave the flags alone.
    unsafe {
        with_flags!(
            GUEST_FLAGS,
            "mov {before}, qword ptr [{exits}]
             not {before}
             2: mov rcx, qword ptr [{exits}]
             lea rcx, [rcx + {before} + 1]
             jrcxz 2b",
            exits = in(reg) exits,
            before = out(reg) _,
            out("rcx") _,
        )
    }
}

/// Sets the flags `set`, reads `at` (a page Umbra fills), and returns
/// what it read and the flags after.
fn read_with_flags(set: u64, at: u64) -> (u64, u64) {
    let read: u64;
    // SAFETY: a read of our own memory.
    let flags =
        unsafe { with_flags!(set, "mov {read}, qword ptr [{at}]", at = in(reg) at, read = out(reg) read) };
    (read, flags)
}

/// Sets every flag in GUEST_FLAGS and runs `cli`, whose #GP our handler
/// gets; returns the flags in its frame and the flags after its `iretq`.
fn across_trap() -> (u64, u64) {
    ATTACK_TRAPS.store(0, Ordering::Relaxed);
    let after: u64;
    // SAFETY: `cli` faults at ring 1, and our handler resumes right after
    // it; the last `popfq` restores the flags the block began with.
    unsafe {
        faulting!(
            "pushfq\npushfq\nor qword ptr [rsp], {set}\npopfq\ncli"; then "pushfq\npop {after}\npopfq",
            set = const GUEST_FLAGS,
            after = out(reg) after,
        )
    };
    if ATTACK_TRAPS.load(Ordering::Relaxed) != 1 || ATTACK_VECTOR.load(Ordering::Relaxed) != 13 {
        hypercall::shutdown(96, "attack: no #GP");
    }
    (ATTACK_RFLAGS.load(Ordering::Relaxed), after)
}

/// Every flag a ring-1 guest may set, through each kind of exit: each
/// must come back exactly, and nothing else with it.
fn flags_round_trip(name: &'static str, memory_size: u64, frames: Frames) {
    let (_, at) = untouched_alias(memory_size, frames);
    install_handlers();
    let check = |exit: &str, flags: u64| {
        let seen = flags & COMPARED;
        if seen != GUEST_FLAGS {
            say!(
                "attack {name}: after {exit}, lost {}, gained {}",
                Names(GUEST_FLAGS & !seen),
                Names(seen & !GUEST_FLAGS)
            );
            hypercall::shutdown(96, "attack: flags changed");
        }
    };
    let (before, after) = across_hypercall(GUEST_FLAGS);
    check("popfq (no exit)", before);
    check("a hypercall", after);
    let exits = hypercall::exits();
    let (_, after) = read_with_flags(GUEST_FLAGS, at);
    if hypercall::exits() == exits {
        say!("attack {name}: the read at {at:#x} did not exit: nothing was tested");
        hypercall::shutdown(96, "attack: no page fault");
    }
    check("a demand-filled page fault", after);
    let (framed, after) = across_trap();
    check("a #GP, in our handler's frame", framed);
    check("a #GP, after our handler's iretq", after);
    check("a host timer interrupt", across_host_interrupt());
    works(
        name,
        format_args!(
            "CF PF AF ZF SF DF OF AC ID kept across a hypercall, a demand-filled page fault, \
             a #GP to our handler and a host timer interrupt"
        ),
    )
}

pub const ATTACKS: &[Attack] = attack_table! {
    std_console, std_page_fault, std_trap, std_watchdog, std_shutdown,
    ac_hypercall, nt_hypercall, tf_hypercall, rf_hypercall, flags_round_trip,
};
