//! The run loop on a simulated machine.
//!
//! [`Sim`] implements `hv_core::run::Machine` with plain memory, a clock
//! that only moves when a guest runs or the host sleeps, and guests that
//! are scripts: on each entry the "guest" takes the next step of its
//! script (a hypercall, made the way a real guest makes one, at a `ud2`;
//! or computing until the host's timer fires) and hands the exit back.
//! Everything else is hv-core's own code: loading the ELF image, the boot
//! information, the vCPU, the scheduler and what it prints.
//!
//! A script is chosen by the guest's number, which the simulated guest
//! reads from its own boot information (`guest={n}` on its command line),
//! so the boot-info block and the `{n}` substitution are checked on every
//! run too. The simulated machine also checks, on every entry, what the
//! real one relies on: the entering guest's shadow root, registers and
//! x87 state are its own, and the timer never runs longer than a host
//! tick.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::{self, Write};
use std::mem::offset_of;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use common::{POOL_BASE, Pool, Ram};
use hv_core::elf::LoadTarget;
use hv_core::run::{self, Exit, GuestImage, HOST_TICK_NS, Machine, QUIET_TICK_NS, RunConfig};
use hv_core::vcpu::{self, GuestRam};
use log::Level;
use paging::{GuestMemory, SwitcherEntries};
use switcher_asm::layout::GuestRegs;
use umbra_abi::{self as abi, BootInfo, status};

/// Each guest's memory, and where things are in it: the image's code at
/// the entry, a page of `ud2`, so every hypercall's instruction is really
/// there; the page INIT names; and the text a guest writes.
const MEMORY: u64 = 4 << 20;
const ENTRY: u64 = 0x10_0000;
const SHARED_PAGE: u64 = 0x20_0000;
const TEXT: u64 = 0x30_0000;

/// A guest's memory, shared with the simulated machine so that a guest
/// can put text in it and the machine can read its boot information.
#[derive(Clone)]
struct SimRam(Arc<Mutex<Ram>>);

impl GuestMemory for SimRam {
    fn limit(&self) -> u64 {
        self.0.lock().unwrap().limit()
    }
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        self.0.lock().unwrap().read_u64(gpa)
    }
    fn write_u64(&mut self, gpa: u64, value: u64) -> bool {
        self.0.lock().unwrap().write_u64(gpa, value)
    }
    fn guest_to_host(&self, gpa: u64) -> u64 {
        self.0.lock().unwrap().guest_to_host(gpa)
    }
}

impl vcpu::GuestRam for SimRam {
    fn read_bytes(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.0.lock().unwrap().read_bytes(gpa, buf)
    }
    fn write_bytes(&mut self, gpa: u64, bytes: &[u8]) -> bool {
        self.0.lock().unwrap().write_bytes(gpa, bytes)
    }
}

impl LoadTarget for SimRam {
    fn size(&self) -> u64 {
        self.limit()
    }
    fn write(&mut self, gpa: u64, bytes: &[u8]) {
        assert!(self.write_bytes(gpa, bytes));
    }
    fn zero(&mut self, gpa: u64, len: u64) {
        self.0.lock().unwrap().bytes[gpa as usize..(gpa + len) as usize].fill(0);
    }
}

/// The host's timer, as the real machine numbers it.
const TIMER_VECTOR: u64 = 0xef;

/// One step of a simulated guest.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// A hypercall with these arguments.
    Call(u64, [u64; 5]),
    /// Put this text in memory and CONSOLE_WRITE it.
    Write(&'static str),
    /// Compute until the host's timer fires.
    Tick,
    /// Compute for ever.
    Spin,
    /// Take what the console input ring holds, which must be these bytes
    /// (and the console IRQ pending if there were any), then make a
    /// harmless call.
    TakeInput(&'static [u8]),
    /// Write a u32 into the shared page at this offset, then make a
    /// harmless call.
    Poke(usize, u32),
}

use Step::*;

const INIT: Step = Call(abi::INIT, [SHARED_PAGE, 0, 0, 0, 0]);
const HALT: Step = Call(abi::HALT, [0; 5]);

const fn shutdown(status: u64) -> Step {
    Call(abi::SHUTDOWN, [status, 0, 0, 0, 0])
}

const fn clock_event(delta_ns: u64) -> Step {
    Call(abi::SET_CLOCKEVENT, [delta_ns, 0, 0, 0, 0])
}

const fn set_fs_base(base: u64) -> Step {
    Call(abi::SET_FS_BASE, [base, 0, 0, 0, 0])
}

/// Each step of a script that is not a wait for the timer takes this long.
const STEP_NS: u64 = 1_000;

/// A guest's x87 registers, as far as the simulated machine cares: whose
/// they are, and how many times that guest has changed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fpu {
    id: u32,
    changes: u64,
}

const SECOND: u64 = 1_000_000_000;
/// No test runs this long: a run still going is a run that never ends.
const LONGEST_RUN_NS: u64 = 100 * SECOND;

/// One entry, as the simulated machine saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    guest: usize,
    /// The CPU it entered on.
    cpu: u32,
    at_ns: u64,
    timer_ns: u64,
}

/// Each guest's pool sits this far from the previous guest's, so a shadow
/// root tells which guest it belongs to.
const POOL_STRIDE: u64 = 1 << 32;

/// A simulated machine for the run loop.
#[derive(Default)]
struct Sim {
    clock_ns: u64,
    /// Everything printed: the guests' bytes, the host's lines, and the
    /// log lines `log=` lets through, as the firmware prints them.
    out: String,
    /// What went to the terminal as it is: the console owner's bytes,
    /// when it runs alone.
    terminal: Vec<u8>,
    log_level: Option<Level>,
    /// Each guest's script, by number.
    scripts: BTreeMap<usize, VecDeque<Step>>,
    /// Which `take_memory` calls (1, 2, ...) find no memory.
    no_memory_for_call: BTreeSet<usize>,
    memory_calls: usize,
    /// Guest memories out now, and at most.
    memories_out: usize,
    memories_peak: usize,
    last_memory: Option<SimRam>,
    /// Guest number by shadow pool, from that guest's boot information.
    pool_owner: BTreeMap<u64, usize>,
    /// Each loaded guest's memory, by number.
    memory_of: BTreeMap<usize, SimRam>,
    /// The shadow root the next entry loads.
    root: u64,
    gates_installed: usize,
    stacks_installed: usize,
    next_fpu: u32,
    /// The x87 state in the CPU: whose, and how far its guest got with it.
    fpu_in_cpu: Option<Fpu>,
    /// The x87 state each guest left in the CPU last.
    fpu_left_by: BTreeMap<usize, Fpu>,
    entries: Vec<Entry>,
    sleeps: Vec<u64>,
    /// The CPU entering now ([`SimCpu`]); 0 on a machine with one.
    cpu_now: u32,
    /// IA32_FS_BASE in the CPU.
    fs_base_in_cpu: u64,
    /// The FS base each guest set last with SET_FS_BASE.
    fs_base_set_by: BTreeMap<usize, u64>,
    /// Console input still to arrive: the time it does, and the byte.
    input: VecDeque<(u64, u8)>,
    /// Console bytes read, in all.
    input_read: usize,
}

impl Sim {
    fn new() -> Sim {
        Sim { log_level: Some(Level::Info), ..Sim::default() }
    }

    /// `bytes` typed on the console at `at_ns`.
    fn typed(mut self, at_ns: u64, bytes: &[u8]) -> Sim {
        self.input.extend(bytes.iter().map(|&b| (at_ns, b)));
        self
    }

    fn script(mut self, guest: usize, steps: &[Step]) -> Sim {
        self.scripts.insert(guest, steps.iter().copied().collect());
        self
    }

    /// The guest whose shadow root the switcher would load.
    fn entering_guest(&self) -> usize {
        let pool = (self.root - POOL_BASE) / POOL_STRIDE;
        *self.pool_owner.get(&pool).unwrap_or_else(|| panic!("root {:#x} is no guest's", self.root))
    }

    /// Guest numbers, one per turn on the CPU.
    fn turns(&self) -> Vec<usize> {
        let mut turns: Vec<usize> = self.entries.iter().map(|e| e.guest).collect();
        turns.dedup();
        turns
    }

    fn first_entry(&self, guest: usize) -> Option<usize> {
        self.entries.iter().position(|e| e.guest == guest)
    }
}

/// The guest number a boot-info block's command line (`guest=N`) names.
fn number_from_boot_info(ram: &SimRam) -> usize {
    let at = MEMORY - 4096;
    let field = |offset: usize| ram.read_u64(at + offset as u64).unwrap();
    assert_eq!(field(offset_of!(BootInfo, magic)), abi::BOOT_INFO_MAGIC);
    assert_eq!(field(offset_of!(BootInfo, memory_size)), MEMORY);
    let (addr, len) = (field(offset_of!(BootInfo, cmdline_addr)), field(offset_of!(BootInfo, cmdline_len)));
    let mut cmdline = vec![0u8; len as usize];
    assert!(ram.read_bytes(addr, &mut cmdline));
    let cmdline = String::from_utf8(cmdline).unwrap();
    let number = cmdline.strip_prefix("guest=").unwrap_or_else(|| panic!("command line {cmdline:?}"));
    number.parse().unwrap_or_else(|_| panic!("command line {cmdline:?}"))
}

impl Machine for Sim {
    type Memory = SimRam;
    type Pool = Pool;
    type Fpu = Fpu;

    fn now_ns(&self) -> u64 {
        self.clock_ns
    }
    fn tsc(&self) -> u64 {
        self.clock_ns
    }
    fn tsc_khz(&self) -> u64 {
        1_000_000
    }

    fn write_guest_bytes(&mut self, bytes: &[u8]) {
        self.out.push_str(&String::from_utf8_lossy(bytes));
    }
    fn write_terminal_bytes(&mut self, bytes: &[u8]) {
        self.terminal.extend_from_slice(bytes);
        self.out.push_str(&String::from_utf8_lossy(bytes));
    }
    fn write_guest_line(&mut self, number: usize, bytes: &[u8]) {
        self.out.push_str(&format!("[g{number}] {}", String::from_utf8_lossy(bytes)));
    }
    fn print(&mut self, text: fmt::Arguments) {
        self.out.write_fmt(text).unwrap();
    }
    fn log(&mut self, level: Level, line: fmt::Arguments) {
        if self.logs(level) {
            let prefix = match level {
                Level::Error => "error: ",
                Level::Warn => "warn: ",
                Level::Info => "",
                Level::Debug => "debug: ",
                Level::Trace => "trace: ",
            };
            writeln!(self.out, "{prefix}{line}").unwrap();
        }
    }
    fn logs(&self, level: Level) -> bool {
        self.log_level.is_some_and(|max| level <= max)
    }

    fn take_memory(&mut self, size: u64) -> Option<SimRam> {
        self.memory_calls += 1;
        if self.no_memory_for_call.contains(&self.memory_calls) {
            return None;
        }
        self.memories_out += 1;
        self.memories_peak = self.memories_peak.max(self.memories_out);
        let ram = SimRam(Arc::new(Mutex::new(Ram { bytes: vec![0; size as usize] })));
        self.last_memory = Some(ram.clone());
        Some(ram)
    }
    fn release_memory(&mut self, _memory: SimRam) {
        self.memories_out -= 1;
    }
    fn shadow_pool(&mut self) -> Pool {
        // The loader asks for a pool once the guest's memory holds its
        // boot information: read which guest this is.
        let ram = self.last_memory.as_ref().expect("a pool before any memory");
        let number = number_from_boot_info(ram);
        let index = self.pool_owner.len() as u64;
        self.pool_owner.insert(index, number);
        self.memory_of.insert(number, ram.clone());
        Pool::at(index * POOL_STRIDE)
    }
    fn free_frames(&self) -> usize {
        100_000 - self.memories_out * (MEMORY / 4096) as usize
    }

    fn fresh_fpu(&mut self) -> Fpu {
        self.next_fpu += 1;
        Fpu { id: self.next_fpu, changes: 0 }
    }
    fn save_fpu(&mut self, state: &mut Fpu) {
        *state = self.fpu_in_cpu.expect("saving an FPU state nobody restored");
    }
    fn restore_fpu(&mut self, state: &Fpu) {
        self.fpu_in_cpu = Some(*state);
    }
    fn fs_base(&self) -> u64 {
        self.fs_base_in_cpu
    }
    fn set_fs_base(&mut self, base: u64) {
        self.fs_base_in_cpu = base;
    }

    fn switcher_mapping(&self) -> (u32, SwitcherEntries) {
        (0, SwitcherEntries([0x7000_0003, 0]))
    }
    fn set_guest_root(&mut self, root: u64) {
        self.root = root;
    }
    fn set_guest_gates(&mut self, _kernel_stack_top: u64, _direct: impl Fn(u8) -> Option<u64>) {
        self.gates_installed += 1;
    }
    fn set_guest_kernel_stack(&mut self, _kernel_stack_top: u64) {
        self.stacks_installed += 1;
    }

    fn set_guest_syscall_entry(&mut self, _entry: Option<u64>, _kernel_stack_top: u64) {}

    fn enter(&mut self, regs: &mut GuestRegs, timer_ns: u64) -> Exit {
        let guest = self.entering_guest();
        assert!(timer_ns <= QUIET_TICK_NS, "the host's timer armed for {timer_ns} ns");
        assert_eq!(regs.cs, u64::from(abi::GUEST_KERNEL_CS), "guest {guest} entered with unsanitized CS");
        // Each guest leaves its own mark in r15, which must come back to it
        // (a new guest starts with 0 there).
        let seen = self.entries.iter().any(|e| e.guest == guest);
        let mark = if seen { guest as u64 } else { 0 };
        assert_eq!(regs.r15, mark, "guest {guest} entered with the registers of guest {}", regs.r15);
        regs.r15 = guest as u64;
        // And its x87 registers as it left them; then it changes them.
        let fpu = self.fpu_in_cpu.as_mut().expect("entered with no guest's FPU state");
        assert_eq!(*self.fpu_left_by.entry(guest).or_insert(*fpu), *fpu, "guest {guest}'s FPU state");
        fpu.changes += 1;
        self.fpu_left_by.insert(guest, *fpu);
        // And the FS base it set, or 0 before it set one.
        let fs_base = self.fs_base_set_by.get(&guest).copied().unwrap_or(0);
        assert_eq!(self.fs_base_in_cpu, fs_base, "guest {guest} entered with another FS base");
        assert!(
            self.clock_ns < LONGEST_RUN_NS,
            "guest {guest} still running at {} ns:\n{}",
            self.clock_ns,
            self.out
        );
        self.entries.push(Entry { guest, cpu: self.cpu_now, at_ns: self.clock_ns, timer_ns });

        let script = self.scripts.get_mut(&guest).unwrap_or_else(|| panic!("guest {guest} has no script"));
        let step = match script.front() {
            Some(Spin) => Tick,
            Some(_) => script.pop_front().unwrap(),
            None => panic!("guest {guest} ran past the end of its script"),
        };
        let (number, args) = match step {
            Call(abi::SET_FS_BASE, args) if paging::is_canonical(args[0]) => {
                self.fs_base_set_by.insert(guest, args[0]);
                (abi::SET_FS_BASE, args)
            }
            Call(number, args) => (number, args),
            Write(text) => {
                // The guest puts its text in its own memory first.
                let ram = self.memory_of.get_mut(&guest).unwrap();
                assert!(ram.write_bytes(TEXT, text.as_bytes()));
                (abi::CONSOLE_WRITE, [TEXT, text.len() as u64, 0, 0, 0])
            }
            TakeInput(expected) => {
                let ram = self.memory_of.get_mut(&guest).unwrap();
                let field = |ram: &SimRam, offset: usize| {
                    let mut word = [0u8; 4];
                    assert!(ram.read_bytes(SHARED_PAGE + offset as u64, &mut word));
                    u32::from_le_bytes(word)
                };
                let written = field(ram, offset_of!(abi::SharedPage, input_written));
                let read = field(ram, offset_of!(abi::SharedPage, input_read));
                let mut got = Vec::new();
                for at in read..written {
                    let mut byte = [0u8];
                    let index = offset_of!(abi::SharedPage, input) + at as usize % abi::CONSOLE_INPUT_SIZE;
                    assert!(ram.read_bytes(SHARED_PAGE + index as u64, &mut byte));
                    got.push(byte[0]);
                }
                assert_eq!(got, expected, "guest {guest}'s console input");
                // The pending bits as u32 words: vector v is bit v % 32 of word v / 32.
                let vector = abi::IRQ_BASE + abi::CONSOLE_IRQ;
                let word = field(ram, offset_of!(abi::SharedPage, irq_pending) + vector as usize / 32 * 4);
                let pending = word & (1 << (vector % 32));
                assert_eq!(pending != 0, !expected.is_empty(), "guest {guest}'s console IRQ pending");
                let offset = offset_of!(abi::SharedPage, input_read) as u64;
                assert!(ram.write_bytes(SHARED_PAGE + offset, &written.to_le_bytes()));
                (abi::SEND_INTERRUPTS, [0; 5])
            }
            Poke(offset, value) => {
                let ram = self.memory_of.get_mut(&guest).unwrap();
                assert!(ram.write_bytes(SHARED_PAGE + offset as u64, &value.to_le_bytes()));
                (abi::SEND_INTERRUPTS, [0; 5])
            }
            Tick | Spin => {
                self.clock_ns += timer_ns;
                regs.vector = TIMER_VECTOR;
                return Exit { cr2: 0, host_tick: true, guest_cycles: timer_ns };
            }
        };
        self.clock_ns += STEP_NS;
        regs.rip = ENTRY;
        regs.vector = 6;
        regs.error_code = 0;
        regs.rax = number;
        (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8) = (args[0], args[1], args[2], args[3], args[4]);
        Exit { cr2: 0, host_tick: false, guest_cycles: STEP_NS }
    }

    fn read_console(&mut self) -> Option<u8> {
        let &(at_ns, byte) = self.input.front()?;
        if at_ns > self.clock_ns {
            return None;
        }
        self.input.pop_front();
        self.input_read += 1;
        Some(byte)
    }

    fn sleep(&mut self, ns: u64) {
        assert!(ns <= QUIET_TICK_NS, "the host slept {ns} ns in one go");
        assert!(
            self.clock_ns < LONGEST_RUN_NS,
            "the host still asleep at {} ns:\n{}",
            self.clock_ns,
            self.out
        );
        self.sleeps.push(ns);
        self.clock_ns += ns;
    }
}

/// A guest image: one executable segment at [`ENTRY`], a page of `ud2`.
fn image() -> Vec<u8> {
    const CODE: usize = 0x1000;
    let mut elf = vec![0u8; CODE + 4096];
    let mut put = |at: usize, bytes: &[u8]| elf[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, b"\x7fELF\x02\x01\x01");
    put(16, &2u16.to_le_bytes()); // ET_EXEC
    put(18, &62u16.to_le_bytes()); // x86-64
    put(20, &1u32.to_le_bytes());
    put(24, &ENTRY.to_le_bytes());
    put(32, &64u64.to_le_bytes()); // program headers right after
    put(52, &64u16.to_le_bytes());
    put(54, &56u16.to_le_bytes());
    put(56, &1u16.to_le_bytes());
    let phdr = 64;
    put(phdr, &1u32.to_le_bytes()); // PT_LOAD
    put(phdr + 4, &5u32.to_le_bytes()); // R+X
    put(phdr + 8, &(CODE as u64).to_le_bytes());
    put(phdr + 16, &ENTRY.to_le_bytes());
    put(phdr + 24, &ENTRY.to_le_bytes());
    put(phdr + 32, &4096u64.to_le_bytes());
    put(phdr + 40, &4096u64.to_le_bytes());
    for at in (CODE..CODE + 4096).step_by(2) {
        put(at, &abi::HYPERCALL_INSTRUCTION);
    }
    elf
}

fn config(total: usize) -> RunConfig<'static> {
    RunConfig {
        total,
        at_once: run::MAX_GUESTS,
        memory_size: MEMORY,
        memory_origin: &"guest_mem=4M",
        timeout_s: 0,
        console_owner: 0,
    }
}

/// Run `config.total` guests of [`image`] on `sim`; returns the status.
fn run(sim: &mut Sim, config: RunConfig) -> u8 {
    let image = image();
    let guests = [GuestImage { image: &image, cmdline: b"guest={n}", rootfs: b"" }];
    run_images(sim, &guests, config)
}

fn run_images(sim: &mut Sim, guests: &[GuestImage], config: RunConfig) -> u8 {
    let mut regs = GuestRegs::default();
    let status = run::run(sim, &mut regs, guests, &config);
    assert_eq!(sim.memories_out, 0, "guest memory still out after the run:\n{}", sim.out);
    status
}

/// Fails, showing everything printed, unless `text` was printed.
#[track_caller]
fn assert_printed(sim: &Sim, text: &str) {
    assert!(sim.out.contains(text), "{text:?} was not printed:\n{}", sim.out);
}

/// The lines of `out` that start with `prefix`.
fn lines_starting<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter(|line| line.starts_with(prefix)).collect()
}

#[test]
fn runnable_guests_take_turns_round_robin() {
    let steps = [INIT, Tick, Tick, Tick, Tick, shutdown(0)];
    let mut sim = Sim::new().script(1, &steps).script(2, &steps).script(3, &steps);
    assert_eq!(run(&mut sim, config(3)), status::SUCCESS, "{}", sim.out);
    assert_eq!(sim.turns(), [1, 2, 3].repeat(5), "{}", sim.out);
    // Every turn but the last of each guest ended at a host tick, which
    // each turn's first entry armed for a whole tick; later entries of
    // the same turn, for what is left of it.
    for turn in sim.entries.chunk_by(|a, b| a.guest == b.guest) {
        let start = turn[0].at_ns;
        for entry in turn {
            assert_eq!(entry.timer_ns, HOST_TICK_NS - (entry.at_ns - start), "{turn:?}");
        }
    }
}

#[test]
fn a_guest_that_exits_often_still_yields_at_the_host_tick() {
    // Two host ticks' worth of hypercalls, none of them the timer: the
    // tick counts from the turn's start, not from each entry.
    let calls = (2 * HOST_TICK_NS / STEP_NS) as usize;
    let mut busy = vec![INIT];
    busy.extend(std::iter::repeat_n(Call(abi::SEND_INTERRUPTS, [0; 5]), calls));
    busy.push(shutdown(0));
    let mut sim = Sim::new().script(1, &busy).script(2, &[INIT, shutdown(0)]);
    assert_eq!(run(&mut sim, config(2)), status::SUCCESS, "{}", sim.out);
    let turns = sim.turns();
    assert_eq!(turns[..3], [1, 2, 1], "{}", sim.out);
    assert!(sim.entries.iter().all(|e| e.timer_ns <= HOST_TICK_NS));
}

#[test]
fn a_guest_that_spins_does_not_keep_the_cpu_from_the_others() {
    let mut sim = Sim::new()
        .script(1, &[INIT, Tick, Tick, Tick, Tick, Tick, Tick, shutdown(0)])
        .script(2, &[INIT, Tick, shutdown(0)])
        .script(3, &[INIT, shutdown(0)]);
    assert_eq!(run(&mut sim, config(3)), status::SUCCESS, "{}", sim.out);
    assert_eq!(sim.turns(), [1, 2, 3, 1, 2, 1], "{}", sim.out);
}

#[test]
fn a_guest_alone_keeps_the_cpu_through_host_ticks() {
    let mut sim = Sim::new().script(1, &[INIT, Tick, Tick, Tick, shutdown(0)]);
    assert_eq!(run(&mut sim, config(1)), status::SUCCESS, "{}", sim.out);
    assert_eq!(sim.entries.len(), 5);
    // Its registers were put in the page once, at the start.
    assert_eq!(sim.gates_installed, 1);
    assert_printed(&sim, "\nguest exited with status 0\n");
}

#[test]
fn a_halted_guest_sleeps_until_its_clock_event() {
    let delta = 125_000_000;
    let mut sim = Sim::new().script(1, &[INIT, clock_event(delta), HALT, shutdown(0)]);
    assert_eq!(run(&mut sim, config(1)), status::SUCCESS, "{}", sim.out);
    // SET_CLOCKEVENT is handled at the end of its step; HALT one step later.
    let set_at = sim.entries[1].at_ns + STEP_NS;
    let halted_at = sim.entries[2].at_ns + STEP_NS;
    let deadline = set_at + delta;
    // The host sleeps in host ticks at most (the long ones: a guest alone,
    // with no console to read), until the deadline and no longer.
    assert_eq!(sim.sleeps, [QUIET_TICK_NS, QUIET_TICK_NS, deadline - halted_at - 2 * QUIET_TICK_NS]);
    let woken = sim.entries[3];
    assert_eq!(woken.at_ns, deadline);
    // The clock event has fired: nothing is left to arm the timer for
    // but the host's own tick.
    assert_eq!(woken.timer_ns, QUIET_TICK_NS);
}

#[test]
fn a_lone_guest_gets_the_long_tick_while_its_console_is_quiet() {
    // Three and a half seconds of computing, with a key typed at 1.5 s
    // (and taken at about 1.75 s).
    let typed_at = 1_500_000_000;
    let mut steps = vec![INIT];
    steps.extend(std::iter::repeat_n(Tick, 115));
    steps.push(TakeInput(b"k"));
    steps.extend(std::iter::repeat_n(Tick, 100));
    steps.push(shutdown(0));
    let mut sim = Sim::new().typed(typed_at, b"k").script(1, &steps);
    assert_eq!(run(&mut sim, with_console(1, 1)), status::SUCCESS, "{}", sim.out);
    let tick_at = |at_ns: u64| sim.entries.iter().find(|e| e.at_ns >= at_ns).map(|e| e.timer_ns);
    // Since the boot counts as typing, the first second has short ticks;
    // then long ones; the key brings the short ones back for a second.
    assert_eq!(tick_at(500_000_000), Some(HOST_TICK_NS), "{:?}", sim.entries);
    assert_eq!(tick_at(1_100_000_000), Some(QUIET_TICK_NS), "{:?}", sim.entries);
    assert_eq!(tick_at(typed_at + 2 * QUIET_TICK_NS), Some(HOST_TICK_NS), "{:?}", sim.entries);
    assert_eq!(tick_at(typed_at + QUIET_TICK_NS + 1_100_000_000), Some(QUIET_TICK_NS), "{:?}", sim.entries);
    // Among several guests the tick stays short: they share the CPU.
    let mut busy = vec![INIT];
    busy.extend(std::iter::repeat_n(Tick, 150));
    busy.push(shutdown(0));
    let mut sim = Sim::new().script(1, &busy).script(2, &busy);
    assert_eq!(run(&mut sim, config(2)), status::SUCCESS, "{}", sim.out);
    assert!(sim.clock_ns > 2 * SECOND);
    assert!(sim.entries.iter().all(|e| e.timer_ns <= HOST_TICK_NS), "{:?}", sim.entries);
}

#[test]
fn the_timer_is_armed_for_a_guest_clock_event_nearer_than_a_tick() {
    let mut sim = Sim::new().script(1, &[INIT, clock_event(3_000_000), Tick, shutdown(0)]);
    assert_eq!(run(&mut sim, config(1)), status::SUCCESS, "{}", sim.out);
    assert_eq!(sim.entries[2].timer_ns, 3_000_000);
}

#[test]
fn halted_guests_give_way_and_the_host_sleeps_when_all_are_halted() {
    let delta = 25_000_000;
    let mut sim = Sim::new()
        .script(1, &[INIT, clock_event(delta), HALT, shutdown(0)])
        .script(2, &[INIT, Tick, shutdown(0)]);
    assert_eq!(run(&mut sim, config(2)), status::SUCCESS, "{}", sim.out);
    // Guest 1 halts; guest 2 runs meanwhile, twice in a row, since guest
    // 1 is not runnable; then the host sleeps until guest 1's deadline.
    assert_eq!(sim.turns(), [1, 2, 1], "{}", sim.out);
    let deadline = sim.entries[1].at_ns + STEP_NS + delta;
    let last = *sim.entries.last().unwrap();
    assert_eq!(last.at_ns, deadline);
    let asleep: u64 = sim.sleeps.iter().sum();
    let guest_2_done = sim.entries[5].at_ns + STEP_NS;
    assert_eq!(asleep, deadline - guest_2_done);
    assert!(sim.sleeps.iter().all(|&ns| ns <= HOST_TICK_NS));
}

#[test]
fn guests_on_one_cpu_each_enter_with_their_own_fs_base() {
    // Two guests take turns; each sets its own FS base, and the second
    // sets it again halfway. Every entry checks the CPU holds the
    // entering guest's (0 for a guest that has set none yet).
    let mut first = vec![INIT, set_fs_base(0x1000)];
    first.extend([Tick; 8]);
    first.push(shutdown(0));
    let mut second = vec![INIT];
    second.extend([Tick; 3]);
    second.push(set_fs_base(0xffff_8000_0000_2000));
    second.extend([Tick; 3]);
    second.push(set_fs_base(0x2000));
    second.extend([Tick; 3]);
    second.push(shutdown(0));
    let mut sim = Sim::new().script(1, &first).script(2, &second);
    assert_eq!(run(&mut sim, config(2)), status::SUCCESS, "{}", sim.out);
    assert!(sim.turns().len() > 6, "the guests should take turns: {:?}", sim.turns());
}

#[test]
fn a_fs_base_set_by_the_call_that_ends_a_turn_is_kept() {
    // The host tick falls due during guest 1's hypercalls, which each take
    // a step: one of these runs has it fall due on the SET_FS_BASE, whose
    // turn then ends before the run loop has put the new base in the CPU.
    // Every entry checks the CPU holds the entering guest's FS base.
    let per_tick = (HOST_TICK_NS / STEP_NS) as usize;
    for calls in per_tick - 8..per_tick + 8 {
        let mut first = vec![INIT];
        first.extend(std::iter::repeat_n(Call(abi::SEND_INTERRUPTS, [0; 5]), calls));
        first.push(set_fs_base(0x1000));
        first.extend([Tick, Tick]);
        first.push(shutdown(0));
        let mut sim = Sim::new().script(1, &first).script(2, &[INIT, Tick, Tick, shutdown(0)]);
        assert_eq!(run(&mut sim, config(2)), status::SUCCESS, "{}", sim.out);
    }
}

#[test]
fn a_non_canonical_fs_base_kills_the_guest() {
    let mut sim = Sim::new().script(1, &[INIT, set_fs_base(0x0000_8000_0000_0000), shutdown(0)]);
    assert_eq!(run(&mut sim, config(1)), status::GUEST_KILLED, "{}", sim.out);
    assert_printed(&sim, "guest killed: SET_FS_BASE: 0x800000000000 is not a canonical address");
}

#[test]
fn a_halt_nothing_can_end_kills_the_guest() {
    let mut sim = Sim::new().script(1, &[INIT, HALT]);
    assert_eq!(run(&mut sim, config(1)), status::GUEST_KILLED);
    assert_printed(
        &sim,
        "guest killed: HALT with virtual interrupts off or no clock armed: it would never wake\n",
    );
    let mut sim = Sim::new().script(1, &[INIT, HALT]).script(2, &[INIT, Tick, shutdown(0)]);
    assert_eq!(run(&mut sim, config(2)), status::GUEST_KILLED);
    assert_printed(&sim, "[g1] guest killed: HALT with virtual interrupts off");
    assert!(sim.sleeps.is_empty());
}

#[test]
fn a_guest_finished_while_halted_gives_its_place_to_a_waiting_one() {
    // One place: guest 1 halts for ever while guest 2 and 3 wait. They
    // must still run, each in turn.
    let mut sim = Sim::new()
        .script(1, &[INIT, HALT])
        .script(2, &[INIT, Tick, shutdown(0)])
        .script(3, &[INIT, shutdown(0)]);
    let one_place = RunConfig { at_once: 1, ..config(3) };
    assert_eq!(run(&mut sim, one_place), status::GUEST_KILLED, "{}", sim.out);
    assert_eq!(
        lines_starting(&sim.out, "[g"),
        [
            "[g1] guest killed: HALT with virtual interrupts off or no clock armed: it would never wake",
            "[g2] guest exited with status 0",
            "[g3] guest exited with status 0",
        ],
        "{}",
        sim.out
    );
    assert_printed(&sim, "guests: 3 ended: 2 exited 0, 1 killed, 0 other;");
    assert_eq!(sim.memories_peak, 1);
    // Two places: guest 2 halts for ever while guest 1 sleeps until its
    // clock event. Guest 3 takes guest 2's place at once, and runs before
    // guest 1 wakes.
    let mut sim = Sim::new()
        .script(1, &[INIT, clock_event(5_000_000), HALT, shutdown(0)])
        .script(2, &[INIT, HALT])
        .script(3, &[INIT, shutdown(0)]);
    let two_places = RunConfig { at_once: 2, ..config(3) };
    assert_eq!(run(&mut sim, two_places), status::GUEST_KILLED, "{}", sim.out);
    let guest_1_last = sim.entries.iter().rposition(|e| e.guest == 1).unwrap();
    let guest_3_first = sim.first_entry(3).expect("guest 3 runs");
    assert!(guest_3_first < guest_1_last, "guest 3 waited for guest 1:\n{}", sim.out);
    assert_eq!(sim.memories_peak, 2);
    assert!(sim.scripts.values().all(VecDeque::is_empty), "{}", sim.out);
}

fn with_timeout(total: usize, timeout_s: u64) -> RunConfig<'static> {
    RunConfig { timeout_s, ..config(total) }
}

#[test]
fn the_watchdog_kills_a_guest_that_never_stops() {
    let mut sim = Sim::new().script(1, &[INIT, Spin]);
    assert_eq!(run(&mut sim, with_timeout(1, 2)), status::GUEST_KILLED);
    assert_printed(&sim, "\nguest killed: watchdog: still running after guest_timeout=2 seconds\n");
    // It ran its two seconds, and not a tick more.
    let last = sim.entries.last().unwrap();
    assert!(last.at_ns <= 2 * SECOND && last.at_ns + HOST_TICK_NS > 2 * SECOND, "{last:?}");
}

#[test]
fn the_watchdog_kills_one_guest_among_several_and_spares_the_rest() {
    let mut sim = Sim::new().script(1, &[INIT, Tick, Tick, shutdown(0)]).script(2, &[INIT, Spin]);
    assert_eq!(run(&mut sim, with_timeout(2, 1)), status::GUEST_KILLED);
    assert_eq!(
        lines_starting(&sim.out, "[g"),
        [
            "[g1] guest exited with status 0",
            "[g2] guest killed: watchdog: still running after guest_timeout=1 seconds"
        ],
        "{}",
        sim.out
    );
}

#[test]
fn the_watchdog_ends_a_halted_guest_sleep() {
    for total in [1, 2] {
        let mut sim = Sim::new().script(1, &[INIT, clock_event(abi::CLOCK_DELTA_MAX_NS), HALT]);
        if total == 2 {
            sim = sim.script(2, &[INIT, shutdown(0)]);
        }
        assert_eq!(run(&mut sim, with_timeout(total, 1)), status::GUEST_KILLED, "{}", sim.out);
        assert_printed(&sim, "guest killed: watchdog: still running after guest_timeout=1 seconds\n");
        assert!(sim.clock_ns > SECOND && sim.clock_ns <= SECOND + HOST_TICK_NS, "{}", sim.clock_ns);
    }
}

#[test]
fn waiting_guests_start_as_places_free_up() {
    let steps = [INIT, Tick, Tick, shutdown(0)];
    let mut sim = Sim::new();
    for guest in 1..=5 {
        sim = sim.script(guest, &steps);
    }
    let config = RunConfig { at_once: 2, ..config(5) };
    assert_eq!(run(&mut sim, config), status::SUCCESS, "{}", sim.out);
    assert_eq!(sim.memories_peak, 2, "never more than two guests loaded at once");
    // All five ran, in order, each to its end.
    let firsts: Vec<usize> = (1..=5).map(|guest| sim.first_entry(guest).expect("every guest runs")).collect();
    assert!(firsts.is_sorted(), "{firsts:?}");
    assert!(sim.scripts.values().all(VecDeque::is_empty));
    // Guest 3 had to wait for a place: it starts only after guest 1 ended.
    let guest_1_last = sim.entries.iter().rposition(|e| e.guest == 1).unwrap();
    assert!(sim.first_entry(3).unwrap() > guest_1_last);
    let frames = 100_000;
    assert_printed(
        &sim,
        &format!(
            "guests: 5 ended: 5 exited 0, 0 killed, 0 other; hypercalls 10 (+0 async), exits 20; \
             free frames {frames} before, {frames} after\n"
        ),
    );
}

#[test]
fn the_totals_line_counts_every_ending() {
    let mut sim = Sim::new()
        .script(1, &[INIT, shutdown(0)])
        .script(2, &[INIT, Call(0x999, [0; 5])])
        .script(3, &[INIT, Tick, shutdown(7)])
        .script(4, &[INIT, shutdown(150)]);
    assert_eq!(run(&mut sim, config(4)), status::GUEST_KILLED, "{}", sim.out);
    assert_eq!(
        lines_starting(&sim.out, "[g"),
        [
            "[g1] guest exited with status 0",
            "[g2] guest killed: unknown hypercall 0x999",
            "[g4] guest exited with status 150, which is out of range (0-99)",
            "[g3] guest exited with status 7",
        ],
        "{}",
        sim.out
    );
    assert_eq!(
        lines_starting(&sim.out, "guests: "),
        ["guests: 4 ended: 1 exited 0, 1 killed, 2 other; hypercalls 8 (+0 async), exits 9; \
          free frames 100000 before, 100000 after"],
        "{}",
        sim.out
    );
}

#[test]
fn one_guest_prints_no_totals_and_no_prefixes() {
    let mut sim = Sim::new().script(1, &[INIT, Write("hello\n"), shutdown(3)]);
    assert_eq!(run(&mut sim, config(1)), 3);
    assert!(
        sim.out.starts_with("guest: 1 segments at 0x100000-0x101000, entry 0x100000, 4 MiB\nhello\n"),
        "{}",
        sim.out
    );
    assert!(!sim.out.contains("guests: "), "{}", sim.out);
    assert!(!sim.out.contains("[g"), "{}", sim.out);
}

#[test]
fn each_guest_gets_its_own_copy_of_the_root_filesystem_after_its_image() {
    let image = image();
    let mut archive = b"070701".to_vec();
    archive.extend((0..5000u32).map(|i| (i % 251) as u8));
    let guests = [GuestImage { image: &image, cmdline: b"guest={n}", rootfs: &archive }];
    let mut sim = Sim::new().script(1, &[INIT, shutdown(0)]).script(2, &[INIT, shutdown(0)]);
    assert_eq!(run_images(&mut sim, &guests, config(2)), status::SUCCESS, "{}", sim.out);
    // The image ends at 0x101000: the archive starts on the next page.
    assert_printed(&sim, "guest 1: root filesystem, 5006 bytes at 0x101000");
    for guest in 1..=2 {
        let ram = &sim.memory_of[&guest];
        let field = |offset: usize| ram.read_u64(MEMORY - 4096 + offset as u64).unwrap();
        assert_eq!(field(offset_of!(BootInfo, abi_version)) as u32, abi::ABI_VERSION);
        assert_eq!(field(offset_of!(BootInfo, rootfs_addr)), 0x10_1000);
        assert_eq!(field(offset_of!(BootInfo, rootfs_len)), archive.len() as u64);
        let mut copy = vec![0u8; archive.len()];
        assert!(ram.read_bytes(0x10_1000, &mut copy));
        assert_eq!(copy, archive, "guest {guest}'s copy");
    }
}

#[test]
fn no_root_filesystem_is_address_and_length_zero() {
    let mut sim = Sim::new().script(1, &[INIT, shutdown(0)]);
    assert_eq!(run(&mut sim, config(1)), status::SUCCESS, "{}", sim.out);
    let ram = &sim.memory_of[&1];
    let field = |offset: usize| ram.read_u64(MEMORY - 4096 + offset as u64).unwrap();
    assert_eq!(field(offset_of!(BootInfo, rootfs_addr)), 0);
    assert_eq!(field(offset_of!(BootInfo, rootfs_len)), 0);
}

#[test]
fn a_root_filesystem_too_large_for_guest_memory_is_a_firmware_error() {
    let image = image();
    // The image ends at 0x101000 and the boot information takes the top
    // page: one byte more than the room between.
    let archive = vec![b'0'; (MEMORY - 4096 - 0x10_1000 + 1) as usize];
    let guests = [GuestImage { image: &image, cmdline: b"guest={n}", rootfs: &archive }];
    let mut sim = Sim::new();
    assert_eq!(run_images(&mut sim, &guests, config(1)), status::FIRMWARE_ERROR, "{}", sim.out);
    assert_printed(
        &sim,
        "umbra: error: guest 1: no room for its root filesystem (3137537 bytes) after its image in 4 MiB \
         of memory (guest_mem=4M)",
    );
    assert_eq!(sim.memories_out, 0);
    // Exactly as much as fits, fits.
    let archive = &archive[1..];
    let guests = [GuestImage { image: &image, cmdline: b"guest={n}", rootfs: archive }];
    let mut sim = Sim::new().script(1, &[INIT, shutdown(0)]);
    assert_eq!(run_images(&mut sim, &guests, config(1)), status::SUCCESS, "{}", sim.out);
}

#[test]
fn the_first_failing_guest_by_number_sets_the_status() {
    // Guest 2 fails first in time, guest 1 first in order.
    let mut sim = Sim::new().script(1, &[INIT, Tick, Tick, shutdown(5)]).script(2, &[INIT, shutdown(7)]);
    assert_eq!(run(&mut sim, config(2)), 5, "{}", sim.out);
    let mut sim = Sim::new().script(1, &[INIT, shutdown(0)]).script(2, &[INIT, Tick, shutdown(9)]);
    assert_eq!(run(&mut sim, config(2)), 9, "{}", sim.out);
}

#[test]
fn a_guest_that_could_not_be_set_up_makes_the_run_a_firmware_error() {
    // Guest 1 fails first and in order, but guest 2 never got its memory.
    let mut sim = Sim::new().script(1, &[INIT, shutdown(5)]).script(3, &[INIT, shutdown(0)]);
    sim.no_memory_for_call.insert(2);
    assert_eq!(run(&mut sim, config(3)), status::FIRMWARE_ERROR, "{}", sim.out);
    assert_printed(&sim, "[g2] umbra: error: no 4 MiB of contiguous memory for guest 2 (guest_mem=4M)\n");
    assert_printed(&sim, "guests: 3 ended: 1 exited 0, 0 killed, 2 other;");
}

#[test]
fn a_malformed_image_kills_its_guest_only() {
    let good = image();
    let mut reaching = image();
    // The segment now ends one byte into the boot-info page.
    reaching[64 + 24..64 + 32].copy_from_slice(&(MEMORY - 4096 - 4095).to_le_bytes());
    reaching[24..32].copy_from_slice(&(MEMORY - 4096 - 4095).to_le_bytes());
    let guests = [
        GuestImage { image: &good, cmdline: b"guest={n}", rootfs: b"" },
        GuestImage {
            image: b"not an ELF file, just bytes that go on long enough",
            cmdline: b"",
            rootfs: b"",
        },
        GuestImage { image: &reaching, cmdline: b"guest={n}", rootfs: b"" },
    ];
    let mut sim = Sim::new().script(1, &[INIT, shutdown(0)]);
    assert_eq!(run_images(&mut sim, &guests, config(3)), status::GUEST_KILLED, "{}", sim.out);
    assert_eq!(
        lines_starting(&sim.out, "[g"),
        [
            "[g2] guest killed: malformed guest ELF: not an ELF file (bad magic)",
            "[g3] guest killed: its image reaches the boot-info page at 0x3ff000",
            "[g1] guest exited with status 0",
        ],
        "{}",
        sim.out
    );
}

#[test]
fn a_line_longer_than_the_console_holds_goes_out_in_prefixed_pieces() {
    let long = "x".repeat(450);
    let text: &'static str = Box::leak(format!("{long}\n").into_boxed_str());
    let mut sim = Sim::new().script(1, &[INIT, Write(text), shutdown(0)]).script(2, &[INIT, shutdown(0)]);
    assert_eq!(run(&mut sim, config(2)), status::SUCCESS, "{}", sim.out);
    let pieces = lines_starting(&sim.out, "[g1] x");
    assert_eq!(pieces.len(), 3, "{}", sim.out);
    assert_eq!(pieces.iter().map(|p| p.len() - "[g1] ".len()).sum::<usize>(), 450);
}

#[test]
fn several_guests_lines_carry_their_numbers_and_a_closing_line_starts_its_own() {
    let mut sim = Sim::new()
        .script(1, &[INIT, Write("one\ntwo"), Tick, Write(" and a half"), shutdown(0)])
        .script(2, &[INIT, Write("hello\n"), Tick, shutdown(0)]);
    assert_eq!(run(&mut sim, config(2)), status::SUCCESS, "{}", sim.out);
    // Lines go out whole: guest 1's half line waits while guest 2's whole
    // one goes out, and its end, once the host closes it.
    assert_printed(&sim, "[g1] one\n[g2] hello\n[g1] two and a half\n[g1] guest exited with status 0\n");
    assert_printed(&sim, "\n[g2] guest exited with status 0\n");
    // Alone, a guest's half line is ended before the host's line.
    let mut sim = Sim::new().script(1, &[INIT, Write("half a line"), Call(0x999, [0; 5])]);
    run(&mut sim, config(1));
    assert_printed(&sim, "half a line\nguest killed: unknown hypercall 0x999\n");
}

#[test]
fn the_console_owner_alone_writes_to_the_terminal_as_it_is() {
    let line = "\x1b[1mbold\x1b[0m\r\n\x07";
    let script = [INIT, Write(line), shutdown(0)];
    let mut sim = Sim::new().script(1, &script);
    assert_eq!(run(&mut sim, with_console(1, 1)), status::SUCCESS, "{}", sim.out);
    // Escape sequences touch the terminal, so the host resets it before
    // its closing line (which starts a line of its own, as always).
    let mut expected = line.as_bytes().to_vec();
    expected.extend_from_slice(hv_core::report::TERMINAL_RESET);
    assert_eq!(sim.terminal, expected);
    assert_printed(&sim, "\x07\x18\x1b[0m\x1b(B\x0f\nguest exited with status 0\n");
    // Plain text and line ends leave the terminal as it was: no reset.
    let mut sim = Sim::new().script(1, &[INIT, Write("plain\r\n\tline\x08\n"), shutdown(0)]);
    run(&mut sim, with_console(1, 1));
    assert_eq!(sim.terminal, b"plain\r\n\tline\x08\n");
    // Not the owner (console=none), or not alone: made harmless instead.
    for (total, owner) in [(1, 0), (2, 1)] {
        let mut sim = Sim::new().script(1, &script).script(2, &[INIT, shutdown(0)]);
        run(&mut sim, with_console(total, owner));
        assert!(sim.terminal.is_empty(), "{total} guests, owner {owner}: {:?}", sim.terminal);
    }
}

#[test]
fn each_guest_statistics_block_counts_its_own_exits() {
    let mut sim = Sim::new().script(1, &[INIT, Tick, Tick, shutdown(0)]).script(2, &[INIT, shutdown(0)]);
    assert_eq!(run(&mut sim, config(2)), status::SUCCESS);
    let stats = lines_starting(&sim.out, "stats");
    let names = format!("{}=1 {}=1", abi::call_name(abi::INIT), abi::call_name(abi::SHUTDOWN));
    assert_eq!(stats[0], "stats for guest 2:", "{}", sim.out);
    assert_eq!(stats[1], "stats: exits 2: #UD/hypercall=2");
    assert_eq!(stats[2], format!("stats: hypercalls 2 (+0 async): {names}"));
    assert!(
        stats[3].starts_with("stats: delivered to the guest's handlers 0 (int n delivered by the host 0):")
    );
    assert!(stats[4].starts_with("stats: paging: fills 0 (linear 0, 2 MiB 0)"), "{}", stats[4]);
    assert_eq!(
        stats[5],
        format!(
            "stats: cycles: guest {} (100%), host 0 (0%), fastest hypercall round trip {STEP_NS}",
            2 * STEP_NS
        )
    );
    assert_eq!(stats[6], "stats for guest 1:");
    assert_eq!(stats[7], "stats: exits 4: #UD/hypercall=2 irq239=2");
    // Quieter, there is no block at all, and the totals line stays.
    let mut sim = Sim::new().script(1, &[INIT, shutdown(0)]).script(2, &[INIT, shutdown(0)]);
    sim.log_level = Some(Level::Warn);
    run(&mut sim, config(2));
    assert!(!sim.out.contains("stats"), "{}", sim.out);
    assert_printed(&sim, "guests: 2 ended: 2 exited 0");
}

/// One CPU of a simulated machine with several, each served by its own
/// thread: its own number (and so its own switcher entries), x87 state
/// and shadow root. The rest, the clock, memory, scripts and what is
/// printed, is the machine's, shared. The scripts run here never halt, so
/// a CPU only sleeps to wait for a guest another CPU holds: that sleep
/// takes no simulated time.
struct SimCpu<'s> {
    sim: &'s Mutex<Sim>,
    /// How many CPUs have entered a guest, and how many must have before
    /// any guest gets past its first entry: a thread that starts late
    /// would otherwise find every guest already run by the others.
    started: &'s (AtomicU32, u32),
    number: u32,
    entered: bool,
    fpu_in_cpu: Option<Fpu>,
    fs_base_in_cpu: u64,
    root: u64,
    idle_polls: usize,
    /// The memory this CPU took last: the guest it is loading.
    last_memory: Option<SimRam>,
}

impl<'s> SimCpu<'s> {
    fn new(sim: &'s Mutex<Sim>, started: &'s (AtomicU32, u32), number: u32) -> SimCpu<'s> {
        SimCpu {
            sim,
            started,
            number,
            entered: false,
            fpu_in_cpu: None,
            fs_base_in_cpu: 0,
            root: 0,
            idle_polls: 0,
            last_memory: None,
        }
    }

    fn sim(&self) -> std::sync::MutexGuard<'s, Sim> {
        self.sim.lock().unwrap()
    }
}

impl Machine for SimCpu<'_> {
    type Memory = SimRam;
    type Pool = Pool;
    type Fpu = Fpu;

    fn now_ns(&self) -> u64 {
        self.sim().now_ns()
    }
    fn tsc(&self) -> u64 {
        self.sim().tsc()
    }
    fn tsc_khz(&self) -> u64 {
        self.sim().tsc_khz()
    }
    fn write_guest_bytes(&mut self, bytes: &[u8]) {
        self.sim().write_guest_bytes(bytes);
    }
    fn write_terminal_bytes(&mut self, bytes: &[u8]) {
        self.sim().write_terminal_bytes(bytes);
    }
    fn write_guest_line(&mut self, number: usize, bytes: &[u8]) {
        self.sim().write_guest_line(number, bytes);
    }
    fn print(&mut self, text: fmt::Arguments) {
        self.sim().print(text);
    }
    fn log(&mut self, level: Level, line: fmt::Arguments) {
        self.sim().log(level, line);
    }
    fn logs(&self, level: Level) -> bool {
        self.sim().logs(level)
    }
    fn take_memory(&mut self, size: u64) -> Option<SimRam> {
        let memory = self.sim().take_memory(size);
        self.last_memory.clone_from(&memory);
        memory
    }
    fn release_memory(&mut self, memory: SimRam) {
        self.sim().release_memory(memory);
    }
    fn shadow_pool(&mut self) -> Pool {
        // The pool is for the guest this CPU is loading, whatever the
        // other CPUs loaded since.
        let mut sim = self.sim();
        sim.last_memory.clone_from(&self.last_memory);
        sim.shadow_pool()
    }
    fn free_frames(&self) -> usize {
        self.sim().free_frames()
    }
    fn fresh_fpu(&mut self) -> Fpu {
        self.sim().fresh_fpu()
    }
    fn save_fpu(&mut self, state: &mut Fpu) {
        *state = self.fpu_in_cpu.expect("saving an FPU state nobody restored on this CPU");
    }
    fn restore_fpu(&mut self, state: &Fpu) {
        self.fpu_in_cpu = Some(*state);
    }
    fn fs_base(&self) -> u64 {
        self.fs_base_in_cpu
    }
    fn set_fs_base(&mut self, base: u64) {
        self.fs_base_in_cpu = base;
    }
    fn switcher_mapping(&self) -> (u32, SwitcherEntries) {
        (self.number, cpu_switcher_entries(self.number))
    }
    fn set_guest_root(&mut self, root: u64) {
        self.root = root;
    }
    fn set_guest_gates(&mut self, kernel_stack_top: u64, direct: impl Fn(u8) -> Option<u64>) {
        self.sim().set_guest_gates(kernel_stack_top, direct);
    }
    fn set_guest_kernel_stack(&mut self, kernel_stack_top: u64) {
        self.sim().set_guest_kernel_stack(kernel_stack_top);
    }
    fn set_guest_syscall_entry(&mut self, entry: Option<u64>, kernel_stack_top: u64) {
        self.sim().set_guest_syscall_entry(entry, kernel_stack_top);
    }
    fn enter(&mut self, regs: &mut GuestRegs, timer_ns: u64) -> Exit {
        let (count, wait_for) = self.started;
        if !self.entered {
            self.entered = true;
            count.fetch_add(1, Ordering::SeqCst);
        }
        let since = std::time::Instant::now();
        while count.load(Ordering::SeqCst) < *wait_for {
            assert!(since.elapsed().as_secs() < 60, "CPU {} waited a minute for the others", self.number);
            std::thread::yield_now();
        }
        let mut sim = self.sim();
        (sim.root, sim.fpu_in_cpu, sim.cpu_now) = (self.root, self.fpu_in_cpu, self.number);
        sim.fs_base_in_cpu = self.fs_base_in_cpu;
        let exit = sim.enter(regs, timer_ns);
        self.fpu_in_cpu = sim.fpu_in_cpu;
        exit
    }
    fn read_console(&mut self) -> Option<u8> {
        self.sim().read_console()
    }

    fn sleep(&mut self, _ns: u64) {
        self.idle_polls += 1;
        assert!(self.idle_polls < 1_000_000, "CPU {} waits for ever", self.number);
        std::thread::yield_now();
    }
}

/// CPU `number`'s switcher entries: a different page directory for each.
fn cpu_switcher_entries(number: u32) -> SwitcherEntries {
    SwitcherEntries([0x7000_0003 + u64::from(number) * 0x10_0000, 0])
}

/// Run `config.total` guests of [`image`] on `cpus` simulated CPUs at
/// once, one thread each; returns the status. With `together`, no guest
/// gets past its first entry before every CPU has entered one.
fn run_on_cpus(sim: Sim, cpus: u32, config: RunConfig, together: bool) -> (u8, Sim) {
    let started = (AtomicU32::new(0), if together { cpus } else { 0 });
    let image = image();
    let guests = [GuestImage { image: &image, cmdline: b"guest={n}", rootfs: b"" }];
    let sim = Mutex::new(sim);
    let free = sim.lock().unwrap().free_frames();
    let run = run::Run::new(&guests, &config, cpus as usize, free);
    std::thread::scope(|scope| {
        for number in 0..cpus {
            let (run, sim, started) = (&run, &sim, &started);
            scope.spawn(move || {
                let mut regs = GuestRegs::default();
                run::serve(run, &mut SimCpu::new(sim, started, number), &mut regs);
            });
        }
    });
    let status = run.finish(&mut SimCpu::new(&sim, &started, 0));
    let sim = sim.into_inner().unwrap();
    assert_eq!(sim.memories_out, 0, "guest memory still out after the run:\n{}", sim.out);
    (status, sim)
}

#[test]
fn guests_spread_over_the_cpus_and_move_between_them() {
    let mut steps = vec![INIT];
    steps.extend([Tick; 40]);
    steps.extend([Write("done\n"), shutdown(0)]);
    let mut sim = Sim::new();
    for guest in 1..=3 {
        sim = sim.script(guest, &steps);
    }
    let (status, sim) = run_on_cpus(sim, 2, config(3), true);
    assert_eq!(status, status::SUCCESS, "{}", sim.out);
    assert!(sim.scripts.values().all(VecDeque::is_empty), "{}", sim.out);
    assert_eq!(lines_starting(&sim.out, "[g").len(), 6, "{}", sim.out);
    let cpus: BTreeSet<u32> = sim.entries.iter().map(|e| e.cpu).collect();
    assert_eq!(cpus.len(), 2, "both CPUs ran guests:\n{}", sim.out);
    // Each guest's statistics say where it ran.
    assert_eq!(lines_starting(&sim.out, "stats: cpus: ran on").len(), 3, "{}", sim.out);
    assert_printed(&sim, "guests: 3 ended: 3 exited 0, 0 killed, 0 other;");
    // Each CPU's share, and their sum, which is every exit of the run.
    let shares = lines_starting(&sim.out, "cpus: CPU ");
    assert_eq!(shares.len(), 2, "{}", sim.out);
    let exits_of = |line: &str| -> u64 {
        let (_, rest) = line.split_once(" turns, ").unwrap();
        rest.split(' ').next().unwrap().parse().unwrap()
    };
    let sum: u64 = shares.iter().map(|l| exits_of(l)).sum();
    let all = lines_starting(&sim.out, "cpus: all: ");
    assert_eq!(all.len(), 1, "{}", sim.out);
    assert_eq!(exits_of(all[0]), sum);
    // 3 guests of INIT, 40 ticks, a write and SHUTDOWN.
    assert_eq!(sum, 3 * 43, "{}", sim.out);
    assert_printed(&sim, "exits 129;");
}

#[test]
fn a_guest_moves_to_another_cpu_between_turns_and_runs_on_correctly() {
    // Two CPUs served in turns from one thread, so the order is known:
    // the CPUs load guests 1, 2 and 3 in turn; then CPU 1 runs guest 1,
    // CPU 0 guest 2, CPU 1 guest 3, and CPU 0 takes guest 1 from where
    // CPU 1 left it. The simulated machine checks, on
    // every entry, that the registers, x87 state and FS base are the
    // guest's own.
    let mut sim = Sim::new();
    for guest in 1..=3 {
        let mut steps = vec![INIT, set_fs_base(0x7f00_0000_0000 + 0x1000 * guest as u64)];
        steps.extend([Tick; 6]);
        steps.extend([Write("done\n"), shutdown(0)]);
        sim = sim.script(guest, &steps);
    }
    let image = image();
    let guests = [GuestImage { image: &image, cmdline: b"guest={n}", rootfs: b"" }];
    let config = config(3);
    let sim = Mutex::new(sim);
    let started = (AtomicU32::new(0), 0);
    let run = run::Run::new(&guests, &config, 2, 100_000);
    let mut cpus = [SimCpu::new(&sim, &started, 0), SimCpu::new(&sim, &started, 1)];
    let mut pages = [GuestRegs::default(), GuestRegs::default()];
    let mut done = [false; 2];
    while !done.iter().all(|&d| d) {
        for (index, (cpu, regs)) in cpus.iter_mut().zip(pages.iter_mut()).enumerate() {
            done[index] = done[index] || run::serve_turn(&run, cpu, regs) == run::Served::Done;
        }
    }
    assert_eq!(run.finish(&mut cpus[0]), status::SUCCESS);
    let sim = sim.into_inner().unwrap();
    let mut turns: Vec<(usize, u32)> = sim.entries.iter().map(|e| (e.guest, e.cpu)).collect();
    turns.dedup();
    assert_eq!(turns[..4], [(1, 1), (2, 0), (3, 1), (1, 0)], "{}", sim.out);
    assert!(sim.scripts.values().all(VecDeque::is_empty), "{}", sim.out);
    assert_eq!(lines_starting(&sim.out, "[g").len(), 6, "{}", sim.out);
    let placements = lines_starting(&sim.out, "stats: cpus: ran on 0, 1; moved");
    assert_eq!(placements.len(), 3, "every guest ran on both CPUs:\n{}", sim.out);
}

#[test]
fn the_first_failing_guest_sets_the_status_on_several_cpus_too() {
    let mut sim = Sim::new();
    for guest in 1..=6 {
        let status = if guest == 1 { 0 } else { 10 + guest as u64 };
        sim = sim.script(guest, &[INIT, Tick, Tick, Tick, shutdown(status)]);
    }
    let (status, sim) = run_on_cpus(sim, 4, RunConfig { at_once: 3, ..config(6) }, false);
    assert_eq!(status, 12, "{}", sim.out);
    assert!(sim.memories_peak <= 3, "{}", sim.out);
    assert_printed(&sim, "guests: 6 ended: 1 exited 0, 0 killed, 5 other;");
}

fn with_console(total: usize, owner: usize) -> RunConfig<'static> {
    RunConfig { console_owner: owner, ..config(total) }
}

/// The virtual interrupt flag, on: the u32 after `abi_version`.
const INTERRUPTS_ON: Step = Poke(offset_of!(abi::SharedPage, irq_enabled), 1);

#[test]
fn console_input_reaches_the_owner_ring_with_its_interrupt() {
    let mut sim = Sim::new().typed(0, b"ls -l\n").script(1, &[INIT, TakeInput(b"ls -l\n"), shutdown(0)]);
    assert_eq!(run(&mut sim, with_console(1, 1)), status::SUCCESS, "{}", sim.out);
    assert_printed(&sim, "stats: console input 6 bytes");
}

#[test]
fn console_input_goes_to_the_owner_only() {
    let mut sim = Sim::new()
        .typed(0, b"for two")
        .script(1, &[INIT, Tick, TakeInput(b""), shutdown(0)])
        .script(2, &[INIT, Tick, TakeInput(b"for two"), shutdown(0)]);
    assert_eq!(run(&mut sim, with_console(2, 2)), status::SUCCESS, "{}", sim.out);
    // No owner: nobody gets anything, and the console is not even read.
    let mut sim = Sim::new().typed(0, b"lost").script(1, &[INIT, Tick, TakeInput(b""), shutdown(0)]);
    assert_eq!(run(&mut sim, with_console(1, 0)), status::SUCCESS, "{}", sim.out);
    assert_eq!(sim.input_read, 0);
}

static PASTE: [u8; 600] = [b'x'; 600];

#[test]
fn a_paste_larger_than_the_ring_waits_for_the_guest_and_loses_nothing() {
    let mut sim = Sim::new().typed(0, &PASTE).script(
        1,
        &[INIT, TakeInput(&PASTE[..256]), TakeInput(&PASTE[..256]), TakeInput(&PASTE[..88]), shutdown(0)],
    );
    assert_eq!(run(&mut sim, with_console(1, 1)), status::SUCCESS, "{}", sim.out);
    assert_eq!(sim.input_read, 600);
}

#[test]
fn the_console_owner_halts_with_no_clock_until_input_wakes_it() {
    let typed_at = 55_000_000;
    let mut sim = Sim::new()
        .typed(typed_at, b"y")
        .script(1, &[INIT, INTERRUPTS_ON, HALT, TakeInput(b"y"), shutdown(0)]);
    assert_eq!(run(&mut sim, with_console(1, 1)), status::SUCCESS, "{}", sim.out);
    let woken = sim.entries[3];
    // The host looks at the console at least every tick while it sleeps.
    assert!(woken.at_ns >= typed_at && woken.at_ns <= typed_at + HOST_TICK_NS, "woken at {}", woken.at_ns);
    // Among several guests, the halted owner is woken from the queue.
    let mut sim = Sim::new()
        .typed(typed_at, b"z")
        .script(1, &[INIT, INTERRUPTS_ON, HALT, TakeInput(b"z"), shutdown(0)])
        .script(2, &[INIT, clock_event(200_000_000), INTERRUPTS_ON, HALT, shutdown(0)]);
    assert_eq!(run(&mut sim, with_console(2, 1)), status::SUCCESS, "{}", sim.out);
    // A guest that does not own the console and halts with no clock
    // still halts for ever, and is killed; the owner waits for its input.
    let mut sim = Sim::new()
        .typed(typed_at, b"w")
        .script(1, &[INIT, INTERRUPTS_ON, HALT, TakeInput(b"w"), shutdown(0)])
        .script(2, &[INIT, INTERRUPTS_ON, HALT]);
    assert_eq!(run(&mut sim, with_console(2, 1)), status::GUEST_KILLED, "{}", sim.out);
    assert_printed(&sim, "[g2] guest killed: HALT with virtual interrupts off or no clock armed");
    assert_printed(&sim, "[g1] guest exited with status 0");
}

#[test]
fn a_guest_that_breaks_its_input_ring_is_killed() {
    // Umbra looks at the ring only when it has input to give.
    let mut sim = Sim::new()
        .typed(0, b"abc")
        .typed(5_000_000, b"d")
        .script(1, &[INIT, Poke(offset_of!(abi::SharedPage, input_read), 1000), Tick, shutdown(0)]);
    assert_eq!(run(&mut sim, with_console(1, 1)), status::GUEST_KILLED, "{}", sim.out);
    assert_printed(&sim, "guest killed: console input ring: input_read 1000 is more than 256 bytes behind");
}
