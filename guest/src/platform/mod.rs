//! # The platform layer: the few things a kernel cannot do for itself
//!
//! Everything the process kernel (`kernel/`) needs from the machine goes
//! through these functions, like Linux's pv_ops: set a page-table entry,
//! switch the root, flush, turn interrupts on and off, halt, arm the
//! one-shot timer, print, install a trap handler, name the kernel stack,
//! set the FS base, save and restore the FPU/SSE registers, shut down,
//! read the clock. Above this folder nothing knows whether it
//! runs natively or under Umbra.
//!
//! There are two backends, and the entry the image came in through picks
//! one, once, before anything else runs:
//! - **paravirtual** (`guest_entry`, ring 1 under Umbra, `hypercall.rs`):
//!   each operation is a hypercall, or a write to the shared page (the
//!   virtual interrupt flag, the interrupt-return address);
//! - **native** (`native_entry32`, ring 0 on a bare machine, `native.rs`):
//!   real `mov cr3`, `invlpg`, `cli`/`sti`, `hlt`, the PIT, COM1, an IDT
//!   and a TSS of its own.
//!
//! A branch on one byte per call is all the indirection costs; Linux
//! patches its call sites instead, which a kernel this size does not need.
//!
//! `console.rs` builds the guest's lines (`say!`) on top of this layer.
//! The probes (`probes/`) use `hypercall.rs` directly: they run only under
//! Umbra, and mean exact sequences of calls.

use core::sync::atomic::{AtomicU8, Ordering};

use umbra_abi as abi;

use self::hypercall::hypercall;

#[macro_use]
pub mod console;
pub mod hypercall;
mod native;

/// Which machine the kernel runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Paravirtual = 0,
    Native = 1,
}

static BACKEND: AtomicU8 = AtomicU8::new(Backend::Paravirtual as u8);

/// Set by each entry before anything else.
pub fn choose(backend: Backend) {
    BACKEND.store(backend as u8, Ordering::Relaxed);
}

pub fn backend() -> Backend {
    if BACKEND.load(Ordering::Relaxed) == Backend::Native as u8 {
        Backend::Native
    } else {
        Backend::Paravirtual
    }
}

fn native() -> bool {
    backend() == Backend::Native
}

/// A page-table entry changed: the leaf for `va` in the tables at `root`.
/// `now` asks for the change to count before the next instruction; else
/// it may be batched until the next synchronous call ([`sync`]).
pub fn set_pte(root: u64, va: u64, pte: u64, now: bool) {
    if native() {
        native::set_pte(root, va);
    } else if now {
        hypercall::set_pte(root, va, pte);
    } else {
        hypercall::queue_async(abi::SET_PTE, [root, va, pte, 0, 0]);
    }
}

/// Makes every batched change count: page tables, trap handlers.
pub fn sync() {
    if !native() {
        hypercall::flush_async();
    }
}

/// Switches to the address space rooted at `root`.
///
/// # Safety
/// The tables must map the running code, its stack and its data.
pub unsafe fn switch_root(root: u64) {
    if native() {
        // SAFETY: the caller vouches for the tables.
        unsafe { native::switch_root(root) };
    } else {
        // SAFETY: as above.
        unsafe { hypercall::new_pgtable(root) };
    }
}

/// Switches to the address space rooted at `root` and names the kernel
/// stack traps from user mode land on (`len` bytes below `top`): a
/// context switch. Under Umbra one call (SWITCH_CONTEXT), not two.
///
/// # Safety
/// As [`switch_root`]; and the stack is the kernel's, which stays
/// allocated.
pub unsafe fn switch_context(root: u64, top: u64, len: u64) {
    if native() {
        // SAFETY: the caller vouches for the tables.
        unsafe { native::switch_root(root) };
        native::set_kernel_stack(top);
    } else {
        // SAFETY: as above.
        unsafe { hypercall(abi::SWITCH_CONTEXT, root, top, len, 0, 0) };
    }
}

/// Forgets every translation of the current address space's user half.
pub fn flush_user() {
    if native() {
        native::flush_user();
    } else {
        // SAFETY: a request to drop cached translations; nothing else changes.
        unsafe { hypercall(abi::FLUSH_TLB, 0, 0, 0, 0, 0) };
    }
}

/// The interrupt flag (virtual under Umbra).
pub fn interrupts(on: bool) {
    if native() {
        native::interrupts(on);
    } else {
        hypercall::set_interrupts_enabled(on);
    }
}

/// Sleeps until an interrupt arrives; interrupts must be on.
pub fn halt() {
    if native() {
        native::halt();
    } else {
        // SAFETY: a request to Umbra.
        unsafe { hypercall(abi::HALT, 0, 0, 0, 0, 0) };
    }
}

/// Arms the one-shot clock: IRQ 0 after `delta_ns` (0 cancels).
pub fn set_timer(delta_ns: u64) {
    if native() {
        native::set_timer(delta_ns);
    } else {
        // SAFETY: a request to Umbra.
        unsafe { hypercall(abi::SET_CLOCKEVENT, delta_ns, 0, 0, 0, 0) };
    }
}

/// Nanoseconds since the machine started, from the TSC: no call to
/// Umbra, which gives us the TSC's rate in the shared page; natively the
/// rate was measured against the PIT.
pub fn now_ns() -> u64 {
    let khz = if native() { native::tsc_khz() } else { hypercall::tsc_khz() }.max(1);
    // SAFETY: rdtsc is allowed at every ring we run at (CR4.TSD is clear).
    let tsc = unsafe { core::arch::x86_64::_rdtsc() };
    (u128::from(tsc) * 1_000_000 / u128::from(khz)) as u64
}

/// Prints bytes on the console as they are.
pub fn console(bytes: &[u8]) {
    if native() {
        native::console(bytes);
        return;
    }
    for chunk in bytes.chunks(abi::CONSOLE_WRITE_MAX as usize) {
        hypercall::console_write(chunk);
    }
}

/// Whether typed bytes arrive with an interrupt (Umbra's console IRQ);
/// natively the UART's interrupt stays off and the kernel polls COM1.
pub fn console_interrupts() -> bool {
    !native()
}

/// Console input that has arrived, up to `buf`'s length; never waits.
/// Under Umbra it comes through the shared page's input ring (with
/// `CONSOLE_IRQ` when some arrives); natively straight from COM1.
#[allow(dead_code)] // the probes' and, next, the terminal's
pub fn console_read(buf: &mut [u8]) -> usize {
    if native() { native::console_read(buf) } else { hypercall::console_read(buf) }
}

/// Where a trap handler may be installed from: a trap gate (interrupts
/// stay as they were) or an interrupt gate (they go off), and whether user
/// mode may raise the vector itself with `int n`.
#[derive(Clone, Copy)]
pub struct Gate {
    pub trap: bool,
    pub user: bool,
}

/// Installs `handler` (a kernel-half address) for `vector`. Under Umbra
/// the call waits in the async ring, with the others a kernel installs
/// at once, until [`sync`] or the next synchronous call: each would
/// otherwise be an exit.
pub fn set_trap_handler(vector: u8, handler: u64, gate: Gate) {
    if native() {
        native::set_trap_handler(vector, handler, gate);
        return;
    }
    let mut flags = abi::IDT_PRESENT;
    if gate.trap {
        flags |= abi::IDT_TRAP_GATE;
    }
    if gate.user {
        flags |= abi::IDT_USER;
    }
    hypercall::queue_async(abi::LOAD_IDT_ENTRY, [u64::from(vector), handler, flags, 0, 0]);
}

/// Where the CPU finds the registers for `iretq` with interrupts going
/// back on: no interrupt may arrive while it stands there. Only Umbra
/// needs telling; a real CPU's `iretq` restores the flag atomically.
pub fn set_interrupt_return(address: u64) {
    if !native() {
        hypercall::set_noirq_iret(address);
    }
}

/// The kernel stack traps from user mode land on: `len` bytes below `top`.
pub fn set_kernel_stack(top: u64, len: u64) {
    if native() {
        native::set_kernel_stack(top);
    } else {
        // SAFETY: a kernel-half stack of ours, which stays allocated.
        unsafe { hypercall(abi::SET_STACK, top, len, 0, 0, 0) };
    }
}

/// Declares where the kernel half starts, before the first switch. A
/// real MMU needs no telling: the U bit says it all.
pub fn set_kernel_boundary(boundary: u64) {
    if !native() {
        hypercall::set_kernel_boundary(boundary);
    }
}

/// The address of the last page fault.
pub fn fault_address() -> u64 {
    if native() { native::fault_address() } else { hypercall::fault_address() }
}

/// How often the kernel has left for the hypervisor so far (always 0
/// natively): benchmarks divide its growth by their operations.
pub fn exits() -> u64 {
    if native() { 0 } else { hypercall::exits() }
}

/// Sets the FS segment's base, which user programs use for their
/// thread-local storage (`%fs:0`): under Umbra a hypercall (Umbra keeps it
/// with our registers), natively IA32_FS_BASE itself. `base` must be
/// canonical: Umbra kills a guest that passes anything else.
pub fn set_fs_base(base: u64) {
    if native() {
        native::set_fs_base(base);
    } else {
        hypercall::set_fs_base(base);
    }
}

/// One program's x87, MMX and SSE registers, as `fxsave64` lays them out:
/// the kernel keeps one per process and swaps them on a switch.
#[repr(C, align(16))]
#[derive(Clone)]
pub struct FpuArea(pub [u8; 512]);

impl FpuArea {
    /// The state a new program starts with, as after a reset: FCW 0x37f
    /// (every x87 exception masked), MXCSR 0x1f80 (every SSE exception
    /// masked), every register zero and every x87 register empty.
    pub fn initial() -> FpuArea {
        let mut area = FpuArea([0; 512]);
        area.0[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        area.0[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        area
    }
}

/// Saves the CPU's x87/SSE registers into `area`.
///
/// `fxsave64` itself at either ring: at ring 1 under Umbra it is allowed
/// (and measured to work under TCG and this project's nested KVM, where
/// x87 and SSE arithmetic at ring 1 stop the VM: see docs/security.md).
/// Umbra swaps every guest's registers as a whole, so these are ours.
pub fn fpu_save(area: &mut FpuArea) {
    // SAFETY: a 512-byte, 16-byte-aligned area of ours.
    unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack)) };
}

/// Loads the CPU's x87/SSE registers from `area`, which `fpu_save` or
/// [`FpuArea::initial`] filled. An image with MXCSR's reserved bits set
/// would raise #GP here, as on any CPU.
pub fn fpu_restore(area: &FpuArea) {
    // SAFETY: a 512-byte, 16-byte-aligned area of ours; it only loads
    // registers, which belong to the running program.
    unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) area.0.as_ptr(), options(nostack, readonly)) };
}

/// Stops the machine with `status`.
pub fn shutdown(status: u64, message: &str) -> ! {
    if native() { native::shutdown(status, message) } else { hypercall::shutdown(status, message) }
}

/// Where `syscall` from user mode enters the kernel, at ring 1 on the
/// kernel stack, with the frame `int n` would push: under Umbra, its
/// direct path (SET_SYSCALL_ENTRY), with no exit. Natively `syscall`
/// stays a #UD (see `set_syscall_landing`), and this does nothing.
pub fn set_syscall_entry(handler: u64) {
    if !native() {
        // SAFETY: the handler is ours, in the kernel half.
        unsafe { hypercall(abi::SET_SYSCALL_ENTRY, handler, 0, 0, 0, 0) };
    }
}

/// Where `syscall` lands on machines that run it although EFER.SCE is
/// clear. The contract has the instruction raise #UD, which the kernel
/// takes as a Linux system call; but the nested KVM this project's test
/// machines use runs it, jumping to LSTAR without leaving ring 3. So
/// LSTAR names a user page of the kernel's (`va`) whose `ud2` raises the
/// #UD after all, at a known address, with rcx and r11 set as the
/// instruction sets them. Natively that is an MSR write; under Umbra the
/// CPU's LSTAR is Umbra's, which would have to point there itself.
pub fn set_syscall_landing(va: u64) {
    if native() {
        native::set_syscall_landing(va);
    }
}
