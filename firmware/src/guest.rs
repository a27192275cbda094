//! # Running guests: the hardware behind hv-core's run loop
//!
//! hv-core decides everything about running guests: what every exit
//! means, which guest goes next, when one has run too long, what is
//! printed. This module gives it real things to work on, through
//! `hv_core::run::Machine`, for the boot CPU:
//! - [`GuestRam`]: a guest's memory, one contiguous run of host frames
//!   (`guest_mem=`; without it 64 MiB, or what the machine can spare:
//!   `umbra_firmware::guestmem`), scrubbed before and after use;
//! - [`ShadowPool`]: frames for shadow page tables, from the frame pool,
//!   up to a cap;
//! - [`FpuState`]: a guest's x87 and SSE registers, swapped with `fxsave`
//!   and `fxrstor` when the guest on the CPU changes, and its FS base,
//!   IA32_FS_BASE, likewise;
//! - [`ThisCpu`]: the rest: entering the guest through this CPU's
//!   switcher pages, the local APIC timer, the TSC clock, and the serial
//!   console.
//!
//! Entering is where the host trusts the switcher most, so it checks it
//! every time: after each exit, before any other compiled code runs on,
//! the host's RFLAGS must be the ones the exit path sets.

use core::fmt;

use hv_core::elf::LoadTarget;
use hv_core::run::{self, Exit, Machine, RunConfig};
use hv_core::vcpu;
use paging::{FramePool, GuestMemory, SwitcherEntries};
use switcher_asm::layout::{self, GuestRegs};
use x86_64::registers::control::Cr2;
use x86_64::registers::model_specific::{Efer, EferFlags};

use crate::lapic;
use crate::memory::FRAMES;
use crate::switcher::{self, CpuPages};

pub use hv_core::run::{GuestImage, MAX_GUESTS};

const PAGE: u64 = 4096;

/// The guest's memory: guest-physical 0..size is host-physical
/// base..base+size, which the host maps 1:1.
pub struct GuestRam {
    base: u64,
    size: u64,
}

impl GuestRam {
    fn host_address(&self, gpa: u64, len: u64) -> Option<u64> {
        let end = gpa.checked_add(len)?;
        (end <= self.size).then_some(self.base + gpa)
    }
}

impl GuestMemory for GuestRam {
    fn limit(&self) -> u64 {
        self.size
    }

    fn read_u64(&self, gpa: u64) -> Option<u64> {
        let address = self.host_address(gpa, 8).filter(|_| gpa.is_multiple_of(8))?;
        // SAFETY: inside the guest's frames, which the host maps and owns;
        // volatile because the guest may change it at any time.
        Some(unsafe { core::ptr::read_volatile(address as *const u64) })
    }

    fn write_u64(&mut self, gpa: u64, value: u64) -> bool {
        let Some(address) = self.host_address(gpa, 8).filter(|_| gpa.is_multiple_of(8)) else {
            return false;
        };
        // SAFETY: as for read_u64.
        unsafe { core::ptr::write_volatile(address as *mut u64, value) };
        true
    }

    fn guest_to_host(&self, gpa: u64) -> u64 {
        self.base + gpa
    }

    fn host_large_pages(&self) -> bool {
        // One contiguous run, taken 2 MiB-aligned (`take_guest_memory`),
        // under the host's identity map: any 2 MiB of it the guest maps
        // as a large page may be one shadow leaf.
        self.base.is_multiple_of(2 << 20)
    }
}

impl vcpu::GuestRam for GuestRam {
    fn read_bytes(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let Some(address) = self.host_address(gpa, buf.len() as u64) else { return false };
        // One copy, not a loop: under a nested hypervisor that runs Umbra
        // at about a million instructions a second, a byte loop over a
        // guest image took over a second.
        // SAFETY: inside the guest's frames (checked above), which never
        // overlap the host's buffer. Nothing writes them meanwhile: a
        // guest has one vCPU, and it is stopped while the host handles its
        // exit or loads it.
        unsafe { core::ptr::copy_nonoverlapping(address as *const u8, buf.as_mut_ptr(), buf.len()) };
        true
    }

    fn write_bytes(&mut self, gpa: u64, bytes: &[u8]) -> bool {
        let Some(address) = self.host_address(gpa, bytes.len() as u64) else { return false };
        // SAFETY: as for read_bytes: the guest's own frames, disjoint from
        // the host's buffer, and its one vCPU is stopped.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), address as *mut u8, bytes.len()) };
        true
    }
}

impl LoadTarget for GuestRam {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) {
        // Loading happens before the guest first runs, so nothing races
        // the copy: a plain one, which matters for a root filesystem of
        // several MiB.
        if let Some(address) = self.host_address(gpa, bytes.len() as u64) {
            // SAFETY: inside the guest's frames (checked above), which the
            // host owns; `bytes` (an image or module) lies elsewhere.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), address as *mut u8, bytes.len()) };
        }
    }

    fn zero(&mut self, gpa: u64, len: u64) {
        if let Some(address) = self.host_address(gpa, len) {
            // SAFETY: inside the guest's frames (checked above).
            unsafe { core::ptr::write_bytes(address as *mut u8, 0, len as usize) };
        }
    }
}

/// Frames for shadow page tables, at most `cap` at a time: past that, the
/// shadow MMU evicts roots rather than take the host's memory.
pub struct ShadowPool {
    cap: usize,
    in_use: usize,
}

/// 16 MiB of shadow tables per guest.
const SHADOW_POOL_FRAMES: usize = 4096;

impl FramePool for ShadowPool {
    fn alloc_zeroed(&mut self) -> Option<u64> {
        if self.in_use >= self.cap {
            return None;
        }
        let frame = FRAMES.lock().as_mut()?.alloc()?;
        // SAFETY: a fresh frame, identity-mapped, now the shadow MMU's.
        unsafe { core::ptr::write_bytes(frame as *mut u8, 0, PAGE as usize) };
        self.in_use += 1;
        Some(frame)
    }

    fn free(&mut self, frame: u64) {
        if let Some(frames) = FRAMES.lock().as_mut() {
            match frames.free(frame) {
                Ok(()) => self.in_use -= 1,
                Err(error) => log::error!("shadow pool: {error}"),
            }
        }
    }

    fn read_entry(&self, frame: u64, index: usize) -> u64 {
        // SAFETY: `frame` is a shadow table this pool handed out; the MMU
        // indexes within its 512 entries.
        unsafe { core::ptr::read_volatile((frame as *const u64).add(index % 512)) }
    }

    fn write_entry(&mut self, frame: u64, index: usize, value: u64) {
        // SAFETY: as for read_entry.
        unsafe { core::ptr::write_volatile((frame as *mut u64).add(index % 512), value) };
    }

    fn next_present(&self, frame: u64, from: usize) -> Option<usize> {
        // SAFETY: `frame` is a shadow table this pool handed out, a whole
        // page; no CPU runs on it while its guest's exit is handled (a
        // guest has one vCPU, stopped meanwhile), so nothing writes it
        // while the scan borrows it.
        let table = unsafe { &*(frame as *const [u64; umbra_abi::tables::ENTRIES]) };
        umbra_abi::tables::next_present(table, from)
    }

    fn capacity(&self) -> usize {
        self.cap
    }

    fn in_use(&self) -> usize {
        self.in_use
    }
}

/// The CPU this runs on, as hv-core's run loop sees it: its switcher
/// pages, its timer and FPU, the clock all CPUs share, the console and the
/// frame pool.
pub struct ThisCpu {
    cpu: CpuPages,
    tsc_khz: u64,
    /// The TSC when the run started: the guests' clock counts from here.
    boot_tsc: u64,
    /// Nanoseconds per TSC tick, times 2^32: the clock is read before
    /// every entry, and a multiply is far cheaper than a 128-bit division.
    ns_per_tick_q32: u64,
    /// Whether EFER.SCE is on: the running guest has a syscall entry.
    syscall_on: bool,
}

impl ThisCpu {
    fn new(cpu: CpuPages, tsc_khz: u64, boot_tsc: u64) -> ThisCpu {
        let ns_per_tick_q32 = ((1_000_000u128 << 32) / u128::from(tsc_khz.max(1))) as u64;
        let syscall_on = Efer::read().contains(EferFlags::SYSTEM_CALL_EXTENSIONS);
        ThisCpu { cpu, tsc_khz, boot_tsc, ns_per_tick_q32, syscall_on }
    }
}

impl Machine for ThisCpu {
    type Memory = GuestRam;
    type Pool = ShadowPool;
    type Fpu = FpuState;

    fn now_ns(&self) -> u64 {
        let ticks = rdtsc().wrapping_sub(self.boot_tsc);
        ((u128::from(ticks) * u128::from(self.ns_per_tick_q32)) >> 32) as u64
    }

    fn tsc(&self) -> u64 {
        rdtsc()
    }

    fn tsc_khz(&self) -> u64 {
        self.tsc_khz
    }

    fn write_guest_bytes(&mut self, bytes: &[u8]) {
        crate::serial::write_bytes(bytes);
    }

    fn write_terminal_bytes(&mut self, bytes: &[u8]) {
        crate::serial::write_terminal_bytes(bytes);
    }

    fn write_guest_line(&mut self, number: usize, bytes: &[u8]) {
        crate::serial::write_guest_line(number, bytes);
    }

    fn print(&mut self, text: fmt::Arguments) {
        crate::serial::print(text);
    }

    fn log(&mut self, level: log::Level, line: fmt::Arguments) {
        log::log!(level, "{line}");
    }

    fn logs(&self, level: log::Level) -> bool {
        log::log_enabled!(level)
    }

    fn take_memory(&mut self, size: u64) -> Option<GuestRam> {
        take_guest_memory(size)
    }

    fn release_memory(&mut self, memory: GuestRam) {
        release_guest_memory(memory);
    }

    fn shadow_pool(&mut self) -> ShadowPool {
        ShadowPool { cap: SHADOW_POOL_FRAMES, in_use: 0 }
    }

    fn free_frames(&self) -> usize {
        FRAMES.lock().as_ref().map_or(0, |frames| frames.free_frames())
    }

    fn fresh_fpu(&mut self) -> FpuState {
        FpuState::clean()
    }

    fn save_fpu(&mut self, state: &mut FpuState) {
        state.save();
    }

    fn restore_fpu(&mut self, state: &FpuState) {
        state.restore();
    }

    fn fs_base(&self) -> u64 {
        read_fs_base()
    }

    fn set_fs_base(&mut self, base: u64) {
        write_fs_base(base);
    }

    fn switcher_mapping(&self) -> (u32, SwitcherEntries) {
        (self.cpu.number, self.cpu.guest_entries())
    }

    fn set_guest_root(&mut self, root: u64) {
        self.cpu.set_guest_cr3(root);
    }

    fn set_guest_gates(&mut self, kernel_stack_top: u64, direct: impl Fn(u8) -> Option<u64>) {
        self.cpu.set_kernel_stack(kernel_stack_top);
        self.cpu.set_direct_gates(direct);
    }

    fn set_guest_kernel_stack(&mut self, kernel_stack_top: u64) {
        self.cpu.set_kernel_stack(kernel_stack_top);
    }

    fn set_guest_syscall_entry(&mut self, entry: Option<u64>, kernel_stack_top: u64) {
        self.cpu.set_syscall_entry(entry.unwrap_or(0), kernel_stack_top);
        let on = entry.is_some();
        if on != self.syscall_on {
            // SAFETY: EFER.SCE only makes `syscall` and `sysret` valid
            // instructions; the host runs neither, and the MSRs they use
            // point at the switcher's direct path (switcher::attach).
            unsafe {
                Efer::update(|flags| flags.set(EferFlags::SYSTEM_CALL_EXTENSIONS, on));
            }
            self.syscall_on = on;
        }
    }

    fn enter(&mut self, regs: &mut GuestRegs, timer_ns: u64) -> Exit {
        let page: *mut GuestRegs = regs;
        assert!(page == self.cpu.regs(), "the run loop's registers are not this CPU's registers page");
        // Armed at every entry and stopped at every exit, so it never fires
        // while the host works. Left armed across exits, it did, and its
        // interrupt ended the next entry at once: where exits are slow
        // (over a millisecond each under this project's nested KVM), the
        // guest's 1 ms clock then cost three exits per tick and left its
        // programs no time (the showcase: 43,000 ticks and 213 s, against
        // 100 ticks and 4 s).
        lapic::arm_ns(timer_ns);
        let entered = rdtsc();
        // SAFETY: the switcher pages are set up (switcher::init), the state
        // page names the current shadow root, which the run loop has just
        // given this CPU's switcher mapping, and the registers were
        // sanitized, in this CPU's registers page (checked above), which
        // the switcher is handed; interrupts are off in the host.
        unsafe { switcher_asm::enter(page) };
        let exited = rdtsc();
        // The exit path sets the host's flags before anything else; should
        // it ever stop, stop here, before compiled code runs on with a
        // guest's DF or AC.
        let flags = x86_64::registers::rflags::read_raw() & layout::HOST_SYSTEM_FLAGS;
        if flags != layout::HOST_RFLAGS & layout::HOST_SYSTEM_FLAGS {
            panic!("the switcher's exit path left RFLAGS {flags:#x}, not the host's");
        }
        lapic::disarm();
        let cr2 = if regs.vector == 14 { Cr2::read_raw() } else { 0 };
        if regs.cs & 3 == 0
            && layout::in_syscall_path(regs.rip)
            && !matches!(regs.rip, layout::SYSCALL_VA | layout::SYSCALL_CLOSED_VA)
        {
            // A trap interrupted the direct syscall path after its first
            // instruction, which put the user's stack pointer in this
            // CPU's scratch word: hv-core finds it in `rsp`.
            regs.rsp = self.cpu.syscall_user_rsp();
        }
        let host_tick = regs.vector == u64::from(lapic::TIMER_VECTOR);
        if host_tick {
            lapic::eoi();
        }
        Exit { cr2, host_tick, guest_cycles: exited - entered }
    }

    fn sleep(&mut self, ns: u64) {
        lapic::arm_ns(ns);
        lapic::wait_for_interrupt();
        lapic::disarm();
    }

    fn read_console(&mut self) -> Option<u8> {
        crate::serial::read_byte()
    }
}

/// The run every CPU serves, while there is one, and the clock they
/// share: what an application processor woken for work
/// ([`crate::smp::serve_on_aps`]) finds.
struct SharedRun {
    run: *const (),
    tsc_khz: u64,
    boot_tsc: u64,
}

static CURRENT_RUN: spin::Mutex<Option<SharedRun>> = spin::Mutex::new(None);

// SAFETY: the pointer names a `Run`, which is Sync (checked below), and
// is only read while the boot CPU keeps that run alive (see `run`).
unsafe impl Send for SharedRun {}

const _: () = {
    const fn sync<T: Sync>() {}
    sync::<run::Run<'static, ThisCpu>>();
};

/// Run the guests on every CPU that is online (see `hv_core::run`);
/// returns the exit status. The boot CPU serves the run like the others,
/// then waits for all of them to finish before it prints the totals.
pub fn run(guests: &[GuestImage], config: &RunConfig, tsc_khz: u64) -> u8 {
    let boot_tsc = rdtsc();
    let mut this_cpu = ThisCpu::new(switcher::for_cpu(0), tsc_khz, boot_tsc);
    log::debug!("tsc: a 2000-instruction loop takes {} ticks", ticks_per_2000_instructions());
    let cpus = 1 + crate::smp::online_aps();
    let shared = run::Run::new(guests, config, cpus, this_cpu.free_frames());
    *CURRENT_RUN.lock() = Some(SharedRun { run: (&raw const shared).cast(), tsc_khz, boot_tsc });
    crate::smp::serve_on_aps();
    // SAFETY: the boot CPU's registers page, identity-mapped, page-sized
    // and this CPU's alone: no other CPU enters through it, nothing else
    // in the host reads or writes it while the guests run, and the
    // switcher touches it only inside `switcher_asm::enter`, which
    // ThisCpu::enter hands this very page.
    let regs = unsafe { &mut *this_cpu.cpu.regs() };
    run::serve(&shared, &mut this_cpu, regs);
    // Every CPU leaves `serve` before the run may go.
    crate::smp::wait_for_aps();
    *CURRENT_RUN.lock() = None;
    shared.finish(&mut this_cpu)
}

/// CPU `number`'s part in the current run, if there is one: called on
/// that CPU when it is woken for work.
pub fn serve_on_this_ap(number: usize) {
    let (run, tsc_khz, boot_tsc) = match CURRENT_RUN.lock().as_ref() {
        Some(shared) => (shared.run, shared.tsc_khz, shared.boot_tsc),
        None => return,
    };
    // SAFETY: `run` (above) published this pointer to its own `Run` and
    // waits for every application processor to return from here before
    // that run goes away; `Run` is Sync, so a shared reference on
    // another CPU is sound.
    let run = unsafe { &*run.cast::<run::Run<'static, ThisCpu>>() };
    let mut this_cpu = ThisCpu::new(switcher::for_cpu(number), tsc_khz, boot_tsc);
    // SAFETY: as for the boot CPU's: this CPU's own registers page,
    // touched by nothing else while it serves the run.
    let regs = unsafe { &mut *this_cpu.cpu.regs() };
    run::serve(run, &mut this_cpu, regs);
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Ticks taken by a loop of exactly 2,000 instructions (1,000 times `dec`
/// and `jnz`). Under `-icount shift=0` this tells what one tick is worth,
/// so the statistics can be read as instruction counts.
fn ticks_per_2000_instructions() -> u64 {
    let start = rdtsc();
    // SAFETY: a register-only loop.
    unsafe {
        core::arch::asm!("2:", "dec {n:e}", "jnz 2b", n = inout(reg) 1000u32 => _, options(nomem, nostack));
    }
    rdtsc() - start
}

/// Take `size` bytes of contiguous, 2 MiB-aligned, clean memory: the
/// frames that may hold data (a finished guest's, or the host's own given
/// back) are scrubbed now; the ones nobody has had since the machine
/// started are left as the VMM made them, zeros. Scrubbing here, and
/// not when a guest finishes, clears each frame once, and memory nobody
/// takes again (power-off follows) not at all.
fn take_guest_memory(size: u64) -> Option<GuestRam> {
    let frames = (size / PAGE) as usize;
    let scrub = |start: u64, bytes: u64| {
        // SAFETY: frames just allocated to us, identity-mapped, ours alone.
        unsafe { core::ptr::write_bytes(start as *mut u8, 0, bytes as usize) }
    };
    let (base, scrubbed) = FRAMES.lock().as_mut()?.alloc_contiguous_clean(frames, 512, scrub)?;
    log::debug!("guest memory: {} KiB of {} KiB scrubbed, the rest fresh", scrubbed >> 10, size >> 10);
    Some(GuestRam { base, size })
}

/// Give a finished guest's memory back to the pool, where it counts as
/// dirty: it is scrubbed before anyone else has it.
fn release_guest_memory(ram: GuestRam) {
    if let Some(frames) = FRAMES.lock().as_mut()
        && let Err(error) = frames.free_run(ram.base, (ram.size / PAGE) as usize)
    {
        log::error!("guest memory: {error}");
    }
}

/// A guest's x87, MMX and SSE registers, as FXSAVE lays them out (the
/// XMM registers and MXCSR too: CR4.OSFXSR is on, `boot.s`). The host
/// never touches them (it is soft-float), so the registers the CPU holds
/// are always the running guest's; they must be swapped whenever the guest
/// does, or one guest would read what another left there.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub struct FpuState([u8; 512]);

/// Where FXSAVE keeps the x87 control word and MXCSR.
const FXSAVE_FCW: usize = 0;
const FXSAVE_MXCSR: usize = 24;
const FXSAVE_MXCSR_MASK: usize = 28;

impl FpuState {
    /// The state a fresh guest starts with, as after a reset: FCW 0x37f
    /// (every x87 exception masked, 64-bit precision), MXCSR 0x1f80 (every
    /// SSE exception masked), every register zero and every x87 register
    /// empty. Written out rather than taken from the CPU, which holds
    /// whatever the last guest here left: `fninit` would reset the x87
    /// part only, never the XMM registers.
    fn clean() -> FpuState {
        let mut state = FpuState([0; 512]);
        state.0[FXSAVE_FCW..FXSAVE_FCW + 2].copy_from_slice(&0x037fu16.to_le_bytes());
        state.0[FXSAVE_MXCSR..FXSAVE_MXCSR + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
        state
    }

    fn save(&mut self) {
        // SAFETY: a 512-byte, 16-byte-aligned area of ours.
        unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) self.0.as_mut_ptr(), options(nostack)) };
        // MXCSR may only hold the bits MXCSR_MASK allows (0xffbf when it
        // reads 0), or `fxrstor64` raises #GP. A CPU never holds others,
        // but QEMU's TCG lets a guest's `fxrstor64` load them; cleared
        // here, they can never make the host's restore fault.
        let field =
            |at: usize| u32::from_le_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]]);
        let mask = match field(FXSAVE_MXCSR_MASK) {
            0 => 0xffbf,
            mask => mask,
        };
        let mxcsr = field(FXSAVE_MXCSR) & mask;
        self.0[FXSAVE_MXCSR..FXSAVE_MXCSR + 4].copy_from_slice(&mxcsr.to_le_bytes());
    }

    fn restore(&self) {
        // SAFETY: an image FXSAVE wrote, or `clean`'s, so every field is one
        // FXRSTOR takes (MXCSR's reserved bits clear): it cannot fault.
        unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) self.0.as_ptr(), options(nostack, readonly)) };
    }
}

/// IA32_FS_BASE: the FS segment's base, which guests use for their
/// thread-local storage (SET_FS_BASE).
const IA32_FS_BASE: u32 = 0xc000_0100;

fn read_fs_base() -> u64 {
    // SAFETY: reading an architectural MSR at ring 0 has no side effects.
    unsafe { x86_64::registers::model_specific::Msr::new(IA32_FS_BASE).read() }
}

fn write_fs_base(base: u64) {
    // SAFETY: hv-core hands only canonical bases (SET_FS_BASE kills on
    // any other), so the write cannot fault; the host never uses FS, so
    // nothing of its own moves.
    unsafe { x86_64::registers::model_specific::Msr::new(IA32_FS_BASE).write(base) };
}
