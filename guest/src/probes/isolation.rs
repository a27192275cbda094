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
//! Two more do the same for the CPU's x87 and SSE registers, which Umbra
//! swaps per guest: `test=fpu-secret` leaves π in ST0, a pattern in every
//! XMM register and its own MXCSR, lingers, and checks they are still its
//! own; `test=fpu-scan` checks that it started from the clean state, with
//! nothing of them.
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

/// An FXSAVE image, as `fxsave64` lays it out.
#[repr(C, align(16))]
struct FxImage([u8; 512]);

const FCW: usize = 0;
const FSW: usize = 2;
const FTW: usize = 4;
const MXCSR: usize = 24;
const ST0: usize = 32;
const XMM0: usize = 160;
const XMM_END: usize = XMM0 + 16 * 16;

/// π as an x87 register holds it: its 64-bit mantissa and exponent.
const PI_MANTISSA: u64 = 0xc90f_daa2_2168_c235;
const PI_EXPONENT: u16 = 0x4000;
/// What the secret puts in MXCSR: the default, with flush-to-zero.
const SECRET_MXCSR: u32 = 0x9f80;

/// Byte `i` of XMM register `register` in the secret.
fn secret_xmm_byte(register: usize, i: usize) -> u8 {
    0xa5 ^ (register as u8 * 16 + i as u8)
}

fn fxsave(image: &mut FxImage) {
    // SAFETY: a 512-byte, 16-byte-aligned area of ours. `fxsave64` and
    // `fxrstor64` run at ring 1 under this machine's nested KVM, where x87
    // and SSE arithmetic there stop the VM (docs/security.md), so the
    // probes plant and read their values with these two alone.
    unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) image.0.as_mut_ptr(), options(nostack)) };
}

fn fxrstor(image: &FxImage) {
    // SAFETY: as above; an image `fxsave64` wrote, changed only in fields
    // that take any value (registers, tags, TOP) and MXCSR, set to a
    // valid value.
    unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) image.0.as_ptr(), options(nostack, readonly)) };
}

fn u16_at(image: &FxImage, at: usize) -> u16 {
    u16::from_le_bytes([image.0[at], image.0[at + 1]])
}

fn u32_at(image: &FxImage, at: usize) -> u32 {
    u32::from_le_bytes([image.0[at], image.0[at + 1], image.0[at + 2], image.0[at + 3]])
}

fn u64_at(image: &FxImage, at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&image.0[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Does the image hold the secret: π in ST0, the pattern in every XMM
/// register, our MXCSR?
fn fpu_holds_secret(image: &FxImage) -> (bool, usize) {
    let pi = u64_at(image, ST0) == PI_MANTISSA && u16_at(image, ST0 + 8) == PI_EXPONENT;
    let xmm =
        (0..16).filter(|&r| (0..16).all(|i| image.0[XMM0 + r * 16 + i] == secret_xmm_byte(r, i))).count();
    (pi, xmm)
}

/// `test=fpu-secret`: leave π in our x87 ST0, a pattern in all sixteen
/// XMM registers and flush-to-zero in MXCSR, and linger while another
/// guest runs; then check they are all still ours.
pub fn fpu_secret() -> ! {
    let mut image = FxImage([0; 512]);
    fxsave(&mut image);
    // ST0 is π: one register pushed on an empty stack (TOP 7), valid.
    image.0[FSW..FSW + 2].copy_from_slice(&(7u16 << 11).to_le_bytes());
    image.0[FTW] = 0x80;
    image.0[ST0..ST0 + 8].copy_from_slice(&PI_MANTISSA.to_le_bytes());
    image.0[ST0 + 8..ST0 + 10].copy_from_slice(&PI_EXPONENT.to_le_bytes());
    image.0[MXCSR..MXCSR + 4].copy_from_slice(&SECRET_MXCSR.to_le_bytes());
    for register in 0..16 {
        for i in 0..16 {
            image.0[XMM0 + register * 16 + i] = secret_xmm_byte(register, i);
        }
    }
    fxrstor(&image);
    say!("fpu secret: pi in st0, a pattern in xmm0-15, mxcsr {SECRET_MXCSR:#x}");
    linger(20);
    let mut after = FxImage([0; 512]);
    fxsave(&mut after);
    let (pi, xmm) = fpu_holds_secret(&after);
    let mxcsr = u32_at(&after, MXCSR);
    if !pi || xmm != 16 || mxcsr != SECRET_MXCSR {
        say!("fpu secret: lost while others ran: pi {pi}, {xmm} of 16 xmm registers, mxcsr {mxcsr:#x}");
        shutdown(95, "fpu secret lost")
    }
    say!("fpu secret: all still ours after the other guest's turns");
    shutdown(0, "fpu secret")
}

/// `test=fpu-scan`: look at our own x87/SSE state as a fresh guest. It
/// must be the clean one (FCW 0x37f, MXCSR 0x1f80, every register zero and
/// empty); any trace of the secret would be another guest's.
pub fn fpu_scan() -> ! {
    linger(5);
    let mut image = FxImage([0; 512]);
    fxsave(&mut image);
    let (fcw, fsw, ftw, mxcsr) =
        (u16_at(&image, FCW), u16_at(&image, FSW), image.0[FTW], u32_at(&image, MXCSR));
    let (pi, xmm) = fpu_holds_secret(&image);
    let registers_zero = image.0[ST0..XMM_END].iter().all(|&b| b == 0);
    let clean = fcw == 0x37f && fsw == 0 && ftw == 0 && mxcsr == 0x1f80 && registers_zero;
    let verdict = if pi || xmm > 0 || mxcsr == SECRET_MXCSR {
        "another guest's values"
    } else if clean {
        "a clean state"
    } else {
        "not clean"
    };
    say!(
        "fpu scan: fcw {fcw:#x} fsw {fsw:#x} tags {ftw:#x} mxcsr {mxcsr:#x}, st0 {:#018x}, {xmm} xmm registers \
         with the secret: {verdict}",
        u64_at(&image, ST0)
    );
    shutdown(if clean { 0 } else { 96 }, "fpu scan")
}
