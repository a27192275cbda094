//! # Traps: faults, the clock and system calls
//!
//! Every vector the kernel handles enters through a 16-byte stub in
//! `kernel_vectors` that pushes an error code (0 where the CPU pushes
//! none) and the vector number, then `kernel_trap_common`, which turns
//! interrupts off, saves every register into a [`TrapFrame`] and calls
//! [`kernel_trap`]. The way back restores them and returns with `iretq`,
//! turning interrupts back on first if the interrupted code had them on.
//! That last store and the `iretq` are the window Umbra must not
//! interrupt: the `iretq` is registered as the interrupt return.
//!
//! The system-call gate is a trap gate user mode may raise (`int 0x80`),
//! so interrupts are still on at its first instruction; the first thing
//! the common path does is turn them off. An interrupt that slips in
//! before that lands on the same kernel stack, from ring 1, and only sets
//! flags, so it does no harm.
//!
//! A Linux program (`linux/`) takes other paths through the same
//! handler: its `syscall` arrives as #UD and goes to `linux::sys`, its
//! page faults are resolved against its mappings (`linux::mm`), and any
//! other fault becomes a signal; signals are delivered on every way back
//! to its user mode.
//!
//! Everything here runs in the kernel half: the stubs are installed at
//! their kernel-half aliases, and RIP-relative references follow.

use super::mem::{self, Fault, PAGE, USER_BASE, USER_STACK_MAX, USER_STACK_TOP};
use super::proc::{self, HEAP_MAX, LONE_TICK_NS, State, TICK_NS, k};
use crate::platform::{self, Gate};

pub const RFLAGS_IF: u64 = 1 << 9;
pub const SYSCALL_VECTOR: u8 = 0x80;
/// What the direct `syscall` entry's frame says for its vector: above
/// every real one.
const DIRECT_SYSCALL: u64 = 0x100;
const CLOCK_VECTOR: u8 = 32;
/// Umbra's console input (`CONSOLE_IRQ`); natively the UART's interrupt
/// stays off, and nothing raises it.
const CONSOLE_VECTOR: u8 = (umbra_abi::IRQ_BASE + umbra_abi::CONSOLE_IRQ) as u8;
// The stub below pushes it as a number.
const _: () = assert!(CONSOLE_VECTOR == 36);

/// The registers of the interrupted code, as the stubs save them.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct TrapFrame {
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
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// The stubs: vectors 0 to 32 at 16-byte steps, then the system call,
// then the console's interrupt.
// `kernel_switch(from, to)` saves the callee-saved registers and the stack
// pointer in `*from` and resumes the stack `to`.
core::arch::global_asm!(
    r#"
    .pushsection .text.kernel_traps, "ax"
    .balign 16
    .global kernel_vectors
kernel_vectors:
    .set vec, 0
    .rept 33
    .balign 16
    .if vec == 8 || vec == 10 || vec == 11 || vec == 12 || vec == 13 || vec == 14 || vec == 17 || vec == 21
    .else
    pushq $0
    .endif
    pushq $vec
    jmp kernel_trap_common
    .set vec, vec + 1
    .endr
    .balign 16
    pushq $0
    pushq $0x80
    jmp kernel_trap_common
    .balign 16
    pushq $0
    pushq $(32 + 4)
    jmp kernel_trap_common

    /* `syscall` from user mode, by Umbra's direct path: the frame `int n`
       pushes is on the stack, rcx and r11 as the instruction left them.
       Its vector is one no gate has. */
    .balign 16
    .global kernel_syscall_entry
kernel_syscall_entry:
    pushq $0
    pushq $0x100
    jmp kernel_trap_common

    .global kernel_trap_common, kernel_trap_return, kernel_noirq_iret
kernel_trap_common:
    /* For debuggers: what called this is no function but an interrupted
       context, so a backtrace ends here instead of wandering into it. */
    .cfi_startproc
    .cfi_undefined rip
    movl $0, GUEST_SHARED_PAGE+4(%rip)
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    cld
    call kernel_trap
kernel_trap_return:
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    testl $0x200, 16(%rsp)
    jz 1f
    movl $1, GUEST_SHARED_PAGE+4(%rip)
kernel_noirq_iret:
    iretq
1:  iretq
    .cfi_endproc

    .global kernel_switch
kernel_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .popsection
"#,
    options(att_syntax)
);

unsafe extern "C" {
    fn kernel_vectors();
    fn kernel_syscall_entry();
    fn kernel_trap_return();
    fn kernel_noirq_iret();
    /// Saves the current kernel context in `*from` and resumes `to`.
    pub fn kernel_switch(from: *mut u64, to: u64);
}

/// Where a new process's first switch returns to: the trap return path.
pub fn return_path() -> u64 {
    mem::high(kernel_trap_return as *const () as u64)
}

fn stub(index: u64) -> u64 {
    mem::high(kernel_vectors as *const () as u64) + 16 * index
}

/// Installs every handler.
pub fn install() {
    let interrupt = Gate { trap: false, user: false };
    for vector in 0..32u8 {
        if !matches!(vector, 2 | 8 | 18) {
            platform::set_trap_handler(vector, stub(u64::from(vector)), interrupt);
        }
    }
    platform::set_trap_handler(CLOCK_VECTOR, stub(32), interrupt);
    platform::set_trap_handler(SYSCALL_VECTOR, stub(33), Gate { trap: true, user: true });
    // Without a handler, console input would stay pending and wake every
    // HALT at once.
    platform::set_trap_handler(CONSOLE_VECTOR, stub(34), interrupt);
    // Under Umbra the handlers went in as one batch: installed now.
    platform::sync();
    platform::set_interrupt_return(mem::high(kernel_noirq_iret as *const () as u64));
    platform::set_syscall_entry(mem::high(kernel_syscall_entry as *const () as u64));
}

/// Starts the scheduler's clock.
pub fn start_clock() {
    k().ticking = true;
    arm_clock(TICK_NS);
}

/// Stops it.
pub fn stop_clock() {
    k().ticking = false;
    platform::set_timer(0);
}

fn arm_clock(delta_ns: u64) {
    k().clock_due = platform::now_ns().saturating_add(delta_ns);
    platform::set_timer(delta_ns);
}

/// Makes sure the clock ticks by `deadline` (ns since boot): a sleeper's.
pub fn clock_by(deadline: u64) {
    let kernel = k();
    if kernel.ticking && deadline < kernel.clock_due {
        arm_clock(deadline.saturating_sub(platform::now_ns()).max(1));
    }
}

/// A process became runnable (forked, woken), maybe beside another: the
/// clock ticks within a time slice, to share the CPU between them.
pub fn clock_for_slice() {
    clock_by(platform::now_ns().saturating_add(TICK_NS));
}

/// After a tick, when the next one is due: a time slice while others
/// wait to run (or, natively, while nobody runs), else the lone tick, or
/// the first sleeper's deadline if that comes sooner.
fn next_tick_ns() -> u64 {
    let kernel = k();
    let mut runnable = 0;
    for proc in &kernel.procs[..kernel.live] {
        if matches!(proc.state, State::Runnable | State::Running) {
            runnable += 1;
        }
    }
    // Natively the tick is also how typed bytes are found (the UART's
    // interrupt stays off), so an idle machine keeps looking every
    // millisecond; under Umbra input comes with an interrupt.
    let idle_and_polling = runnable == 0 && !platform::console_interrupts();
    if runnable > 1 || idle_and_polling {
        return TICK_NS;
    }
    match super::linux::next_wake() {
        0 => LONE_TICK_NS,
        wake => wake.saturating_sub(platform::now_ns()).clamp(1, LONE_TICK_NS),
    }
}

fn vector_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM no math",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF math fault",
        17 => "#AC alignment check",
        19 => "#XM SIMD fault",
        _ => "exception",
    }
}

/// Called by the stubs with the saved registers.
#[unsafe(no_mangle)]
extern "C" fn kernel_trap(frame: &mut TrapFrame) {
    let from_user = frame.cs & 3 == 3;
    match frame.vector {
        v if v == u64::from(SYSCALL_VECTOR) && k().cur().linux => {
            // Linux's int 0x80 is the 32-bit ABI, which we do not offer.
            frame.rax = (-super::linux::ENOSYS) as u64;
        }
        v if v == u64::from(SYSCALL_VECTOR) => syscall(frame),
        v if v == u64::from(CLOCK_VECTOR) => {
            let kernel = k();
            if kernel.ticking {
                kernel.need_resched = true;
                if from_user {
                    kernel.preemptions += 1;
                }
                super::linux::tick();
                arm_clock(next_tick_ns());
            }
        }
        v if v == u64::from(CONSOLE_VECTOR) => super::linux::terminal::pump(),
        6 if from_user && k().cur().linux && is_linux_syscall(frame.rip) => {
            // `syscall` raises #UD (EFER.SCE is clear): do what it would
            // have done, then the call.
            frame.rip += 2;
            frame.rcx = frame.rip;
            frame.r11 = frame.rflags;
            super::linux::sys::syscall(frame);
        }
        6 if from_user && k().cur().linux && frame.rip == mem::SYSCALL_LANDING => {
            // A `syscall` that jumped to LSTAR (`platform::set_syscall_landing`):
            // rcx holds the return address and r11 the flags.
            const USER_FLAGS: u64 = 0xcd5 | 0x4_0000;
            frame.rip = frame.rcx;
            frame.rflags = (frame.rflags & !USER_FLAGS) | (frame.r11 & USER_FLAGS);
            super::linux::sys::syscall(frame);
        }
        // A Linux program's `syscall`, straight from user mode (Umbra's
        // direct path): rip, rcx and r11 are already as the instruction
        // leaves them.
        DIRECT_SYSCALL if k().cur().linux => super::linux::sys::syscall(frame),
        // Anyone else's: no system call of ours, and an invalid opcode,
        // as it is natively.
        DIRECT_SYSCALL => kill(vector_name(6), frame.rip - 2, None, 128 + 6),
        vector if from_user && k().cur().linux => linux_fault(frame, vector),
        14 => page_fault(frame, from_user),
        6 if from_user && is_syscall_instruction(frame.rip) => {
            // Some nested hypervisors (this project's KVM test machines
            // among them) raise #UD for `int 0x80` from ring 3 instead of
            // taking the gate. Umbra copes with that for its guests; the
            // native backend meets it here, and does the same: the call,
            // then the next instruction.
            frame.rip += 2;
            syscall(frame);
        }
        vector if from_user => kill(vector_name(vector), frame.rip, None, 128 + vector),
        vector => {
            panic!("{} in the kernel at {:#x} (error {:#x})", vector_name(vector), frame.rip, frame.error)
        }
    }
    if from_user && core::mem::take(&mut k().need_resched) {
        proc::yield_now();
    }
    if from_user && k().cur().linux {
        super::linux::return_to_user(frame);
    }
}

/// Whether a Linux program's code at `rip` is `syscall` (0f 05).
fn is_linux_syscall(rip: u64) -> bool {
    let mut bytes = [0u8; 2];
    super::linux::mm::get(rip, &mut bytes).is_ok() && bytes == [0x0f, 0x05]
}

/// A fault in a Linux program: a page to fill, or a signal.
fn linux_fault(frame: &TrapFrame, vector: u64) {
    use super::linux::signal;
    let sig = match vector {
        14 => {
            let va = platform::fault_address();
            let kernel = k();
            let root = kernel.procs[kernel.current].root;
            let vmas = &super::linux::task::task(kernel.current).vmas;
            match super::linux::mm::resolve(root, vmas, va, frame.error & 2 != 0) {
                Ok(()) => return,
                Err(Fault::OutOfMemory) => signal::SIGKILL,
                Err(_) => signal::SIGSEGV,
            }
        }
        0 | 16 | 19 => signal::SIGFPE,
        6 => signal::SIGILL,
        1 | 3 => signal::SIGTRAP,
        17 => 7, // SIGBUS
        _ => signal::SIGSEGV,
    };
    if super::linux::tracing() {
        say!(
            "linux: {} at {:#x} (error {:#x}, address {:#x}): signal {sig}",
            vector_name(vector),
            frame.rip,
            frame.error,
            platform::fault_address()
        );
        let mut words = [0u8; 32];
        let _ = super::linux::mm::get(frame.rsp, &mut words);
        say!(
            "linux: rsp {:#x} {:x?} rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbp {:#x}",
            frame.rsp,
            words,
            frame.rax,
            frame.rbx,
            frame.rcx,
            frame.rdx,
            frame.rsi,
            frame.rdi,
            frame.rbp
        );
    }
    signal::force(sig);
}

/// Whether user code at `rip` is `int 0x80`. The address is the current
/// process's, so a missing page is filled or the process is killed.
fn is_syscall_instruction(rip: u64) -> bool {
    if !user_range(rip, 2) {
        return false;
    }
    // SAFETY: a checked user address of the current space.
    let bytes = unsafe { (rip as *const [u8; 2]).read_unaligned() };
    bytes == [0xcd, SYSCALL_VECTOR]
}

/// Ends the current process for a fault, saying why.
fn kill(what: &str, rip: u64, address: Option<u64>, status: u64) -> ! {
    let name = k().cur().name;
    let name = crate::platform::console::Printable(name.bytes());
    match address {
        Some(address) => say!("[{name}] killed: {what} at {rip:#x}, address {address:#x}"),
        None => say!("[{name}] killed: {what} at {rip:#x}"),
    }
    proc::exit(status)
}

/// Whether a missing page at `va` may be filled with zeros: it lies in
/// the heap or the stack.
fn may_grow(va: u64) -> bool {
    let p = k().cur();
    (p.heap_start..p.brk).contains(&va) || (USER_STACK_TOP - USER_STACK_MAX..USER_STACK_TOP).contains(&va)
}

fn page_fault(frame: &TrapFrame, from_user: bool) {
    let va = platform::fault_address();
    let write = frame.error & 2 != 0;
    let user_address = (USER_BASE..USER_STACK_TOP).contains(&va);
    let outcome = if user_address && k().current != 0 {
        let kernel = k();
        let grow = may_grow(va);
        let root = kernel.procs[kernel.current].root;
        mem::handle_fault(&mut kernel.frames, root, va, write, grow)
    } else {
        Fault::Bad
    };
    match outcome {
        Fault::DemandZero | Fault::CopyOnWrite => {}
        Fault::OutOfMemory => kill("out of memory", frame.rip, Some(va), 137),
        Fault::Bad if from_user => kill("#PF page fault", frame.rip, Some(va), 128 + 14),
        // The kernel touched a user address the process never had: the
        // pointers were checked, so this is a kernel bug.
        Fault::Bad => panic!("page fault in the kernel at {:#x}, address {va:#x}", frame.rip),
    }
}

// The system-call numbers, shared with `user/ulib.rs`.
include!("syscall_numbers.rs");

const ERROR: u64 = u64::MAX;

/// Whether `[addr, addr + len)` lies in memory the process may have:
/// its program, heap or stack. Missing pages there are filled on touch.
fn user_range(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else { return false };
    let p = k().cur();
    let stack = USER_STACK_TOP - USER_STACK_MAX;
    (addr >= USER_BASE && end <= p.brk) || (addr >= stack && end <= USER_STACK_TOP)
}

fn syscall(frame: &mut TrapFrame) {
    let (a0, a1) = (frame.rdi, frame.rsi);
    frame.rax = match frame.rax {
        SYS_EXIT => {
            if !k().quiet {
                let name = k().cur().name;
                say!("[{}] exited with status {a0}", crate::platform::console::Printable(name.bytes()));
            }
            proc::exit(a0)
        }
        SYS_WRITE => write(a0, a1),
        SYS_FORK => proc::fork(frame).unwrap_or(ERROR),
        SYS_WAIT => match proc::wait() {
            Some((pid, status)) => {
                if a0 != 0 && user_range(a0, 8) && a0 % 8 == 0 {
                    // SAFETY: a checked user address of the current space;
                    // a missing page faults and is filled.
                    unsafe { (a0 as *mut u64).write_volatile(status) };
                }
                pid
            }
            None => ERROR,
        },
        SYS_YIELD => {
            proc::yield_now();
            0
        }
        SYS_GETPID => k().cur().pid,
        SYS_SBRK => sbrk(a0 as i64),
        SYS_CLOCK => platform::now_ns(),
        SYS_EXITS => platform::exits(),
        _ => ERROR,
    };
}

/// write: one console line, "guest: [name] " and the bytes.
fn write(addr: u64, len: u64) -> u64 {
    const MAX: usize = 512;
    if len > MAX as u64 || !user_range(addr, len) {
        return ERROR;
    }
    let mut line = [0u8; MAX + 64];
    let name = k().cur().name;
    let mut at = 0;
    for part in [b"guest: [".as_slice(), name.bytes(), b"] "] {
        line[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    for i in 0..len as usize {
        // SAFETY: a checked user address; a missing page faults and is
        // filled.
        line[at + i] = unsafe { ((addr + i as u64) as *const u8).read_volatile() };
    }
    platform::console(&line[..at + len as usize]);
    len
}

/// sbrk: moves the break; pages above a lowered break are freed.
fn sbrk(delta: i64) -> u64 {
    let kernel = k();
    let me = kernel.current;
    let (start, old) = (kernel.procs[me].heap_start, kernel.procs[me].brk);
    let Some(new) = old.checked_add_signed(delta) else { return ERROR };
    if new < start || new > start + HEAP_MAX {
        return ERROR;
    }
    if new > old && (new - old).div_ceil(PAGE) > kernel.frames.available() {
        return ERROR;
    }
    let root = kernel.procs[me].root;
    for page in (new.next_multiple_of(PAGE)..old.next_multiple_of(PAGE)).step_by(PAGE as usize) {
        mem::unmap_user(&mut kernel.frames, root, page);
    }
    platform::sync();
    kernel.procs[me].brk = new;
    old
}
