//! # The application processors: starting every CPU
//!
//! The boot CPU is the only one running when the VMM hands over; the MADT
//! lists the others. This module starts them, one at a time, the way the
//! hardware asks: an INIT IPI puts the CPU in its wait-for-startup state,
//! two startup IPIs (SIPIs) send it to a page below 1 MiB in real mode.
//! That page holds the trampoline from `ap_start.s`, copied there; the page
//! was chosen and kept out of the frame pool by `memory.rs`.
//!
//! Each CPU gets a number: 0 is the boot CPU, then the others in MADT
//! order. Before any of them starts, the boot CPU prepares a *slot* for
//! each: its own root page table (`memory::new_cpu_root`: the identity
//! map shared, its own switcher corner) and its stacks, with guard pages
//! (a main stack, and the double-fault, NMI and machine-check stacks its
//! TSS names). The start code finds its slot by its APIC ID, so a CPU that
//! arrives late, or twice, still lands on its own stack.
//!
//! A started CPU loads its own GDT, TSS and IDT (`cpu.rs`), enables its
//! local APIC and timer (`lapic.rs`), takes its switcher pages
//! (`switcher::attach`), and reports in. It then parks: interrupts off,
//! except in the `sti; hlt` pair of `lapic::wait_for_interrupt`, looking
//! at its mailbox each time it wakes. Work is handed over by writing the
//! mailbox and sending a wake IPI: a run of guests to serve
//! (`guest::run`, which hands every online CPU the same run), or
//! `crash=ap`'s crash.
//!
//! A CPU that has not reported in a second after its SIPIs is given up on,
//! with one warning naming its APIC ID. Its slot stays as it was: if it
//! arrives after all, it finds it was given up on and halts for good.

use core::mem::offset_of;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, fence};

use umbra_firmware::PhysRange;
use umbra_firmware::frames::PAGE_SIZE;
use umbra_firmware::madt::MAX_CPUS;
use x86_64::registers::control::{Cr0, Cr4};
use x86_64::registers::model_specific::Efer;

use crate::lapic::{self, Ipi};
use crate::memory::{self, HostRoot};
use crate::{cpu, switcher};

/// How long a CPU has to report in after its second SIPI.
const START_TIMEOUT_MS: u64 = 1000;

/// A slot's life. The boot CPU moves it from EMPTY to STARTING; the CPU
/// itself from STARTING to ONLINE (or FAILED, having said why); the boot
/// CPU from STARTING to GAVE_UP when the time is up. Both of the last
/// moves are compare-exchanges, so exactly one side decides.
const EMPTY: u8 = 0;
const STARTING: u8 = 1;
const ONLINE: u8 = 2;
const FAILED: u8 = 3;
const GAVE_UP: u8 = 4;

/// What a parked CPU finds in its mailbox.
const NO_WORK: u32 = 0;
/// Crash on purpose (`crash=ap`): the report must name this CPU.
const WORK_CRASH: u32 = 1;
/// Serve the current run of guests (`guest::serve_on_this_ap`).
const WORK_RUN: u32 = 2;

/// How many application processors were handed the current run and have
/// not finished serving it.
static APS_SERVING: AtomicU32 = AtomicU32::new(0);

/// One CPU's start-up record. The first three fields are read by the
/// start code in `ap_start.s`, which gets their offsets as const operands.
#[repr(C)]
struct Slot {
    apic_id: AtomicU32,
    /// The CPU's own root page table; 0 marks a slot not to be started.
    /// Below 4 GiB: the start code loads it in 32-bit mode.
    cr3: AtomicU32,
    stack_top: AtomicU64,
    /// The PD under the root's switcher corner.
    switcher_pd: AtomicU64,
    /// The base of the stack block (see [`STACK_BLOCK_PAGES`]).
    stacks: AtomicU64,
    state: AtomicU8,
    mailbox: AtomicU32,
}

static SLOTS: [Slot; MAX_CPUS] = [const {
    Slot {
        apic_id: AtomicU32::new(0),
        cr3: AtomicU32::new(0),
        stack_top: AtomicU64::new(0),
        switcher_pd: AtomicU64::new(0),
        stacks: AtomicU64::new(0),
        state: AtomicU8::new(EMPTY),
        mailbox: AtomicU32::new(NO_WORK),
    }
}; MAX_CPUS];

/// The boot CPU's EFER (long mode, NX), which the start code copies, and
/// its CR0 and CR4, which `ap_main` copies once in long mode.
static AP_EFER: AtomicU32 = AtomicU32::new(0);
static BOOT_CR0: AtomicU64 = AtomicU64::new(0);
static BOOT_CR4: AtomicU64 = AtomicU64::new(0);

/// Each CPU's stacks, in one run of frames, lowest address first:
/// a guard page and a 16 KiB stack for each of the three IST vectors
/// (double fault, NMI, machine check, in that order), then a guard page
/// and the main stack, whose top is the block's end. The guard pages are
/// unmapped, so an overflow faults instead of running into its neighbour.
/// The main stack holds the run loop: a guest's slot (about 10 KiB) moves
/// through a few frames of it, and the exit handling below it; 256 KiB
/// leaves room to spare (the run loop's deepest frame is about 60 KiB).
const IST_PAGES: usize = cpu::IST_STACK_SIZE / PAGE_SIZE as usize;
const MAIN_STACK_PAGES: usize = 64;
const IST_STRIDE: usize = 1 + IST_PAGES;
const STACK_BLOCK_PAGES: usize = 3 * IST_STRIDE + 1 + MAIN_STACK_PAGES;

/// The stacks in a block (the three IST stacks, then the main one), as
/// ranges of addresses.
fn stacks_of(base: u64) -> [PhysRange; 4] {
    let page = |n: usize| base + n as u64 * PAGE_SIZE;
    let ist = |i: usize| PhysRange { start: page(i * IST_STRIDE + 1), end: page((i + 1) * IST_STRIDE) };
    [ist(0), ist(1), ist(2), PhysRange { start: page(3 * IST_STRIDE + 1), end: page(STACK_BLOCK_PAGES) }]
}

fn guard_pages_of(base: u64) -> [u64; 4] {
    [0, 1, 2, 3].map(|i| base + (i * IST_STRIDE) as u64 * PAGE_SIZE)
}

unsafe extern "C" {
    /// The 16-bit start code, copied to the start page (ap_start.s).
    static ap_trampoline: u8;
    static ap_trampoline_end: u8;
}

core::arch::global_asm!(
    include_str!("ap_start.s"),
    SLOTS = sym SLOTS,
    EFER = sym AP_EFER,
    AP_MAIN = sym ap_main,
    MAX_CPUS = const MAX_CPUS,
    SLOT_SIZE = const size_of::<Slot>(),
    SLOT_APIC_ID = const offset_of!(Slot, apic_id),
    SLOT_CR3 = const offset_of!(Slot, cr3),
    SLOT_STACK_TOP = const offset_of!(Slot, stack_top),
    options(att_syntax)
);

/// Start the CPUs the MADT lists (`apic_ids`), up to `wanted` in all, the
/// boot CPU included, as CPUs 1, 2, ... in MADT order (the switcher has
/// pages for that many). Returns how many CPUs are online, the boot CPU
/// included. Every CPU that does not come up costs one warning line.
pub fn start(apic_ids: &[u32], wanted: usize) -> usize {
    let boot_apic_id = lapic::this_apic_id();
    SLOTS[0].apic_id.store(boot_apic_id, Ordering::Relaxed);
    SLOTS[0].state.store(ONLINE, Ordering::Relaxed);
    if !apic_ids.contains(&boot_apic_id) {
        log::warn!("cpus: the boot CPU's APIC ID {boot_apic_id} is not in the MADT; starting no other CPU");
        return 1;
    }
    // A CPU listed twice would be started twice, and the second INIT
    // would stop it where the first start left it: once is enough.
    let mut others: heapless::Vec<u32, MAX_CPUS> = heapless::Vec::new();
    for (index, &id) in apic_ids.iter().enumerate() {
        if apic_ids[..index].contains(&id) {
            log::warn!("cpus: the MADT lists APIC ID {id} more than once; starting it once");
        } else if id != boot_apic_id && others.len() + 1 < wanted {
            let _ = others.push(id);
        }
    }
    if others.is_empty() {
        return 1;
    }
    if !lapic::present() {
        log::warn!(
            "cpus: no usable local APIC to start the other CPUs with; going on with the boot CPU only"
        );
        return 1;
    }
    let Some(page) = memory::trampoline_page() else {
        log::warn!(
            "cpus: no free page below 640 KiB to start the other CPUs from; going on with the boot CPU only"
        );
        return 1;
    };
    if let Err(why) = install_trampoline(page) {
        log::warn!("cpus: {why}; going on with the boot CPU only");
        return 1;
    }
    BOOT_CR0.store(Cr0::read_raw(), Ordering::Relaxed);
    BOOT_CR4.store(Cr4::read_raw(), Ordering::Relaxed);
    // LMA is the CPU's report that long mode is active, not a request.
    const LMA: u64 = 1 << 10;
    AP_EFER.store((Efer::read_raw() & !LMA) as u32, Ordering::Relaxed);

    // Every slot first: splitting the identity map for guard pages flushes
    // only this CPU's TLB, so it is done while no other CPU runs.
    let mut prepared: heapless::Vec<usize, MAX_CPUS> = heapless::Vec::new();
    for (index, &apic_id) in others.iter().enumerate() {
        let number = index + 1;
        match prepare(number, apic_id) {
            Ok(()) => {
                let _ = prepared.push(number);
            }
            Err(why) => log::warn!("cpus: CPU {number} (APIC ID {apic_id}): {why}; going on without it"),
        }
    }
    log::debug!("cpus: boot CPU is APIC ID {boot_apic_id}; start page {page:#x}");

    let mut online = 1;
    for number in prepared {
        if start_one(number, page) {
            online += 1;
        }
    }
    online
}

fn install_trampoline(page: u64) -> Result<(), &'static str> {
    let start = &raw const ap_trampoline;
    let len = ((&raw const ap_trampoline_end) as usize).wrapping_sub(start as usize);
    if len > PAGE_SIZE as usize {
        return Err("the start code is longer than its page");
    }
    // SAFETY: `page` is a whole page of RAM below 1 MiB that memory.rs kept
    // out of the frame pool for this alone, identity-mapped and writable;
    // the code is at most a page long (checked above).
    unsafe { core::ptr::copy_nonoverlapping(start, page as *mut u8, len) };
    Ok(())
}

/// Root, stacks and guard pages for CPU `number`.
fn prepare(number: usize, apic_id: u32) -> Result<(), &'static str> {
    if apic_id > 0xfe {
        return Err("its APIC ID needs x2APIC mode, which Umbra does not drive");
    }
    let root = memory::new_cpu_root().map_err(|_| "no memory below 4 GiB for its page tables")?;
    let cr3 = u32::try_from(root.pml4).map_err(|_| "its page tables are above 4 GiB")?;
    let base = memory::alloc_run(STACK_BLOCK_PAGES).ok_or("no memory for its stacks")?;
    for guard in guard_pages_of(base) {
        memory::unmap_guard_page(guard).map_err(|_| "its stacks' guard pages could not be unmapped")?;
    }
    let slot = &SLOTS[number];
    slot.apic_id.store(apic_id, Ordering::Relaxed);
    slot.stack_top.store(stacks_of(base)[3].end, Ordering::Relaxed);
    slot.switcher_pd.store(root.switcher_pd, Ordering::Relaxed);
    slot.stacks.store(base, Ordering::Relaxed);
    slot.cr3.store(cr3, Ordering::Release);
    Ok(())
}

/// INIT, SIPI, SIPI, and wait for CPU `number` to report in.
fn start_one(number: usize, page: u64) -> bool {
    let slot = &SLOTS[number];
    let apic_id = slot.apic_id.load(Ordering::Relaxed);
    slot.state.store(STARTING, Ordering::Relaxed);
    // Everything the CPU will read (its slot, the start code) is written
    // before the IPIs that start it.
    fence(Ordering::SeqCst);
    let sent = lapic::send_ipi(apic_id, Ipi::Init).and_then(|()| {
        lapic::delay_us(10_000);
        lapic::send_ipi(apic_id, Ipi::Startup { page })?;
        lapic::delay_us(200);
        lapic::send_ipi(apic_id, Ipi::Startup { page })
    });
    const TIMEOUT_NS: u64 = START_TIMEOUT_MS * 1_000_000;
    lapic::countdown(TIMEOUT_NS);
    loop {
        match slot.state.load(Ordering::Acquire) {
            ONLINE => {
                let us = (TIMEOUT_NS - lapic::countdown_left()) / 1000;
                log::debug!("cpus: CPU {number} (APIC ID {apic_id}) online {us} us after its second SIPI");
                return true;
            }
            FAILED => return false,
            _ if sent.is_ok() && lapic::countdown_left() > 0 => core::hint::spin_loop(),
            _ => break,
        }
    }
    match slot.state.compare_exchange(STARTING, GAVE_UP, Ordering::AcqRel, Ordering::Acquire) {
        Err(ONLINE) => true,
        Err(_) => false,
        Ok(_) => {
            match sent {
                Err(why) => log::warn!("cpus: CPU {number} (APIC ID {apic_id}): {why}; going on without it"),
                Ok(()) => log::warn!(
                    "cpus: CPU {number} (APIC ID {apic_id}) did not come up within {START_TIMEOUT_MS} ms; \
                     going on without it"
                ),
            }
            false
        }
    }
}

/// Where the start code lands, on the CPU's own stack and page tables.
extern "C" fn ap_main(number: u32) -> ! {
    let number = number as usize;
    let slot = &SLOTS[number];
    // SAFETY: the boot CPU's CR0 and CR4, which hold in long mode with
    // paging on (this CPU already has PG, PE and PAE; the rest, such as
    // NE, WP and the FXSAVE bits, make this CPU run as the boot CPU does).
    unsafe {
        Cr0::write_raw(BOOT_CR0.load(Ordering::Relaxed));
        Cr4::write_raw(BOOT_CR4.load(Ordering::Relaxed));
    }
    let [df, nmi, mc, _] = stacks_of(slot.stacks.load(Ordering::Relaxed));
    cpu::init_ap(number, [df.end, nmi.end, mc.end]);
    let root = HostRoot {
        pml4: u64::from(slot.cr3.load(Ordering::Relaxed)),
        switcher_pd: slot.switcher_pd.load(Ordering::Relaxed),
    };
    let ready = lapic::init_ap().and_then(|()| switcher::attach(number, root));
    let state = if ready.is_ok() { ONLINE } else { FAILED };
    if slot.state.compare_exchange(STARTING, state, Ordering::AcqRel, Ordering::Acquire).is_err() {
        // The boot CPU gave up on this CPU already, or started it twice.
        halt_for_good();
    }
    if let Err(why) = ready {
        let apic_id = slot.apic_id.load(Ordering::Relaxed);
        log::warn!("cpus: CPU {number} (APIC ID {apic_id}): {why}; going on without it");
        halt_for_good();
    }
    park(number)
}

/// Wait for work, asleep: interrupts are off but for the `sti; hlt` pair,
/// so the wake IPI that follows a mailbox write ends the `hlt`, and a
/// write that lands between the check and the `hlt` still wakes it (the
/// IPI waits in the APIC until `sti` lets it in).
fn park(number: usize) -> ! {
    let slot = &SLOTS[number];
    loop {
        match slot.mailbox.swap(NO_WORK, Ordering::Acquire) {
            WORK_CRASH => crash_on_purpose(),
            WORK_RUN => {
                crate::guest::serve_on_this_ap(number);
                APS_SERVING.fetch_sub(1, Ordering::AcqRel);
            }
            _ => lapic::wait_for_interrupt(),
        }
    }
}

/// The numbers of the application processors that are online.
fn online() -> impl Iterator<Item = usize> {
    (1..MAX_CPUS).filter(|&n| SLOTS[n].state.load(Ordering::Acquire) == ONLINE)
}

/// How many application processors are online.
pub fn online_aps() -> usize {
    online().count()
}

/// Wake every online application processor to serve the current run of
/// guests; [`wait_for_aps`] waits until they all have finished.
pub fn serve_on_aps() {
    for number in online() {
        let slot = &SLOTS[number];
        let apic_id = slot.apic_id.load(Ordering::Relaxed);
        APS_SERVING.fetch_add(1, Ordering::AcqRel);
        slot.mailbox.store(WORK_RUN, Ordering::Release);
        if let Err(why) = lapic::send_ipi(apic_id, Ipi::Fixed(lapic::WAKE_VECTOR)) {
            log::warn!(
                "cpus: waking CPU {number} (APIC ID {apic_id}) to run guests: {why}; going on without it"
            );
            // Unless it woke and took the work anyway, it is not serving.
            if slot.mailbox.compare_exchange(WORK_RUN, NO_WORK, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                APS_SERVING.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// Wait until every application processor handed the run has left it.
pub fn wait_for_aps() {
    // Asleep between looks: under a VMM with fewer real cores than CPUs,
    // a CPU spinning here would take time from those still running guests.
    while APS_SERVING.load(Ordering::Acquire) != 0 {
        lapic::arm_ns(1_000_000);
        lapic::wait_for_interrupt();
    }
    lapic::disarm();
}

fn crash_on_purpose() {
    // SAFETY: a deliberately faulting instruction; the handler reports and
    // exits, nothing returns here.
    unsafe { core::arch::asm!("ud2") };
}

fn halt_for_good() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// `crash=ap`: hand the first online application processor a crash, and
/// say which; `None` when none is online.
pub fn crash_an_ap() -> Option<(usize, u32)> {
    let number = (1..MAX_CPUS).find(|&n| SLOTS[n].state.load(Ordering::Acquire) == ONLINE)?;
    let apic_id = SLOTS[number].apic_id.load(Ordering::Relaxed);
    // Said before the work is handed over: the report that follows is
    // the run's last word.
    log::info!("crash: CPU {number} (APIC ID {apic_id}) is to crash, on purpose (crash=ap on the cmdline)");
    SLOTS[number].mailbox.store(WORK_CRASH, Ordering::Release);
    if let Err(why) = lapic::send_ipi(apic_id, Ipi::Fixed(lapic::WAKE_VECTOR)) {
        log::warn!("crash=ap: waking CPU {number} (APIC ID {apic_id}): {why}");
    }
    Some((number, apic_id))
}

/// The calling CPU's number and APIC ID (CPU 0 until the others start).
pub fn this_cpu() -> (usize, u32) {
    let apic_id = lapic::this_apic_id();
    let number = (1..MAX_CPUS)
        .find(|&n| {
            SLOTS[n].state.load(Ordering::Relaxed) != EMPTY
                && SLOTS[n].apic_id.load(Ordering::Relaxed) == apic_id
        })
        .unwrap_or(0);
    (number, apic_id)
}

/// Is `range` inside one of the application processors' stacks?
pub fn is_ap_stack(range: &PhysRange) -> bool {
    SLOTS
        .iter()
        .map(|slot| slot.stacks.load(Ordering::Relaxed))
        .filter(|&base| base != 0)
        .any(|base| stacks_of(base).iter().any(|stack| stack.contains_range(range)))
}
