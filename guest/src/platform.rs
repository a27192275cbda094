//! # The platform layer: the few things a kernel cannot do for itself
//!
//! Everything the process kernel (`kernel/`) needs from the machine goes
//! through these functions, like Linux's pv_ops: set a page-table entry,
//! switch the root, flush, turn interrupts on and off, halt, arm the
//! one-shot timer, print, install a trap handler, name the kernel stack,
//! shut down, read the clock. Above this file nothing knows whether it
//! runs natively or under Umbra.
//!
//! Today there is one backend, the paravirtual one: each operation is a
//! hypercall, or a write to the shared page (the virtual interrupt flag).
//! A native backend (ring 0, real `mov cr3`, `invlpg`, `cli`/`sti`,
//! `hlt`, a LAPIC timer, COM1) would be chosen at boot by the entry the
//! kernel came in through and slot in behind the same functions.

use hv_core::abi;

use crate::hypercall::{self, hypercall};

/// A page-table entry changed: the leaf for `va` in the tables at `root`.
/// `now` asks for the change to count before the next instruction; else
/// it may be batched until the next synchronous call ([`sync`]).
pub fn set_pte(root: u64, va: u64, pte: u64, now: bool) {
    if now {
        hypercall::set_pte(root, va, pte);
    } else {
        hypercall::queue_async(abi::SET_PTE, [root, va, pte, 0, 0]);
    }
}

/// Makes every batched page-table change count.
pub fn sync() {
    hypercall::flush_async();
}

/// Switches to the address space rooted at `root`.
///
/// # Safety
/// The tables must map the running code, its stack and its data.
pub unsafe fn switch_root(root: u64) {
    // SAFETY: the caller vouches for the tables.
    unsafe { hypercall::new_pgtable(root) };
}

/// Forgets every translation of the current address space's user half.
pub fn flush_user() {
    // SAFETY: a request to drop cached translations; nothing else changes.
    unsafe { hypercall(abi::FLUSH_TLB, 0, 0, 0, 0, 0) };
}

/// The interrupt flag (virtual under Umbra). Part of the contract; the
/// process kernel has no idle loop yet, so nothing calls it today.
#[allow(dead_code)]
pub fn interrupts(on: bool) {
    hypercall::set_interrupts_enabled(on);
}

/// Sleeps until an interrupt arrives; interrupts must be on. As above.
#[allow(dead_code)]
pub fn halt() {
    // SAFETY: a request to Umbra.
    unsafe { hypercall(abi::HALT, 0, 0, 0, 0, 0) };
}

/// Arms the one-shot clock: IRQ 0 after `delta_ns` (0 cancels).
pub fn set_timer(delta_ns: u64) {
    // SAFETY: a request to Umbra.
    unsafe { hypercall(abi::SET_CLOCKEVENT, delta_ns, 0, 0, 0, 0) };
}

/// Nanoseconds since boot.
pub fn now_ns() -> u64 {
    hypercall::time_ns()
}

/// Prints bytes on the console as they are.
pub fn console(bytes: &[u8]) {
    for chunk in bytes.chunks(abi::CONSOLE_WRITE_MAX as usize) {
        hypercall::console_write(chunk);
    }
}

/// Where a trap handler may be installed from: a trap gate (interrupts
/// stay as they were) or an interrupt gate (they go off), and whether user
/// mode may raise the vector itself with `int n`.
#[derive(Clone, Copy)]
pub struct Gate {
    pub trap: bool,
    pub user: bool,
}

/// Installs `handler` (a kernel-half address) for `vector`.
pub fn set_trap_handler(vector: u8, handler: u64, gate: Gate) {
    let mut flags = abi::IDT_PRESENT;
    if gate.trap {
        flags |= abi::IDT_TRAP_GATE;
    }
    if gate.user {
        flags |= abi::IDT_USER;
    }
    // SAFETY: the handler is ours, in the kernel half.
    unsafe { hypercall(abi::LOAD_IDT_ENTRY, u64::from(vector), handler, flags, 0, 0) };
}

/// Where the CPU finds the registers for `iretq` with interrupts going
/// back on: no interrupt may arrive while it stands there.
pub fn set_interrupt_return(address: u64) {
    hypercall::set_noirq_iret(address);
}

/// The kernel stack traps from user mode land on: `len` bytes below `top`.
pub fn set_kernel_stack(top: u64, len: u64) {
    // SAFETY: a kernel-half stack of ours, which stays allocated.
    unsafe { hypercall(abi::SET_STACK, top, len, 0, 0, 0) };
}

/// Declares where the kernel half starts, before the first switch.
pub fn set_kernel_boundary(boundary: u64) {
    hypercall::set_kernel_boundary(boundary);
}

/// Stops the machine with `status`.
pub fn shutdown(status: u64, message: &str) -> ! {
    hypercall::shutdown(status, message)
}
