//! # Leaving: the exit contract
//!
//! However Umbra ends, success, a killed guest, bad input or a crash, it
//! ends here: the line `umbra: exit status N` goes out last, then
//! - if QEMU's `isa-debug-exit` device answers at port 0xf4, N is written
//!   to it and QEMU exits with `(N << 1) | 1`;
//! - otherwise (or if that did not stop us) the machine powers off the
//!   ACPI way, which makes QEMU and Cloud Hypervisor exit 0;
//! - and if even that fails, the CPU halts with interrupts off.

use core::sync::atomic::{AtomicBool, Ordering};

use x86_64::instructions::port::Port;

use crate::acpi::POWER_OFF;
use crate::serial::print_crashing;

const DEBUG_EXIT_PORT: u16 = 0xf4;

static DEBUG_EXIT_PRESENT: AtomicBool = AtomicBool::new(false);

/// QEMU's isa-debug-exit reads as 0; a port nobody decodes reads as all
/// ones. Probe once at boot, so a crash later still knows.
pub fn probe_debug_exit() -> bool {
    // SAFETY: reading port 0xf4 has no side effect on either outcome.
    let value = unsafe { Port::<u32>::new(DEBUG_EXIT_PORT).read() };
    let present = value == 0;
    DEBUG_EXIT_PRESENT.store(present, Ordering::Relaxed);
    present
}

pub fn exit(status: u8) -> ! {
    // The console lock may be held by whatever failed: write around it.
    print_crashing(format_args!("umbra: exit status {status}\n"));
    if DEBUG_EXIT_PRESENT.load(Ordering::Relaxed) {
        // SAFETY: the device exists (probed at boot); writing ends QEMU.
        unsafe { Port::<u32>::new(DEBUG_EXIT_PORT).write(u32::from(status)) };
    }
    // try_lock: a crash while the lock was held must still get here.
    if let Some(power_off) = POWER_OFF.try_lock().and_then(|guard| *guard) {
        crate::acpi::perform(&power_off);
        for _ in 0..1_000_000 {
            core::hint::spin_loop();
        }
    }
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
