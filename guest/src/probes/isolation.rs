//! # Isolation between guests: a secret, and guests looking for it
//!
//! Two test modes, run side by side as separate guests
//! (`guests=3 guests_at_once=2 -- test=secret -- test=scan`):
//!
//! - `test=secret` fills every free page of its memory with a pattern,
//!   says so, keeps running on the clock for a while (so a neighbour can
//!   look while it lives), then breaks a rule and is killed.
//! - `test=scan` reads every page of its own memory, the only memory it
//!   can map, looking for that pattern, and prints how many pages it
//!   scanned and how many held the secret. Then it tries to reach beyond
//!   its memory, mapping a frame past its end, which must kill it.
//!
//! A guest that starts after the secret's owner was killed gets the same
//! host frames back, scrubbed; its scan is the test that scrubbing works.
//!
//! The pattern is recognized arithmetically (word i of a page is
//! `(KEY + i) * ODD`), in registers, so the scanner never holds a copy of
//! the secret in its own memory that it would then find.

use umbra_abi as abi;

use crate::platform::hypercall::{self, hypercall, shutdown};
use crate::probes::tables::{self, ACCESSED, DIRTY, Frames, PRESENT, PT, WRITABLE, phys};

const KEY: u64 = 0x5ec2_e70f_0000_0000;
const ODD: u64 = 0x9e37_79b9_7f4a_7c15;
/// The multiplicative inverse of ODD modulo 2^64.
const ODD_INVERSE: u64 = {
    let mut inverse: u64 = 1;
    let mut step = 0;
    while step < 6 {
        inverse = inverse.wrapping_mul(2u64.wrapping_sub(ODD.wrapping_mul(inverse)));
        step += 1;
    }
    inverse
};
const _: () = assert!(ODD.wrapping_mul(ODD_INVERSE) == 1);

/// Words of the pattern written at the start of every page.
const MARK_WORDS: u64 = 16;

/// Write the secret at the start of the free page at `page`.
fn write_secret(page: u64) {
    for i in 0..MARK_WORDS {
        // SAFETY: a free frame of ours, mapped 1:1.
        unsafe { phys::<u64>(page + i * 8).write_volatile(KEY.wrapping_add(i).wrapping_mul(ODD)) };
    }
}

/// Does the page at `page` start with the secret?
fn holds_secret(page: u64) -> bool {
    (0..MARK_WORDS).all(|i| {
        // SAFETY: `page` is guest memory, mapped 1:1 by our tables.
        let word = unsafe { phys::<u64>(page + i * 8).read_volatile() };
        word.wrapping_mul(ODD_INVERSE).wrapping_sub(KEY) == i
    })
}

/// Sleep `ticks` milliseconds on our own clock. With no handler for IRQ 0
/// the interrupt simply stays pending, which is all HALT waits for.
fn linger(ticks: u32) {
    for _ in 0..ticks {
        // SAFETY: arming our clock and sleeping are requests to Umbra.
        unsafe { hypercall(abi::SET_CLOCKEVENT, 1_000_000, 0, 0, 0, 0) };
        hypercall::set_interrupts_enabled(true);
        // SAFETY: as above.
        unsafe { hypercall(abi::HALT, 0, 0, 0, 0, 0) };
        hypercall::set_interrupts_enabled(false);
    }
}

/// `test=secret`.
pub fn secret(memory_size: u64, frames: Frames) -> ! {
    let (start, end) = frames.range();
    let mut pages = 0;
    for page in (start..end).step_by(4096) {
        write_secret(page);
        pages += 1;
    }
    let _ = memory_size;
    say!("secret written to {pages} pages");
    // Stay alive a little while, so a neighbour scans while the secret's
    // owner still runs.
    linger(20);
    say!("secret owner leaves");
    // SAFETY: a call that does not exist: Umbra kills us, which is the plan.
    unsafe { hypercall(0x5ec2e7, 0, 0, 0, 0, 0) };
    shutdown(98, "survived")
}

/// `test=scan`.
pub fn scan(memory_size: u64, frames: Frames) -> ! {
    // The control: plant the secret in one page of our own, so a scan that
    // finds nothing else is a scan that could have.
    let (_, free_end) = frames.range();
    write_secret(free_end - 4096);
    let mut found = 0;
    let mut scanned = 0;
    for page in (0..memory_size).step_by(4096) {
        scanned += 1;
        if holds_secret(page) {
            found += 1;
        }
    }
    say!("scanned {scanned} pages of its memory: the secret in {found} (1 is our own control page)");
    // Outlive the secret's owner, so the next guest gets its frames.
    linger(40);
    // Now try to reach past our memory: map a frame beyond it and read.
    let mut space = tables::build_and_switch(memory_size, frames);
    let va = 0xFFFF_B000_0000_0000;
    let pte = memory_size | PRESENT | WRITABLE | ACCESSED | DIRTY;
    space.set(va, PT, pte);
    // SAFETY: announcing our own write; Umbra must refuse it.
    unsafe { hypercall(abi::SET_PTE, space.root, va, pte, 0, 0) };
    // SAFETY: if the mapping were allowed, this would read another's memory.
    let stolen = unsafe { (va as *const u64).read_volatile() };
    say!("read {stolen:#x} past the end of our memory");
    shutdown(98, "survived")
}

/// `test=fpu-secret`: leave π in our x87 ST0, and linger while another
/// guest runs.
pub fn fpu_secret() -> ! {
    // SAFETY: the x87 unit is ours while we run; fldpi pushes π.
    unsafe { core::arch::asm!("fninit", "fldpi", options(nomem, nostack)) };
    say!("fpu secret: pi in st0");
    linger(20);
    shutdown(0, "fpu secret")
}

/// `test=fpu-scan`: read our own x87 ST0. A fresh guest's unit is empty;
/// seeing π would mean the host let another guest's registers through.
pub fn fpu_scan() -> ! {
    linger(5);
    let mut bits = 0u64;
    // SAFETY: fstp of ST0 to a local: an empty register stores the
    // indefinite NaN (the fault is masked after fninit), π stores π.
    unsafe { core::arch::asm!("fstp qword ptr [{}]", in(reg) &raw mut bits, options(nostack)) };
    let pi = core::f64::consts::PI.to_bits();
    say!(
        "fpu scan: st0 holds {bits:#018x}: {}",
        if bits == pi { "another guest's pi" } else { "not another guest's value" }
    );
    shutdown(if bits == pi { 96 } else { 0 }, "fpu scan")
}
