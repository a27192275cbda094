//! # Running a guest
//!
//! This is lguest's `run_guest` with the hardware filled in. hv-core
//! decides what every exit means; this module gives it real things to
//! work on:
//! - [`GuestRam`]: the guest's memory, one contiguous run of host frames
//!   (`guest_mem=`; without it 64 MiB, or what the machine can spare:
//!   `umbra_firmware::guestmem`), scrubbed before and after use;
//! - [`ShadowPool`]: frames for shadow page tables, from the frame pool,
//!   up to a cap;
//! - [`Console`]: the serial port, the clock and the TSC rate.
//!
//! [`run`] loads the guest's ELF, writes its boot-info block, and loops:
//! install this CPU's switcher into the current shadow root, enter the
//! guest, and hand the exit to hv-core, until the guest shuts down or is
//! killed. Either way its memory and shadow pages go back to the pool and
//! the statistics are printed.
//!
//! At most eight guests run at once, but a boot may run many more one
//! after another (`guests=N`, up to a million: a fuzzing campaign runs
//! thousands). When several ran, one closing line adds them up, with the
//! free frames before and after, which shows that each one gave back all
//! it took.

use core::fmt::Write;
use core::mem::size_of;

use hv_core::abi::{self, BootInfo};
use hv_core::elf::{self, LoadTarget};
use hv_core::traps::HaltState;
use hv_core::vcpu::{self, Host, Kill, Next, Stats, Vcpu};
use paging::{Counters, FramePool, GuestMemory, ShadowMmu};
use switcher_asm::layout::{self, GuestRegs};
use umbra_firmware::guestmem::GuestMemPlan;
use umbra_firmware::status;
use x86_64::registers::control::Cr2;

use crate::lapic;
use crate::memory::FRAMES;
use crate::switcher::{self, CpuPages};

/// The host takes the CPU back at least this often, whatever the guest
/// does with its own interrupt flag.
const HOST_TICK_NS: u64 = 10_000_000;

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
}

impl vcpu::GuestRam for GuestRam {
    fn read_bytes(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let Some(address) = self.host_address(gpa, buf.len() as u64) else { return false };
        for (offset, byte) in buf.iter_mut().enumerate() {
            // SAFETY: inside the guest's frames (checked above).
            *byte = unsafe { core::ptr::read_volatile((address as usize + offset) as *const u8) };
        }
        true
    }

    fn write_bytes(&mut self, gpa: u64, bytes: &[u8]) -> bool {
        let Some(address) = self.host_address(gpa, bytes.len() as u64) else { return false };
        for (offset, byte) in bytes.iter().enumerate() {
            // SAFETY: inside the guest's frames (checked above).
            unsafe { core::ptr::write_volatile((address as usize + offset) as *mut u8, *byte) };
        }
        true
    }
}

impl LoadTarget for GuestRam {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) {
        vcpu::GuestRam::write_bytes(self, gpa, bytes);
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

    fn capacity(&self) -> usize {
        self.cap
    }

    fn in_use(&self) -> usize {
        self.in_use
    }
}

/// What a guest may ask of the host itself: its console (lines prefixed
/// `[gN] ` when several guests run), the clock, the TSC rate.
#[derive(Clone, Copy)]
pub struct Console {
    tsc_khz: u64,
    boot_tsc: u64,
    prefix: Option<usize>,
    at_line_start: bool,
}

impl Console {
    /// The host's closing line for this guest; returns `status`. It starts
    /// a line of its own even when the guest left half a line unfinished
    /// (a fuzzer's random bytes), so the reason is always one whole line.
    fn finish(&self, status: u8, line: core::fmt::Arguments) -> u8 {
        if !self.at_line_start {
            crate::serial::print(format_args!("\n"));
        }
        match self.prefix {
            Some(number) => crate::serial::print(format_args!("[g{number}] {line}\n")),
            None => crate::serial::print(format_args!("{line}\n")),
        }
        status
    }

    fn killed(&self, reason: Kill) -> u8 {
        self.finish(status::GUEST_KILLED, format_args!("guest killed: {reason}"))
    }
}

impl Host for Console {
    fn console_write(&mut self, bytes: &[u8]) {
        let Some(number) = self.prefix else {
            crate::serial::write_bytes(bytes);
            if let Some(&last) = bytes.last() {
                self.at_line_start = last == b'\n';
            }
            return;
        };
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                crate::serial::print(format_args!("[g{number}] "));
            }
            crate::serial::write_bytes(line);
            self.at_line_start = line.ends_with(b"\n");
        }
    }

    fn now_ns(&self) -> u64 {
        let ticks = rdtsc().wrapping_sub(self.boot_tsc);
        (u128::from(ticks) * 1_000_000 / u128::from(self.tsc_khz.max(1))) as u64
    }

    fn tsc_khz(&self) -> u64 {
        self.tsc_khz
    }
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

/// Where the guest's boot-info block goes: its top page.
fn boot_info_gpa(size: u64) -> u64 {
    size - PAGE
}

/// Take `size` bytes of contiguous, 2 MiB-aligned, scrubbed memory.
fn take_guest_memory(size: u64) -> Option<GuestRam> {
    let frames = (size / PAGE) as usize;
    let base = FRAMES.lock().as_mut()?.alloc_contiguous(frames, 512)?;
    // SAFETY: freshly allocated frames, identity-mapped, ours alone.
    unsafe { core::ptr::write_bytes(base as *mut u8, 0, size as usize) };
    Some(GuestRam { base, size })
}

/// Scrub the guest's memory, then return it to the pool.
fn release_guest_memory(ram: GuestRam) {
    // SAFETY: the guest no longer runs; these frames are still ours.
    unsafe { core::ptr::write_bytes(ram.base as *mut u8, 0, ram.size as usize) };
    if let Some(frames) = FRAMES.lock().as_mut() {
        for frame in (ram.base..ram.base + ram.size).step_by(PAGE as usize) {
            if let Err(error) = frames.free(frame) {
                log::error!("guest memory: {error}");
            }
        }
    }
}

/// One guest to run: its ELF image and its command line.
pub struct GuestImage<'a> {
    pub image: &'a [u8],
    pub cmdline: &'a [u8],
}

/// Where a guest is in its life.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Runnable,
    Halted,
    Finished(u8),
}

/// A loaded guest and everything that is only its: its vCPU (memory,
/// shadow tables, IDT, clock), its registers while another guest runs,
/// and its own counts.
struct Slot {
    number: usize,
    /// Its x87/MMX registers while another guest runs.
    fpu: FpuState,
    /// `guest_timeout=`, counted from when this guest started.
    watchdog: Option<Watchdog>,
    vcpu: Vcpu<GuestRam, ShadowPool>,
    regs: GuestRegs,
    state: SlotState,
    console: Console,
    cycles: Cycles,
}

/// Load the guests and run them to the end, time-sliced on this CPU, at
/// most `memory.at_once` at a time, each in `memory.size` bytes: a waiting
/// guest starts when another ends, in memory that may well be the finished
/// guest's, scrubbed. `total` guests run in all; guest i runs `guests[i]`,
/// and those past the end of the list run its last entry again. Returns
/// the firmware's exit status: 0 when every guest exited with 0; 101 when
/// a guest could not be set up at all; otherwise the status of the first
/// guest (in order) that did not exit 0.
pub fn run(guests: &[GuestImage], total: usize, memory: &GuestMemPlan, tsc_khz: u64, timeout_s: u64) -> u8 {
    let clock = Console { tsc_khz, boot_tsc: rdtsc(), prefix: None, at_line_start: true };
    log::debug!("tsc: a 2000-instruction loop takes {} ticks", ticks_per_2000_instructions());
    let several = total > 1;
    let at_once = memory.at_once.clamp(1, MAX_GUESTS);
    let mut totals = Totals { free_before: free_frames(), ..Totals::default() };
    let mut waiting = (0..total).filter_map(|index| Some((index, guests.get(index).or(guests.last())?)));
    let mut slots: heapless::Vec<Slot, MAX_GUESTS> = heapless::Vec::new();
    let mut admit = |slots: &mut heapless::Vec<Slot, MAX_GUESTS>, totals: &mut Totals| {
        while slots.len() < at_once {
            let Some((index, guest)) = waiting.next() else { return };
            let number = index + 1;
            let console = Console { prefix: several.then_some(number), ..clock };
            match load(guest, memory, number, &console) {
                Ok((vcpu, regs)) => {
                    let deadline_ns =
                        console.now_ns().saturating_add(timeout_s.saturating_mul(1_000_000_000));
                    let watchdog = (timeout_s != 0).then_some(Watchdog { deadline_ns, timeout_s });
                    let state = SlotState::Runnable;
                    let cycles = Cycles::default();
                    let fpu = FpuState::clean();
                    let _ = slots.push(Slot { number, fpu, vcpu, regs, state, console, cycles, watchdog });
                }
                Err(status) => totals.ended(number, status),
            }
        }
    };
    admit(&mut slots, &mut totals);

    let cpu = switcher::for_cpu(0);
    let mut current: Option<usize> = None;
    while let Some(next) = pick_next(&mut slots, current) {
        if current != Some(next) {
            switch_to(&mut slots, current, next, &cpu);
            current = Some(next);
        }
        let slot = &mut slots[next];
        let turn_started = rdtsc();
        let end = run_slice(slot, &cpu, several);
        slot.cycles.total += rdtsc() - turn_started;
        slot.state = match end {
            SliceEnd::Preempted => SlotState::Runnable,
            SliceEnd::Halted => SlotState::Halted,
            SliceEnd::Finished(status) => SlotState::Finished(status),
        };
        if let SlotState::Finished(status) = slots[next].state {
            totals.ended(slots[next].number, status);
            retire(slots.remove(next), several, &mut totals);
            current = None;
            admit(&mut slots, &mut totals);
        }
    }
    // A guest halted for ever is finished by pick_next; retire the rest.
    for slot in slots {
        if let SlotState::Finished(status) = slot.state {
            totals.ended(slot.number, status);
        }
        retire(slot, several, &mut totals);
    }
    if several {
        totals.print(free_frames());
    }
    totals.status()
}

fn free_frames() -> usize {
    FRAMES.lock().as_ref().map_or(0, |frames| frames.free_frames())
}

/// What all the guests of a run add up to, printed at the end when there
/// were several: a campaign of thousands of guests is read from this line.
/// The free frames before and after show that every guest gave all its
/// memory back.
#[derive(Default)]
struct Totals {
    guests: u64,
    exited: u64,
    killed: u64,
    other: u64,
    hypercalls: u64,
    async_calls: u64,
    exits: u64,
    free_before: usize,
    /// The lowest-numbered guest that did not exit with 0, and its status.
    first_failure: Option<(usize, u8)>,
    /// A guest could not even be set up (an `umbra: error:` line): the run
    /// did not do what it was asked, whatever the others did.
    firmware_error: bool,
}

impl Totals {
    fn ended(&mut self, number: usize, status: u8) {
        self.guests += 1;
        match status {
            status::SUCCESS => self.exited += 1,
            status::GUEST_KILLED => self.killed += 1,
            _ => self.other += 1,
        }
        if status != status::SUCCESS && self.first_failure.is_none_or(|(first, _)| number < first) {
            self.first_failure = Some((number, status));
        }
        self.firmware_error |= status == status::FIRMWARE_ERROR;
    }

    /// The firmware's exit status: 101 if any guest could not be set up,
    /// otherwise that of the first guest (in order) that did not exit 0.
    fn status(&self) -> u8 {
        if self.firmware_error {
            return status::FIRMWARE_ERROR;
        }
        self.first_failure.map_or(status::SUCCESS, |(_, status)| status)
    }

    fn print(&self, free_after: usize) {
        crate::serial::print(format_args!(
            "guests: {} ended: {} exited 0, {} killed, {} other; hypercalls {} (+{} async), exits {}; \
             free frames {} before, {} after\n",
            self.guests,
            self.exited,
            self.killed,
            self.other,
            self.hypercalls,
            self.async_calls,
            self.exits,
            self.free_before,
            free_after,
        ));
        if free_after != self.free_before {
            log::warn!(
                "memory: {} frames fewer free after the guests than before",
                self.free_before - free_after
            );
        }
    }
}

/// A finished guest gives everything back at once: its shadow pages, its
/// memory (scrubbed first, so no later guest ever sees it), and its
/// statistics go out.
fn retire(slot: Slot, several: bool, totals: &mut Totals) {
    let Slot { vcpu, cycles, number, .. } = slot;
    let counters = vcpu.mmu.counters();
    let stats = vcpu.stats.clone();
    let (ram, pool) = vcpu.mmu.into_parts();
    if pool.in_use != 0 {
        log::warn!("shadow pool: {} frames still in use after the guest's release", pool.in_use);
    }
    release_guest_memory(ram);
    totals.hypercalls += stats.hypercalls.iter().sum::<u64>();
    totals.async_calls += stats.async_calls;
    totals.exits += stats.exits;
    print_stats(&stats, &counters, &cycles, several.then_some(number));
}

/// A guest's x87/MMX registers, as FXSAVE lays them out. The host never
/// touches the FPU (it is soft-float), so the registers the CPU holds are
/// always the running guest's; they must be swapped whenever the guest
/// does, or one guest would read what another left there. SSE stays off
/// (CR4.OSFXSR clear), so there are no XMM registers to leak.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct FpuState([u8; 512]);

impl FpuState {
    /// The state a fresh guest starts with: `fninit`, saved.
    fn clean() -> FpuState {
        let mut state = FpuState([0; 512]);
        // SAFETY: resets the x87 unit, which belongs to no guest here
        // (every guest's state is saved in its slot before another runs).
        unsafe { core::arch::asm!("fninit", options(nomem, nostack)) };
        state.save();
        state
    }

    fn save(&mut self) {
        // SAFETY: a 512-byte, 16-byte-aligned area of ours.
        unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) self.0.as_mut_ptr(), options(nostack)) };
    }

    fn restore(&self) {
        // SAFETY: an image FXSAVE wrote, so every field is one FXRSTOR takes.
        unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) self.0.as_ptr(), options(nostack, readonly)) };
    }
}

/// The most guests Umbra runs at once.
pub const MAX_GUESTS: usize = umbra_firmware::cmdline::MAX_GUESTS;

/// `guest_timeout=`: when a guest still running is killed.
#[derive(Clone, Copy)]
struct Watchdog {
    deadline_ns: u64,
    timeout_s: u64,
}

impl Watchdog {
    fn kill(&self, console: &Console) -> u8 {
        let timeout_s = self.timeout_s;
        let reason =
            format_args!("guest killed: watchdog: still running after guest_timeout={timeout_s} seconds");
        console.finish(status::GUEST_KILLED, reason)
    }
}

/// How a guest's turn on the CPU ended.
enum SliceEnd {
    /// A host tick, with other guests waiting.
    Preempted,
    /// HALT, with other guests to run meanwhile.
    Halted,
    Finished(u8),
}

/// Round robin over the guests that can run; when every unfinished guest
/// is halted, sleep until the first of them can go on.
fn pick_next(slots: &mut [Slot], current: Option<usize>) -> Option<usize> {
    loop {
        let count = slots.len();
        let start = current.map_or(0, |c| c + 1);
        let runnable =
            (0..count).map(|i| (start + i) % count).find(|&i| slots[i].state == SlotState::Runnable);
        if runnable.is_some() {
            return runnable;
        }
        let mut earliest: Option<u64> = None;
        let mut any_halted = false;
        for slot in slots.iter_mut().filter(|s| s.state == SlotState::Halted) {
            any_halted = true;
            let now = slot.console.now_ns();
            if let Some(watchdog) = slot.watchdog {
                if now > watchdog.deadline_ns {
                    slot.state = SlotState::Finished(watchdog.kill(&slot.console));
                    continue;
                }
                let wake = watchdog.deadline_ns.saturating_add(1);
                earliest = Some(earliest.map_or(wake, |e| e.min(wake)));
            }
            match slot.vcpu.halt_state(now) {
                HaltState::Ready => slot.state = SlotState::Runnable,
                HaltState::SleepUntil(deadline) => {
                    earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)))
                }
                HaltState::Forever => {
                    let status = slot
                        .console
                        .finish(status::GUEST_KILLED, format_args!("guest killed: {}", Kill::HaltForever));
                    slot.state = SlotState::Finished(status);
                }
            }
        }
        if !any_halted {
            return None;
        }
        if slots.iter().any(|s| s.state == SlotState::Runnable) {
            continue;
        }
        if let Some(deadline) = earliest {
            let now = slots[0].console.now_ns();
            lapic::arm_ns(deadline.saturating_sub(now).min(HOST_TICK_NS));
            lapic::wait_for_interrupt();
        }
    }
}

/// Put `next`'s registers in the registers page, and its direct gates and
/// kernel stack in this CPU's switcher pages.
fn switch_to(slots: &mut [Slot], current: Option<usize>, next: usize, cpu: &CpuPages) {
    // SAFETY: no guest runs; the registers page is ours.
    unsafe {
        if let Some(current) = current {
            slots[current].regs = *cpu.regs();
        }
        *cpu.regs() = slots[next].regs;
    }
    if let Some(current) = current {
        slots[current].fpu.save();
    }
    slots[next].fpu.restore();
    install_switcher_state(&slots[next].vcpu, cpu);
}

fn install_switcher_state(vcpu: &Vcpu<GuestRam, ShadowPool>, cpu: &CpuPages) {
    let stack = vcpu.kernel_stack_top();
    cpu.set_kernel_stack(stack.unwrap_or(0));
    // Without a kernel stack a direct gate would push into nowhere.
    cpu.set_direct_gates(|v| vcpu.direct_gate(v).filter(|_| stack.is_some()).map(|g| g.handler));
}

/// Load one guest: memory, ELF, boot info, shadow MMU, first registers.
/// On failure, the status it ends with (the reason is printed).
fn load(
    guest: &GuestImage,
    memory: &GuestMemPlan,
    number: usize,
    console: &Console,
) -> Result<(Vcpu<GuestRam, ShadowPool>, GuestRegs), u8> {
    let memory_size = memory.size;
    let Some(mut ram) = take_guest_memory(memory_size) else {
        return Err(console.finish(
            status::FIRMWARE_ERROR,
            format_args!(
                "umbra: error: no {} MiB of contiguous memory for guest {number} ({})",
                memory_size >> 20,
                memory.origin()
            ),
        ));
    };
    let loaded = match elf::load(guest.image, &mut ram) {
        Ok(loaded) => loaded,
        Err(error) => {
            release_guest_memory(ram);
            return Err(console
                .finish(status::GUEST_KILLED, format_args!("guest killed: malformed guest ELF: {error}")));
        }
    };
    let boot_info = boot_info_gpa(memory_size);
    if loaded.highest > boot_info {
        release_guest_memory(ram);
        return Err(console.finish(
            status::GUEST_KILLED,
            format_args!("guest killed: its image reaches the boot-info page at {boot_info:#x}"),
        ));
    }
    write_boot_info(&mut ram, boot_info, guest.cmdline, number);
    log::debug!("guest{}: memory at host {:#x}, scrubbed", Numbered(console.prefix), ram.base);
    log::info!(
        "guest{}: {} segments at {:#x}-{:#x}, entry {:#x}, {} MiB",
        Numbered(console.prefix),
        loaded.segments,
        loaded.lowest,
        loaded.highest,
        loaded.entry,
        memory_size >> 20
    );
    let pool = ShadowPool { cap: SHADOW_POOL_FRAMES, in_use: 0 };
    match ShadowMmu::new(ram, pool) {
        Ok(mmu) => Ok((Vcpu::new(mmu), vcpu::initial_regs(loaded.entry, boot_info))),
        Err(error) => {
            Err(console.finish(status::FIRMWARE_ERROR, format_args!("umbra: error: shadow MMU: {error}")))
        }
    }
}

/// " 2" after "guest" when several guests run, nothing otherwise.
struct Numbered(Option<usize>);

impl core::fmt::Display for Numbered {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(number) => write!(f, " {number}"),
            None => Ok(()),
        }
    }
}

/// Run the slot's guest until it finishes, or, when other guests wait,
/// until it halts or its time slice ends at a host tick.
fn run_slice(slot: &mut Slot, cpu: &CpuPages, several: bool) -> SliceEnd {
    let Slot { vcpu, console, cycles, watchdog, .. } = slot;
    let watchdog = *watchdog;
    loop {
        if vcpu.take_switcher_changes() {
            install_switcher_state(vcpu, cpu);
        }
        vcpu.mmu.prepare_switcher(cpu.number, cpu.guest_entries());
        cpu.set_guest_cr3(vcpu.mmu.current_root());
        let now = console.now_ns();
        if let Some(watchdog) = watchdog.filter(|w| now > w.deadline_ns) {
            return SliceEnd::Finished(watchdog.kill(console));
        }
        {
            // SAFETY: the switcher does not run meanwhile; no reference to
            // the registers page outlives this block.
            let regs = unsafe { &mut *cpu.regs() };
            if let Err(kill) = vcpu.prepare_entry(regs, now) {
                return SliceEnd::Finished(console.killed(kill));
            }
            vcpu::sanitize(regs);
        }
        let until_deadline = vcpu.next_deadline_ns().map_or(HOST_TICK_NS, |d| d.saturating_sub(now));
        lapic::arm_ns(until_deadline.min(HOST_TICK_NS));

        let entered = rdtsc();
        // SAFETY: the switcher pages are set up (switcher::init), the state
        // page names the current shadow root, which prepare_switcher just
        // gave this CPU's switcher mapping, and the registers were
        // sanitized; interrupts are off in the host.
        unsafe { switcher_asm::enter() };
        let exited = rdtsc();
        // The exit path sets the host's flags before anything else; should
        // it ever stop, stop here, before compiled code runs on with a
        // guest's DF or AC.
        let flags = x86_64::registers::rflags::read_raw() & layout::HOST_SYSTEM_FLAGS;
        if flags != layout::HOST_RFLAGS & layout::HOST_SYSTEM_FLAGS {
            panic!("the switcher's exit path left RFLAGS {flags:#x}, not the host's");
        }
        cycles.guest += exited - entered;
        lapic::disarm();

        // SAFETY: the guest is stopped; the registers page is ours again.
        let regs = unsafe { &mut *cpu.regs() };
        let cr2 = if regs.vector == 14 { Cr2::read_raw() } else { 0 };
        let host_tick = regs.vector == u64::from(lapic::TIMER_VECTOR);
        if host_tick {
            lapic::eoi();
        }
        if regs.vector == 6 {
            cycles.fastest_hypercall = cycles.fastest_hypercall.min(exited - entered);
        }
        match vcpu.handle_exit(regs, cr2, console) {
            Next::Resume if host_tick && several => return SliceEnd::Preempted,
            Next::Resume => {}
            Next::Halt if several => return SliceEnd::Halted,
            Next::Halt => match sleep_while_halted(vcpu, console, watchdog) {
                Ok(()) => {}
                Err(HaltEnd::Kill(kill)) => return SliceEnd::Finished(console.killed(kill)),
                Err(HaltEnd::Watchdog(watchdog)) => return SliceEnd::Finished(watchdog.kill(console)),
            },
            Next::Shutdown { status } if status <= abi::GUEST_STATUS_MAX => {
                return SliceEnd::Finished(
                    console.finish(status as u8, format_args!("guest exited with status {status}")),
                );
            }
            Next::Shutdown { status } => {
                return SliceEnd::Finished(console.finish(
                    status::GUEST_STATUS_OUT_OF_RANGE,
                    format_args!("guest exited with status {status}, which is out of range (0-99)"),
                ));
            }
            Next::Kill(reason) => return SliceEnd::Finished(console.killed(reason)),
            Next::SwitcherFault => panic!(
                "exception {} in the switcher itself at rip {:#x} (error code {:#x})",
                regs.vector, regs.rip, regs.error_code
            ),
        }
    }
}

/// HALT: sleep, interrupts on, until the guest has an interrupt to take.
/// Why a halted guest stopped sleeping for good.
enum HaltEnd {
    Kill(Kill),
    Watchdog(Watchdog),
}

/// HALT for the only guest: sleep, interrupts on, until it has an
/// interrupt to take; the watchdog bounds the sleep too.
fn sleep_while_halted<M: vcpu::GuestRam, P: FramePool>(
    vcpu: &Vcpu<M, P>,
    host: &Console,
    watchdog: Option<Watchdog>,
) -> Result<(), HaltEnd> {
    loop {
        let now = host.now_ns();
        if let Some(watchdog) = watchdog.filter(|w| now > w.deadline_ns) {
            return Err(HaltEnd::Watchdog(watchdog));
        }
        match vcpu.halt_state(now) {
            HaltState::Ready => return Ok(()),
            HaltState::Forever => return Err(HaltEnd::Kill(Kill::HaltForever)),
            HaltState::SleepUntil(deadline) => {
                let wake = watchdog.map_or(deadline, |w| deadline.min(w.deadline_ns.saturating_add(1)));
                lapic::arm_ns(wake.saturating_sub(now).min(HOST_TICK_NS));
                lapic::wait_for_interrupt();
            }
        }
    }
}

/// The boot-info block, with the command line after it in the same page;
/// a `{n}` in the command line becomes the guest's number.
fn write_boot_info(ram: &mut GuestRam, at: u64, cmdline: &[u8], number: usize) {
    const HEADER: usize = size_of::<BootInfo>();
    let header = HEADER as u64;
    let mut numbered = [0u8; PAGE as usize - HEADER];
    let len = umbra_firmware::cmdline::with_guest_number(cmdline, number, &mut numbered);
    let cmdline = &numbered[..len];
    let info = BootInfo {
        magic: abi::BOOT_INFO_MAGIC,
        abi_version: abi::ABI_VERSION,
        reserved: 0,
        memory_size: ram.size,
        cmdline_addr: at + header,
        cmdline_len: cmdline.len() as u64,
    };
    let fields =
        [info.magic, u64::from(info.abi_version), info.memory_size, info.cmdline_addr, info.cmdline_len];
    let offsets = [
        core::mem::offset_of!(BootInfo, magic),
        core::mem::offset_of!(BootInfo, abi_version),
        core::mem::offset_of!(BootInfo, memory_size),
        core::mem::offset_of!(BootInfo, cmdline_addr),
        core::mem::offset_of!(BootInfo, cmdline_len),
    ];
    for (value, offset) in fields.into_iter().zip(offsets) {
        ram.write_u64(at + offset as u64, value);
    }
    vcpu::GuestRam::write_bytes(ram, at + header, cmdline);
}

/// Time stamp counter ticks. Under `-icount shift=0` they count
/// instructions, which is how the switcher's cost is measured.
struct Cycles {
    guest: u64,
    /// Guest plus the host's work for it: the guest's turns on the CPU.
    total: u64,
    /// The shortest enter-to-return of a hypercall exit: the switcher both
    /// ways plus the guest's few instructions between two calls.
    fastest_hypercall: u64,
}

impl Default for Cycles {
    fn default() -> Self {
        Cycles { guest: 0, total: 0, fastest_hypercall: u64::MAX }
    }
}

/// A compact block at `log=info`: exits, hypercalls, paging, cycles.
fn print_stats(stats: &Stats, paging: &Counters, cycles: &Cycles, guest: Option<usize>) {
    if !log::log_enabled!(log::Level::Info) {
        return;
    }
    let mut line = heapless::String::<512>::new();
    let exits = stats.exits;
    if let Some(number) = guest {
        log::info!("stats for guest {number}:");
    }
    let _ = write!(line, "stats: exits {exits}:");
    for (vector, count) in stats.exits_by_vector.iter().enumerate().filter(|(_, c)| **c > 0) {
        let _ = match vector {
            6 => write!(line, " #UD/hypercall={count}"),
            14 => write!(line, " #PF={count}"),
            32..=255 => write!(line, " irq{vector}={count}"),
            _ => write!(line, " vector{vector}={count}"),
        };
    }
    log::info!("{line}");

    line.clear();
    let calls: u64 = stats.hypercalls.iter().sum();
    let _ = write!(line, "stats: hypercalls {calls} (+{} async):", stats.async_calls);
    for (number, count) in stats.hypercalls.iter().enumerate().filter(|(_, c)| **c > 0) {
        let _ = write!(line, " {}={count}", abi::call_name(number as u64));
    }
    log::info!("{line}");

    line.clear();
    let delivered: u64 = stats.delivered.iter().sum();
    let _ = write!(
        line,
        "stats: delivered to the guest's handlers {delivered} (int n delivered by the host {}):",
        stats.emulated_software_interrupts
    );
    for (vector, count) in stats.delivered.iter().enumerate().filter(|(_, c)| **c > 0) {
        let _ = write!(line, " v{vector}={count}");
    }
    log::info!("{line}");

    log::info!(
        "stats: paging: fills {} (linear {}), prefills {}, reflects {}, roots hit {} missed {} evicted {}, \
         flushes {} user {} full, frames now {} peak {}",
        paging.fills,
        paging.linear_fills,
        paging.prefills,
        paging.reflects,
        paging.root_hits,
        paging.root_misses,
        paging.evictions,
        paging.user_flushes,
        paging.full_flushes,
        paging.frames_in_use,
        paging.frames_peak,
    );
    let host = cycles.total.saturating_sub(cycles.guest);
    log::info!(
        "stats: cycles: guest {} ({}%), host {} ({}%), fastest hypercall round trip {}",
        cycles.guest,
        cycles.guest * 100 / cycles.total.max(1),
        host,
        host * 100 / cycles.total.max(1),
        if cycles.fastest_hypercall == u64::MAX { 0 } else { cycles.fastest_hypercall }
    );
}
