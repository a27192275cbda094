//! # Running guests: the run loop and the scheduler
//!
//! This is lguest's `run_guest`, grown to several guests on several CPUs.
//! The loop itself is short: pick a guest, enter it, hand the exit to its
//! vCPU ([`crate::vcpu`]), and go round again until every guest has
//! finished. What makes it a scheduler is the few rules around that:
//!
//! - **Places.** At most [`MAX_GUESTS`] guests are loaded at once
//!   (`guests_at_once=` may ask for fewer), but a boot may run many more
//!   one after another (`guests=`, up to a million: a fuzzing campaign
//!   runs thousands). A waiting guest is loaded, in order, as soon as
//!   another one ends, in memory that may well be the finished guest's,
//!   scrubbed.
//! - **CPUs.** Every CPU serves the same run ([`Run`], [`serve`]): one
//!   queue under one lock. A CPU takes the first guest that can run, so a
//!   guest is either in the queue or on exactly one CPU, and may be on a
//!   different CPU every turn. `docs/design.md` says why one queue.
//! - **Turns.** The guests that can run take turns, round robin. A turn
//!   ends when the host's own timer fires ([`HOST_TICK_NS`], whatever the
//!   guest does with its virtual interrupt flag), when the guest halts, or
//!   when it finishes. A guest with nobody waiting for its CPU keeps it.
//! - **Halts.** HALT means "wake me at my clock event, or when an
//!   interrupt is pending". A halted guest is skipped; when every guest is
//!   halted, the CPU sleeps until the first of them can go on. A guest
//!   that halts with nothing that could ever wake it is killed.
//! - **The watchdog.** `guest_timeout=N` kills a guest still running N
//!   seconds after it started, asleep or not.
//!
//! The loop reaches the hardware only through [`Machine`], one per CPU:
//! entering the guest, the timer, the clock, the FPU, the console, memory
//! and that CPU's switcher pages. The firmware supplies the real ones; the
//! tests in `hv-core/tests/run.rs` supply simulated machines whose "guest"
//! is a script, one CPU or several on threads, so every rule above is
//! checked on the host.
//!
//! The running guest's registers stay in its CPU's registers page: an
//! exit costs no copy of them, only the end of a turn with another guest
//! waiting does.

use core::fmt;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use heapless::Vec;
use log::Level;
use paging::{FramePool, SwitcherEntries};
use switcher_asm::layout::GuestRegs;
use umbra_abi as abi;
use umbra_abi::status;

use crate::elf::LoadTarget;
use crate::load::load;
use crate::report::{CpuShares, Cycles, GuestConsole, Placement, Totals, print_stats};
use crate::traps::HaltState;
use crate::vcpu::{self, GuestRam, Host, Kill, Next, Vcpu};

/// The most guests loaded at once.
pub const MAX_GUESTS: usize = 8;

/// The host takes the CPU back at least this often, whatever the guest
/// does with its own interrupt flag: to share it between guests, and to
/// read the console.
pub const HOST_TICK_NS: u64 = 10_000_000;

/// The host's tick for a guest that runs alone once nothing has been
/// typed for [`QUIET_AFTER_NS`]: there is nobody to share the CPU with,
/// and the console, read at every tick, is quiet. Every tick is an exit,
/// and where exits cost milliseconds (nested KVM) ten of them a second
/// took a fifth of a lone program's time. A keystroke brings the 10 ms
/// tick back at the next look, up to 50 ms later.
pub const QUIET_TICK_NS: u64 = 50_000_000;

/// How long the console must have been quiet for [`QUIET_TICK_NS`].
pub const QUIET_AFTER_NS: u64 = 1_000_000_000;

/// One guest to run: its ELF image, its command line, and the root
/// filesystem (a cpio archive) to copy into its memory, empty for none.
#[derive(Clone, Copy)]
pub struct GuestImage<'a> {
    pub image: &'a [u8],
    pub cmdline: &'a [u8],
    pub rootfs: &'a [u8],
}

/// What the command line asked of the run.
#[derive(Clone, Copy)]
pub struct RunConfig<'a> {
    /// `guests=`: how many guests run in all. Guest i runs image i; those
    /// past the end of the list run its last entry again.
    pub total: usize,
    /// `guests_at_once=`: at most this many are loaded together (and
    /// never more than [`MAX_GUESTS`]).
    pub at_once: usize,
    /// Each guest's memory, in bytes: `guest_mem=`, or what the machine
    /// can spare.
    pub memory_size: u64,
    /// Where that size came from (`guest_mem=64M`, say), for the line
    /// that says a guest found no memory that large.
    pub memory_origin: &'a (dyn fmt::Display + Sync),
    /// `guest_timeout=`, in seconds; 0 for no watchdog.
    pub timeout_s: u64,
    /// `console=`: the number of the guest console input goes to (the
    /// first is 1); 0 for none.
    pub console_owner: usize,
}

/// How the guest came back to the host: what the registers page cannot
/// say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// CR2 as the exit left it: the faulting address when the exit was a
    /// page fault (vector 14); 0 otherwise.
    pub cr2: u64,
    /// The exit was the host's own timer: the guest's turn is over.
    pub host_tick: bool,
    /// Time stamp counter ticks from entry to exit.
    pub guest_cycles: u64,
}

/// What only the hardware can do for the run loop.
///
/// The firmware implements it for the boot CPU; the host tests implement
/// it with plain memory, a clock that moves when told, and a guest that is
/// a script.
pub trait Machine {
    /// One guest's memory.
    type Memory: GuestRam + LoadTarget;
    /// Frames for one guest's shadow page tables.
    type Pool: FramePool;
    /// One guest's x87 registers, kept while another guest runs.
    type Fpu;

    /// Nanoseconds since the run started: the guests' clock.
    fn now_ns(&self) -> u64;
    /// The time stamp counter, for the statistics' cycle counts.
    fn tsc(&self) -> u64;
    /// The time stamp counter's rate, which each guest is told at INIT.
    fn tsc_khz(&self) -> u64;

    /// A guest's console bytes, made harmless for the host's terminal.
    fn write_guest_bytes(&mut self, bytes: &[u8]);
    /// The console owner's bytes, when it runs alone: as they are (escape
    /// sequences, `\r`, `\b`, BEL), since it owns the terminal, except
    /// that a line feed no carriage return precedes gets one, as on any
    /// serial line.
    fn write_terminal_bytes(&mut self, bytes: &[u8]);
    /// `[gN] ` and then a piece of guest `number`'s console (a line, most
    /// often), made harmless, in one go: no other CPU's output may land
    /// inside it.
    fn write_guest_line(&mut self, number: usize, bytes: &[u8]);
    /// The host's own text, always printed.
    fn print(&mut self, text: fmt::Arguments);
    /// One line at `level`, printed if `log=` lets it through.
    fn log(&mut self, level: Level, line: fmt::Arguments);
    /// Would a line at `level` be printed? (The statistics are not worth
    /// formatting otherwise.)
    fn logs(&self, level: Level) -> bool;

    /// `size` bytes of memory for a guest, contiguous and clean (scrubbed
    /// wherever an earlier owner may have left data), or None when there
    /// is not that much.
    fn take_memory(&mut self, size: u64) -> Option<Self::Memory>;
    /// A finished guest's memory, free for the next, who gets it only
    /// through [`take_memory`](Self::take_memory), scrubbed.
    fn release_memory(&mut self, memory: Self::Memory);
    /// A fresh pool for one guest's shadow page tables.
    fn shadow_pool(&mut self) -> Self::Pool;
    /// The host's free frames, for the totals line.
    fn free_frames(&self) -> usize;

    /// The x87 state a new guest starts with.
    fn fresh_fpu(&mut self) -> Self::Fpu;
    /// Keep the running guest's x87 state in `state`.
    fn save_fpu(&mut self, state: &mut Self::Fpu);
    /// Give the CPU a guest's x87 state back.
    fn restore_fpu(&mut self, state: &Self::Fpu);

    /// The CPU's FS base (IA32_FS_BASE), which the running guest may have
    /// changed by loading a selector into FS: kept with the guest when it
    /// leaves the CPU.
    fn fs_base(&self) -> u64;
    /// Put a guest's FS base (SET_FS_BASE) into the CPU, before entering
    /// it: the host itself never uses FS, so it stays until the next guest.
    fn set_fs_base(&mut self, base: u64);

    /// This CPU's number and the page-directory entries that map its
    /// switcher's guest view: every shadow root a guest enters on needs
    /// them.
    fn switcher_mapping(&self) -> (u32, SwitcherEntries);
    /// The shadow root the switcher loads on the next entry.
    fn set_guest_root(&mut self, root: u64);
    /// Put a vCPU's kernel stack (TSS.RSP1) and direct gates (`direct`
    /// gives the guest handler for each vector that has one) into this
    /// CPU's switcher pages.
    fn set_guest_gates(&mut self, kernel_stack_top: u64, direct: impl Fn(u8) -> Option<u64>);
    /// Put a vCPU's kernel stack alone into this CPU's switcher pages: its
    /// gates are there already. Where the vCPU has a syscall entry, the
    /// direct `syscall` path takes the same stack.
    fn set_guest_kernel_stack(&mut self, kernel_stack_top: u64);
    /// Open the direct `syscall` path to a vCPU's syscall entry on its
    /// kernel stack (0 for none), or close it (`None`): EFER.SCE on this
    /// CPU follows it, so a guest without an entry sees `syscall` and
    /// `sysret` fault as they always have.
    fn set_guest_syscall_entry(&mut self, entry: Option<u64>, kernel_stack_top: u64);

    /// Run the guest from `regs` until its next trap or interrupt, with
    /// the host's timer armed to fire within `timer_ns`; `regs` then holds
    /// its registers at the exit. `regs` is the registers page the run was
    /// lent.
    fn enter(&mut self, regs: &mut GuestRegs, timer_ns: u64) -> Exit;
    /// Arm the host's timer for `ns` and wait, interrupts on, for it or
    /// any other interrupt.
    fn sleep(&mut self, ns: u64);
    /// One byte of console input, if one has arrived; never waits.
    fn read_console(&mut self) -> Option<u8>;
}

/// A vCPU over a machine's memory and shadow pool.
pub type MachineVcpu<M> = Vcpu<<M as Machine>::Memory, <M as Machine>::Pool>;

/// Load the guests and run them to the end, time-sliced on this CPU (see
/// the module's account). `regs` is this CPU's registers page, where the
/// switcher takes the running guest's registers from and leaves them.
/// Returns the run's exit status: 0 when every guest exited with 0; 101
/// when a guest could not be set up at all; otherwise the status of the
/// first guest (in order) that did not exit 0.
pub fn run<M: Machine>(
    machine: &mut M,
    regs: &mut GuestRegs,
    guests: &[GuestImage],
    config: &RunConfig<'_>,
) -> u8 {
    let run = Run::new(guests, config, 1, machine.free_frames());
    serve(&run, machine, regs);
    run.finish(machine)
}

/// One run of guests, shared by every CPU that serves it ([`serve`]):
/// what it runs, and, under one lock, the loaded guests not on a CPU
/// right now, how many places are taken, and the totals. A CPU holds the
/// lock only to pick a guest, give one back or count: never while a guest
/// runs, and never while memory is scrubbed or an image loaded, which
/// take long enough, on a nested VMM with fewer real cores than CPUs,
/// for the other CPUs' spinning to starve the one that holds the lock.
pub struct Run<'g, M: Machine> {
    guests: &'g [GuestImage<'g>],
    config: RunConfig<'g>,
    at_once: usize,
    several: bool,
    /// How many CPUs serve the run: each guest's statistics say which of
    /// them it ran on when there are several.
    cpus: usize,
    queue: spin::Mutex<Queue<M>>,
    /// Held while a guest's statistics are printed, so that two CPUs'
    /// blocks of lines do not mix.
    report: spin::Mutex<()>,
    /// What each CPU did for the run.
    shares: spin::Mutex<CpuShares>,
    /// Console input on its way to the guest that owns the console.
    input: ConsoleInput,
}

/// How many bytes of console input Umbra holds for the console's owner
/// beyond its ring: a paste this large waits whole; beyond it, Umbra
/// stops reading the console, and the VMM holds the rest.
pub const CONSOLE_QUEUE: usize = 4096;

/// Console input: read from the machine's console by whichever CPU is at
/// a host tick (or idle, or halted with its guest), queued here, and moved
/// into the owner's input ring before the owner's next entry.
struct ConsoleInput {
    owner: usize,
    queue: spin::Mutex<heapless::Deque<u8, CONSOLE_QUEUE>>,
    /// How many bytes the queue holds, readable without the lock: the
    /// owner looks at every entry, and almost always finds none.
    queued: AtomicUsize,
    /// When a byte was last read from the console (ns on the run's clock).
    last_input_ns: AtomicU64,
}

impl ConsoleInput {
    /// Read what the console has, while the queue has room: a full queue
    /// leaves bytes in the VMM's UART, where they wait, so none is lost.
    fn pump(&self, machine: &mut impl Machine) {
        if self.owner == 0 {
            return;
        }
        let mut queue = self.queue.lock();
        let before = queue.len();
        while !queue.is_full() {
            match machine.read_console() {
                Some(byte) => {
                    let _ = queue.push_back(byte);
                }
                None => break,
            }
        }
        if queue.len() != before {
            self.last_input_ns.store(machine.now_ns(), Ordering::Relaxed);
        }
        self.queued.store(queue.len(), Ordering::Relaxed);
    }

    /// How long the host may leave a guest running (or a halted owner
    /// asleep) before its next tick: [`HOST_TICK_NS`] while guests share
    /// the CPUs or someone types, [`QUIET_TICK_NS`] for a guest alone
    /// with a quiet console.
    fn tick_ns(&self, several: bool, now_ns: u64) -> u64 {
        let typed_lately = self.owner != 0
            && now_ns.saturating_sub(self.last_input_ns.load(Ordering::Relaxed)) < QUIET_AFTER_NS;
        if several || typed_lately { HOST_TICK_NS } else { QUIET_TICK_NS }
    }

    /// Give guest `number` its input, if it owns the console.
    fn deliver<M: Machine>(&self, number: usize, vcpu: &mut MachineVcpu<M>) -> Result<(), Kill> {
        if number != self.owner || self.queued.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let mut queue = self.queue.lock();
        let given = vcpu.give_console_input(&mut queue);
        self.queued.store(queue.len(), Ordering::Relaxed);
        given
    }

    /// When a halted guest `number` must be looked at again for input:
    /// at the next host tick, if it owns the console.
    fn poll_at(&self, number: usize, several: bool, now_ns: u64) -> Option<u64> {
        (number == self.owner).then_some(now_ns + self.tick_ns(several, now_ns))
    }
}

struct Queue<M: Machine> {
    /// Loaded guests that no CPU holds, in the order they take turns: a
    /// CPU takes the first that can run and gives it back at the end.
    ready: Vec<Slot<M>, MAX_GUESTS>,
    /// Places taken by guests outside `ready`: on a CPU, being loaded, or
    /// being retired (a place is free only once the guest's memory is).
    elsewhere: usize,
    /// The next guest to load, as an index into the run's guests.
    next_guest: usize,
    totals: Totals,
}

/// What a CPU does next.
#[allow(clippy::large_enum_variant)]
enum Turn<M: Machine> {
    /// Run this guest: it moves straight onto the serving CPU's stack,
    /// so its size is no cost worth boxing.
    Run(Slot<M>),
    /// Load guest `index` into a place reserved for it.
    Load(usize),
    /// Retire this guest, finished while halted.
    Retire(Slot<M>),
    Sleep(u64),
    Done,
}
impl<'g, M: Machine> Run<'g, M> {
    /// A run of `config.total` guests (guest i runs image i; those past
    /// the end of the list run its last entry again), served by `cpus`
    /// CPUs. `free_frames` is the host's free memory before it, for the
    /// totals.
    pub fn new(
        guests: &'g [GuestImage<'g>],
        config: &RunConfig<'g>,
        cpus: usize,
        free_frames: usize,
    ) -> Self {
        let total = if guests.is_empty() { 0 } else { config.total };
        let queue =
            Queue { ready: Vec::new(), elsewhere: 0, next_guest: 0, totals: Totals::new(free_frames) };
        Run {
            guests,
            config: RunConfig { total, ..*config },
            at_once: config.at_once.clamp(1, MAX_GUESTS),
            several: config.total > 1,
            cpus: cpus.max(1),
            queue: spin::Mutex::new(queue),
            report: spin::Mutex::new(()),
            shares: spin::Mutex::new(CpuShares::default()),
            input: ConsoleInput {
                owner: config.console_owner,
                queue: spin::Mutex::new(heapless::Deque::new()),
                queued: AtomicUsize::new(0),
                last_input_ns: AtomicU64::new(0),
            },
        }
    }

    /// After every CPU has left [`serve`]: the totals line (when there
    /// were several guests) and the run's exit status.
    pub fn finish(self, machine: &mut M) -> u8 {
        let queue = self.queue.into_inner();
        debug_assert!(queue.ready.is_empty() && queue.elsewhere == 0, "the run ended with guests loaded");
        if self.cpus > 1 {
            self.shares.into_inner().print(machine);
        }
        if self.several {
            let free_after = machine.free_frames();
            queue.totals.print(machine, free_after);
        }
        queue.totals.status()
    }

    /// Decide this CPU's next step: load a waiting guest into a free
    /// place, run the first ready guest that can run, retire halted guests
    /// that can never go on, or sleep.
    fn next_turn(&self, machine: &mut M) -> Turn<M> {
        let mut queue = self.queue.lock();
        if self.can_load(&queue) {
            let index = queue.next_guest;
            queue.next_guest += 1;
            queue.elsewhere += 1;
            return Turn::Load(index);
        }
        if let Some(index) = queue.ready.iter().position(|s| s.state == SlotState::Runnable) {
            queue.elsewhere += 1;
            return Turn::Run(queue.ready.remove(index));
        }
        self.input.pump(machine);
        let earliest = queue.check_halted(machine, &self.input);
        if let Some(index) = queue.ready.iter().position(|s| matches!(s.state, SlotState::Finished(_))) {
            queue.elsewhere += 1;
            return Turn::Retire(queue.ready.remove(index));
        }
        if let Some(index) = queue.ready.iter().position(|s| s.state == SlotState::Runnable) {
            queue.elsewhere += 1;
            return Turn::Run(queue.ready.remove(index));
        }
        if let Some(deadline) = earliest {
            let now = machine.now_ns();
            return Turn::Sleep(deadline.saturating_sub(now).clamp(1, HOST_TICK_NS));
        }
        // Nothing here to run: the guests left are with other CPUs. Wait
        // for one of them to come back or free a place; when there is
        // none, this CPU is done.
        if queue.elsewhere > 0 && (self.several || queue.next_guest < self.config.total) {
            Turn::Sleep(HOST_TICK_NS)
        } else {
            Turn::Done
        }
    }

    /// Is a guest waiting, with a place free for it?
    fn can_load(&self, queue: &Queue<M>) -> bool {
        queue.next_guest < self.config.total && queue.ready.len() + queue.elsewhere < self.at_once
    }

    /// Load guest `index` into the place [`Run::next_turn`] reserved.
    fn load_guest(&self, machine: &mut M, index: usize) {
        let number = index + 1;
        let mut console = GuestConsole::new(number, self.several, number == self.config.console_owner);
        let loaded = self
            .guests
            .get(index)
            .or(self.guests.last())
            .map(|guest| load(machine, guest, &self.config, number, &mut console));
        let slot = match loaded {
            Some(Ok((vcpu, regs))) => {
                let timeout_s = self.config.timeout_s;
                let deadline_ns = machine.now_ns().saturating_add(timeout_s.saturating_mul(1_000_000_000));
                let watchdog = (timeout_s != 0).then_some(Watchdog { deadline_ns, timeout_s });
                let fpu = machine.fresh_fpu();
                Ok(Slot {
                    number,
                    fpu,
                    vcpu,
                    regs,
                    state: SlotState::Runnable,
                    console,
                    cycles: Cycles::default(),
                    placement: Placement::default(),
                    watchdog,
                })
            }
            Some(Err(status)) => Err(status),
            None => Err(status::FIRMWARE_ERROR),
        };
        let mut queue = self.queue.lock();
        queue.elsewhere -= 1;
        match slot {
            // Room is certain: the place was reserved.
            Ok(slot) => {
                let _ = queue.ready.push(slot);
            }
            Err(status) => queue.totals.ended(number, status),
        }
    }

    /// The end of `slot`'s turn on this CPU. A guest that finished is
    /// retired and its place given away. Otherwise it goes back to the
    /// queue with its registers and x87 state, unless no other guest is
    /// ready to run: then this CPU keeps it, and nothing is copied.
    fn end_turn(&self, machine: &mut M, regs: &GuestRegs, mut slot: Slot<M>) -> Option<Slot<M>> {
        if let SlotState::Finished(_) = slot.state {
            self.retire(machine, slot);
            return None;
        }
        let mut queue = self.queue.lock();
        let others_ready =
            queue.ready.iter().any(|s| s.state == SlotState::Runnable) || self.can_load(&queue);
        if slot.state == SlotState::Runnable && !others_ready {
            return Some(slot);
        }
        slot.regs = *regs;
        machine.save_fpu(&mut slot.fpu);
        // The CPU holds the guest's FS base, unless its last exit was a
        // SET_FS_BASE the run loop has not yet put there: a turn can end
        // at that very exit.
        if !slot.vcpu.fs_base_changed {
            slot.vcpu.fs_base = machine.fs_base();
        }
        queue.elsewhere -= 1;
        // Room is certain: the slot held a place while it ran.
        let _ = queue.ready.push(slot);
        None
    }

    /// A finished guest gives everything back: its shadow pages, its
    /// memory (scrubbed before anyone takes it again, so no later guest
    /// ever sees it), and its
    /// statistics go out. Only then is its place free.
    fn retire(&self, machine: &mut M, slot: Slot<M>) {
        let SlotState::Finished(status) = slot.state else { return };
        let Slot { vcpu, cycles, number, placement, .. } = slot;
        let counters = vcpu.counters();
        let (ram, pool, stats) = vcpu.into_parts();
        if pool.in_use() != 0 {
            machine.log(
                Level::Warn,
                format_args!("shadow pool: {} frames still in use after the guest's release", pool.in_use()),
            );
        }
        machine.release_memory(ram);
        {
            let _report = self.report.lock();
            print_stats(machine, &stats, &counters, &cycles, self.several.then_some(number));
            if self.cpus > 1 {
                placement.print(machine);
            }
        }
        let mut queue = self.queue.lock();
        queue.totals.hypercalls += stats.hypercalls.iter().sum::<u64>();
        queue.totals.async_calls += stats.async_calls;
        queue.totals.exits += stats.exits;
        queue.totals.ended(number, status);
        queue.elsewhere -= 1;
    }
}

impl<M: Machine> Queue<M> {
    /// Look at every halted guest: wake those whose clock event is due,
    /// finish those the watchdog has caught or nothing could ever wake.
    /// Returns the earliest moment one of them needs looking at again.
    fn check_halted(&mut self, machine: &mut M, input: &ConsoleInput) -> Option<u64> {
        let mut earliest: Option<u64> = None;
        for slot in self.ready.iter_mut().filter(|s| s.state == SlotState::Halted) {
            let now = machine.now_ns();
            if let Some(watchdog) = slot.watchdog {
                if now > watchdog.deadline_ns {
                    slot.state = SlotState::Finished(watchdog.kill(machine, &mut slot.console));
                    continue;
                }
                let wake = watchdog.deadline_ns.saturating_add(1);
                earliest = Some(earliest.map_or(wake, |e| e.min(wake)));
            }
            if let Err(kill) = input.deliver::<M>(slot.number, &mut slot.vcpu) {
                slot.state = SlotState::Finished(slot.console.killed(machine, kill));
                continue;
            }
            match slot.vcpu.halt_state(now, input.poll_at(slot.number, true, now)) {
                HaltState::Ready => slot.state = SlotState::Runnable,
                HaltState::SleepUntil(deadline) => {
                    earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)))
                }
                HaltState::Forever => {
                    slot.state = SlotState::Finished(slot.console.killed(machine, Kill::HaltForever));
                }
            }
        }
        earliest
    }
}

/// One CPU's part in a run: take a guest, run it for a turn, give it
/// back, until no guest is left for this CPU. Every CPU that serves the
/// run calls this with its own machine and registers page; the first
/// guest-visible state a CPU installs is always the guest's own, so a
/// guest may run on a different CPU every turn.
pub fn serve<M: Machine>(run: &Run<'_, M>, machine: &mut M, regs: &mut GuestRegs) {
    while serve_turn(run, machine, regs) != Served::Done {}
}

/// What one call of [`serve_turn`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// This CPU worked for the run: a guest had a turn on it (one or more
    /// time slices, until it went back to the queue or finished), or it
    /// loaded a guest, or retired some.
    Turn,
    /// Nothing to run here yet: the CPU slept.
    Slept,
    /// Nothing is left for this CPU.
    Done,
}

/// One step of [`serve`]: one guest's turn on this CPU, or one sleep.
pub fn serve_turn<M: Machine>(run: &Run<'_, M>, machine: &mut M, regs: &mut GuestRegs) -> Served {
    let mut slot = match run.next_turn(machine) {
        Turn::Run(slot) => slot,
        Turn::Load(index) => {
            run.load_guest(machine, index);
            return Served::Turn;
        }
        Turn::Retire(slot) => {
            run.retire(machine, slot);
            return Served::Turn;
        }
        Turn::Sleep(ns) => {
            machine.sleep(ns);
            return Served::Slept;
        }
        Turn::Done => return Served::Done,
    };
    let (cpu, _) = machine.switcher_mapping();
    let several = run.several;
    *regs = slot.regs;
    machine.restore_fpu(&slot.fpu);
    // Whatever the CPU's FS base is, it is another guest's, or this one's
    // from another turn: always the guest's own from here.
    machine.set_fs_base(slot.vcpu.fs_base);
    slot.vcpu.fs_base_changed = false;
    install_switcher_state(machine, &slot.vcpu);
    slot.placement.arrive(cpu);
    loop {
        let turn_started = machine.tsc();
        let (exits_before, guest_before) = (slot.vcpu.stats.exits, slot.cycles.guest);
        let end = run_slice(machine, regs, &mut slot, several, &run.input);
        slot.cycles.total += machine.tsc() - turn_started;
        slot.state = match end {
            SliceEnd::Preempted => SlotState::Runnable,
            SliceEnd::Halted => SlotState::Halted,
            SliceEnd::Finished(status) => SlotState::Finished(status),
        };
        let exits = slot.vcpu.stats.exits - exits_before;
        run.shares.lock().count(cpu, exits, slot.cycles.guest - guest_before);
        match run.end_turn(machine, regs, slot) {
            Some(kept) => slot = kept,
            None => return Served::Turn,
        }
    }
}

/// Where a guest is in its life. (On a CPU, a guest is out of the queue
/// altogether.)
#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Runnable,
    Halted,
    Finished(u8),
}

/// A loaded guest and everything that is only its: its vCPU (memory,
/// shadow tables, IDT, clock), its registers while it is off the CPU, and
/// its own counts.
struct Slot<M: Machine> {
    number: usize,
    /// Its x87 registers while it is off the CPU.
    fpu: M::Fpu,
    /// `guest_timeout=`, counted from when this guest started.
    watchdog: Option<Watchdog>,
    vcpu: MachineVcpu<M>,
    /// Its registers while it is off the CPU (on a CPU they are in that
    /// CPU's registers page).
    regs: GuestRegs,
    state: SlotState,
    console: GuestConsole,
    cycles: Cycles,
    placement: Placement,
}

/// `guest_timeout=`: when a guest still running is killed.
#[derive(Clone, Copy)]
struct Watchdog {
    deadline_ns: u64,
    timeout_s: u64,
}

impl Watchdog {
    fn kill(&self, machine: &mut impl Machine, console: &mut GuestConsole) -> u8 {
        let timeout_s = self.timeout_s;
        let reason =
            format_args!("guest killed: watchdog: still running after guest_timeout={timeout_s} seconds");
        console.finish(machine, status::GUEST_KILLED, reason)
    }
}

/// How a guest's turn on the CPU ended.
enum SliceEnd {
    /// A host tick, with other guests waiting.
    Preempted,
    /// HALT, with other guests to run meanwhile.
    Halted,
    Finished(u8),
}

fn install_switcher_state<M: Machine>(machine: &mut M, vcpu: &MachineVcpu<M>) {
    let stack = vcpu.kernel_stack_top();
    // Without a kernel stack a direct gate would push into nowhere.
    machine.set_guest_gates(stack.unwrap_or(0), |v| {
        vcpu.direct_gate(v).filter(|_| stack.is_some()).map(|g| g.handler)
    });
    machine.set_guest_syscall_entry(vcpu.syscall_entry(), stack.unwrap_or(0));
}

/// The vCPU's view of the host while it handles one exit: the machine's
/// clock, and the guest's own console.
struct GuestHost<'a, M> {
    machine: &'a mut M,
    console: &'a mut GuestConsole,
}

impl<M: Machine> Host for GuestHost<'_, M> {
    fn console_write(&mut self, bytes: &[u8]) {
        self.console.write(self.machine, bytes);
    }

    fn now_ns(&self) -> u64 {
        self.machine.now_ns()
    }

    fn tsc_khz(&self) -> u64 {
        self.machine.tsc_khz()
    }
}

/// Run the slot's guest until it finishes, or, when other guests wait,
/// until it halts or its time slice ends at a host tick.
fn run_slice<M: Machine>(
    machine: &mut M,
    regs: &mut GuestRegs,
    slot: &mut Slot<M>,
    several: bool,
    input: &ConsoleInput,
) -> SliceEnd {
    let Slot { vcpu, console, cycles, watchdog, number, .. } = slot;
    let (watchdog, number) = (*watchdog, *number);
    // The console is read when the slice starts and at every host tick:
    // often enough for a typist, and no port read on the hot path. What
    // was read goes to the owner at its next entry.
    let mut look_for_input = true;
    // The host ticks every HOST_TICK_NS of the guest's turn, counted from
    // the slice's start and not from each entry: the timer is armed anew
    // at every entry, and a guest that exits more often than the tick
    // would otherwise never see one, never yield the CPU to the others
    // and never have its console read.
    let tick_after = |now_ns: u64| now_ns.saturating_add(input.tick_ns(several, now_ns));
    let mut next_tick_ns = tick_after(machine.now_ns());
    // A slice runs on one CPU throughout.
    let (cpu, entries) = machine.switcher_mapping();
    loop {
        if core::mem::take(&mut look_for_input) {
            input.pump(machine);
        }
        if let Err(kill) = input.deliver::<M>(number, vcpu) {
            return SliceEnd::Finished(console.killed(machine, kill));
        }
        let changes = vcpu.take_switcher_changes();
        if changes.gates || changes.syscall {
            install_switcher_state(machine, vcpu);
        } else if changes.kernel_stack {
            // A context switch in the guest: a word or two, not 224 gates.
            machine.set_guest_kernel_stack(vcpu.kernel_stack_top().unwrap_or(0));
        }
        if vcpu.fs_base_changed {
            machine.set_fs_base(vcpu.fs_base);
            vcpu.fs_base_changed = false;
        }
        let root = vcpu.prepare_switcher(cpu, entries);
        machine.set_guest_root(root);
        let now = machine.now_ns();
        if let Some(watchdog) = watchdog.filter(|w| now > w.deadline_ns) {
            return SliceEnd::Finished(watchdog.kill(machine, console));
        }
        if let Err(kill) = vcpu.prepare_entry(regs, now) {
            return SliceEnd::Finished(console.killed(machine, kill));
        }
        vcpu::sanitize(regs);
        let until_tick = next_tick_ns.saturating_sub(now).max(1);
        let until_deadline = vcpu.next_deadline_ns().map_or(until_tick, |d| d.saturating_sub(now));

        let exit = machine.enter(regs, until_deadline.min(until_tick));
        cycles.guest += exit.guest_cycles;
        if regs.vector == 6 {
            cycles.fastest_hypercall = cycles.fastest_hypercall.min(exit.guest_cycles);
        }
        let exited_ns = machine.now_ns();
        let host_tick = exit.host_tick || exited_ns >= next_tick_ns;
        if host_tick {
            look_for_input = true;
            next_tick_ns = tick_after(exited_ns);
        }
        let next = vcpu.handle_exit(regs, exit.cr2, &mut GuestHost { machine, console });
        match next {
            Next::Resume if host_tick && several => return SliceEnd::Preempted,
            Next::Resume => {}
            Next::Halt if several => return SliceEnd::Halted,
            Next::Halt => match sleep_while_halted(machine, vcpu, watchdog, (number, input)) {
                // Woken, it has the CPU as if a slice started now.
                Ok(()) => next_tick_ns = tick_after(machine.now_ns()),
                Err(HaltEnd::Kill(kill)) => return SliceEnd::Finished(console.killed(machine, kill)),
                Err(HaltEnd::Watchdog(watchdog)) => {
                    return SliceEnd::Finished(watchdog.kill(machine, console));
                }
            },
            Next::Shutdown { status } if status <= abi::GUEST_STATUS_MAX => {
                return SliceEnd::Finished(console.finish(
                    machine,
                    status as u8,
                    format_args!("guest exited with status {status}"),
                ));
            }
            Next::Shutdown { status } => {
                return SliceEnd::Finished(console.finish(
                    machine,
                    status::GUEST_STATUS_OUT_OF_RANGE,
                    format_args!("guest exited with status {status}, which is out of range (0-99)"),
                ));
            }
            Next::Kill(reason) => return SliceEnd::Finished(console.killed(machine, reason)),
            Next::SwitcherFault => panic!(
                "exception {} in the switcher itself at rip {:#x} (error code {:#x})",
                regs.vector, regs.rip, regs.error_code
            ),
        }
    }
}

/// Why a halted guest stopped sleeping for good.
enum HaltEnd {
    Kill(Kill),
    Watchdog(Watchdog),
}

/// HALT for the only guest: sleep, interrupts on, until it has an
/// interrupt to take; the watchdog bounds the sleep too.
fn sleep_while_halted<M: Machine>(
    machine: &mut M,
    vcpu: &mut MachineVcpu<M>,
    watchdog: Option<Watchdog>,
    (number, input): (usize, &ConsoleInput),
) -> Result<(), HaltEnd> {
    loop {
        let now = machine.now_ns();
        if let Some(watchdog) = watchdog.filter(|w| now > w.deadline_ns) {
            return Err(HaltEnd::Watchdog(watchdog));
        }
        input.pump(machine);
        input.deliver::<M>(number, vcpu).map_err(HaltEnd::Kill)?;
        match vcpu.halt_state(now, input.poll_at(number, false, now)) {
            HaltState::Ready => return Ok(()),
            HaltState::Forever => return Err(HaltEnd::Kill(Kill::HaltForever)),
            HaltState::SleepUntil(deadline) => {
                let wake = watchdog.map_or(deadline, |w| deadline.min(w.deadline_ns.saturating_add(1)));
                machine.sleep(wake.saturating_sub(now).min(input.tick_ns(false, now)));
            }
        }
    }
}
