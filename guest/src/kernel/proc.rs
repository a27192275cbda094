//! # Processes: the table, the scheduler, fork, exit and wait
//!
//! A process is an address space, a kernel stack and a saved kernel
//! stack pointer. Each has its own 16 KiB kernel stack in the kernel half;
//! traps from its user mode land on top of it (the platform's kernel
//! stack is switched with the process), so a process asleep in the kernel
//! is simply a stack with a `kernel_switch` frame on it, xv6-style.
//!
//! Slot 0 is the kernel itself ("kernel main"): it starts the programs a
//! scenario names, waits for them like a parent, and reaps orphans. It
//! never enters user mode.
//!
//! Scheduling is round-robin over the table. The timer (IRQ 0, re-armed
//! every tick) asks for a reschedule; the switch happens when the trap
//! returns to user mode, never inside the kernel, so the kernel needs no
//! locks: it runs with interrupts off.
//!
//! Processes are named by where they come from, not by pid: a program
//! started by the kernel has the name it was given, and the n-th child a
//! process forks is its name plus `.n`. Names do not depend on the order
//! the scheduler happens to pick, so neither does any transcript.

use core::cell::UnsafeCell;

use umbra_abi as abi;

use super::mem::{self, Frames, PAGE, USER_STACK_TOP};
use super::trap::{self, TrapFrame};
use crate::platform;

pub const MAX_PROCS: usize = 128;
/// The slots the built-in scenarios use: their kernel stacks must fit
/// the smallest guests (4 MiB).
pub const SCENARIO_PROCS: usize = 32;
pub const KSTACK: u64 = 16 * 1024;
/// The scheduler's time slice: how often the clock ticks while several
/// processes can run.
pub const TICK_NS: u64 = 1_000_000;
/// How often it ticks while at most one can: with nobody to share the
/// CPU with, a tick only reads the console natively (Umbra interrupts for
/// input) and wakes sleepers, who have the clock come sooner themselves
/// (`trap::clock_by`). Under Umbra every tick is an exit, and where exits
/// are slow (this project's nested KVM: milliseconds each) a lone
/// program's 1 ms ticks took most of its time.
pub const LONE_TICK_NS: u64 = 20_000_000;
/// How far the heap may grow.
pub const HEAP_MAX: u64 = 256 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Free,
    Runnable,
    Running,
    Waiting,
    Zombie,
}

#[derive(Clone, Copy)]
pub struct Name {
    bytes: [u8; 40],
    len: usize,
}

impl Name {
    pub const fn empty() -> Name {
        Name { bytes: [0; 40], len: 0 }
    }

    pub fn from(text: &[u8]) -> Name {
        let mut name = Name::empty();
        name.push(text);
        name
    }

    fn push(&mut self, text: &[u8]) {
        for &byte in text {
            if self.len < self.bytes.len() {
                self.bytes[self.len] = byte;
                self.len += 1;
            }
        }
    }

    /// This name with `.n` appended.
    fn child(&self, n: u64) -> Name {
        let mut name = *self;
        name.push(b".");
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = n;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        name.push(&digits[at..]);
        name
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[derive(Clone, Copy)]
pub struct Proc {
    pub state: State,
    pub pid: u64,
    pub parent: usize,
    pub root: u64,
    /// The saved kernel stack pointer while switched out.
    ctx: u64,
    pub heap_start: u64,
    pub brk: u64,
    pub status: u64,
    pub name: Name,
    forks: u64,
    /// A Linux program (`kernel/linux/`), with its own FS base and FPU.
    pub linux: bool,
    pub fs_base: u64,
}

impl Proc {
    const fn empty() -> Proc {
        Proc {
            state: State::Free,
            pid: 0,
            parent: 0,
            root: 0,
            ctx: 0,
            heap_start: 0,
            brk: 0,
            status: 0,
            name: Name::empty(),
            forks: 0,
            linux: false,
            fs_base: 0,
        }
    }

    /// A free slot.
    pub const fn vacant() -> Proc {
        Proc::empty()
    }

    /// A runnable Linux process the kernel starts itself (init).
    pub fn linux(pid: u64, root: u64, name: &[u8]) -> Proc {
        Proc { state: State::Runnable, pid, root, name: Name::from(name), linux: true, ..Proc::empty() }
    }
}

pub struct Kernel {
    pub procs: [Proc; MAX_PROCS],
    pub current: usize,
    next_pid: u64,
    pub frames: Frames,
    pub kernel_root: u64,
    /// Guest-physical base of the kernel stacks, one per slot.
    pub kstacks: u64,
    pub need_resched: bool,
    /// Preemptions by the timer; scenarios check it is not zero.
    pub preemptions: u64,
    /// No "exited" lines: a benchmark's thousands of children would
    /// measure the console instead of the kernel.
    pub quiet: bool,
    pub ticking: bool,
    /// When the clock is next due to tick (ns since boot), while ticking.
    pub clock_due: u64,
    /// Who inherits orphans: slot 0 (kernel main), or Linux's init.
    pub reaper: usize,
    /// The slots in use, each with a kernel stack: up to `MAX_PROCS`.
    pub slots: usize,
    /// One past the highest slot ever handed out: the scheduler and the
    /// clock, which run on every tick, look no further.
    pub live: usize,
}

struct Cell(UnsafeCell<Kernel>);

// SAFETY: one CPU, and the kernel runs with interrupts off; an interrupt
// arriving in the kernel (only while it halts) touches nothing but flags.
unsafe impl Sync for Cell {}

static KERNEL: Cell = Cell(UnsafeCell::new(Kernel {
    procs: [Proc::empty(); MAX_PROCS],
    current: 0,
    next_pid: 1,
    frames: Frames::empty(),
    kernel_root: 0,
    kstacks: 0,
    need_resched: false,
    preemptions: 0,
    quiet: false,
    ticking: false,
    clock_due: 0,
    reaper: 0,
    slots: SCENARIO_PROCS,
    live: 1,
}));

/// Each slot's FPU/SSE registers while it is switched out (Linux programs
/// only: the built-in ones and the kernel use none).
struct FpuAreas(UnsafeCell<[platform::FpuArea; MAX_PROCS]>);

// SAFETY: as for `Cell`.
unsafe impl Sync for FpuAreas {}

static FPU: FpuAreas = FpuAreas(UnsafeCell::new([const { platform::FpuArea([0; 512]) }; MAX_PROCS]));

/// Slot `index`'s saved FPU state.
pub fn fpu_area(index: usize) -> &'static mut platform::FpuArea {
    // SAFETY: see `Cell`.
    unsafe { &mut (*FPU.0.get())[index] }
}

/// The kernel's state. One CPU, interrupts off in the kernel: there is
/// one user at a time. Callers do not hold the reference across a switch.
pub fn k() -> &'static mut Kernel {
    // SAFETY: see `Cell`.
    unsafe { &mut *KERNEL.0.get() }
}

impl Kernel {
    /// The kernel-half top of slot `index`'s kernel stack.
    pub fn kstack_top(&self, index: usize) -> u64 {
        mem::KERNEL_BASE + self.kstacks + (index as u64 + 1) * KSTACK
    }

    pub fn cur(&mut self) -> &mut Proc {
        &mut self.procs[self.current]
    }

    fn free_slot(&mut self) -> Option<usize> {
        let index = (1..self.slots).find(|&i| self.procs[i].state == State::Free)?;
        self.live = self.live.max(index + 1);
        Some(index)
    }
}

/// The frame a trap from user mode pushed at the top of slot `index`'s
/// kernel stack.
fn frame_of(index: usize) -> *mut TrapFrame {
    (k().kstack_top(index) - size_of::<TrapFrame>() as u64) as *mut TrapFrame
}

/// Lays out slot `index`'s kernel stack so that switching to it returns
/// to user mode through `frame`.
fn prepare_stack(index: usize, frame: TrapFrame) {
    let frame_at = frame_of(index);
    // SAFETY: the top of the slot's own kernel stack, unused while the slot
    // is being set up.
    unsafe { frame_at.write(frame) };
    // Below the frame: kernel_switch's six saved registers and its return
    // address, the trap return path.
    let words = frame_at as *mut u64;
    // SAFETY: as above, just below the frame.
    unsafe {
        words.sub(1).write(trap::return_path());
        for i in 2..=7 {
            words.sub(i).write(0);
        }
    }
    k().procs[index].ctx = words.wrapping_sub(7) as u64;
}

/// Starts program `image` as a new process named `name`, a child of the
/// kernel, with `arg` in `rdi`.
pub fn spawn(name: &[u8], image: &[u8], arg: u64) -> Result<u64, &'static str> {
    let kernel = k();
    let index = kernel.free_slot().ok_or("process table full")?;
    let root = mem::new_space(&mut kernel.frames, kernel.kernel_root).ok_or("out of memory")?;
    let loaded = match super::elf::load(&mut kernel.frames, root, image) {
        Ok(loaded) => loaded,
        Err(why) => {
            mem::free_space(&mut kernel.frames, root);
            mem::free_root(&mut kernel.frames, root);
            return Err(why);
        }
    };
    let pid = kernel.next_pid;
    kernel.next_pid += 1;
    let heap = loaded.end.next_multiple_of(PAGE);
    kernel.procs[index] = Proc {
        state: State::Runnable,
        pid,
        parent: 0,
        root,
        ctx: 0,
        heap_start: heap,
        brk: heap,
        status: 0,
        name: Name::from(name),
        forks: 0,
        linux: false,
        fs_base: 0,
    };
    let frame = TrapFrame {
        rdi: arg,
        rip: loaded.entry,
        cs: u64::from(abi::GUEST_USER_CS),
        rflags: trap::RFLAGS_IF | 2,
        rsp: USER_STACK_TOP,
        ss: u64::from(abi::GUEST_USER_SS),
        ..TrapFrame::default()
    };
    prepare_stack(index, frame);
    Ok(pid)
}

/// fork: a copy of the current process, returning 0 in the child.
pub fn fork(frame: &TrapFrame) -> Option<u64> {
    let kernel = k();
    let index = kernel.free_slot()?;
    let parent = kernel.current;
    let root = mem::fork_space(&mut kernel.frames, kernel.kernel_root, kernel.procs[parent].root)?;
    let pid = kernel.next_pid;
    kernel.next_pid += 1;
    kernel.procs[parent].forks += 1;
    let name = kernel.procs[parent].name.child(kernel.procs[parent].forks);
    kernel.procs[index] =
        Proc { state: State::Runnable, pid, parent, root, name, forks: 0, ctx: 0, ..kernel.procs[parent] };
    prepare_stack(index, TrapFrame { rax: 0, ..*frame });
    if kernel.procs[parent].linux {
        // The live registers are the parent's: the child starts with them.
        platform::fpu_save(fpu_area(index));
    }
    // Two can run now: the clock slices their time.
    trap::clock_for_slice();
    Some(pid)
}

/// Points a freshly forked child's user stack at `stack` (clone with a
/// stack of its own).
pub fn set_user_stack(index: usize, stack: u64) {
    // SAFETY: the frame `prepare_stack` wrote at the top of the child's
    // kernel stack; the child has not run yet.
    unsafe { (*frame_of(index)).rsp = stack };
}

/// Starts a process in slot `index` (already filled in) at `frame`.
pub fn start(index: usize, frame: TrapFrame) {
    prepare_stack(index, frame);
}

/// A free slot and a fresh pid, for a Linux program the kernel starts.
pub fn new_slot() -> Option<(usize, u64)> {
    let kernel = k();
    let index = kernel.free_slot()?;
    let pid = kernel.next_pid;
    kernel.next_pid += 1;
    Some((index, pid))
}

/// Ends the current process with `status`; never returns.
pub fn exit(status: u64) -> ! {
    let kernel = k();
    let me = kernel.current;
    assert!(me != 0, "the kernel cannot exit");
    let root = kernel.procs[me].root;
    mem::free_space(&mut kernel.frames, root);
    // The space is current: drop whatever the shadow still holds of it.
    platform::flush_user();
    kernel.procs[me].status = status;
    kernel.procs[me].state = State::Zombie;
    let reaper = if kernel.reaper == me { 0 } else { kernel.reaper };
    for p in kernel.procs.iter_mut() {
        if p.parent == me && p.state != State::Free {
            p.parent = reaper;
        }
    }
    let parent = kernel.procs[me].parent;
    if kernel.procs[parent].state == State::Waiting {
        kernel.procs[parent].state = State::Runnable;
    }
    // Orphaned zombies are the reaper's now.
    if kernel.procs.iter().any(|p| p.parent == reaper && p.state == State::Zombie)
        && kernel.procs[reaper].state == State::Waiting
    {
        kernel.procs[reaper].state = State::Runnable;
    }
    schedule();
    unreachable!("a zombie was scheduled");
}

/// wait: reaps a child that has ended, sleeping until one has. None when
/// there are no children.
pub fn wait() -> Option<(u64, u64)> {
    loop {
        let kernel = k();
        let me = kernel.current;
        let mut children = false;
        for index in 1..MAX_PROCS {
            let p = kernel.procs[index];
            if p.parent != me || p.state == State::Free {
                continue;
            }
            if p.state == State::Zombie {
                mem::free_root(&mut kernel.frames, p.root);
                kernel.procs[index] = Proc::empty();
                return Some((p.pid, p.status));
            }
            children = true;
        }
        if !children {
            return None;
        }
        kernel.procs[me].state = State::Waiting;
        schedule();
    }
}

/// Gives up the CPU; back when the round comes round.
pub fn yield_now() {
    k().cur().state = State::Runnable;
    schedule();
}

/// The first runnable slot after `me`, round the table (`me` itself last).
///
/// A plain loop on purpose: it runs on every clock tick, and on a nested
/// hypervisor that emulates the kernel's instructions one at a time the
/// iterator chain it replaced (not inlined in a build for size) cost
/// several times as many, enough to starve the programs.
fn next_runnable(procs: &[Proc], me: usize) -> Option<usize> {
    let mut index = me;
    loop {
        index += 1;
        if index == procs.len() {
            index = 0;
        }
        if procs[index].state == State::Runnable {
            return Some(index);
        }
        if index == me {
            return None;
        }
    }
}

/// Runs the next runnable process (maybe this one again).
pub fn schedule() {
    let kernel = k();
    let me = kernel.current;
    let next = loop {
        match next_runnable(&kernel.procs[..kernel.live], me) {
            Some(next) => break next,
            // Everybody sleeps: wait for the clock (or another interrupt)
            // to wake somebody. Without a clock nothing ever would.
            None if kernel.ticking => {
                platform::interrupts(true);
                platform::halt();
                platform::interrupts(false);
            }
            None => panic!("nothing can run"),
        }
    };
    kernel.procs[next].state = State::Running;
    if next == me {
        return;
    }
    if kernel.procs[me].linux && kernel.procs[me].state != State::Zombie {
        platform::fpu_save(fpu_area(me));
    }
    if kernel.procs[next].linux {
        platform::fpu_restore(fpu_area(next));
        platform::set_fs_base(kernel.procs[next].fs_base);
    }
    kernel.current = next;
    let root = kernel.procs[next].root;
    match (root != kernel.procs[me].root, next != 0) {
        // SAFETY: every address space maps the kernel identically, and the
        // stack is the slot's own.
        (true, true) => unsafe { platform::switch_context(root, kernel.kstack_top(next), KSTACK) },
        // SAFETY: every address space maps the kernel identically.
        (true, false) => unsafe { platform::switch_root(root) },
        (false, true) => platform::set_kernel_stack(kernel.kstack_top(next), KSTACK),
        (false, false) => {}
    }
    let from = &raw mut kernel.procs[me].ctx;
    let to = kernel.procs[next].ctx;
    // SAFETY: `to` is a stack laid out by `prepare_stack` or by an earlier
    // switch away from it.
    unsafe { trap::kernel_switch(from, to) };
}
