//! # Signals
//!
//! A signal sent to a process sets its bit in `pending` and wakes it if
//! it sleeps; it acts on the way back to user mode (`deliver`), the only
//! place a process's user registers are at hand. Then, for the lowest
//! pending signal the mask lets through: ignore it, end the process (the
//! default for most), or run its handler on a frame laid out as Linux's
//! `rt_sigframe`: the handler's return address (`sa_restorer`, which
//! glibc always sets, and which makes the rt_sigreturn call), a
//! `ucontext` holding every register, the mask to restore and a pointer
//! to the FPU/SSE state saved below it, then a `siginfo`.
//!
//! A blocking call that a signal interrupts returns the internal
//! `ERESTART`; delivery turns that into a restart of the call (the
//! handler has SA_RESTART, or no handler runs) or into EINTR.
//!
//! Stopping (SIGSTOP, SIGTSTP...) is not implemented: those signals are
//! ignored.

use super::super::proc::{MAX_PROCS, State, k};
use super::super::trap::{self, TrapFrame};
use super::task::{SIG_DFL, SIG_IGN, task, task_slot};
use super::{EINTR, mm, sys};
use crate::platform;

pub const SIGINT: u64 = 2;
pub const SIGQUIT: u64 = 3;
pub const SIGILL: u64 = 4;
pub const SIGTRAP: u64 = 5;
pub const SIGFPE: u64 = 8;
pub const SIGKILL: u64 = 9;
pub const SIGSEGV: u64 = 11;
pub const SIGPIPE: u64 = 13;
pub const SIGCHLD: u64 = 17;
pub const SIGCONT: u64 = 18;
pub const SIGSTOP: u64 = 19;
pub const SIGTSTP: u64 = 20;
pub const SIGTTIN: u64 = 21;
pub const SIGTTOU: u64 = 22;
pub const SIGURG: u64 = 23;
pub const SIGWINCH: u64 = 28;
pub const NSIG: u64 = 64;

const SA_SIGINFO: u64 = 4;
const SA_ONSTACK: u64 = 0x0800_0000;
const SA_RESTART: u64 = 0x1000_0000;
const SA_NODEFER: u64 = 0x4000_0000;
const SA_RESETHAND: u64 = 0x8000_0000;

pub fn bit(sig: u64) -> u64 {
    1 << (sig - 1)
}

/// Signals that may never be blocked, caught or ignored.
pub const UNBLOCKABLE: u64 = 1 << (SIGKILL - 1) | 1 << (SIGSTOP - 1);

/// What a signal does by default when nobody handles it.
fn ignored_by_default(sig: u64) -> bool {
    matches!(sig, SIGCHLD | SIGURG | SIGWINCH | SIGCONT | SIGSTOP | SIGTSTP | SIGTTIN | SIGTTOU)
}

/// Whether `sig` would do nothing at all in slot `index` now.
fn discarded(index: usize, sig: u64) -> bool {
    if sig == SIGKILL {
        return false;
    }
    let handler = task(index).actions[sig as usize].handler;
    handler == SIG_IGN || (handler == SIG_DFL && ignored_by_default(sig))
}

/// Sends `sig` to the process in slot `index`.
pub fn send(index: usize, sig: u64) {
    let kernel = k();
    let alive = matches!(kernel.procs[index].state, State::Runnable | State::Running | State::Waiting);
    if !kernel.procs[index].linux || !alive || task_slot(index).is_none() || sig == 0 || sig > NSIG {
        return;
    }
    if discarded(index, sig) {
        return;
    }
    task(index).pending |= bit(sig);
    if kernel.procs[index].state == State::Waiting && interrupting(index) {
        kernel.procs[index].state = State::Runnable;
        trap::clock_for_slice();
    }
}

/// Sends `sig` to every process in group `pgid`; false if there is none.
pub fn send_group(pgid: u64, sig: u64) -> bool {
    let mut found = false;
    for index in 1..MAX_PROCS {
        let p = &k().procs[index];
        if p.linux
            && matches!(p.state, State::Runnable | State::Running | State::Waiting)
            && task_slot(index).as_ref().is_some_and(|t| t.pgid == pgid)
        {
            found = true;
            send(index, sig);
        }
    }
    found
}

/// Whether a signal waits that should cut a sleep short.
pub fn interrupting(index: usize) -> bool {
    let t = task(index);
    t.pending & !(t.mask & !UNBLOCKABLE) != 0
}

/// A fault in user mode: the signal is forced through (unblocked, and
/// back to the default action if ignored), as Linux does.
pub fn force(sig: u64) {
    let me = k().current;
    let t = task(me);
    if t.mask & bit(sig) != 0 || t.actions[sig as usize].handler == SIG_IGN {
        t.mask &= !bit(sig);
        t.actions[sig as usize].handler = SIG_DFL;
    }
    t.pending |= bit(sig);
}

/// The frame layout: see the top of the file.
const UCONTEXT_SIZE: u64 = 304;
const SIGINFO_SIZE: u64 = 128;
const MCONTEXT_AT: usize = 40;
const SIGMASK_AT: usize = 296;
const FPSTATE_SIZE: u64 = 512;

/// Delivers what is pending to the current process, on its way back to
/// user mode with `frame`.
pub fn deliver(frame: &mut TrapFrame) {
    let me = k().current;
    loop {
        let t = task(me);
        let ready = t.pending & !(t.mask & !UNBLOCKABLE);
        if ready == 0 {
            break;
        }
        let sig = u64::from(ready.trailing_zeros()) + 1;
        t.pending &= !bit(sig);
        let action = t.actions[sig as usize];
        if sig != SIGKILL
            && (action.handler == SIG_IGN || (action.handler == SIG_DFL && ignored_by_default(sig)))
        {
            continue;
        }
        if sig == SIGKILL || action.handler == SIG_DFL {
            sys::exit_process(sig);
        }
        // A handler runs: an interrupted call restarts only with SA_RESTART.
        if let Some(number) = t.restart.take() {
            if action.flags & SA_RESTART != 0 {
                frame.rax = number;
                frame.rip -= 2;
            } else {
                frame.rax = (-EINTR) as u64;
            }
        }
        if push_frame(frame, sig, action.handler, action.flags, action.restorer, action.mask).is_err() {
            // No room for the frame: the process dies of it, as on Linux.
            sys::exit_process(SIGSEGV);
        }
        return;
    }
    // No handler ran: an interrupted call simply starts again.
    if let Some(number) = task(me).restart.take() {
        frame.rax = number;
        frame.rip -= 2;
    }
    if let Some(mask) = task(me).saved_mask.take() {
        task(me).mask = mask;
    }
}

fn push_frame(
    frame: &mut TrapFrame,
    sig: u64,
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
) -> Result<(), i64> {
    let me = k().current;
    let t = task(me);
    let (ss_sp, ss_size, ss_flags) = t.altstack;
    let on_alt = ss_size != 0 && frame.rsp > ss_sp && frame.rsp <= ss_sp + ss_size;
    let mut sp = if flags & SA_ONSTACK != 0 && ss_flags & 2 == 0 && ss_size != 0 && !on_alt {
        ss_sp + ss_size
    } else {
        frame.rsp.wrapping_sub(128) // the red zone
    };
    sp = sp.wrapping_sub(FPSTATE_SIZE) & !63;
    let fpstate = sp;
    let base = (sp.wrapping_sub(8 + UCONTEXT_SIZE + SIGINFO_SIZE) & !15).wrapping_sub(8);
    let uc = base + 8;
    let info = uc + UCONTEXT_SIZE;

    let mut fpu = platform::FpuArea::initial();
    platform::fpu_save(&mut fpu);
    mm::put(fpstate, &fpu.0)?;

    let old_mask = t.saved_mask.take().unwrap_or(t.mask);
    let mut ucontext = [0u8; UCONTEXT_SIZE as usize];
    let put =
        |bytes: &mut [u8], at: usize, value: u64| bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    put(&mut ucontext, 16, ss_sp);
    ucontext[24..28].copy_from_slice(&(if on_alt { 1u32 } else { ss_flags }).to_le_bytes());
    put(&mut ucontext, 32, ss_size);
    let f = frame;
    let registers = [
        f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15, f.rdi, f.rsi, f.rbp, f.rbx, f.rdx, f.rax,
        f.rcx, f.rsp, f.rip, f.rflags,
    ];
    for (i, value) in registers.iter().enumerate() {
        put(&mut ucontext, MCONTEXT_AT + 8 * i, *value);
    }
    // cs, gs, fs, ss as four 16-bit fields.
    let segments = f.cs | (f.ss << 48);
    put(&mut ucontext, MCONTEXT_AT + 144, segments);
    put(&mut ucontext, MCONTEXT_AT + 152, f.error);
    put(&mut ucontext, MCONTEXT_AT + 160, f.vector);
    put(&mut ucontext, MCONTEXT_AT + 168, old_mask);
    put(&mut ucontext, MCONTEXT_AT + 176, if f.vector == 14 { platform::fault_address() } else { 0 });
    put(&mut ucontext, MCONTEXT_AT + 184, fpstate);
    put(&mut ucontext, SIGMASK_AT, old_mask);
    let mut siginfo = [0u8; SIGINFO_SIZE as usize];
    siginfo[0..4].copy_from_slice(&(sig as u32).to_le_bytes());
    mm::put(uc, &ucontext)?;
    mm::put(info, &siginfo)?;
    mm::put_u64(base, restorer)?;

    let t = task(me);
    if flags & SA_NODEFER == 0 {
        t.mask |= bit(sig);
    }
    t.mask |= mask & !UNBLOCKABLE;
    if flags & SA_RESETHAND != 0 {
        t.actions[sig as usize].handler = SIG_DFL;
    }
    f.rip = handler;
    f.rsp = base;
    f.rdi = sig;
    f.rsi = if flags & SA_SIGINFO != 0 { info } else { 0 };
    f.rdx = if flags & SA_SIGINFO != 0 { uc } else { 0 };
    f.rax = 0;
    f.rflags &= !(0x400 | 0x100); // DF, TF
    Ok(())
}

/// rt_sigreturn: back to what the frame at the user stack saved.
pub fn sigreturn(frame: &mut TrapFrame) -> Result<u64, i64> {
    let uc = frame.rsp;
    let mut ucontext = [0u8; UCONTEXT_SIZE as usize];
    mm::get(uc, &mut ucontext)?;
    let get = |at: usize| u64::from_le_bytes(ucontext[at..at + 8].try_into().unwrap_or_default());
    let r = |i: usize| get(MCONTEXT_AT + 8 * i);
    let fpstate = get(MCONTEXT_AT + 184);
    if fpstate != 0 {
        let mut fpu = platform::FpuArea::initial();
        mm::get(fpstate, &mut fpu.0)?;
        // fxrstor faults on MXCSR's reserved bits.
        let mxcsr = u32::from_le_bytes(fpu.0[24..28].try_into().unwrap_or_default()) & 0xffbf;
        fpu.0[24..28].copy_from_slice(&mxcsr.to_le_bytes());
        platform::fpu_restore(&fpu);
    }
    frame.r8 = r(0);
    frame.r9 = r(1);
    frame.r10 = r(2);
    frame.r11 = r(3);
    frame.r12 = r(4);
    frame.r13 = r(5);
    frame.r14 = r(6);
    frame.r15 = r(7);
    frame.rdi = r(8);
    frame.rsi = r(9);
    frame.rbp = r(10);
    frame.rbx = r(11);
    frame.rdx = r(12);
    frame.rcx = r(14);
    frame.rsp = r(15);
    frame.rip = r(16);
    // Only the flags user mode may change; interrupts stay on.
    const USER_FLAGS: u64 = 0xcd5 | 0x40_0000 | 0x4_0000; // CF PF AF ZF SF TF DF OF, ID, AC
    frame.rflags = (frame.rflags & !USER_FLAGS) | (r(17) & USER_FLAGS);
    let t = task(k().current);
    t.mask = get(SIGMASK_AT) & !UNBLOCKABLE;
    t.restart = None;
    Ok(r(13))
}
