//! # Setting up the switcher on each CPU
//!
//! `switcher-asm` supplies the code and the layout; this module supplies
//! the memory. For every CPU the MADT lists, it takes five frames:
//! - the registers page, the state page and the IDT page (see
//!   `switcher_asm::layout`), filled in here once;
//! - two page-table pages for the switcher's 2 MiB slot: a *host view*,
//!   where the state and IDT pages are writable (the switcher saves the
//!   host's stack pointer and clears a busy bit there before it leaves the
//!   host's tables), and a *guest view*, where they are read-only.
//!
//! Each CPU's own host page tables (its root, `memory::HostRoot`: every
//! CPU has its own path to the switcher's slot) point that slot at the
//! CPU's own host view: [`attach`], run by each CPU on itself as it comes
//! up, which also records the CPU's own GDT, IDT, TSS and root in its
//! state page for the switcher's way back. Every shadow root the guest
//! runs on gets the guest view of the CPU it runs on, through `paging`'s
//! `prepare_switcher`.
//!
//! The run loop looks a CPU's pages up once ([`for_cpu`]) and keeps the
//! copy: the world switch then touches them without taking the lock on
//! every entry. The pages never move once built.

use core::mem::size_of;

use heapless::Vec;
use paging::SwitcherEntries;
use spin::Mutex;
use switcher_asm::layout::{
    self, CODE_PAGES, GUEST_GDT_VA, GUEST_REGS_OFFSET, GuestRegs, IDT_PAGE, PAGE_SIZE, SwitcherState,
    TablePointer,
};
use umbra_firmware::madt::MAX_CPUS;
use x86_64::instructions::tables::{sgdt, sidt};
use x86_64::registers::control::Cr3;

use crate::memory::{FRAMES, HostRoot, PRESENT, WRITABLE, nx_bit};

/// One CPU's switcher frames (host-physical, identity-mapped).
#[derive(Clone, Copy)]
pub struct CpuPages {
    /// The CPU's index among the MADT's, as `paging` numbers them.
    pub number: u32,
    regs: u64,
    state: u64,
    idt: u64,
    host_view: u64,
    guest_view: u64,
}

static CPUS: Mutex<Vec<CpuPages, MAX_CPUS>> = Mutex::new(Vec::new());

/// PD[510] and PD[511] under PML4[511] -> PDPT[511].
const SLOT_PD_INDEX: usize = 510;

/// The MSRs `syscall` reads.
const IA32_STAR: u32 = 0xc000_0081;
const IA32_LSTAR: u32 = 0xc000_0082;
const IA32_CSTAR: u32 = 0xc000_0083;
const IA32_FMASK: u32 = 0xc000_0084;

fn zeroed_frame() -> Option<u64> {
    let frame = FRAMES.lock().as_mut()?.alloc()?;
    // SAFETY: a fresh frame from the pool, identity-mapped, ours alone.
    unsafe { core::ptr::write_bytes(frame as *mut u8, 0, PAGE_SIZE as usize) };
    Some(frame)
}

fn write_entry(table: u64, index: usize, value: u64) {
    // SAFETY: `table` is one of our page-table frames; index < 512.
    unsafe { core::ptr::write_volatile((table as *mut u64).add(index), value) };
}

/// Build the pages of `cpu_count` CPUs (numbered as `smp.rs` numbers
/// them, the boot CPU first), and map the boot CPU's at the top of its
/// own address space.
pub fn init(cpu_count: usize) -> Result<(), &'static str> {
    let (code_start, code_end) = switcher_asm::code_physical_range();
    if code_end - code_start != CODE_PAGES * PAGE_SIZE || code_start % PAGE_SIZE != 0 {
        return Err("the switcher code in the image is not page-aligned or not its expected size");
    }
    let nx = nx_bit();
    let mut cpus = CPUS.lock();
    for _ in 0..cpu_count.clamp(1, MAX_CPUS) {
        let mut frames = [0u64; 5];
        for frame in &mut frames {
            *frame = zeroed_frame().ok_or("out of memory for the switcher's per-CPU pages")?;
        }
        let [regs, state, idt, host_view, guest_view] = frames;
        let pages = CpuPages { number: cpus.len() as u32, regs, state, idt, host_view, guest_view };

        const _: () = assert!(size_of::<[layout::Gate; 256]>() as u64 == PAGE_SIZE);
        // SAFETY: the frame is fresh, page-sized and identity-mapped; the
        // IDT fills exactly a page (asserted above).
        unsafe { core::ptr::write_volatile(idt as *mut [layout::Gate; 256], layout::guest_idt()) };

        for page in 0..CODE_PAGES as usize {
            let code = (code_start + page as u64 * PAGE_SIZE) | PRESENT;
            write_entry(host_view, page, code);
            write_entry(guest_view, page, code);
        }
        let first_data = CODE_PAGES as usize;
        for (view, writable_state) in [(host_view, WRITABLE), (guest_view, 0)] {
            write_entry(view, first_data, regs | PRESENT | WRITABLE | nx);
            write_entry(view, first_data + 1, state | PRESENT | writable_state | nx);
            write_entry(view, first_data + 2, idt | PRESENT | writable_state | nx);
        }
        cpus.push(pages).map_err(|_| "too many CPUs")?;
    }
    drop(cpus);

    let root = crate::memory::boot_root().ok_or("the host page tables have no switcher slot")?;
    attach(0, root)
}

/// Make CPU `cpu`'s pages the calling CPU's own: fill in the host's half
/// of its state page from this CPU (its root, GDT, TSS and IDT, where the
/// switcher's exit path returns to), and map its host view into `root`'s
/// switcher slot. Run by each CPU on itself, on `root`, before it runs a
/// guest; nothing else writes this CPU's state page or slot meanwhile.
pub fn attach(cpu: usize, root: HostRoot) -> Result<(), &'static str> {
    let pages = CPUS.lock().get(cpu).copied().ok_or("no switcher pages for this CPU")?;
    if Cr3::read_raw().0.start_address().as_u64() != root.pml4 {
        return Err("a CPU can take its switcher pages only on its own page tables");
    }
    let host_gdt = sgdt();
    let host_idt = sidt();
    let host_tss = crate::cpu::host_tss_selector(cpu);
    let switcher_state = SwitcherState {
        host_cr3: root.pml4,
        host_rsp: 0,
        guest_cr3: 0,
        host_tss_selector: u64::from(host_tss),
        host_tss_descriptor: host_gdt.base.as_u64() + u64::from(host_tss & !7),
        host_gdt: TablePointer { padding: [0; 3], limit: host_gdt.limit, base: host_gdt.base.as_u64() },
        host_idt: TablePointer { padding: [0; 3], limit: host_idt.limit, base: host_idt.base.as_u64() },
        guest_gdt: TablePointer {
            padding: [0; 3],
            limit: (layout::GDT_ENTRIES * 8 - 1) as u16,
            base: GUEST_GDT_VA,
        },
        guest_idt: TablePointer { padding: [0; 3], limit: (PAGE_SIZE - 1) as u16, base: IDT_PAGE },
        gdt: layout::guest_gdt(),
        tss: layout::guest_tss(),
        syscall_stack: 0,
        syscall_entry: 0,
    };
    // SAFETY: the state frame is this CPU's, page-sized and identity-
    // mapped; the struct fits in a page (asserted in the layout).
    unsafe { core::ptr::write_volatile(pages.state as *mut SwitcherState, switcher_state) };
    // Where `syscall` goes once a guest opens the direct path (EFER.SCE,
    // set per guest by the run loop): the switcher's code, with the flags
    // it must not run with masked. The host itself never runs `syscall`.
    for (msr, value) in [
        (IA32_STAR, layout::STAR),
        (IA32_LSTAR, layout::SYSCALL_VA),
        (IA32_CSTAR, layout::SYSCALL_CLOSED_VA),
        (IA32_FMASK, layout::SYSCALL_FLAGS_MASK),
    ] {
        // SAFETY: architectural MSRs present on every x86-64 CPU; the
        // values are canonical addresses and selectors of our own GDTs,
        // used only by `syscall`, which EFER.SCE keeps off until a guest
        // that registered an entry runs.
        unsafe { x86_64::registers::model_specific::Msr::new(msr).write(value) };
    }
    write_entry(root.switcher_pd, SLOT_PD_INDEX, pages.host_view | PRESENT | WRITABLE);
    x86_64::instructions::tlb::flush_all();
    Ok(())
}

/// `cpu`'s switcher pages, built by [`init`].
pub fn for_cpu(cpu: usize) -> CpuPages {
    CPUS.lock()[cpu]
}

impl CpuPages {
    /// The page-directory entries that give a shadow root this CPU's
    /// guest view.
    pub fn guest_entries(&self) -> SwitcherEntries {
        SwitcherEntries([self.guest_view | PRESENT | WRITABLE, 0])
    }

    /// This CPU's saved guest registers, inside its registers page.
    pub fn regs(&self) -> *mut GuestRegs {
        (self.regs + GUEST_REGS_OFFSET) as *mut GuestRegs
    }

    /// The user's stack pointer as the direct syscall path last kept it.
    pub fn syscall_user_rsp(&self) -> u64 {
        // SAFETY: a word of this CPU's registers page, identity-mapped
        // and 8-aligned; the guest is not running here while the host
        // reads it.
        unsafe { core::ptr::read_volatile((self.regs + layout::SYSCALL_USER_RSP_OFFSET) as *const u64) }
    }

    /// Tell this CPU's switcher which shadow root to load.
    pub fn set_guest_cr3(&self, root: u64) {
        let state = self.state as *mut SwitcherState;
        // SAFETY: the state page is ours and identity-mapped; the field is a
        // plain u64 the switcher only reads.
        unsafe { core::ptr::write_volatile(&raw mut (*state).guest_cr3, root) };
    }

    /// The stack the CPU switches to when guest user code enters the
    /// guest kernel through a direct gate: TSS.RSP1; and the direct
    /// `syscall` path's, the same stack while the guest has a syscall
    /// entry.
    pub fn set_kernel_stack(&self, top: u64) {
        let state = self.state as *mut SwitcherState;
        // SAFETY: the state page is ours and identity-mapped; the guest is
        // not running on this CPU while the host writes it. The TSS is
        // packed, so RSP1 is written unaligned; the switcher reads these
        // words only inside `switcher_asm::enter`, an asm block the
        // compiler must assume reads all memory.
        unsafe {
            (&raw mut (*state).tss.rsp[1]).write_unaligned(top);
            let open = core::ptr::read_volatile(&raw const (*state).syscall_entry) != 0;
            core::ptr::write_volatile(&raw mut (*state).syscall_stack, if open { top } else { 0 });
        }
    }

    /// The guest kernel's syscall entry (0 for none) and its kernel stack
    /// (0 for none): the direct path is open while there are both.
    pub fn set_syscall_entry(&self, entry: u64, kernel_stack_top: u64) {
        let state = self.state as *mut SwitcherState;
        let stack = if entry != 0 { kernel_stack_top } else { 0 };
        // SAFETY: as for set_kernel_stack.
        unsafe {
            core::ptr::write_volatile(&raw mut (*state).syscall_entry, entry);
            core::ptr::write_volatile(&raw mut (*state).syscall_stack, stack);
        }
    }

    /// Route vectors 32-255 of the real IDT: a direct gate for each vector
    /// `direct` names (to the guest kernel's handler, from ring 3, no
    /// exit), the exit stub for every other. Direct gates are always trap
    /// gates: an interrupt gate would clear the real interrupt flag at
    /// ring 1, where the guest's `iretq` cannot set it again.
    pub fn set_direct_gates(&self, direct: impl Fn(u8) -> Option<u64>) {
        const DIRECT_TRAP_GATE: u8 = 0xef; // present, DPL 3, 64-bit trap gate
        let idt = self.idt as *mut layout::Gate;
        for vector in 32..=255u8 {
            let gate = match direct(vector) {
                Some(handler) => layout::Gate {
                    type_attributes: DIRECT_TRAP_GATE,
                    ..layout::Gate::interrupt(handler, umbra_abi::GUEST_KERNEL_CS, 0)
                },
                // IST1, as every exit gate (`layout::guest_idt`).
                None => layout::Gate::interrupt(layout::stub_address(vector), layout::SWITCHER_CS, 1),
            };
            // SAFETY: the IDT page is ours, identity-mapped, 256 gates long.
            unsafe { core::ptr::write_volatile(idt.add(vector as usize), gate) };
        }
    }
}

/// How many CPUs have switcher pages.
pub fn cpu_count() -> usize {
    CPUS.lock().len()
}
