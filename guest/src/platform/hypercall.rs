//! # Hypercalls: the one way out of ring 1
//!
//! The paravirtual backend of the platform layer (`mod.rs` calls it when
//! the guest runs under Umbra), and the probes' direct line to Umbra.
//!
//! At ring 1 the guest may not touch page tables, interrupts or devices:
//! every such instruction faults, and Umbra kills a guest that tries. So
//! it asks. The call number goes in `rax`, up to five arguments in `rdi,
//! rsi, rdx, r10, r8`, and `ud2` traps into Umbra, which steps over it and
//! leaves the result in `rax`. Every other register comes back untouched.
//!
//! Some calls need not happen at once: announcing a page-table change can
//! wait until Umbra next runs. Those go into the async ring of the shared
//! page, which Umbra drains, in order, before every synchronous call. This
//! is lguest's trick for batching: one trap instead of sixty-four.
//!
//! The shared page itself lives here, in .bss: 4096-aligned, and in linear
//! mode its address is also its guest-physical address.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicUsize, Ordering, compiler_fence};

use umbra_abi::{self as abi, ASYNC_SLOTS, SharedPage};

/// Makes hypercall `number` with five arguments and returns `rax`.
///
/// # Safety
/// A call may read or write the guest memory its arguments name, change
/// the address space, or never return: the caller must know what the call
/// does with its arguments.
pub unsafe fn hypercall(number: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> u64 {
    let result;
    // SAFETY: `ud2` at ring 1 traps into Umbra, which returns to the next
    // instruction with only `rax` changed. No `nomem`: the call may read and
    // write our memory (the console buffer, the shared page).
    unsafe {
        core::arch::asm!(
            "ud2",
            inlateout("rax") number => result,
            in("rdi") a0,
            in("rsi") a1,
            in("rdx") a2,
            in("r10") a3,
            in("r8") a4,
            options(nostack),
        );
    }
    result
}

/// The shared page: page-aligned, zero at start, written by both sides.
#[repr(C, align(4096))]
struct Shared(UnsafeCell<SharedPage>);

// SAFETY: one vCPU and no threads; Umbra writes the page only while we are
// inside a hypercall.
unsafe impl Sync for Shared {}

// SAFETY: SharedPage is plain integers, for which all zeroes is valid.
// Exported: trap handlers written in assembly (the kernel's and the
// probes') set `irq_enabled` themselves.
#[unsafe(export_name = "GUEST_SHARED_PAGE")]
static SHARED: Shared = Shared(UnsafeCell::new(unsafe { MaybeUninit::<SharedPage>::zeroed().assume_init() }));

/// Where we fill the async ring next. Umbra keeps its own cursor, starting
/// at slot 0 like ours, and never reads one from the page.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

fn shared() -> *mut SharedPage {
    SHARED.0.get()
}

/// INIT: tell Umbra where the shared page is. The first call, made once.
pub fn init() {
    // SAFETY: the page is ours, aligned, and lives forever.
    unsafe { hypercall(abi::INIT, shared() as u64, 0, 0, 0, 0) };
}

/// The ABI version Umbra wrote into the shared page at INIT.
pub fn shared_abi_version() -> u32 {
    // SAFETY: a read of our own static; volatile because Umbra writes it.
    unsafe { (&raw const (*shared()).abi_version).read_volatile() }
}

/// Sets where our kernel half starts. Umbra reads it at the first
/// NEW_PGTABLE, so this must come before that.
pub fn set_kernel_boundary(boundary: u64) {
    // SAFETY: a write to our own static.
    unsafe { (&raw mut (*shared()).kernel_boundary).write_volatile(boundary) };
}

/// The virtual interrupt flag: Umbra delivers interrupts only while it is on.
pub fn set_interrupts_enabled(on: bool) {
    // SAFETY: a write to our own static.
    unsafe { (&raw mut (*shared()).irq_enabled).write_volatile(u32::from(on)) };
}

/// Where our interrupt return path's `iretq` is: no interrupt is delivered
/// while we stand on it.
pub fn set_noirq_iret(address: u64) {
    // SAFETY: a write to our own static.
    unsafe { (&raw mut (*shared()).noirq_iret).write_volatile(address) };
}

/// Takes the console input Umbra has put in our ring, up to `buf`'s
/// length; never waits. Umbra raises `CONSOLE_IRQ` when it adds some.
pub fn console_read(buf: &mut [u8]) -> usize {
    let page = shared();
    // SAFETY: reads and writes of our own static; volatile because Umbra
    // writes `input_written` and the ring between our instructions' view.
    unsafe {
        let written = (&raw const (*page).input_written).read_volatile();
        let mut read = (&raw const (*page).input_read).read_volatile();
        let mut count = 0;
        while count < buf.len() && read != written {
            let index = read as usize % abi::CONSOLE_INPUT_SIZE;
            buf[count] = (&raw const (*page).input[index]).read_volatile();
            read = read.wrapping_add(1);
            count += 1;
        }
        (&raw mut (*page).input_read).write_volatile(read);
        count
    }
}

/// The faulting address of the last page fault Umbra delivered to us.
pub fn fault_address() -> u64 {
    // SAFETY: a read of our own static; volatile because Umbra writes it.
    unsafe { (&raw const (*shared()).cr2).read_volatile() }
}

/// SHUTDOWN: stop with `status` (0-99 becomes the exit status) and a
/// message of at most 256 bytes.
pub fn shutdown(status: u64, message: &str) -> ! {
    let len = message.len().min(abi::SHUTDOWN_MESSAGE_MAX as usize);
    // SAFETY: Umbra only reads the message.
    unsafe { hypercall(abi::SHUTDOWN, status, message.as_ptr() as u64, len as u64, 0, 0) };
    // Umbra does not come back from SHUTDOWN; if it ever did, wait here.
    loop {
        core::hint::spin_loop();
    }
}

/// CONSOLE_WRITE: print `bytes` (at most 4096 of them); returns the count.
pub fn console_write(bytes: &[u8]) -> u64 {
    // SAFETY: Umbra only reads the buffer.
    unsafe { hypercall(abi::CONSOLE_WRITE, bytes.as_ptr() as u64, bytes.len() as u64, 0, 0, 0) }
}

/// NEW_PGTABLE: switch to the tables rooted at guest-physical `pml4`.
///
/// # Safety
/// The tables must map this code, its stack and its data where they are
/// now, or the next instruction faults.
pub unsafe fn new_pgtable(pml4: u64) {
    // SAFETY: the caller vouches for the tables.
    unsafe { hypercall(abi::NEW_PGTABLE, pml4, 0, 0, 0, 0) };
}

/// SET_PTE: we wrote `pte` as the entry mapping `va` in the tables at
/// `cr3`. The entry must already be in memory: Umbra reads it there.
pub fn set_pte(cr3: u64, va: u64, pte: u64) {
    // SAFETY: an announcement; Umbra reads our tables but writes at most
    // their accessed and dirty bits, as the CPU would.
    unsafe { hypercall(abi::SET_PTE, cr3, va, pte, 0, 0) };
}

/// FLUSH_ASYNC: a synchronous call that does nothing, so Umbra drains the
/// async ring.
pub fn flush_async() {
    // SAFETY: no arguments; the queued calls were vouched for when queued.
    unsafe { hypercall(abi::FLUSH_ASYNC, 0, 0, 0, 0, 0) };
}

/// Queues call `number` in the async ring. Umbra runs it before our next
/// synchronous call. The arguments go in first and `ready` last: Umbra may
/// run the slot the moment it sees `ready` set, so it must never see a
/// half-written slot.
pub fn queue_async(number: u64, args: [u64; 5]) {
    let index = NEXT_SLOT.load(Ordering::Relaxed);
    // SAFETY: an in-bounds slot of our own static.
    let slot = unsafe { &raw mut (*shared()).async_ring[index] };
    if slot_ready(slot) {
        // The ring is full all the way round: let Umbra empty it.
        flush_async();
        assert!(!slot_ready(slot), "Umbra did not drain the async ring");
    }
    // SAFETY: as above; volatile because Umbra reads the slot behind the
    // compiler's back.
    unsafe {
        (&raw mut (*slot).number).write_volatile(number);
        (&raw mut (*slot).args).write_volatile(args);
        compiler_fence(Ordering::Release);
        (&raw mut (*slot).ready).write_volatile(1);
    }
    NEXT_SLOT.store((index + 1) % ASYNC_SLOTS, Ordering::Relaxed);
}

fn slot_ready(slot: *mut abi::AsyncCall) -> bool {
    // SAFETY: callers pass slots of our own shared page.
    unsafe { (&raw const (*slot).ready).read_volatile() != 0 }
}

/// SET_FS_BASE: the FS base we run with from now on, at every ring.
pub fn set_fs_base(base: u64) {
    // SAFETY: Umbra only records the base; a non-canonical one kills us,
    // which the platform layer's caller has to avoid anyway.
    unsafe { hypercall(abi::SET_FS_BASE, base, 0, 0, 0, 0) };
}

/// The TSC's rate, which Umbra wrote at INIT.
pub fn tsc_khz() -> u64 {
    // SAFETY: a read of our own static; volatile because Umbra writes it.
    unsafe { (&raw const (*shared()).tsc_khz).read_volatile() }
}

/// How many times we have exited to Umbra, as of our last entry.
pub fn exits() -> u64 {
    // SAFETY: a read of our own static; volatile because Umbra writes it.
    unsafe { (&raw const (*shared()).exits).read_volatile() }
}

// The rest is for the probes (`probes/`) alone, and goes with them.

/// How many async slots still wait for Umbra, for `test=pages`.
#[cfg(feature = "probes")]
pub fn async_pending() -> usize {
    (0..ASYNC_SLOTS)
        // SAFETY: in-bounds slots of our own static.
        .filter(|&i| slot_ready(unsafe { &raw mut (*shared()).async_ring[i] }))
        .count()
}

/// The shared page itself, for the attack suite (`probes/attacks/`),
/// which writes fields and async slots the helpers above never would.
#[cfg(feature = "probes")]
pub fn shared_page() -> *mut SharedPage {
    shared()
}

/// Where the shared page is, for the fuzzer's scribbles.
#[cfg(feature = "probes")]
pub fn shared_page_address() -> u64 {
    shared() as u64
}
