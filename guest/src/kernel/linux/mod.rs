//! # The Linux personality: unmodified static Linux programs
//!
//! The same kernel that runs the built-in scenarios runs Linux programs
//! too: same frames, same address spaces, same scheduler and trap path.
//! What this folder adds is what a glibc-linked static binary expects:
//! Linux's system calls (`sys.rs`, reached through `syscall`, which
//! raises #UD from user mode here: the trap handler recognises it),
//! Linux's memory map and `execve` (`mm.rs`, `exec.rs`), open files,
//! pipes and per-process state (`task.rs`), and signals (`signal.rs`).
//! Files live in the in-memory filesystem (`../fs.rs`), unpacked at boot
//! from the cpio archive the machine was given.
//!
//! Boot, in order: take over the free memory and give a good share of it
//! to the kernel heap, build the kernel's tables and move to the higher
//! half (as the scenarios do), unpack the archive, print
//! `guest: linux: start`, and run `init=` (default `/init`) as pid 1 with
//! the console on descriptors 0-2. Kernel main then waits for init like a
//! parent; when init ends it prints how, and shuts the machine down with
//! init's status (128 + the signal if a signal killed it).

pub mod exec;
pub mod mm;
pub mod pagecache;
pub mod signal;
pub mod sys;
pub mod task;
pub mod terminal;

use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use super::fs::Fs;
use super::heap::HEAP;
use super::mem::{self, PAGE};
use super::proc::{self, KSTACK, MAX_PROCS, State, k};
use super::trap::{self, TrapFrame};
use crate::platform;
use crate::platform::console::Printable;
use task::{Fd, Object, OpenFile, Task};

pub use super::fs::errno::*;
/// Internal: a blocking call a signal interrupted, restarted or turned
/// into EINTR when the signal is delivered (Linux's ERESTARTSYS).
pub const ERESTART: i64 = 512;

/// What the boot paths hand over (`main.rs`, `platform/native.rs`).
pub struct Boot<'a> {
    pub cmdline: &'a [u8],
    pub memory_size: u64,
    pub free_start: u64,
    pub free_end: u64,
    pub rootfs_pa: u64,
    pub rootfs_len: u64,
}

/// The share of free memory the heap gets (files live there).
const HEAP_SHARE_PERCENT: u64 = 45;
/// The status for a boot that cannot start init.
const STATUS_NO_INIT: u64 = 1;
/// CLOCK_REALTIME at boot: 2026-01-01 00:00:00 UTC (no RTC is read).
pub const EPOCH_AT_BOOT: u64 = 1_767_225_600;

const CMDLINE_MAX: usize = 512;

struct Globals {
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
    rootfs: (u64, u64),
    fs: Option<Fs>,
    /// Unimplemented calls by number.
    enosys: [u32; 512],
}

struct GlobalCell(UnsafeCell<Globals>);

// SAFETY: one CPU, the kernel runs with interrupts off.
unsafe impl Sync for GlobalCell {}

static GLOBALS: GlobalCell = GlobalCell(UnsafeCell::new(Globals {
    cmdline: [0; CMDLINE_MAX],
    cmdline_len: 0,
    rootfs: (0, 0),
    fs: None,
    enosys: [0; 512],
}));

fn globals() -> &'static mut Globals {
    // SAFETY: see `GlobalCell`.
    unsafe { &mut *GLOBALS.0.get() }
}

/// The filesystem.
pub fn fs() -> &'static mut Fs {
    globals().fs.as_mut().expect("the filesystem exists once Linux runs")
}

/// Counts an unimplemented call.
pub fn count_enosys(number: u64) {
    if let Some(count) = globals().enosys.get_mut(number as usize) {
        *count = count.saturating_add(1);
    }
}

/// The last byte a program wrote to the console, for the framing line.
static CONSOLE_LAST: AtomicU8 = AtomicU8::new(b'\n');

/// Writes bytes to the console as they are: the terminal's output, after
/// its processing (`terminal.rs`).
pub fn console_write(bytes: &[u8]) {
    if let Some(&last) = bytes.last() {
        CONSOLE_LAST.store(last, Ordering::Relaxed);
        platform::console(bytes);
    }
}

/// A small generator for getrandom and AT_RANDOM, seeded from the TSC.
static RANDOM: AtomicU64 = AtomicU64::new(0);

pub fn random_bytes(out: &mut [u8]) {
    let mut state = RANDOM.load(Ordering::Relaxed);
    if state == 0 {
        // SAFETY: rdtsc is allowed at every ring we run at.
        state = unsafe { core::arch::x86_64::_rdtsc() } | 1;
    }
    for chunk in out.chunks_mut(8) {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let value = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        chunk.copy_from_slice(&value.to_le_bytes()[..chunk.len()]);
    }
    RANDOM.store(state, Ordering::Relaxed);
}

/// Wall-clock time as (seconds, nanoseconds).
pub fn now() -> (i64, u32) {
    let ns = platform::now_ns();
    ((EPOCH_AT_BOOT + ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as u32)
}

/// What poll and select sleep on: every change of a pipe wakes it.
pub const POLL_CHANNEL: usize = 1;

/// Makes every task sleeping on `channel` runnable.
pub fn wake(channel: usize) {
    let kernel = k();
    let mut woken = false;
    for index in 1..kernel.live {
        if kernel.procs[index].state == State::Waiting
            && kernel.procs[index].linux
            && let Some(task) = task::task_slot(index)
            && task.channel == channel
        {
            kernel.procs[index].state = State::Runnable;
            woken = true;
        }
    }
    if woken {
        trap::clock_for_slice();
    }
}

/// Ticks in a row with nobody to run, for `log=debug`'s report of a
/// machine where everybody sleeps.
static IDLE_TICKS: AtomicU64 = AtomicU64::new(0);

/// Under `log=debug`, what every process waits for, once it has been
/// 5000 ticks since anybody could run.
fn report_if_stuck() {
    if !debug_logging() {
        return;
    }
    let kernel = k();
    let busy = kernel.procs.iter().any(|p| matches!(p.state, State::Runnable | State::Running));
    if busy {
        IDLE_TICKS.store(0, Ordering::Relaxed);
        return;
    }
    if IDLE_TICKS.fetch_add(1, Ordering::Relaxed) != 5000 {
        return;
    }
    for index in 1..MAX_PROCS {
        let p = &kernel.procs[index];
        if p.state == State::Free || !p.linux {
            continue;
        }
        match task::task_slot(index) {
            Some(t) => say!(
                "linux: stuck? pid {} ({:?}) parent slot {} channel {:#x} wake_at {} pending {:#x} mask {:#x}",
                p.pid,
                p.state,
                p.parent,
                t.channel,
                t.wake_at,
                t.pending,
                t.mask
            ),
            None => say!("linux: stuck? pid {} ({:?}) without a task", p.pid, p.state),
        }
    }
}

/// The earliest deadline a sleeper has set (0: nobody has one), so that
/// most ticks look at no process at all. It may be stale-early (that
/// sleeper was woken otherwise), never late.
static NEXT_WAKE: AtomicU64 = AtomicU64::new(0);

/// The current task sleeps until `deadline` (ns) at the latest; 0 clears it.
pub fn set_wake_at(deadline: u64) {
    task::task(k().current).wake_at = deadline;
    let next = NEXT_WAKE.load(Ordering::Relaxed);
    if deadline != 0 && (next == 0 || deadline < next) {
        NEXT_WAKE.store(deadline, Ordering::Relaxed);
        trap::clock_by(deadline);
    }
}

/// The earliest deadline a sleeper has set, 0 for none.
pub fn next_wake() -> u64 {
    NEXT_WAKE.load(Ordering::Relaxed)
}

/// The clock's tick: takes what was typed, and wakes the sleepers whose
/// time has come.
///
/// It runs a thousand times a second, and on a nested hypervisor that
/// emulates the guest kernel's instructions one by one every one of them
/// counts: a walk over all the slots on every tick starved the programs
/// there. So the walk happens only when a deadline has passed.
pub fn tick() {
    terminal::pump();
    report_if_stuck();
    let next = NEXT_WAKE.load(Ordering::Relaxed);
    let now = platform::now_ns();
    if next == 0 || now < next {
        return;
    }
    let kernel = k();
    let mut earliest = 0;
    for index in 1..kernel.live {
        if kernel.procs[index].state != State::Waiting || !kernel.procs[index].linux {
            continue;
        }
        let Some(task) = task::task_slot(index) else { continue };
        if task.wake_at == 0 {
            continue;
        }
        if task.wake_at <= now {
            kernel.procs[index].state = State::Runnable;
        } else if earliest == 0 || task.wake_at < earliest {
            earliest = task.wake_at;
        }
    }
    NEXT_WAKE.store(earliest, Ordering::Relaxed);
}

/// Sleeps the current task on `channel` until woken; Err(ERESTART) if a
/// signal is pending and not blocked (the caller decides to retry or not
/// by looping around its condition).
pub fn sleep_on(channel: usize) -> Result<(), i64> {
    let me = k().current;
    if signal::interrupting(me) {
        return Err(ERESTART);
    }
    task::task(me).channel = channel;
    k().procs[me].state = State::Waiting;
    proc::schedule();
    task::task(me).channel = 0;
    if signal::interrupting(me) {
        return Err(ERESTART);
    }
    Ok(())
}

unsafe extern "C" {
    fn kernel_enter_high(entry: u64, stack_top: u64) -> !;
}

/// Runs the Linux personality; never returns.
pub fn run(boot: Boot) -> ! {
    if !mem::image_fits_below_user() {
        say!("linux: the kernel image reaches past {:#x}, where user space starts", mem::LINUX_USER_BASE);
        platform::shutdown(99, "image too large")
    }
    let g = globals();
    g.cmdline_len = boot.cmdline.len().min(CMDLINE_MAX);
    g.cmdline[..g.cmdline_len].copy_from_slice(&boot.cmdline[..g.cmdline_len]);
    g.rootfs = (boot.rootfs_pa, boot.rootfs_len);
    let kernel = k();
    kernel.frames.init(boot.free_start, boot.free_end);
    kernel.frames.set_reclaim(pagecache::reclaim);
    kernel.slots = MAX_PROCS;
    kernel.kstacks = kernel.frames.contiguous(MAX_PROCS as u64 * KSTACK / PAGE);
    let heap_pages = kernel.frames.available() * HEAP_SHARE_PERCENT / 100;
    let heap = kernel.frames.take(heap_pages);
    HEAP.init((mem::KERNEL_BASE + heap) as usize, (mem::KERNEL_BASE + heap + heap_pages * PAGE) as usize);
    kernel.kernel_root = mem::build_kernel_tables(&mut kernel.frames, boot.memory_size);
    mem::make_syscall_landing(&mut kernel.frames);
    mem::enter_kernel_tables(kernel.kernel_root);
    kernel.procs[0].state = State::Running;
    kernel.procs[0].root = kernel.kernel_root;
    kernel.current = 0;
    let top = kernel.kstack_top(0);
    // SAFETY: linux_main never returns, and the stack is slot 0's own.
    unsafe { kernel_enter_high(mem::high(linux_main as *const () as u64), top) }
}

/// Splits the value of `init=` into words by the shell's simple rules:
/// '...' literal, "..." with \" \\ \$ escapes, backslash outside quotes.
fn split_words(line: &[u8]) -> Vec<Vec<u8>> {
    let mut words = Vec::new();
    let mut word = Vec::new();
    let mut in_word = false;
    let mut i = 0;
    while i < line.len() {
        let c = line[i];
        match c {
            b' ' | b'\t' | b'\n' => {
                if in_word {
                    words.push(core::mem::take(&mut word));
                    in_word = false;
                }
            }
            b'\'' => {
                in_word = true;
                i += 1;
                while i < line.len() && line[i] != b'\'' {
                    word.push(line[i]);
                    i += 1;
                }
            }
            b'"' => {
                in_word = true;
                i += 1;
                while i < line.len() && line[i] != b'"' {
                    if line[i] == b'\\' && i + 1 < line.len() && matches!(line[i + 1], b'"' | b'\\' | b'$') {
                        i += 1;
                    }
                    word.push(line[i]);
                    i += 1;
                }
            }
            b'\\' if i + 1 < line.len() => {
                in_word = true;
                i += 1;
                word.push(line[i]);
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
        i += 1;
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Where the word `init=` starts in the command line.
fn init_word(cmdline: &[u8]) -> Option<usize> {
    (0..cmdline.len())
        .find(|&i| cmdline[i..].starts_with(b"init=") && (i == 0 || cmdline[i - 1].is_ascii_whitespace()))
}

/// init's argv from the command line: everything after `init=`.
fn init_argv(cmdline: &[u8]) -> Vec<Vec<u8>> {
    match init_word(cmdline) {
        Some(at) => split_words(&cmdline[at + 5..]),
        None => alloc::vec![Vec::from(b"/init".as_slice())],
    }
}

/// init's environment: `HOME=/`, a `PATH` and `TERM=linux`, then every
/// `NAME=value` word before `init=` whose name is in capitals, which adds
/// to them or replaces one (Linux, too, hands init the words it does not
/// know that hold a `=`): `TERM=vt100 PS1='\w \$ ' init=/bin/sh`.
fn init_envp(cmdline: &[u8]) -> Vec<Vec<u8>> {
    let mut envp: Vec<Vec<u8>> = [b"HOME=/".as_slice(), b"PATH=/bin:/sbin:/usr/bin:/usr/sbin", b"TERM=linux"]
        .iter()
        .map(|s| Vec::from(*s))
        .collect();
    let before = &cmdline[..init_word(cmdline).unwrap_or(cmdline.len())];
    for word in split_words(before) {
        let Some(eq) = word.iter().position(|&b| b == b'=') else { continue };
        let name = &word[..eq];
        let capital = |b: &u8| b.is_ascii_uppercase() || *b == b'_';
        if !name.first().is_some_and(capital) || !name.iter().all(|b| capital(b) || b.is_ascii_digit()) {
            continue;
        }
        envp.retain(|old| !(old.starts_with(name) && old.get(eq) == Some(&b'=')));
        envp.push(word);
    }
    envp
}

/// `log=strace`: every system call and its result on the console.
pub fn tracing() -> bool {
    static TRACING: AtomicU8 = AtomicU8::new(2);
    match TRACING.load(Ordering::Relaxed) {
        2 => {
            let g = globals();
            let on = g.cmdline[..g.cmdline_len].split(u8::is_ascii_whitespace).any(|w| w == b"log=strace");
            TRACING.store(u8::from(on), Ordering::Relaxed);
            on
        }
        on => on == 1,
    }
}

fn debug_logging() -> bool {
    static DEBUG: AtomicU8 = AtomicU8::new(2);
    match DEBUG.load(Ordering::Relaxed) {
        2 => {
            let g = globals();
            let on = g.cmdline[..g.cmdline_len].split(u8::is_ascii_whitespace).any(|w| w == b"log=debug");
            DEBUG.store(u8::from(on), Ordering::Relaxed);
            on
        }
        on => on == 1,
    }
}

/// Stops the machine after init, or when init cannot start.
fn finish(status: u64) -> ! {
    trap::stop_clock();
    let dropped = terminal::dropped();
    if dropped > 0 {
        let longest = super::tty::INPUT_SIZE - 1;
        say!("linux: terminal: {dropped} typed bytes dropped (lines longer than its {longest} bytes)");
    }
    if debug_logging() {
        for (number, &count) in globals().enosys.iter().enumerate() {
            if count > 0 {
                say!("linux: unimplemented system call {number}: {count} times");
            }
        }
        let (used, total) = HEAP.usage();
        say!("linux: heap {used} of {total} bytes in use, {} frames free", k().frames.available());
    }
    platform::shutdown(status, "init ended")
}

/// Kernel main of the Linux personality, in the higher half.
extern "C" fn linux_main() -> ! {
    trap::install();
    let g = globals();
    let mut fs = Fs::new();
    let (pa, len) = g.rootfs;
    // SAFETY: the archive lies in guest memory, outside the free frames,
    // reached through the direct map.
    let archive = unsafe { core::slice::from_raw_parts(mem::ptr::<u8>(pa), len as usize) };
    if let Err(e) = fs.unpack_cpio(archive, now()) {
        say!("linux: the root filesystem archive is malformed (error {e})");
        platform::shutdown(STATUS_NO_INIT, "bad rootfs")
    }
    // Devices Fs::new does not make, unless the archive brought its own.
    if let Ok(dev) = fs.resolve(super::fs::ROOT, b"/dev", true) {
        for (name, minor) in [(b"zero".as_slice(), 5u64), (b"random", 8), (b"urandom", 9)] {
            let _ = fs.mknod_char(dev, name, 0o666, (1 << 8) | minor, now());
        }
    }
    g.fs = Some(fs);
    let cmdline = Vec::from(&g.cmdline[..g.cmdline_len]);
    let argv = init_argv(&cmdline);
    let Some(path) = argv.first().cloned() else {
        say!("linux: init= names no program");
        platform::shutdown(STATUS_NO_INIT, "no init")
    };
    let envp = init_envp(&cmdline);
    let init = match start_init(&path, argv, envp) {
        Ok(index) => index,
        Err(e) => {
            say!("linux: cannot run init {}: error {e}", Printable(&path));
            finish(STATUS_NO_INIT)
        }
    };
    k().reaper = init;
    terminal::start(k().procs[init].pid as u32);
    say!("linux: start");
    trap::start_clock();
    // Kernel main's child is init; orphans go to init, and only init's
    // own end hands its children here.
    let init_pid = k().procs[init].pid;
    let status = loop {
        match proc::wait() {
            Some((pid, status)) if pid == init_pid => break status,
            Some(_) => {}
            None => finish(STATUS_NO_INIT),
        }
    };
    if CONSOLE_LAST.load(Ordering::Relaxed) != b'\n' {
        platform::console(b"\n");
    }
    if status & 0x7f == 0 {
        say!("linux: init exited with status {}", (status >> 8) & 0xff);
        finish((status >> 8) & 0xff)
    }
    say!("linux: init killed by signal {}", status & 0x7f);
    finish(128 + (status & 0x7f))
}

/// Makes pid 1 from `path`, with the console on descriptors 0, 1 and 2.
fn start_init(path: &[u8], argv: Vec<Vec<u8>>, envp: Vec<Vec<u8>>) -> Result<usize, i64> {
    let (index, pid) = proc::new_slot().ok_or(EAGAIN)?;
    let mut task = Task::new();
    let console = fs().resolve(super::fs::ROOT, b"/dev/console", true).ok();
    if let Some(ino) = console {
        fs().open_ref(ino);
    }
    let file = alloc::rc::Rc::new(core::cell::RefCell::new(OpenFile {
        object: Object::Console,
        offset: 0,
        flags: 2,
        ino: console,
    }));
    for _ in 0..3 {
        task.fds.push(Some(Fd { file: file.clone(), cloexec: false }));
    }
    let (image, exe) = exec::load(task.cwd, path, argv, envp)?;
    task.exe = exe;
    task.comm = sys::comm_of(&task.exe);
    task.brk_start = image.brk;
    task.brk = image.brk;
    task.vmas = image.vmas;
    task.pgid = pid;
    task.sid = pid;
    task.start_ns = platform::now_ns();
    *task::task_slot(index) = Some(alloc::boxed::Box::new(task));
    let kernel = k();
    kernel.procs[index] = proc::Proc::linux(pid, image.root, b"init");
    *proc::fpu_area(index) = platform::FpuArea::initial();
    proc::start(index, sys::user_frame(image.entry, image.stack));
    Ok(index)
}

/// Called by the trap path on the way back to a Linux process's user
/// mode: delivers pending signals.
pub fn return_to_user(frame: &mut TrapFrame) {
    signal::deliver(frame);
}
