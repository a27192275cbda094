//! # What the host says about its guests
//!
//! Everything a run prints besides the guests' own words comes from here,
//! and the boot tests read all of it, so its wording is a contract:
//!
//! - a guest's console: its bytes go out as they come, but when several
//!   guests share the one serial line, each of their lines starts with
//!   `[gN] ` and goes out whole, so that output from guests on different
//!   CPUs can still be told apart. A guest alone that owns the console
//!   (its input goes there) owns the terminal too: its bytes reach it as
//!   they are, escape sequences and all, so a shell's line editor works.
//!   Every other guest's bytes are made harmless (the machine's
//!   `write_guest_bytes`), and so are the lines of several guests: no
//!   guest may rewrite another's lines, or their prefixes;
//! - a guest's closing line: `guest exited with status N` or
//!   `guest killed: <reason>`, always a whole line of its own, even after
//!   a guest that left half a line unfinished;
//! - its statistics block at `log=info`: exits by vector, hypercalls by
//!   name, deliveries, paging, and cycles;
//! - when several guests ran, one totals line that adds them up, with the
//!   free frames before and after, which shows that each one gave back
//!   everything it took;
//! - and the run's status: 0 when every guest exited with 0; 101 when any
//!   guest could not even be set up; otherwise the status of the first
//!   guest, in order, that did not exit 0.

use core::fmt::{self, Write};

use log::Level;
use paging::Counters;
use umbra_abi as abi;
use umbra_abi::status;

use crate::run::Machine;
use crate::vcpu::{Kill, Stats};

/// The longest piece of a line (newline included) a guest's console
/// holds back; a longer line goes out in pieces, each with its prefix.
const LINE_MAX: usize = 200;

/// What the host writes before its closing line when the terminal's
/// owner sent control bytes: CAN ends any escape sequence or string left
/// open (a title being set would swallow the host's text), SGR 0 drops
/// attributes (invisible text, colours), `ESC ( B` and SI bring back
/// ASCII. Nothing visible, so the closing line reads as always, and the
/// guest cannot make it hide or read differently.
pub const TERMINAL_RESET: &[u8] = b"\x18\x1b[0m\x1b(B\x0f";

/// One guest's side of the console: whether its lines carry a `[gN] `
/// prefix, and, when they do, the line it is writing. With several
/// guests, possibly on several CPUs, a line goes out only when it is
/// whole (or too long to hold), prefix and all in one piece, so no other
/// guest's words land in the middle of it.
pub(crate) struct GuestConsole {
    prefix: Option<usize>,
    /// Its bytes go to the terminal as they are: it runs alone and owns
    /// the console.
    terminal: bool,
    /// It sent the terminal a control byte that may leave state behind
    /// (an escape sequence, a character set): the host resets it first.
    terminal_touched: bool,
    at_line_start: bool,
    line: heapless::Vec<u8, LINE_MAX>,
}

impl GuestConsole {
    /// Guest `number`'s console; its lines are prefixed when `several`
    /// guests run. Alone, the console's `owner` writes to the terminal
    /// as it is.
    pub(crate) fn new(number: usize, several: bool, owner: bool) -> GuestConsole {
        GuestConsole {
            prefix: several.then_some(number),
            terminal: owner && !several,
            terminal_touched: false,
            at_line_start: true,
            line: heapless::Vec::new(),
        }
    }

    pub(crate) fn prefix(&self) -> Option<usize> {
        self.prefix
    }

    /// The guest's own bytes: as they come when it runs alone; a whole
    /// line at a time, prefixed, when several guests run.
    pub(crate) fn write(&mut self, machine: &mut impl Machine, bytes: &[u8]) {
        let Some(number) = self.prefix else {
            if self.terminal {
                machine.write_terminal_bytes(bytes);
                self.terminal_touched |= bytes
                    .iter()
                    .any(|&b| (b < 0x20 && !b"\t\n\r\x07\x08".contains(&b)) || (0x7f..0xa0).contains(&b));
            } else {
                machine.write_guest_bytes(bytes);
            }
            if let Some(&last) = bytes.last() {
                self.at_line_start = last == b'\n';
            }
            return;
        };
        for &byte in bytes {
            // A line too long to hold goes out in pieces, each a line of
            // its own; the last place is kept for the newline that ends one.
            if self.line.len() == LINE_MAX - 1 && byte != b'\n' {
                let _ = self.line.push(b'\n');
                machine.write_guest_line(number, &self.line);
                self.line.clear();
            }
            let _ = self.line.push(byte);
            if byte == b'\n' {
                machine.write_guest_line(number, &self.line);
                self.line.clear();
            }
        }
        self.at_line_start = self.line.is_empty();
    }

    /// The host's closing line for this guest; returns `status`. It starts
    /// a line of its own even when the guest left half a line unfinished
    /// (a fuzzer's random bytes), so the reason is always one whole line.
    pub(crate) fn finish(&mut self, machine: &mut impl Machine, status: u8, line: fmt::Arguments) -> u8 {
        if core::mem::take(&mut self.terminal_touched) {
            machine.write_terminal_bytes(TERMINAL_RESET);
        }
        if let Some(number) = self.prefix.filter(|_| !self.line.is_empty()) {
            let _ = self.line.push(b'\n');
            machine.write_guest_line(number, &self.line);
            self.line.clear();
        } else if !self.at_line_start {
            machine.print(format_args!("\n"));
        }
        self.at_line_start = true;
        match self.prefix {
            Some(number) => machine.print(format_args!("[g{number}] {line}\n")),
            None => machine.print(format_args!("{line}\n")),
        }
        status
    }

    pub(crate) fn killed(&mut self, machine: &mut impl Machine, reason: Kill) -> u8 {
        self.finish(machine, status::GUEST_KILLED, format_args!("guest killed: {reason}"))
    }
}

/// " 2" after "guest" when several guests run, nothing otherwise.
pub(crate) struct Numbered(pub(crate) Option<usize>);

impl fmt::Display for Numbered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(number) => write!(f, " {number}"),
            None => Ok(()),
        }
    }
}

/// Time stamp counter ticks. Under `-icount shift=0` they count
/// instructions, which is how the switcher's cost is measured.
#[derive(Clone, Copy)]
pub(crate) struct Cycles {
    pub(crate) guest: u64,
    /// Guest plus the host's work for it: the guest's turns on the CPU.
    pub(crate) total: u64,
    /// The shortest enter-to-return of a hypercall exit: the switcher both
    /// ways plus the guest's few instructions between two calls.
    pub(crate) fastest_hypercall: u64,
}

impl Default for Cycles {
    fn default() -> Self {
        Cycles { guest: 0, total: 0, fastest_hypercall: u64::MAX }
    }
}

/// A compact block at `log=info`: exits, hypercalls, paging, cycles.
pub(crate) fn print_stats(
    machine: &mut impl Machine,
    stats: &Stats,
    paging: &Counters,
    cycles: &Cycles,
    guest: Option<usize>,
) {
    if !machine.logs(Level::Info) {
        return;
    }
    let mut line = heapless::String::<512>::new();
    let exits = stats.exits;
    if let Some(number) = guest {
        machine.log(Level::Info, format_args!("stats for guest {number}:"));
    }
    let _ = write!(line, "stats: exits {exits}:");
    for (vector, count) in stats.exits_by_vector.iter().enumerate().filter(|(_, c)| **c > 0) {
        let _ = match vector {
            6 => write!(line, " #UD/hypercall={count}"),
            14 => write!(line, " #PF={count}"),
            32..=255 => write!(line, " irq{vector}={count}"),
            _ => write!(line, " vector{vector}={count}"),
        };
    }
    machine.log(Level::Info, format_args!("{line}"));

    line.clear();
    let calls: u64 = stats.hypercalls.iter().sum();
    let _ = write!(line, "stats: hypercalls {calls} (+{} async):", stats.async_calls);
    for (number, count) in stats.hypercalls.iter().enumerate().filter(|(_, c)| **c > 0) {
        let _ = write!(line, " {}={count}", abi::call_name(number as u64));
    }
    machine.log(Level::Info, format_args!("{line}"));

    line.clear();
    let delivered: u64 = stats.delivered.iter().sum();
    let _ = write!(
        line,
        "stats: delivered to the guest's handlers {delivered} (int n delivered by the host {}):",
        stats.emulated_software_interrupts
    );
    for (vector, count) in stats.delivered.iter().enumerate().filter(|(_, c)| **c > 0) {
        let _ = write!(line, " v{vector}={count}");
    }
    if stats.stray_syscalls > 0 {
        let _ = write!(line, "; {} syscalls a nested KVM ran", stats.stray_syscalls);
    }
    if stats.syscalls_by_host > 0 {
        let _ = write!(line, "; {} syscalls made by the host for the direct path", stats.syscalls_by_host);
    }
    machine.log(Level::Info, format_args!("{line}"));
    if stats.console_input > 0 {
        machine.log(Level::Info, format_args!("stats: console input {} bytes", stats.console_input));
    }

    machine.log(
        Level::Info,
        format_args!(
            "stats: paging: fills {} (linear {}, 2 MiB {}), prefills {}, prefetches {}, reflects {}, roots hit {} missed {} \
             evicted {}, flushes {} user {} full, frames now {} peak {}",
            paging.fills,
            paging.linear_fills,
            paging.large_fills,
            paging.prefills,
            paging.prefetches,
            paging.reflects,
            paging.root_hits,
            paging.root_misses,
            paging.evictions,
            paging.user_flushes,
            paging.full_flushes,
            paging.frames_in_use,
            paging.frames_peak,
        ),
    );
    let host = cycles.total.saturating_sub(cycles.guest);
    machine.log(
        Level::Info,
        format_args!(
            "stats: cycles: guest {} ({}%), host {} ({}%), fastest hypercall round trip {}",
            cycles.guest,
            cycles.guest * 100 / cycles.total.max(1),
            host,
            host * 100 / cycles.total.max(1),
            if cycles.fastest_hypercall == u64::MAX { 0 } else { cycles.fastest_hypercall }
        ),
    );
}

/// Which CPUs a guest ran on, and how often it moved between them: the
/// proof, in its statistics, that guests spread over the CPUs and
/// migrate.
#[derive(Clone, Copy, Default)]
pub(crate) struct Placement {
    /// Bit n: it ran on CPU n (CPUs past 63 are not told apart).
    cpus: u64,
    last: Option<u32>,
    moves: u64,
}

impl Placement {
    /// The guest starts a turn on `cpu`.
    pub(crate) fn arrive(&mut self, cpu: u32) {
        if self.last.is_some_and(|last| last != cpu) {
            self.moves += 1;
        }
        self.last = Some(cpu);
        self.cpus |= 1 << cpu.min(63);
    }

    pub(crate) fn print(&self, machine: &mut impl Machine) {
        if !machine.logs(Level::Info) {
            return;
        }
        let mut line = heapless::String::<512>::new();
        let _ = write!(line, "stats: cpus: ran on");
        let mut separator = " ";
        for cpu in (0..64).filter(|cpu| self.cpus & (1 << cpu) != 0) {
            let _ = write!(line, "{separator}{cpu}");
            separator = ", ";
        }
        let _ = write!(line, "; moved {} times", self.moves);
        machine.log(Level::Info, format_args!("{line}"));
    }
}

/// What each CPU did for a run, printed at its end when several CPUs
/// served it, one line each and their sum: turns (a guest taken onto the
/// CPU), the guests' exits there, and the guests' cycles there.
pub(crate) struct CpuShares {
    /// Indexed by CPU number; CPUs past the last are counted in it.
    cpus: [CpuShare; 64],
}

#[derive(Clone, Copy, Default)]
struct CpuShare {
    turns: u64,
    exits: u64,
    guest_cycles: u64,
}

impl Default for CpuShares {
    fn default() -> Self {
        CpuShares { cpus: [CpuShare::default(); 64] }
    }
}

impl CpuShares {
    /// One turn on `cpu`.
    pub(crate) fn count(&mut self, cpu: u32, exits: u64, guest_cycles: u64) {
        let share = &mut self.cpus[(cpu as usize).min(63)];
        share.turns += 1;
        share.exits += exits;
        share.guest_cycles += guest_cycles;
    }

    pub(crate) fn print(&self, machine: &mut impl Machine) {
        if !machine.logs(Level::Info) {
            return;
        }
        let mut all = CpuShare::default();
        for (cpu, share) in self.cpus.iter().enumerate().filter(|(_, s)| s.turns > 0) {
            machine.log(
                Level::Info,
                format_args!(
                    "cpus: CPU {cpu}: {} turns, {} exits, guest cycles {}",
                    share.turns, share.exits, share.guest_cycles
                ),
            );
            all.turns += share.turns;
            all.exits += share.exits;
            all.guest_cycles += share.guest_cycles;
        }
        machine.log(
            Level::Info,
            format_args!(
                "cpus: all: {} turns, {} exits, guest cycles {}",
                all.turns, all.exits, all.guest_cycles
            ),
        );
    }
}

/// What all the guests of a run add up to, printed at the end when there
/// were several: a campaign of thousands of guests is read from this line.
/// The free frames before and after show that every guest gave all its
/// memory back.
#[derive(Default)]
pub(crate) struct Totals {
    guests: u64,
    exited: u64,
    killed: u64,
    other: u64,
    pub(crate) hypercalls: u64,
    pub(crate) async_calls: u64,
    pub(crate) exits: u64,
    free_before: usize,
    /// The lowest-numbered guest that did not exit with 0, and its status.
    first_failure: Option<(usize, u8)>,
    /// A guest could not even be set up (an `umbra: error:` line): the run
    /// did not do what it was asked, whatever the others did.
    firmware_error: bool,
}

impl Totals {
    pub(crate) fn new(free_before: usize) -> Totals {
        Totals { free_before, ..Totals::default() }
    }

    pub(crate) fn ended(&mut self, number: usize, status: u8) {
        self.guests += 1;
        match status {
            status::SUCCESS => self.exited += 1,
            status::GUEST_KILLED => self.killed += 1,
            _ => self.other += 1,
        }
        if status != status::SUCCESS && self.first_failure.is_none_or(|(first, _)| number < first) {
            self.first_failure = Some((number, status));
        }
        self.firmware_error |= status == status::FIRMWARE_ERROR;
    }

    /// The firmware's exit status: 101 if any guest could not be set up,
    /// otherwise that of the first guest (in order) that did not exit 0.
    pub(crate) fn status(&self) -> u8 {
        if self.firmware_error {
            return status::FIRMWARE_ERROR;
        }
        self.first_failure.map_or(status::SUCCESS, |(_, status)| status)
    }

    pub(crate) fn print(&self, machine: &mut impl Machine, free_after: usize) {
        machine.print(format_args!(
            "guests: {} ended: {} exited 0, {} killed, {} other; hypercalls {} (+{} async), exits {}; \
             free frames {} before, {} after\n",
            self.guests,
            self.exited,
            self.killed,
            self.other,
            self.hypercalls,
            self.async_calls,
            self.exits,
            self.free_before,
            free_after,
        ));
        if free_after != self.free_before {
            machine.log(
                Level::Warn,
                format_args!(
                    "memory: {} frames fewer free after the guests than before",
                    self.free_before - free_after
                ),
            );
        }
    }
}
