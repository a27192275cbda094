//! # The host's CPU tables: GDT, TSS and IDT
//!
//! The boot stub's GDT only gets us into long mode. The host needs a TSS
//! so that the exceptions that can strike when the stack itself is bad
//! (double fault, NMI, machine check) switch to stacks of their own (the
//! TSS's interrupt stack table), and an IDT whose every exception vector
//! leads to the crash report in `crash.rs`.
//!
//! Every CPU has a GDT and TSS of its own, indexed by its number (0 is the
//! boot CPU; `smp.rs` numbers the others): a TSS is busy while loaded, so
//! no two CPUs can share one, and the switcher clears that busy bit in the
//! GDT of the CPU it runs on. The host IDT is one for all: every CPU takes
//! the same gates, the CPU only reads it, and a guest never sees it (its
//! own IDT is in its switcher pages). One table rather than one per CPU
//! also keeps the image's memory below 2 MiB, clear of the addresses the
//! guest kernel runs at in linear mode, which gdb must tell apart. The
//! boot CPU's IST stacks are in the image; the others' come with their
//! stacks (`smp.rs`).

use core::mem::size_of;

use spin::Once;
use umbra_firmware::madt::MAX_CPUS;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::{lidt, load_tss};
use x86_64::structures::DescriptorTablePointer;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// Vectors that get their own stack, and the IST slot (1-based) for each.
pub const DOUBLE_FAULT_IST: u8 = 1;
pub const NMI_IST: u8 = 2;
pub const MACHINE_CHECK_IST: u8 = 3;
pub const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

/// The boot CPU's IST stacks. The CPU writes them; Rust only takes their
/// addresses.
static mut IST_STACKS: [Stack; 3] = [const { Stack([0; IST_STACK_SIZE]) }; 3];

struct HostTables {
    gdt: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

static TSS: [Once<TaskStateSegment>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];
static TABLES: [Once<HostTables>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];
static IDT: Once<Idt> = Once::new();

/// One 16-byte long-mode interrupt gate.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attributes: u8,
    offset_middle: u16,
    offset_high: u32,
    reserved: u32,
}

const _: () = assert!(size_of::<Gate>() == 16);

/// Present, DPL 0, 64-bit interrupt gate (interrupts stay off inside).
const INTERRUPT_GATE: u8 = 0x8e;

impl Gate {
    fn new(handler: u64, selector: SegmentSelector, ist: u8) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: selector.0,
            ist,
            type_attributes: INTERRUPT_GATE,
            offset_middle: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

unsafe extern "C" {
    /// The 32 exception entry points, from traps.s.
    static exception_stubs: [u64; 32];
    fn host_timer_interrupt();
    fn host_wake_interrupt();
    fn host_spurious_interrupt();
}

fn ist_stack_top(index: usize) -> u64 {
    // SAFETY: only the address is taken; the stack is written by the CPU.
    let stack = unsafe { &raw const IST_STACKS[index] };
    stack as u64 + IST_STACK_SIZE as u64
}

/// Where the legacy PICs' vectors go: the last sixteen, which the host
/// owns. Their spurious IRQ 7 (master, 0xf7; slave, 0xff) can arrive even
/// with every line masked, so the host IDT takes both.
const PIC_MASTER_BASE: u8 = 0xf0;
const PIC_SLAVE_BASE: u8 = 0xf8;
const PIC_MASTER_SPURIOUS: u8 = PIC_MASTER_BASE + 7;
const _: () =
    assert!(umbra_abi::is_host_vector(PIC_MASTER_BASE) && umbra_abi::is_host_vector(PIC_SLAVE_BASE));

/// Move the legacy 8259 PICs off the exception vectors, then mask them.
///
/// The BIOS (SeaBIOS on pc and q35) leaves the timer's IRQ 0 at vector 8,
/// the double-fault vector. The guest runs with interrupts enabled, so an
/// unmasked PIC would dress a timer tick up as a #DF. Umbra does not use
/// the PICs; where there are none (microvm) these writes go nowhere. The
/// vectors land among the host's own, where no guest may put a gate.
pub fn silence_legacy_pic() {
    const INIT: u8 = 0x11; // ICW1: edge-triggered, cascade, ICW4 follows
    let steps: [(u16, u8); 10] = [
        (0x20, INIT),
        (0xa0, INIT),
        (0x21, PIC_MASTER_BASE), // ICW2: the vector bases
        (0xa1, PIC_SLAVE_BASE),
        (0x21, 0x04), // ICW3: slave on IRQ 2
        (0xa1, 0x02),
        (0x21, 0x01), // ICW4: 8086 mode
        (0xa1, 0x01),
        (0x21, 0xff), // mask every line
        (0xa1, 0xff),
    ];
    for (port, value) in steps {
        // SAFETY: the 8259 command and data ports affect only the PICs.
        unsafe { x86_64::instructions::port::Port::<u8>::new(port).write(value) };
    }
}

/// CPU `number`'s TSS selector, which the switcher reloads on every exit
/// (the same in every CPU's GDT).
pub fn host_tss_selector(number: usize) -> u16 {
    TABLES.get(number).and_then(Once::get).map_or(0, |tables| tables.tss.0)
}

/// Load the host GDT, TSS and IDT on the boot CPU (number 0).
pub fn init() {
    load(0, [ist_stack_top(0), ist_stack_top(1), ist_stack_top(2)]);
}

/// Load CPU `number`'s own GDT, TSS and IDT on the calling CPU, with the
/// tops of its double-fault, NMI and machine-check stacks.
pub fn init_ap(number: usize, ist_tops: [u64; 3]) {
    load(number, ist_tops);
}

fn load(number: usize, ist_tops: [u64; 3]) {
    let tss = TSS[number].call_once(|| {
        let mut tss = TaskStateSegment::new();
        for (ist, top) in [DOUBLE_FAULT_IST, NMI_IST, MACHINE_CHECK_IST].into_iter().zip(ist_tops) {
            tss.interrupt_stack_table[ist as usize - 1] = VirtAddr::new(top);
        }
        tss
    });
    let tables = TABLES[number].call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
        HostTables { gdt, code, data, tss }
    });
    tables.gdt.load();
    // SAFETY: the selectors name descriptors of the GDT just loaded, which
    // is 'static; this CPU's TSS descriptor is loaded once, by this CPU.
    unsafe {
        CS::set_reg(tables.code);
        DS::set_reg(tables.data);
        ES::set_reg(tables.data);
        SS::set_reg(tables.data);
        load_tss(tables.tss);
    }

    let idt = IDT.call_once(|| {
        let mut idt = Idt([Gate::default(); 256]);
        // SAFETY: exception_stubs is an immutable table defined in traps.s.
        let stubs = unsafe { &exception_stubs };
        for (vector, &stub) in stubs.iter().enumerate() {
            let ist = match vector {
                2 => NMI_IST,
                8 => DOUBLE_FAULT_IST,
                18 => MACHINE_CHECK_IST,
                _ => 0,
            };
            idt.0[vector] = Gate::new(stub, tables.code, ist);
        }
        let timer = host_timer_interrupt as *const () as u64;
        let wake = host_wake_interrupt as *const () as u64;
        let spurious = host_spurious_interrupt as *const () as u64;
        idt.0[crate::lapic::TIMER_VECTOR as usize] = Gate::new(timer, tables.code, 0);
        idt.0[crate::lapic::WAKE_VECTOR as usize] = Gate::new(wake, tables.code, 0);
        idt.0[crate::lapic::SPURIOUS_VECTOR as usize] = Gate::new(spurious, tables.code, 0);
        idt.0[PIC_MASTER_SPURIOUS as usize] = Gate::new(spurious, tables.code, 0);
        idt
    });
    let pointer =
        DescriptorTablePointer { limit: (size_of::<Idt>() - 1) as u16, base: VirtAddr::from_ptr(idt) };
    // SAFETY: the IDT is 'static and every present gate points at a stub.
    unsafe { lidt(&pointer) };
}
