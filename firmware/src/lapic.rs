//! # The local APIC timer: the host's clock and the guest's
//!
//! Umbra needs one timer. It wakes the host when the guest's clock event
//! (SET_CLOCKEVENT) is due, wakes a halted guest, and above all takes the
//! CPU back from a guest that spins with its virtual interrupts off: the
//! real interrupt flag stays on while a guest runs, so the timer's
//! interrupt always exits to the host.
//!
//! The local APIC's one-shot timer is everywhere Umbra runs. QEMU (TCG)
//! and KVM both clock it at 1 GHz, one tick per nanosecond at divide-by-1,
//! so "arm in N ns" is "count down from N". The TSC, which the guest's
//! clock is derived from, is calibrated against it at boot: 10 ms of APIC
//! ticks, counted in TSC ticks. Under `-icount` both follow the virtual
//! clock, so the calibration holds there too.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::registers::model_specific::Msr;

/// The host timer's vector, and the spurious-interrupt vector. Both are
/// among the vectors no guest may route to itself.
pub const TIMER_VECTOR: u8 = 0xef;
pub const SPURIOUS_VECTOR: u8 = 0xff;
const _: () =
    assert!(hv_core::abi::is_host_vector(TIMER_VECTOR) && hv_core::abi::is_host_vector(SPURIOUS_VECTOR));

const APIC_BASE_MSR: u32 = 0x1b;
const APIC_ENABLE: u64 = 1 << 11;
const EOI: usize = 0xb0;
const SPURIOUS: usize = 0xf0;
const LVT_TIMER: usize = 0x320;
const INITIAL_COUNT: usize = 0x380;
const CURRENT_COUNT: usize = 0x390;
const DIVIDE: usize = 0x3e0;
const DIVIDE_BY_1: u32 = 0xb;
const MASKED: u32 = 1 << 16;

/// The APIC's register page (identity-mapped, below 4 GiB).
#[unsafe(no_mangle)]
static LAPIC_BASE: AtomicU64 = AtomicU64::new(0);
/// The EOI register's address, for the host's interrupt stub in traps.s.
#[unsafe(no_mangle)]
static LAPIC_EOI_ADDRESS: AtomicU64 = AtomicU64::new(0);

fn write(register: usize, value: u32) {
    let base = LAPIC_BASE.load(Ordering::Relaxed);
    if base != 0 {
        // SAFETY: the APIC's registers, identity-mapped; 32-bit accesses
        // are the only kind the APIC accepts.
        unsafe { core::ptr::write_volatile((base as usize + register) as *mut u32, value) };
    }
}

fn read(register: usize) -> u32 {
    let base = LAPIC_BASE.load(Ordering::Relaxed);
    if base == 0 {
        return 0;
    }
    // SAFETY: as for write.
    unsafe { core::ptr::read_volatile((base as usize + register) as *const u32) }
}

/// Enable this CPU's APIC with its timer masked; returns the TSC rate in
/// kHz, measured against the APIC timer.
pub fn init() -> Result<u64, &'static str> {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let msr = unsafe { Msr::new(APIC_BASE_MSR).read() };
    let base = msr & 0x000f_ffff_ffff_f000;
    if base == 0 || base >= crate::memory::BOOT_MAPPED {
        return Err("the local APIC is not below 4 GiB");
    }
    // SAFETY: enabling the APIC at the base it already has.
    unsafe { Msr::new(APIC_BASE_MSR).write(msr | APIC_ENABLE) };
    LAPIC_BASE.store(base, Ordering::Relaxed);
    LAPIC_EOI_ADDRESS.store(base + EOI as u64, Ordering::Relaxed);
    write(SPURIOUS, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(DIVIDE, DIVIDE_BY_1);
    write(LVT_TIMER, MASKED | u32::from(TIMER_VECTOR));

    const WINDOW_TICKS: u32 = 10_000_000; // 10 ms at 1 GHz
    write(INITIAL_COUNT, u32::MAX);
    let start_count = read(CURRENT_COUNT);
    let start_tsc = rdtsc();
    let mut spins = 0u64;
    while start_count.wrapping_sub(read(CURRENT_COUNT)) < WINDOW_TICKS {
        spins += 1;
        if spins > 1_000_000_000 {
            write(INITIAL_COUNT, 0);
            return Err("the local APIC timer does not count");
        }
        core::hint::spin_loop();
    }
    let tsc_ticks = rdtsc() - start_tsc;
    write(INITIAL_COUNT, 0);
    Ok((tsc_ticks / 10).max(1))
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Interrupt once, `ns` from now (at most about 4.3 s; the run loop
/// re-arms anyway).
pub fn arm_ns(ns: u64) {
    write(LVT_TIMER, u32::from(TIMER_VECTOR));
    write(INITIAL_COUNT, ns.clamp(1, u64::from(u32::MAX)) as u32);
}

pub fn disarm() {
    write(INITIAL_COUNT, 0);
}

/// Acknowledge the interrupt being handled.
pub fn eoi() {
    write(EOI, 0);
}

/// Sleep until the next interrupt: the only place the host enables them.
pub fn wait_for_interrupt() {
    x86_64::instructions::interrupts::enable_and_hlt();
    x86_64::instructions::interrupts::disable();
}
