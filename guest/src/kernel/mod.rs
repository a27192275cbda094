//! # The process kernel: `test=showcase` and `test=scenario:NAME`
//!
//! This is where the guest stops being a proof of the ABI and becomes a
//! small kernel with processes. Boot, in order:
//!
//! 1. Take over the free memory (`mem::Frames`), set aside one 16 KiB
//!    kernel stack per process slot, build the kernel's tables (identity
//!    map and higher-half direct map) and switch to them.
//! 2. Jump to the higher half: from here on the kernel runs at
//!    `KERNEL_BASE + pa`, on slot 0's kernel stack.
//! 3. Install the trap handlers, start the programs the scenario names
//!    (ELF images built from `user/` and packed into this image), start
//!    the clock and wait for every program like a parent would.
//! 4. Check each program's exit status against what the scenario expects
//!    and shut down: 0 when all is as expected, 1 otherwise.
//!
//! Everything a program prints is one line per write, prefixed with its
//! name, and names are stable, so each program's transcript is the same
//! on every run, however the timer interleaves them.
//!
//! With a root filesystem and no `test=` word the kernel runs Linux
//! programs instead (`linux/`, with the filesystem in `fs.rs` and
//! `cpio.rs` and the heap in `heap.rs`): a second personality on the same
//! frames, address spaces, scheduler and trap path.

mod cpio;
mod elf;
// The filesystem is a library with a complete API (and its own host
// tests); not every constant and call of it has a user in the kernel.
#[allow(dead_code)]
pub mod fs;
mod heap;
pub mod linux;
// Public for its page-table entry bits and `KERNEL_BASE`, which the
// probes' own tables (`probes/tables.rs`) share.
pub mod mem;
mod proc;
mod trap;
// The terminal's line discipline is a library with a complete API (and
// its own host tests); not every constant of it has a user in the kernel.
#[allow(dead_code)]
mod tty;

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::platform;
use crate::platform::console::Printable;
use proc::{KSTACK, MAX_PROCS, State, k};

macro_rules! program {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $name)).as_slice()
    };
}

static HELLO: &[u8] = program!("hello");
static FORKTREE: &[u8] = program!("forktree");
static CRASH: &[u8] = program!("crash");
static SPINNER: &[u8] = program!("spinner");
static MEMTEST: &[u8] = program!("memtest");
static BENCH: &[u8] = program!("bench");
const PROGRAMS: usize = 6;

/// One program a scenario starts: its name, its image, its argument and
/// the exit status it must end with.
struct Start {
    name: &'static str,
    image: &'static [u8],
    arg: u64,
    status: u64,
}

const fn start(name: &'static str, image: &'static [u8], arg: u64, status: u64) -> Start {
    Start { name, image, arg, status }
}

struct Scenario {
    name: &'static str,
    programs: &'static [Start],
    /// The timer must have taken the CPU from user code at least once.
    needs_preemption: bool,
}

/// Killed processes end with 128 + the vector.
const KILLED_DE: u64 = 128;
const KILLED_UD: u64 = 128 + 6;
const KILLED_GP: u64 = 128 + 13;
const KILLED_PF: u64 = 128 + 14;

/// A scenario the timer need not preempt (most of them).
const fn scenario(name: &'static str, programs: &'static [Start]) -> Scenario {
    Scenario { name, programs, needs_preemption: false }
}

static SCENARIOS: &[Scenario] = &[
    scenario(
        "showcase",
        &[
            start("hello", HELLO, 0, 0),
            start("tree", FORKTREE, 2, 7),
            start("divzero", CRASH, 0, KILLED_DE),
            start("badptr", CRASH, 1, KILLED_PF),
            start("spin1", SPINNER, 1, 0),
            start("spin2", SPINNER, 2, 0),
        ],
    ),
    scenario(
        "hello",
        &[start("hello1", HELLO, 0, 0), start("hello2", HELLO, 7, 7), start("hello3", HELLO, 42, 42)],
    ),
    scenario("demand-zero", &[start("memtest", MEMTEST, 0, 0)]),
    scenario("cow", &[start("memtest", MEMTEST, 1, 0), start("tree", FORKTREE, 3, 15)]),
    Scenario {
        needs_preemption: true,
        ..scenario(
            "preempt",
            &[
                start("spin1", SPINNER, 1, 0),
                start("spin2", SPINNER, 2, 0),
                start("spin3", SPINNER, 3, 0),
                start("spin4", SPINNER, 4, 0),
            ],
        )
    },
    scenario(
        "kill",
        &[
            start("divzero", CRASH, 0, KILLED_DE),
            start("badptr", CRASH, 1, KILLED_PF),
            start("textwrite", CRASH, 2, KILLED_PF),
            start("privileged", CRASH, 3, KILLED_GP),
            start("badop", CRASH, 4, KILLED_UD),
            start("hello", HELLO, 0, 0),
            start("spin1", SPINNER, 1, 0),
        ],
    ),
    scenario("sbrk", &[start("memtest", MEMTEST, 2, 0)]),
    scenario("churn", &[start("memtest", MEMTEST, 3, 0)]),
];

/// The scenario kernel main runs (an index into `SCENARIOS`), or
/// [`BENCHMARK`].
static CHOSEN: AtomicUsize = AtomicUsize::new(0);
const BENCHMARK: usize = usize::MAX;

/// The benchmark's workloads, in the order of `user/bench.rs`.
const WORKLOADS: [&str; 6] = ["compute", "syscall", "yield", "touch", "fork", "mixed"];
/// Up to eight runs, from `bench:NAME=COUNT,...`: the `bench` program's
/// argument for each, the workload in the top byte and the count below.
static BENCH_RUNS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static BENCH_RUN_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Reads `NAME=COUNT,...` into `BENCH_RUNS`; false if a word is not one.
fn parse_benchmark(spec: &[u8]) -> bool {
    let mut count = 0;
    for word in spec.split(|&b| b == b',') {
        let mut parts = word.splitn(2, |&b| b == b'=');
        let (Some(name), Some(digits)) = (parts.next(), parts.next()) else { return false };
        let which = WORKLOADS.iter().position(|w| w.as_bytes() == name);
        let ops = crate::cmdline::decimal(digits).filter(|&n| n > 0 && n < 1 << 56);
        let (Some(which), Some(ops), true) = (which, ops, count < 8) else { return false };
        BENCH_RUNS[count].store((which as u64) << 56 | ops, Ordering::Relaxed);
        count += 1;
    }
    BENCH_RUN_COUNT.store(count, Ordering::Relaxed);
    count > 0
}

unsafe extern "C" {
    fn kernel_enter_high(entry: u64, stack_top: u64) -> !;
}

core::arch::global_asm!(
    r#"
    .pushsection .text.kernel_enter, "ax"
    .global kernel_enter_high
kernel_enter_high:
    movq %rsi, %rsp
    xorl %ebp, %ebp
    jmpq *%rdi
    .popsection
"#,
    options(att_syntax)
);

/// Runs scenario `name` (`showcase` is one too) in the free memory
/// `[free_start, free_end)` of `memory_size` bytes of guest memory.
pub fn run(name: &[u8], memory_size: u64, free_start: u64, free_end: u64) -> ! {
    let index = match name.strip_prefix(b"bench:") {
        Some(spec) if parse_benchmark(spec) => Some(BENCHMARK),
        Some(_) => {
            say!(
                "bad benchmark {}: want bench:NAME=COUNT,... with NAME one of {WORKLOADS:?}",
                Printable(name)
            );
            platform::shutdown(97, "bad benchmark")
        }
        None => SCENARIOS.iter().position(|s| s.name.as_bytes() == name),
    };
    let Some(index) = index else {
        say!("unknown scenario {}", Printable(name));
        platform::shutdown(97, "unknown scenario")
    };
    CHOSEN.store(index, Ordering::Relaxed);
    let kernel = k();
    kernel.frames.init(free_start, free_end);
    kernel.kstacks = kernel.frames.contiguous(kernel.slots as u64 * KSTACK / mem::PAGE);
    kernel.kernel_root = mem::build_kernel_tables(&mut kernel.frames, memory_size);
    mem::enter_kernel_tables(kernel.kernel_root);
    kernel.procs[0].state = State::Running;
    kernel.procs[0].root = kernel.kernel_root;
    kernel.current = 0;
    let top = kernel.kstack_top(0);
    // SAFETY: kernel main never returns, and the stack is slot 0's own.
    unsafe { kernel_enter_high(mem::high(kernel_main as *const () as u64), top) }
}

/// Kernel main, in the higher half.
extern "C" fn kernel_main() -> ! {
    trap::install();
    say!("kernel: running in the higher half at {:#x}, {PROGRAMS} programs packed", mem::KERNEL_BASE);
    let chosen = CHOSEN.load(Ordering::Relaxed);
    if chosen == BENCHMARK {
        benchmark()
    }
    let scenario = &SCENARIOS[chosen];
    let free_before = k().frames.available();
    let mut pids = [0u64; MAX_PROCS];
    for (i, program) in scenario.programs.iter().enumerate() {
        match proc::spawn(program.name.as_bytes(), program.image, program.arg) {
            Ok(pid) => pids[i] = pid,
            Err(why) => {
                say!("could not start {}: {why}", program.name);
                platform::shutdown(1, "spawn failed");
            }
        }
    }
    say!("scenario {}: {} programs started", scenario.name, scenario.programs.len());
    trap::start_clock();
    let mut failures = 0;
    while let Some((pid, status)) = proc::wait() {
        if let Some(i) = pids.iter().position(|&p| p == pid && p != 0) {
            let program = &scenario.programs[i];
            if status != program.status {
                failures += 1;
                say!("[{}] FAILED: status {status}, expected {}", program.name, program.status);
            }
        }
    }
    trap::stop_clock();
    // Every frame a program had must be back: page tables, COW copies,
    // the root itself.
    let leaked = free_before - k().frames.available();
    if leaked != 0 {
        failures += 1;
        say!("FAILED: {leaked} frames not freed");
    }
    if scenario.needs_preemption && k().preemptions == 0 {
        failures += 1;
        say!("FAILED: the timer never preempted a process");
    }
    if failures == 0 {
        say!("scenario {}: all {} programs ended as expected", scenario.name, scenario.programs.len());
        platform::shutdown(0, "scenario passed")
    }
    say!("scenario {}: {failures} checks failed", scenario.name);
    platform::shutdown(1, "scenario failed")
}

/// `bench:NAME=COUNT,...`: each workload in turn, alone on the machine,
/// with the clock ticking as it does for any other program. Each times
/// itself and prints its line (see `user/bench.rs`).
fn benchmark() -> ! {
    k().quiet = true;
    trap::start_clock();
    let mut failures = 0;
    for run in BENCH_RUNS.iter().take(BENCH_RUN_COUNT.load(Ordering::Relaxed)) {
        let arg = run.load(Ordering::Relaxed);
        let which = arg >> 56;
        let ok = match proc::spawn(b"bench", BENCH, arg) {
            Ok(pid) => proc::wait().is_some_and(|(done, status)| done == pid && status == 0),
            Err(_) => false,
        };
        if !ok {
            failures += 1;
            say!("benchmark {} failed", WORKLOADS[which as usize]);
        }
    }
    trap::stop_clock();
    if failures == 0 {
        say!("benchmark: done");
        platform::shutdown(0, "benchmark done")
    }
    platform::shutdown(1, "benchmark failed")
}
