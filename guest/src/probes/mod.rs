//! # The probes: the guest as Umbra's test subject
//!
//! Everything in this folder exists to test Umbra, not to be a kernel. A
//! `test=` word on the guest's command line that is not the process
//! kernel's (`showcase`, `scenario:NAME`, `bench:...`) picks one probe.
//! Probes run only under Umbra, at ring 1, and call it directly
//! (`platform/hypercall.rs`) rather than through the platform layer: each
//! one is a particular sequence of hypercalls, and most break a rule on
//! purpose. The boot tests, the attack suite (`tests/attacks.rs`) and the
//! fuzz campaigns boot them and judge what they print.
//!
//! - this file: the small test modes (below) and the dispatch;
//! - `attacks/`: the attack suite, `test=attack:NAME`;
//! - `fuzz.rs`: the hypercall fuzzer, `test=fuzz:SEED:COUNT[:H]`;
//! - `isolation.rs`: `secret`, `scan`, `fpu-secret`, `fpu-scan`, guests
//!   looking for each other's data;
//! - `touch.rs`: `test=pages`, the page-table walk this guest began as;
//! - `traps.rs`: `reflect`, `timer` and three trap misdeeds, and the trap
//!   helpers every probe shares;
//! - `tables.rs`: the probes' own page tables and frame allocator.
//!
//! All of it is behind the `probes` cargo feature, on by default: the
//! guest Umbra embeds has them. A guest built with `--no-default-features`
//! is the process kernel alone, and answers a probe's `test=` word with one
//! line saying it needs the probes (`main.rs`).
//!
//! ## Test modes: breaking the rules on purpose
//!
//! A guest that never misbehaves proves only half of Umbra: the other half
//! is that a guest which does is stopped, cleanly, with a reason. A word
//! `test=NAME` on the guest's command line picks one misdeed; the boot
//! tests then check Umbra's exit status and message. Each mode first
//! prints "guest: test NAME". If Umbra lets a misdeed pass, the guest says
//! "guest: survived" and stops with status 98, which no test expects.
//! Some modes prove a path works instead: `null-hypercalls:N` (a
//! measurement), `reflect` and `timer` (see traps.rs), and `pages`, the
//! page-table walk in touch.rs.

mod attacks;
mod fuzz;
mod isolation;
mod tables;
mod touch;
mod traps;

use umbra_abi as abi;

use crate::cmdline::decimal;
use crate::platform::console::Printable;
use crate::platform::hypercall::{self, hypercall, shutdown};
use tables::{ACCESSED, DIRTY, Frames, PRESENT, PT, WRITABLE};

/// The switcher region: the top 4 MiB, Umbra's in every address space,
/// and its pages as the guest sees them (the ABI says where they are).
use umbra_abi::SWITCHER_BASE;
/// The switcher's second code page.
const SWITCHER_CODE_1: u64 = umbra_abi::SWITCHER_CODE + 0x1000;
const REGISTERS_PAGE: u64 = umbra_abi::SWITCHER_REGS_PAGE;
/// The switcher's state page, which Umbra maps read-only for us.
const STATE_PAGE: u64 = umbra_abi::SWITCHER_STATE_PAGE;
const IDT_PAGE: u64 = umbra_abi::SWITCHER_IDT_PAGE;
/// Inside the switcher's slot, past its pages: mapped for nobody.
const SWITCHER_UNMAPPED: u64 = umbra_abi::SWITCHER_MAPPED_END;
/// PD[511] of the region: reserved, never mapped.
const SWITCHER_PD511: u64 = umbra_abi::SWITCHER_RESERVED;

/// A pointer outside any guest's memory.
const OUTSIDE_GUEST: u64 = 0x0000_7000_0000_0000;

/// Runs the probes that must come before INIT, if `test` names one of
/// them (the first call must be theirs); otherwise returns.
pub fn before_init(test: Option<&[u8]>) {
    match test {
        Some(b"no-init") => no_init(),
        Some(b"first-init-at-switcher") => first_init_at_switcher(),
        _ => {}
    }
}

/// Runs probe `name`, after INIT, in the free memory `[free_start,
/// free_end)` of `memory_size` bytes of guest memory.
pub fn run(name: &[u8], memory_size: u64, free_start: u64, free_end: u64) -> ! {
    let frames = Frames::new(free_start, free_end);
    say!("test {}", Printable(name));
    if let Some(digits) = name.strip_prefix(b"exit:") {
        match decimal(digits) {
            // Passed through as is, even out of range: that is a test too.
            Some(status) => shutdown(status, "exit test"),
            None => unknown(),
        }
    }
    if let Some(digits) = name.strip_prefix(b"null-hypercalls:") {
        match decimal(digits) {
            Some(count) => null_hypercalls(count),
            None => unknown(),
        }
    }
    if let Some(digits) = name.strip_prefix(b"input:") {
        match decimal(digits) {
            Some(count) => echo_input(count),
            None => unknown(),
        }
    }
    if let Some(spec) = name.strip_prefix(b"fuzz:") {
        fuzz::run(spec, memory_size, frames);
    }
    if let Some(attack) = name.strip_prefix(b"attack:") {
        attacks::run(attack, memory_size, frames);
    }
    match name {
        b"secret" => isolation::secret(memory_size, frames),
        b"scan" => isolation::scan(memory_size, frames),
        b"fpu-secret" => isolation::fpu_secret(),
        b"fpu-scan" => isolation::fpu_scan(),
        b"pages" => touch::run(tables::build_and_switch(memory_size, frames)),
        b"map-switcher" => map_switcher(memory_size, frames),
        b"reflect" => traps::reflect(memory_size, frames),
        b"timer" => traps::timer(memory_size, frames),
        b"bad-idt" => traps::bad_idt(memory_size, frames),
        b"halt-forever" => traps::halt_forever(),
        b"fault-on-bad-stack" => traps::fault_on_bad_stack(memory_size, frames),
        b"touch-switcher" => touch_switcher(memory_size, frames),
        b"bad-console" => {
            // SAFETY: Umbra must refuse this, and kill us.
            unsafe { hypercall(abi::CONSOLE_WRITE, OUTSIDE_GUEST, 16, 0, 0, 0) };
        }
        b"unknown-hypercall" => {
            // SAFETY: as above.
            unsafe { hypercall(0xdead, 0, 0, 0, 0, 0) };
        }
        _ => unknown(),
    }
    survived()
}

/// `test=input:N`: N bytes of console input, waited for with HALT (which
/// console input wakes, though no clock is armed), then said back in one
/// line, each byte outside printable ASCII as `\xNN`.
fn echo_input(count: u64) -> ! {
    const MAX: usize = 64;
    let mut bytes = [0u8; MAX];
    let wanted = (count as usize).min(MAX);
    let mut got = 0;
    hypercall::set_interrupts_enabled(true);
    while got < wanted {
        got += crate::platform::console_read(&mut bytes[got..wanted]);
        if got < wanted {
            // SAFETY: a request to Umbra.
            unsafe { hypercall(abi::HALT, 0, 0, 0, 0, 0) };
        }
    }
    hypercall::set_interrupts_enabled(false);
    let mut line = [0u8; 4 * MAX];
    let mut at = 0;
    for &byte in &bytes[..got] {
        if (b' '..=b'~').contains(&byte) && byte != b'\\' {
            line[at] = byte;
            at += 1;
        } else {
            let hex = b"0123456789abcdef";
            line[at..at + 4].copy_from_slice(&[
                b'\\',
                b'x',
                hex[(byte >> 4) as usize],
                hex[(byte & 15) as usize],
            ]);
            at += 4;
        }
    }
    say!("input: {}", crate::platform::console::Printable(&line[..at]));
    shutdown(0, "input echoed")
}

/// `test=null-hypercalls:N`: N calls that do nothing, back to back, so
/// the host's fastest round trip is the switcher's own cost plus these
/// few instructions of loop. A measurement, not a misdeed.
fn null_hypercalls(count: u64) -> ! {
    for _ in 0..count {
        hypercall::flush_async();
    }
    say!("null hypercalls: {count} done");
    shutdown(0, "null hypercalls")
}

/// `test=no-init`: the first call is CONSOLE_WRITE, not INIT.
fn no_init() -> ! {
    say!("test no-init");
    survived()
}

/// `test=first-init-at-switcher`: the very first call, INIT, names the
/// switcher's state page as the shared page. (The attack suite's
/// `init-at-switcher` comes after a proper INIT, so it meets "INIT called
/// twice" first.) Nothing may be printed before: the first call must be
/// this one.
fn first_init_at_switcher() -> ! {
    // SAFETY: Umbra must refuse this, and kill us.
    unsafe { hypercall(abi::INIT, STATE_PAGE, 0, 0, 0, 0) };
    survived()
}

/// `test=map-switcher`: map a frame of ours over the switcher and
/// announce it.
fn map_switcher(memory_size: u64, frames: Frames) {
    let mut space = tables::build_and_switch(memory_size, frames);
    let pte = space.frames.alloc() | PRESENT | WRITABLE | ACCESSED | DIRTY;
    space.set(SWITCHER_BASE, PT, pte);
    hypercall::set_pte(space.root, SWITCHER_BASE, pte);
}

/// `test=touch-switcher`: read the switcher's state page, which is
/// allowed, then write it, which is not.
fn touch_switcher(memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    let state = STATE_PAGE as *mut u64;
    // SAFETY: Umbra maps this page read-only for us; if it does not, the
    // read kills us, which is also an answer.
    let value = unsafe { state.read_volatile() };
    say!("read the switcher state page");
    // SAFETY: Umbra must fault this write, and kill us.
    unsafe { state.write_volatile(!value) };
}

/// The misdeed came back: Umbra let something through.
fn survived() -> ! {
    say!("survived");
    shutdown(98, "survived")
}

fn unknown() -> ! {
    say!("unknown test");
    shutdown(97, "unknown test")
}
