//! # When the host itself goes wrong
//!
//! An exception in the host, or a Rust panic, is a bug in Umbra. The best
//! we can do is say exactly where it happened and stop cleanly: the
//! vector and its name, the error code, RIP, CR2, every register, and a
//! backtrace of raw return addresses that `addr2line -e <image>` turns
//! into file and line (the image keeps its debug info, and is built with
//! frame pointers so the chain of saved RBPs can be followed). Then the
//! firmware exits with [`status::CRASH`].
//!
//! Any CPU can crash. The report's first line names the CPU (its number
//! and APIC ID); the first CPU to crash reports, and one that crashes
//! while another is reporting halts quietly, so the report stays whole.

use core::fmt::Write;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicU32, Ordering};

use switcher_asm::layout::GuestRegs;
use umbra_abi::status;
use x86_64::registers::control::Cr2;

use crate::serial::print_crashing;

/// What traps.s leaves on the stack: the registers it pushed, the vector
/// and error code, then the CPU's own interrupt frame. The switcher's
/// assembler macros build it, as they build a guest's frame at an exit, so
/// it is the switcher's `GuestRegs`.
type ExceptionFrame = GuestRegs;

const EXCEPTION_NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved (15)",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization",
    "#CP control protection",
    "reserved (22)",
    "reserved (23)",
    "reserved (24)",
    "reserved (25)",
    "reserved (26)",
    "reserved (27)",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved (31)",
];

/// The APIC ID of the CPU that is reporting a crash, plus one (0: none).
static CRASHING: AtomicU32 = AtomicU32::new(0);

/// Claim the report for this CPU, and say which CPU it is. A second crash
/// on the same CPU while reporting the first goes straight to the exit; a
/// crash on another CPU meanwhile halts that CPU, unreported.
fn begin_crash() -> Cpu {
    let (number, apic_id) = crate::smp::this_cpu();
    match CRASHING.compare_exchange(0, apic_id + 1, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => {
            crate::serial::seize_for_crash();
            Cpu { number, apic_id }
        }
        Err(reporter) if reporter == apic_id + 1 => {
            print_crashing(format_args!("umbra: crashed again while reporting a crash\n"));
            crate::power::exit(status::CRASH)
        }
        Err(_) => loop {
            x86_64::instructions::interrupts::disable();
            x86_64::instructions::hlt();
        },
    }
}

struct Cpu {
    number: usize,
    apic_id: u32,
}

impl core::fmt::Display for Cpu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "CPU {} (APIC ID {})", self.number, self.apic_id)
    }
}

#[unsafe(no_mangle)]
extern "C" fn crash_from_exception(frame: &ExceptionFrame) -> ! {
    let cpu = begin_crash();
    let name = EXCEPTION_NAMES.get(frame.vector as usize).copied().unwrap_or("unknown");
    let f = frame;
    print_crashing(format_args!(
        "umbra: crash: {name} (vector {}) error code {:#x} on {cpu}\n\
         \x20 rip {:#018x} cs {:#x} rflags {:#x} rsp {:#018x} ss {:#x}\n\
         \x20 cr2 {:#018x}\n\
         \x20 rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n\
         \x20 rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}\n\
         \x20 r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}\n\
         \x20 r13 {:#018x} r14 {:#018x} r15 {:#018x}\n",
        f.vector,
        f.error_code,
        f.rip,
        f.cs,
        f.rflags,
        f.rsp,
        f.ss,
        Cr2::read_raw(),
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx,
        f.rsi,
        f.rdi,
        f.rbp,
        f.r8,
        f.r9,
        f.r10,
        f.r11,
        f.r12,
        f.r13,
        f.r14,
        f.r15,
    ));
    backtrace(frame.rip, frame.rbp);
    crate::power::exit(status::CRASH)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let cpu = begin_crash();
    let mut out = crate::serial::Serial;
    let _ = write!(out, "umbra: crash: panic on {cpu}");
    if let Some(location) = info.location() {
        let _ = write!(out, " at {}:{}", location.file(), location.line());
    }
    let _ = writeln!(out, ": {}", info.message());
    let rbp: u64;
    // SAFETY: reads a register into a local; no memory is touched.
    unsafe { core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack)) };
    backtrace(panic as *const () as u64, rbp);
    crate::power::exit(status::CRASH)
}

/// Deepest chain we follow; a corrupt chain could otherwise loop.
const MAX_FRAMES: usize = 32;

/// Follow the saved-RBP chain. Each frame is `[rbp] = caller's rbp`,
/// `[rbp + 8] = return address`. Only frames inside the image's own
/// stacks are trusted; anything else ends the walk.
fn backtrace(rip: u64, mut rbp: u64) {
    print_crashing(format_args!("  backtrace (addr2line -e <image> -f -i -C):\n    {rip:#018x}\n"));
    for _ in 0..MAX_FRAMES {
        if rbp == 0 || !rbp.is_multiple_of(8) || !crate::memory::is_host_stack(rbp, 16) {
            break;
        }
        // SAFETY: rbp..rbp+16 lies inside one of the host's stacks, which
        // are mapped and readable.
        let (next, ret) = unsafe { (*(rbp as *const u64), *((rbp + 8) as *const u64)) };
        if ret == 0 {
            break;
        }
        print_crashing(format_args!("    {ret:#018x}\n"));
        if next <= rbp {
            break;
        }
        rbp = next;
    }
}
