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
//!
//! The boot CPU calibrates; every application processor enables its own
//! APIC the same way ([`init_ap`]) and trusts the boot CPU's TSC rate (one
//! machine, one TSC clock). The APIC is also how one CPU reaches another:
//! INIT and startup IPIs to start it, a fixed IPI at [`WAKE_VECTOR`] to
//! wake it from `hlt` ([`send_ipi`]).

use core::sync::atomic::{AtomicU64, Ordering};

use umbra_abi::clock::{Bracket, Narrowest};
use x86_64::registers::model_specific::Msr;

/// The host timer's vector, and the spurious-interrupt vector. Both are
/// among the vectors no guest may route to itself.
pub const TIMER_VECTOR: u8 = 0xef;
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// One CPU waking another that sleeps in `hlt`, to look at its mailbox.
pub const WAKE_VECTOR: u8 = 0xee;
const _: () = assert!(
    umbra_abi::is_host_vector(TIMER_VECTOR)
        && umbra_abi::is_host_vector(SPURIOUS_VECTOR)
        && umbra_abi::is_host_vector(WAKE_VECTOR)
);

const APIC_BASE_MSR: u32 = 0x1b;
const APIC_ENABLE: u64 = 1 << 11;
const EOI: usize = 0xb0;
const ICR_LOW: usize = 0x300;
const ICR_HIGH: usize = 0x310;
const DELIVERY_PENDING: u32 = 1 << 12;
const LEVEL_ASSERT: u32 = 1 << 14;
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
    let base = enable()?;
    LAPIC_BASE.store(base, Ordering::Relaxed);
    LAPIC_EOI_ADDRESS.store(base + EOI as u64, Ordering::Relaxed);
    setup_timer();

    let tsc_khz = calibrate_tsc();
    write(INITIAL_COUNT, 0);
    tsc_khz
}

/// The APIC timer's count, read between two reads of the TSC.
fn reading() -> (u32, Bracket) {
    let tsc_before = rdtsc();
    let count = read(CURRENT_COUNT);
    (count, Bracket { tsc_before, tsc_after: rdtsc() })
}

/// The TSC's rate in kHz: TSC ticks over about 10 ms of APIC ticks (1
/// GHz, so nanoseconds), measured again while a busy host blurs the
/// window's ends (`umbra_abi::clock`), up to five times.
fn calibrate_tsc() -> Result<u64, &'static str> {
    const WINDOW_NS: u32 = 10_000_000;
    let mut measured = Narrowest::default();
    for _ in 0..5 {
        write(INITIAL_COUNT, u32::MAX);
        let (start_count, start) = reading();
        let (mut count, mut end) = (start_count, start);
        let mut spins = 0u64;
        while start_count.wrapping_sub(count) < WINDOW_NS {
            spins += 1;
            if spins > 1_000_000_000 {
                write(INITIAL_COUNT, 0);
                return Err("the local APIC timer does not count");
            }
            core::hint::spin_loop();
            (count, end) = reading();
        }
        if measured.offer(start, end, u64::from(start_count.wrapping_sub(count))) {
            break;
        }
    }
    Ok(measured.khz().unwrap_or(1))
}

/// Software-enable this CPU's APIC at the base it already has; its base.
fn enable() -> Result<u64, &'static str> {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let msr = unsafe { Msr::new(APIC_BASE_MSR).read() };
    let base = msr & 0x000f_ffff_ffff_f000;
    if base == 0 || base >= crate::memory::BOOT_MAPPED {
        return Err("the local APIC is not below 4 GiB");
    }
    // SAFETY: enabling the APIC at the base it already has.
    unsafe { Msr::new(APIC_BASE_MSR).write(msr | APIC_ENABLE) };
    Ok(base)
}

/// The spurious vector, and the timer at divide-by-1, masked until armed.
fn setup_timer() {
    write(SPURIOUS, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(DIVIDE, DIVIDE_BY_1);
    write(LVT_TIMER, MASKED | u32::from(TIMER_VECTOR));
    write(INITIAL_COUNT, 0);
}

/// Enable an application processor's APIC and its timer, as [`init`] did
/// the boot CPU's. Every CPU's APIC answers at the same address, so
/// [`LAPIC_BASE`] holds for all of them; a CPU whose APIC sits elsewhere
/// is refused.
pub fn init_ap() -> Result<(), &'static str> {
    if enable()? != LAPIC_BASE.load(Ordering::Relaxed) {
        return Err("this CPU's local APIC is not where the boot CPU's is");
    }
    setup_timer();
    Ok(())
}

/// Is the APIC in use (did [`init`] succeed)?
pub fn present() -> bool {
    LAPIC_BASE.load(Ordering::Relaxed) != 0
}

/// What an IPI asks of its target.
#[derive(Clone, Copy)]
pub enum Ipi {
    /// Reset to the wait-for-startup state.
    Init,
    /// Start in real mode at `page` (below 1 MiB), CS = page >> 4, IP = 0.
    Startup { page: u64 },
    /// An interrupt at this vector.
    Fixed(u8),
}

/// Send `ipi` to the CPU whose APIC ID is `apic_id` (physical destination
/// mode, xAPIC: IDs up to 254), and wait, boundedly, until the APIC has
/// delivered it.
pub fn send_ipi(apic_id: u32, ipi: Ipi) -> Result<(), &'static str> {
    if !present() {
        return Err("no local APIC");
    }
    if apic_id > 0xfe {
        return Err("APIC IDs above 254 need x2APIC mode, which Umbra does not drive");
    }
    let command = LEVEL_ASSERT
        | match ipi {
            Ipi::Init => 0b101 << 8,
            Ipi::Startup { page } => (0b110 << 8) | ((page >> 12) as u32 & 0xff),
            Ipi::Fixed(vector) => u32::from(vector),
        };
    write(ICR_HIGH, apic_id << 24);
    write(ICR_LOW, command);
    // Delivery takes a few bus cycles, or one VM exit; a bound on reads
    // rather than on time, since the caller may be using the timer.
    for _ in 0..10_000_000 {
        if read(ICR_LOW) & DELIVERY_PENDING == 0 {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err("the local APIC never delivered the IPI")
}

/// Start a countdown of `ns` nanoseconds (at most about 4.3 s) on this
/// CPU's APIC timer, masked, so it raises no interrupt: the start-up code
/// times itself on it. It is the APIC's own 1 GHz clock, so it holds even
/// where the TSC calibration went wrong (a busy host can preempt the
/// calibration window). Not while the run loop uses the timer.
pub fn countdown(ns: u64) {
    write(LVT_TIMER, MASKED | u32::from(TIMER_VECTOR));
    write(INITIAL_COUNT, ns.clamp(1, u64::from(u32::MAX)) as u32);
}

/// Nanoseconds left of the [`countdown`] (0 once it has run out).
pub fn countdown_left() -> u64 {
    u64::from(read(CURRENT_COUNT))
}

/// Spin for `us` microseconds, on the countdown.
pub fn delay_us(us: u64) {
    countdown(us.saturating_mul(1000));
    while countdown_left() > 0 {
        core::hint::spin_loop();
    }
}

/// This CPU's APIC ID as CPUID leaf 1 reports it (the initial APIC ID,
/// which is the xAPIC ID the MADT lists); usable before the APIC is.
pub fn this_apic_id() -> u32 {
    core::arch::x86_64::__cpuid(1).ebx >> 24
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Interrupt once, `ns` from now (at most about 4.3 s; the run loop
/// re-arms anyway). The timer's LVT is written each time too, unmasked:
/// whatever masked it ([`countdown`]) or left it, every arming is sure.
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
