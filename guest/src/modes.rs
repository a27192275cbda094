//! # Test modes: breaking the rules on purpose
//!
//! A guest that never misbehaves proves only half of Umbra: the other half
//! is that a guest which does is stopped, cleanly, with a reason. A word
//! `test=NAME` on the guest's command line picks one misdeed; the boot
//! tests then check Umbra's exit status and message. Each mode first
//! prints "guest: test NAME". If Umbra lets a misdeed pass, the guest says
//! "guest: survived" and stops with status 98, which no test expects.
//! Some modes prove a path works instead: `null-hypercalls:N` (a
//! measurement), `reflect` and `timer` (see traps.rs), and `pages`, the
//! page-table walk in touch.rs. (The process kernel's `showcase` and
//! `scenario:NAME` are not test modes: main.rs starts them itself.)

use hv_core::abi;

use crate::console::Printable;
use crate::hypercall::{self, hypercall, shutdown};
use crate::tables::{self, ACCESSED, DIRTY, Frames, PRESENT, PT, WRITABLE};

/// The switcher region: the top 4 MiB, Umbra's in every address space.
const SWITCHER_BASE: u64 = 0xFFFF_FFFF_FFC0_0000;
/// The switcher's state page, which Umbra maps read-only for us.
const SWITCHER_STATE: u64 = SWITCHER_BASE + 0x3000;

/// A pointer outside any guest's memory.
const OUTSIDE_GUEST: u64 = 0x0000_7000_0000_0000;

/// The value after `test=`, if the command line has such a word.
pub fn test_word(cmdline: &[u8]) -> Option<&[u8]> {
    cmdline.split(u8::is_ascii_whitespace).find_map(|word| word.strip_prefix(b"test="))
}

/// Runs test `name`, after INIT.
pub fn run(name: &[u8], memory_size: u64, frames: Frames) -> ! {
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
    if let Some(spec) = name.strip_prefix(b"fuzz:") {
        crate::fuzz::run(spec, memory_size, frames);
    }
    if let Some(attack) = name.strip_prefix(b"attack:") {
        crate::attacks::run(attack, memory_size, frames);
    }
    match name {
        b"secret" => crate::isolation::secret(memory_size, frames),
        b"scan" => crate::isolation::scan(memory_size, frames),
        b"fpu-secret" => crate::isolation::fpu_secret(),
        b"fpu-scan" => crate::isolation::fpu_scan(),
        b"pages" => crate::touch::run(tables::build_and_switch(memory_size, frames)),
        b"map-switcher" => map_switcher(memory_size, frames),
        b"reflect" => crate::traps::reflect(memory_size, frames),
        b"timer" => crate::traps::timer(memory_size, frames),
        b"bad-idt" => crate::traps::bad_idt(memory_size, frames),
        b"halt-forever" => crate::traps::halt_forever(),
        b"fault-on-bad-stack" => crate::traps::fault_on_bad_stack(memory_size, frames),
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
pub fn no_init() -> ! {
    say!("test no-init");
    survived()
}

/// `test=first-init-at-switcher`: the very first call, INIT, names the
/// switcher's state page as the shared page. (The attack suite's
/// `init-at-switcher` comes after a proper INIT, so it meets "INIT called
/// twice" first.) Nothing may be printed before: the first call must be
/// this one.
pub fn first_init_at_switcher() -> ! {
    // SAFETY: Umbra must refuse this, and kill us.
    unsafe { hypercall(abi::INIT, SWITCHER_STATE, 0, 0, 0, 0) };
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
    let state = SWITCHER_STATE as *mut u64;
    // SAFETY: Umbra maps this page read-only for us; if it does not, the
    // read kills us, which is also an answer.
    let value = unsafe { state.read_volatile() };
    say!("read the switcher state page");
    // SAFETY: Umbra must fault this write, and kill us.
    unsafe { state.write_volatile(!value) };
}

fn survived() -> ! {
    say!("survived");
    shutdown(98, "survived")
}

fn unknown() -> ! {
    say!("unknown test");
    shutdown(97, "unknown test")
}

/// A decimal number, digits only.
pub fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let digit = (d as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(digit as u64)
    })
}
