//! The direct path for `syscall`, and what a user program can throw at it.
//!
//! With a syscall entry registered (SET_SYSCALL_ENTRY), `syscall` from
//! ring 3 runs the switcher's stub at ring 0, which for one instruction
//! still has the user's stack pointer, then builds the frame `int n`
//! pushes on the guest kernel stack and drops to the entry at ring 1.
//! These attacks give that stub the worst a user can: a stack pointer
//! that is non-canonical or points into the switcher's own pages, the
//! trap flag, a `mov ss` just before, no kernel stack at all; and they
//! aim the entry itself where no guest handler may be. Each checks what
//! reached the entry, word by word.
//!
//! Under this project's nested KVM `syscall` never reaches the stub (it
//! stays at ring 3 and faults on fetching it); Umbra makes the call
//! itself then, and the entry gets the same frame, one exit dearer.

use core::mem::offset_of;
use core::sync::atomic::Ordering;

use umbra_abi::{self as abi, SharedPage};

use super::{
    ATTACK_CS, ATTACK_RFLAGS, ATTACK_RIP, ATTACK_STEPS, ATTACK_TRAPS, ATTACK_VECTOR, Attack, KERNEL_STACK,
    NON_CANONICAL, STATE_PAGE, SWITCHER_CODE_1, USER_CODE, attack_table, install_handlers, run_at_ring3,
    works,
};
use crate::platform::hypercall::{hypercall, shutdown};
use crate::probes::tables::{self, Frames, KERNEL_BASE, PAGE_SIZE};
use crate::probes::traps::{alias, handler_statics, load_idt_entry};

handler_statics! {
    /// What the syscall entry found on the third call: the frame's RSP
    /// and SS (its RIP, CS and RFLAGS go to ATTACK_RIP, ATTACK_CS and
    /// ATTACK_RFLAGS), where the frame lay; and Umbra's count of our exits
    /// as each call entered.
    SYSCALL_RSP = 0;
    SYSCALL_SS = 0;
    SYSCALL_FRAME = 0;
    SYSCALL_EXITS_FIRST = 0;
    SYSCALL_EXITS = 0;
}

// The entry. The user code makes its call three times: the first two
// return to it at once (after the first, every page the path touches is
// in the shadow, so whatever exits the third call costs are its own);
// the third records the frame and, like the other handlers for traps
// from user mode, abandons it for the kernel stack the attack saved.
core::arch::global_asm!(
    r#"
    .pushsection .text.guest_traps, "ax"
    .global attack_syscall
attack_syscall:
    movq GUEST_SHARED_PAGE+{exits}(%rip), %rax
    lock incq ATTACK_TRAPS(%rip)
    cmpq $3, ATTACK_TRAPS(%rip)
    je 1f
    movq %rax, SYSCALL_EXITS_FIRST(%rip)
    iretq
1:  movq %rax, SYSCALL_EXITS(%rip)
    movq $0x100, ATTACK_VECTOR(%rip)
    movq %rsp, SYSCALL_FRAME(%rip)
    movq (%rsp), %rax
    movq %rax, ATTACK_RIP(%rip)
    movq 8(%rsp), %rax
    movq %rax, ATTACK_CS(%rip)
    movq 16(%rsp), %rax
    movq %rax, ATTACK_RFLAGS(%rip)
    movq 24(%rsp), %rax
    movq %rax, SYSCALL_RSP(%rip)
    movq 32(%rsp), %rax
    movq %rax, SYSCALL_SS(%rip)
    movq ATTACK_KERNEL_RSP(%rip), %rsp
    jmp *ATTACK_RESUME(%rip)
    .popsection
"#,
    exits = const offset_of!(SharedPage, exits),
    options(att_syntax)
);

unsafe extern "C" {
    fn attack_syscall();
    fn attack_trap_db();
}

/// The vector our entry records: no gate has it.
const ENTRY_VECTOR: u64 = 0x100;
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;

fn set_syscall_entry(handler: u64) {
    // SAFETY: a request to Umbra; the handler is checked there.
    unsafe { hypercall(abi::SET_SYSCALL_ENTRY, handler, 0, 0, 0, 0) };
}

/// The top of the kernel stack `run_at_ring3` names.
fn kernel_stack_top() -> u64 {
    KERNEL_BASE + &raw const KERNEL_STACK as u64 + 16384
}

/// What reached the entry.
struct Entered {
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
    frame: u64,
    rcx: u64,
    r11: u64,
    /// Exits between the second call's entry and the third's: 0 on the
    /// direct path.
    exits: u64,
}

/// Registers our entry and a kernel stack (unless `with_stack` is
/// false), then runs `code` at ring 3; returns what reached the entry,
/// which must be the one trap that came back.
fn syscall_at_ring3(name: &str, memory_size: u64, frames: Frames, code: &[u8], with_stack: bool) -> Entered {
    let mut space = tables::build_and_switch(memory_size, frames);
    install_handlers();
    load_idt_entry(1, alias(attack_trap_db), abi::IDT_PRESENT | abi::IDT_TRAP_GATE);
    set_syscall_entry(alias(attack_syscall));
    if with_stack {
        // SAFETY: our own .bss, mapped writable by the kernel alias.
        unsafe { hypercall(abi::SET_STACK, kernel_stack_top(), 16384, 0, 0, 0) };
    }
    let (rcx, r11) = run_at_ring3(&mut space, code, false);
    let (traps, vector) = (ATTACK_TRAPS.load(Ordering::Relaxed), ATTACK_VECTOR.load(Ordering::Relaxed));
    if traps != 3 || vector != ENTRY_VECTOR {
        say!(
            "attack {name}: {traps} traps, the last vector {vector:#x}; expected the syscall entry, three times"
        );
        shutdown(96, "attack: wrong trap");
    }
    let exits = SYSCALL_EXITS_FIRST.load(Ordering::Relaxed);
    Entered {
        rip: ATTACK_RIP.load(Ordering::Relaxed),
        cs: ATTACK_CS.load(Ordering::Relaxed),
        rflags: ATTACK_RFLAGS.load(Ordering::Relaxed),
        rsp: SYSCALL_RSP.load(Ordering::Relaxed),
        ss: SYSCALL_SS.load(Ordering::Relaxed),
        frame: SYSCALL_FRAME.load(Ordering::Relaxed),
        rcx,
        r11,
        exits: SYSCALL_EXITS.load(Ordering::Relaxed).wrapping_sub(exits),
    }
}

/// The frame must be the one `int n` pushes from ring 3 for a call at
/// `rip_after - 2` on `user_rsp`, at the top of the kernel stack, with
/// rcx and r11 as `syscall` leaves them.
fn check_frame(name: &str, came: &Entered, rip_after: u64, user_rsp: u64) {
    let frame_at = kernel_stack_top() - 40;
    let problem = if came.rip != rip_after || came.rcx != rip_after {
        "rip"
    } else if came.cs != u64::from(abi::GUEST_USER_CS) || came.ss != u64::from(abi::GUEST_USER_SS) {
        "selectors"
    } else if came.rsp != user_rsp {
        "rsp"
    } else if came.rflags != came.r11 || came.rflags & RFLAGS_IF == 0 {
        "rflags"
    } else if came.frame != frame_at {
        "where the frame lay"
    } else {
        return;
    };
    say!(
        "attack {name}: wrong {problem}: frame at {:#x} (expected {frame_at:#x}): rip {:#x} cs {:#x} rflags {:#x} \
         rsp {:#x} ss {:#x}; rcx {:#x} r11 {:#x}; expected rip {rip_after:#x}, rsp {user_rsp:#x}",
        came.frame,
        came.rip,
        came.cs,
        came.rflags,
        came.rsp,
        came.ss,
        came.rcx,
        came.r11
    );
    shutdown(96, "attack: wrong syscall frame")
}

/// Where a frame came from: straight from the switcher, or made by Umbra.
fn how(came: &Entered) -> &'static str {
    if came.exits == 0 { "no exit" } else { "made by the host (the CPU did not take the direct path)" }
}

/// The ordinary call: `mov ecx, 0x1111; mov r11d, 0x2222; syscall`
/// (three times, as every attack here: see the entry).
fn syscall_direct(name: &'static str, memory_size: u64, frames: Frames) {
    let code = [0xb9, 0x11, 0x11, 0, 0, 0x41, 0xbb, 0x22, 0x22, 0, 0, 0x0f, 0x05, 0x0f, 0x05, 0x0f, 0x05];
    let came = syscall_at_ring3(name, memory_size, frames, &code, true);
    check_frame(name, &came, USER_CODE + code.len() as u64, USER_CODE + 2 * PAGE_SIZE);
    works(
        name,
        format_args!("the entry got the frame int n pushes at ring 1, rcx and r11 set: {}", how(&came)),
    )
}

/// `movabs rsp, IMM64; syscall`, the user's stack pointer `rsp`.
fn with_user_rsp(name: &'static str, memory_size: u64, frames: Frames, rsp: u64) -> Entered {
    let mut code = [0x48, 0xbc, 0, 0, 0, 0, 0, 0, 0, 0, 0x0f, 0x05, 0x0f, 0x05, 0x0f, 0x05];
    code[2..10].copy_from_slice(&rsp.to_le_bytes());
    let came = syscall_at_ring3(name, memory_size, frames, &code, true);
    check_frame(name, &came, USER_CODE + code.len() as u64, rsp);
    came
}

fn syscall_noncanonical_rsp(name: &'static str, memory_size: u64, frames: Frames) {
    with_user_rsp(name, memory_size, frames, NON_CANONICAL);
    works(name, format_args!("rsp {NON_CANONICAL:#x} reached the entry in the frame, untouched"))
}

fn syscall_rsp_at_switcher(name: &'static str, memory_size: u64, frames: Frames) {
    let rsp = STATE_PAGE + 0x800;
    with_user_rsp(name, memory_size, frames, rsp);
    works(
        name,
        format_args!("rsp {rsp:#x}, in the switcher's state page, reached the entry in the frame, untouched"),
    )
}

/// `pushfq; or qword [rsp], 0x100; popfq; syscall`: the trap flag on as
/// the instruction runs (and the second time, as the entry's `iretq`
/// gave it back). IA32_FMASK clears it on the way in, so no
/// single-step trap strikes at ring 0; the frame keeps the user's flags.
fn syscall_trap_flag(name: &'static str, memory_size: u64, frames: Frames) {
    let code =
        [0x9c, 0x48, 0x81, 0x0c, 0x24, 0x00, 0x01, 0x00, 0x00, 0x9d, 0x0f, 0x05, 0x0f, 0x05, 0x0f, 0x05];
    let came = syscall_at_ring3(name, memory_size, frames, &code, true);
    check_frame(name, &came, USER_CODE + code.len() as u64, USER_CODE + 2 * PAGE_SIZE);
    let steps = ATTACK_STEPS.load(Ordering::Relaxed);
    if came.rflags & RFLAGS_TF == 0 || steps != 0 {
        say!("attack {name}: rflags {:#x} in the frame, {steps} single-step traps", came.rflags);
        shutdown(96, "attack: the trap flag went astray");
    }
    works(name, format_args!("TF set in the frame's rflags, and no single-step trap on the way in"))
}

/// `push 0x2b; pushfq; or qword [rsp], 0x100; popfq; mov ss, [rsp];
/// syscall`: a `mov ss` holds back the debug trap it would raise until
/// after the next instruction, which is `syscall`: on hardware the trap
/// comes due at ring 0, in the switcher's stub. Umbra makes the call
/// itself then; either way the entry gets the frame.
fn syscall_mov_ss_trap_flag(name: &'static str, memory_size: u64, frames: Frames) {
    let code = [
        0x6a, 0x2b, // push 0x2b
        0x9c, // pushfq
        0x48, 0x81, 0x0c, 0x24, 0x00, 0x01, 0x00, 0x00, // or qword [rsp], 0x100
        0x9d, // popfq
        0x8e, 0x14, 0x24, // mov ss, [rsp]
        0x0f, 0x05, // syscall
        0x0f, 0x05, // syscall
        0x0f, 0x05, // syscall
    ];
    let came = syscall_at_ring3(name, memory_size, frames, &code, true);
    check_frame(name, &came, USER_CODE + code.len() as u64, USER_CODE + 2 * PAGE_SIZE - 8);
    say!("attack {name}: {} single-step traps; {}", ATTACK_STEPS.load(Ordering::Relaxed), how(&came));
    if came.rflags & RFLAGS_TF == 0 {
        say!("attack {name}: rflags {:#x} in the frame", came.rflags);
        shutdown(96, "attack: the trap flag went astray");
    }
    works(name, format_args!("the entry got the frame, TF set in its rflags"))
}

/// A syscall entry and no kernel stack: the direct path stays closed, and
/// Umbra has nowhere to put the frame.
fn syscall_no_stack(name: &'static str, memory_size: u64, frames: Frames) {
    let code = [0x0f, 0x05];
    syscall_at_ring3(name, memory_size, frames, &code, false);
}

fn syscall_entry_switcher(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    set_syscall_entry(SWITCHER_CODE_1);
}

fn syscall_entry_user_half(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    set_syscall_entry(USER_CODE);
}

fn syscall_entry_noncanonical(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    set_syscall_entry(NON_CANONICAL);
}

pub const ATTACKS: &[Attack] = attack_table! {
    syscall_direct, syscall_noncanonical_rsp, syscall_rsp_at_switcher, syscall_trap_flag,
    syscall_mov_ss_trap_flag, syscall_no_stack, syscall_entry_switcher, syscall_entry_user_half,
    syscall_entry_noncanonical,
};
