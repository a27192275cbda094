//! # The native backend: the same kernel on a bare machine, at ring 0
//!
//! The guest image boots two ways. Under Umbra it enters at ring 1 through
//! `guest_entry` (named by our own ELF note) and asks for everything with
//! hypercalls. Booted directly by QEMU as a PVH kernel, it enters here
//! instead, through the PVH note, in 32-bit protected mode with paging
//! off, and owns the machine: it builds its own GDT, IDT and TSS, drives
//! the 8259 PIC and the 8254 PIT for its one-shot timer, calibrates the
//! TSC against the PIT, and talks to COM1 itself.
//!
//! Everything above the platform layer (`platform/mod.rs`) is the same
//! code either way: the process kernel in `kernel/` cannot tell which
//! backend it runs on. That is what lets the differential suite compare a
//! native run with a nested one line by line, and the benchmark divide
//! one time by the other.
//!
//! Choices made for the smallness of this file:
//! - The timer is PIT channel 0 in mode 0 (interrupt on terminal count),
//!   through the PIC in auto-EOI mode, so no handler has to acknowledge
//!   anything. It reaches 55 ms at most; the scheduler asks for 1 ms.
//! - Every handler runs with interrupts off: the kernel's stubs expect
//!   that (under Umbra they clear the virtual flag themselves), so each
//!   gate here is an interrupt gate even where the kernel asked for a
//!   trap gate, which under Umbra only enables direct delivery.
//! - The boot tables identity-map the first GiB; the kernel replaces them
//!   with its own at once, which also keep an identity map, so the GDT,
//!   IDT and TSS stay where they are in every address space.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use umbra_abi::clock::{Bracket, Narrowest};

use crate::platform::console::Printable;
use crate::platform::{self, Backend, Gate};

/// The segment selectors of the native GDT. The user ones are the same
/// numbers Umbra gives guest user mode (`abi::GUEST_USER_*`), so the
/// kernel builds the same user frames on either backend.
const KERNEL_CS: u16 = 0x08;
const TSS_SELECTOR: u16 = 0x38;
const _: () = assert!(umbra_abi::GUEST_USER_SS == 0x2b && umbra_abi::GUEST_USER_CS == 0x33);

// The PVH note QEMU looks for, the 32-bit entry and the jump to long mode.
global_asm!(
    r#"
    .pushsection .note.pvh, "a", @note
    .balign 4
    .long 4, 4, 18              /* name size, payload size, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long native_entry32
    .popsection

    .pushsection .text.native, "ax"
    .code32
    .global native_entry32
native_entry32:
    cld
    mov %ebx, %esi              /* start_info, kept out of stosb's way */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov $native_stack_top, %esp

    /*
     * The PIC's interrupts reach the CPU through the local APIC's LINT0
     * as ExtINT ("virtual wire"). SeaBIOS sets that up on pc and q35;
     * microvm's firmware does not, so we do, while paging is off and the
     * APIC's registers are plain physical addresses.
     */
    orl $0x100, 0xfee000f0      /* spurious vector register: APIC on */
    mov 0xfee00350, %eax        /* LINT0 */
    and $~0x10700, %eax
    or $0x700, %eax             /* ExtINT, unmasked */
    mov %eax, 0xfee00350

    /* PML4[0] -> PDPT[0] -> one PD of 512 x 2 MiB: the first GiB. */
    mov $native_boot_pd, %edi
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax              /* present, writable, 2 MiB */
    mov %eax, (%edi, %ecx, 8)
    inc %ecx
    cmp $512, %ecx
    jb 1b
    movl $native_boot_pd + 3, native_boot_pdpt
    movl $native_boot_pdpt + 3, native_boot_pml4

    mov %cr4, %eax
    or $0x620, %eax             /* PAE, OSFXSR, OSXMMEXCPT: SSE, as under Umbra */
    mov %eax, %cr4
    mov $native_boot_pml4, %eax
    mov %eax, %cr3
    mov $0x80000001, %eax       /* NX, if the CPU has it */
    cpuid
    mov %edx, %ebx
    mov $0xC0000080, %ecx       /* EFER */
    rdmsr
    and $~0x1, %eax             /* SCE off: `syscall` is a #UD, as under Umbra */
    or $0x100, %eax             /* LME */
    bt $20, %ebx
    jnc 2f
    or $0x800, %eax             /* NXE */
2:  wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax        /* PG | WP | PE */
    mov %eax, %cr0
    lgdt native_gdt_pointer
    ljmp $0x08, $native_entry64

    .code64
native_entry64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $native_stack_top, %rsp /* the upper half of rsp is undefined here */
    xor %ebp, %ebp
    mov %esi, %edi
    call native_main
3:  hlt
    jmp 3b

    /* Vectors nobody installed (a spurious PIC interrupt, say): ignore. */
    .global native_ignore_interrupt
native_ignore_interrupt:
    iretq
    .popsection

    .pushsection .data.native, "aw"
    .balign 16
    .global native_gdt
native_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: kernel code, 64-bit */
    .quad 0x00cf92000000ffff    /* 0x10: kernel data */
    .quad 0, 0                  /* 0x18, 0x20: unused (Umbra's ring-1 slots) */
    .quad 0x00cff2000000ffff    /* 0x28: user data (0x2b) */
    .quad 0x00affa000000ffff    /* 0x30: user code, 64-bit (0x33) */
    .quad 0, 0                  /* 0x38: the TSS, filled in at boot */
native_gdt_end:
native_gdt_pointer:
    .word native_gdt_end - native_gdt - 1
    .quad native_gdt
    .popsection

    .pushsection .bss.native, "aw", @nobits
    .balign 4096
    .global native_boot_pml4, native_boot_pdpt, native_mmio_pd
native_boot_pml4: .skip 4096
native_boot_pdpt: .skip 4096
native_boot_pd:   .skip 4096
native_mmio_pd:   .skip 4096    /* 3-4 GiB, for a power-off register there */
    .skip 64 * 1024
native_stack_top:
    .popsection
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static mut native_gdt: [u64; 9];
    fn native_ignore_interrupt();
    static mut native_boot_pml4: [u64; 512];
    static mut native_boot_pdpt: [u64; 512];
    static mut native_mmio_pd: [u64; 512];
}

/// A static the CPU reads behind the compiler's back (IDT, TSS).
#[repr(C, align(16))]
struct Table<T>(UnsafeCell<T>);

// SAFETY: one CPU; the tables are written at boot and by the kernel with
// interrupts off.
unsafe impl<T> Sync for Table<T> {}

/// 256 gates of 16 bytes each.
static IDT: Table<[[u64; 2]; 256]> = Table(UnsafeCell::new([[0; 2]; 256]));

/// The 64-bit TSS: only RSP0 matters (offset 4), and the I/O bitmap
/// offset (at 102) past the end says there is none.
static TSS: Table<[u32; 26]> = Table(UnsafeCell::new([0; 26]));

/// TSC ticks per millisecond, measured against the PIT at boot.
static TSC_KHZ: AtomicU64 = AtomicU64::new(1);

const COM1: u16 = 0x3f8;
const PIT_HZ: u64 = 1_193_182;
const PIC1_COMMAND: u16 = 0x20;
const PIC1_DATA: u16 = 0x21;
const PIC2_COMMAND: u16 = 0xa0;
const PIC2_DATA: u16 = 0xa1;
/// QEMU's isa-debug-exit, when the VM has one: it exits with (v << 1) | 1.
const DEBUG_EXIT: u16 = 0xf4;
/// PM1a control on QEMU's pc and q35 boards, for a power-off without it.
const PM1A_CONTROL: u16 = 0x604;

fn outb(port: u16, value: u8) {
    // SAFETY: ring 0 owns the ports; each caller names a device it drives.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

fn inb(port: u16) -> u8 {
    let value;
    // SAFETY: as above.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) };
    value
}

fn rdtsc() -> u64 {
    // SAFETY: reads the time-stamp counter, which ring 0 may always read.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The hvm_start_info fields we read, at their offsets.
const START_INFO_MAGIC: u32 = 0x336e_c578;
const CMDLINE_MAX: usize = 4096;
/// Where the boot tables end: memory above the first GiB is not used.
const MAPPED_AT_BOOT: u64 = 1 << 30;
/// The image's load address (`link.ld`): the RAM range holding it is ours.
const IMAGE_BASE: u64 = 0x20_0000;

unsafe extern "C" {
    static __image_end: u8;
}

/// What the VMM told us, checked.
struct StartInfo {
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
    memory_size: u64,
    /// Module 0, `(address, length)`, when the VMM passed one inside the
    /// boot map: QEMU's `-initrd`, Cloud Hypervisor's `--initramfs`.
    module: Option<(u64, u64)>,
    /// The ACPI RSDP's address, when start_info names one.
    rsdp: Option<u64>,
}

fn read_u32(pa: u64) -> u32 {
    // SAFETY: callers read start_info and what it points to, which the
    // VMM put in low RAM, identity-mapped by the boot tables.
    unsafe { (pa as *const u32).read_unaligned() }
}

fn read_u64(pa: u64) -> u64 {
    u64::from(read_u32(pa)) | (u64::from(read_u32(pa + 4)) << 32)
}

/// Reads start_info at `pa`: the command line and the end of the RAM
/// range that holds the image, or why it could not.
fn read_start_info(pa: u64) -> Result<StartInfo, &'static str> {
    let in_boot_map = |address: u64, len: u64| address.checked_add(len).is_some_and(|e| e <= MAPPED_AT_BOOT);
    if pa == 0 || !in_boot_map(pa, 56) {
        return Err("start_info is missing or above the first GiB");
    }
    if read_u32(pa) != START_INFO_MAGIC {
        return Err("start_info has a bad magic");
    }
    let mut info =
        StartInfo { cmdline: [0; CMDLINE_MAX], cmdline_len: 0, memory_size: 0, module: None, rsdp: None };
    let cmdline = read_u64(pa + 24);
    if cmdline != 0 && in_boot_map(cmdline, CMDLINE_MAX as u64) {
        while info.cmdline_len < CMDLINE_MAX {
            // SAFETY: checked to lie in the boot map above.
            let byte = unsafe { ((cmdline + info.cmdline_len as u64) as *const u8).read() };
            if byte == 0 {
                break;
            }
            info.cmdline[info.cmdline_len] = byte;
            info.cmdline_len += 1;
        }
    }
    // The memory map arrived with start_info version 1.
    let (map, entries) = (read_u64(pa + 40), u64::from(read_u32(pa + 48)));
    if read_u32(pa + 4) < 1 || map == 0 || !in_boot_map(map, entries.saturating_mul(24)) {
        return Err("start_info has no usable memory map");
    }
    for entry in (0..entries).map(|i| map + 24 * i) {
        let (start, size, kind) = (read_u64(entry), read_u64(entry + 8), read_u32(entry + 16));
        let end = start.saturating_add(size);
        if kind == 1 && start <= IMAGE_BASE && IMAGE_BASE < end {
            // 2 MiB pages map it; what lies past a 2 MiB edge is left alone.
            info.memory_size = end.min(MAPPED_AT_BOOT) & !((2 << 20) - 1);
        }
    }
    let image_end = &raw const __image_end as u64;
    if info.memory_size < image_end + (8 << 20) {
        return Err("too little RAM around the image (needs 8 MiB past it)");
    }
    // Module 0 (the list's entries are 32 bytes: address, size, cmdline,
    // reserved); one outside what the boot tables map is left alone.
    let (modules, list) = (read_u32(pa + 12), read_u64(pa + 16));
    if modules >= 1 && list != 0 && in_boot_map(list, 32) {
        let (address, size) = (read_u64(list), read_u64(list + 8));
        // It may lie past `memory_size` (QEMU's pc puts it at the very top
        // of RAM, above the last 2 MiB edge): it is read once, and moved.
        if size != 0 && address >= image_end && in_boot_map(address, size) {
            info.module = Some((address, size));
        }
    }
    info.rsdp = Some(read_u64(pa + 32)).filter(|&rsdp| rsdp != 0);
    Ok(info)
}

/// A cpio archive (newc) as module 0 is a root filesystem: moved down to
/// the first page after the image, where Umbra would have put it, so the
/// free memory is one range after it on either path. Returns where it now
/// lies. Any other module is not ours to use, and is said so.
fn take_rootfs(module: Option<(u64, u64)>, memory_size: u64) -> Option<(u64, u64)> {
    let (address, len) = module?;
    let mut magic = [0u8; 6];
    for (i, byte) in magic.iter_mut().enumerate() {
        // SAFETY: the module lies in the boot map (read_start_info).
        *byte = unsafe { ((address + i as u64) as *const u8).read() };
    }
    if len < 6 || &magic != umbra_abi::CPIO_NEWC_MAGIC {
        say!("module 0 ({len} bytes) is not a cpio archive (newc); ignored");
        return None;
    }
    let to = (&raw const __image_end as u64).next_multiple_of(4096);
    if to + len + (4 << 20) > memory_size {
        say!("the root filesystem ({len} bytes) leaves too little of {memory_size:#x} bytes of memory");
        shutdown(99, "root filesystem too large");
    }
    // SAFETY: both ranges lie in RAM the boot tables map (read_start_info
    // checked the module, past the image; `to` and the length against
    // memory_size just now), and nothing else lives there yet; `copy`
    // allows them to overlap.
    unsafe { core::ptr::copy(address as *const u8, to as *mut u8, len as usize) };
    Some((to, len))
}

/// How to switch off, from the FADT, found at boot while the boot tables
/// still map the first GiB (where the tables are): up to two writes, each
/// a register's address and `VALID | space << 40 | width << 32 | value`
/// (0 for none). A register in memory must lie below 4 GiB, which the
/// boot tables are made to reach (see `shutdown`).
static POWER_OFF_ADDRESS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static POWER_OFF_WRITE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
const POWER_OFF_VALID: u64 = 1 << 63;
const POWER_OFF_MEMORY: u64 = 1 << 40;

/// The bytes at physical `pa`, if the boot tables map them all.
fn physical(pa: u64, len: usize) -> Option<&'static [u8]> {
    let mapped = pa != 0 && pa.checked_add(len as u64).is_some_and(|end| end <= MAPPED_AT_BOOT);
    // SAFETY: identity-mapped RAM or firmware tables below 1 GiB, only
    // read; the VMM does not change its ACPI tables under us.
    mapped.then(|| unsafe { core::slice::from_raw_parts(pa as *const u8, len) })
}

/// A whole ACPI table at `pa`: its header says how long it is.
fn acpi_table(pa: u64) -> Option<&'static [u8]> {
    let len = umbra_abi::acpi::table_len(physical(pa, umbra_abi::acpi::HEADER_LEN)?)?;
    physical(pa, len).filter(|table| umbra_abi::acpi::checksum_ok(table))
}

/// Where the RSDP is: where start_info says, or, as on QEMU's microvm,
/// found by its signature in the BIOS area.
fn find_rsdp(given: Option<u64>) -> Option<&'static [u8]> {
    if let Some(rsdp) = given.and_then(|pa| physical(pa, 36)) {
        return Some(rsdp);
    }
    (0xe_0000..0x10_0000u64)
        .step_by(16)
        .filter_map(|pa| physical(pa, 36))
        .find(|rsdp| umbra_abi::acpi::rsdp_root(rsdp).is_some())
}

/// Reads the FADT (and the DSDT's `\_S5_`) with `umbra_abi::acpi`, the
/// logic Umbra uses too, and keeps the port writes that switch off.
fn find_power_off(rsdp: Option<u64>) {
    use umbra_abi::acpi::{self, Space};
    let Some((root, entry_size)) = find_rsdp(rsdp).and_then(acpi::rsdp_root) else { return };
    let Some(root) = acpi_table(root) else { return };
    let Some(fadt) =
        acpi::root_entries(root, entry_size).filter_map(acpi_table).find(|table| table.starts_with(b"FACP"))
    else {
        return;
    };
    let Some(fields) = acpi::fadt_power(fadt) else { return };
    let s5 = acpi::fadt_dsdt(fadt).and_then(acpi_table).and_then(acpi::find_s5);
    let Some(method) = acpi::power_off_method(&fields, s5) else { return };
    let slots = POWER_OFF_ADDRESS.iter().zip(&POWER_OFF_WRITE);
    for ((address, write), (register, value)) in slots.zip(method.writes().into_iter().flatten()) {
        let space = match register.space {
            Space::Io if register.address <= 0xffff => 0,
            Space::Memory if register.address < 4 << 30 => POWER_OFF_MEMORY,
            _ => continue,
        };
        address.store(register.address, Ordering::Relaxed);
        let width = u64::from(register.bit_width);
        write.store(POWER_OFF_VALID | space | width << 32 | u64::from(value), Ordering::Relaxed);
    }
}

/// Makes the boot tables fit for `shutdown`, which switches back to them
/// from wherever the kernel runs: the kernel half (`KERNEL_BASE + pa`, the
/// kernel's code and stacks, all in the first GiB) maps as the identity
/// map does, and 3 to 4 GiB, where a hardware-reduced machine may keep
/// its sleep-control register (QEMU's microvm does), is mapped uncached.
fn prepare_boot_tables_for_shutdown() {
    const KERNEL_HALF_SLOT: usize = 256; // 0xFFFF_8000_0000_0000
    // SAFETY: boot, one CPU, boot tables live: the entries added map
    // nothing the running code relies on, and change none it does.
    unsafe {
        let pd = &raw mut native_mmio_pd;
        for (index, entry) in (*pd).iter_mut().enumerate() {
            // Present, writable, 2 MiB, write-through, cache disabled.
            *entry = ((3 << 30) + ((index as u64) << 21)) | 0x9b;
        }
        native_boot_pdpt[3] = pd as u64 | 3;
        native_boot_pml4[KERNEL_HALF_SLOT] = native_boot_pml4[0];
    }
}

/// Called by `native_entry64` with the address of start_info.
#[unsafe(no_mangle)]
extern "C" fn native_main(start_info: u64) -> ! {
    platform::choose(Backend::Native);
    serial_init();
    set_up_cpu_tables();
    pic_init();
    calibrate_tsc();
    let info = match read_start_info(start_info) {
        Ok(info) => info,
        Err(why) => {
            say!("{why}");
            shutdown(99, why)
        }
    };
    find_power_off(info.rsdp);
    prepare_boot_tables_for_shutdown();
    let cmdline = &info.cmdline[..info.cmdline_len];
    say!("hello from ring 0 (native)");
    say!("clock: TSC {} MHz, measured against the PIT", tsc_khz() / 1000);
    say!("memory: {} MiB ({:#x} bytes)", info.memory_size >> 20, info.memory_size);
    say!("cmdline: \"{}\"", Printable(cmdline));
    let rootfs = take_rootfs(info.module, info.memory_size);
    let image_end = &raw const __image_end as u64;
    let free_start = rootfs.map_or(image_end, |(address, len)| (address + len).next_multiple_of(4096));
    crate::boot::run_kernel(cmdline, info.memory_size, free_start, info.memory_size, rootfs)
}

fn serial_init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // divisor latch
    outb(COM1, 0x01); // 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1
    outb(COM1 + 2, 0xc7); // FIFOs on and cleared
}

/// Fills in the TSS descriptor, loads the task register and the IDT, and
/// points every vector at the ignoring stub until the kernel installs its
/// own.
fn set_up_cpu_tables() {
    let tss = TSS.0.get() as u64;
    let limit = (size_of::<[u32; 26]>() - 1) as u64;
    // SAFETY: boot, one CPU; only the boot code reads the GDT so far.
    unsafe {
        (*TSS.0.get())[25] = (size_of::<[u32; 26]>() as u32) << 16; // I/O map base: none
        let low = limit | (tss & 0xff_ffff) << 16 | 0x89 << 40 | (tss >> 24 & 0xff) << 56;
        native_gdt[7] = low;
        native_gdt[8] = tss >> 32;
        asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nostack));
    }
    for vector in 0..=255u8 {
        set_trap_handler(
            vector,
            native_ignore_interrupt as *const () as u64,
            Gate { trap: false, user: false },
        );
    }
    let pointer: [u64; 2] = [(size_of::<[[u64; 2]; 256]>() as u64 - 1) | (IDT.0.get() as u64) << 16, {
        IDT.0.get() as u64 >> 48
    }];
    // SAFETY: a valid IDT whose gates all lead to code of ours.
    unsafe { asm!("lidt [{0}]", in(reg) pointer.as_ptr(), options(readonly, nostack)) };
}

/// Where a `syscall` that should have raised #UD jumps instead: see
/// `platform::set_syscall_landing`.
pub fn set_syscall_landing(va: u64) {
    const LSTAR: u32 = 0xC000_0082;
    // SAFETY: with EFER.SCE clear, LSTAR only matters to a CPU (or
    // emulator) that runs `syscall` anyway; the address is a user page.
    unsafe {
        asm!("wrmsr", in("ecx") LSTAR, in("eax") va as u32, in("edx") (va >> 32) as u32,
            options(nomem, nostack, preserves_flags));
    }
}

/// Remaps the PIC to vectors 32-47, in auto-EOI mode, everything masked.
/// (Its output reaches the CPU through the local APIC's LINT0, which the
/// boot stub set to ExtINT.)
fn pic_init() {
    for (command, data, base, wiring) in [(PIC1_COMMAND, PIC1_DATA, 32, 4), (PIC2_COMMAND, PIC2_DATA, 40, 2)]
    {
        outb(command, 0x11); // ICW1: initialize, ICW4 follows
        outb(data, base); // ICW2: vector base
        outb(data, wiring); // ICW3: the cascade on IRQ 2
        outb(data, 0x03); // ICW4: 8086 mode, auto-EOI
        outb(data, 0xff); // masked
    }
}

/// PIT channel 0's count, latched and read between two reads of the TSC.
fn pit_reading() -> (u16, Bracket) {
    let tsc_before = rdtsc();
    outb(0x43, 0x00); // latch channel 0's count
    let count = u16::from(inb(0x40)) | u16::from(inb(0x40)) << 8;
    (count, Bracket { tsc_before, tsc_after: rdtsc() })
}

/// Counts TSC ticks over about 10 ms of PIT channel 0, counting down from
/// its top in mode 0 with its interrupt masked, and measures again while
/// a busy host blurs the window's ends (`umbra_abi::clock`), up to five
/// times. (Channel 2 and port 0x61 would spare the reads, but microvm has
/// no port 0x61.)
fn calibrate_tsc() {
    const WINDOW_TICKS: u16 = (PIT_HZ / 100) as u16;
    let mut measured = Narrowest::default();
    for _ in 0..5 {
        outb(0x43, 0x30); // channel 0, low then high byte, mode 0
        outb(0x40, 0xff);
        outb(0x40, 0xff);
        let (start_count, start) = pit_reading();
        let (mut count, mut end) = (start_count, start);
        // A count above the start is the wrap at zero (55 ms on): the
        // window is then lost, not wrong.
        while count <= start_count && start_count - count < WINDOW_TICKS {
            (count, end) = pit_reading();
        }
        if count > start_count {
            continue;
        }
        let elapsed_ns = u64::from(start_count - count) * 1_000_000_000 / PIT_HZ;
        if measured.offer(start, end, elapsed_ns) {
            break;
        }
    }
    TSC_KHZ.store(measured.khz().unwrap_or(1), Ordering::Relaxed);
}

// The platform operations, called through `platform/mod.rs`.

pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

fn cr3() -> u64 {
    let value;
    // SAFETY: reading CR3 at ring 0 changes nothing.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Our own tables hold the entry already; only a cached copy of it, in
/// the live address space, has to go.
pub fn set_pte(root: u64, va: u64) {
    if root == cr3() & !0xfff {
        // SAFETY: dropping a TLB entry is always safe.
        unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
    }
}

/// # Safety
/// As `platform::switch_root`.
pub unsafe fn switch_root(root: u64) {
    // SAFETY: the caller vouches for the tables.
    unsafe { asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags)) };
}

pub fn flush_user() {
    // SAFETY: reloading CR3 with its own value only drops cached entries.
    unsafe { switch_root(cr3()) };
}

pub fn interrupts(on: bool) {
    // SAFETY: the kernel decides when it may be interrupted.
    unsafe {
        if on {
            asm!("sti", options(nomem, nostack));
        } else {
            asm!("cli", options(nomem, nostack));
        }
    }
}

pub fn halt() {
    // SAFETY: sleeps until an interrupt; `sti` takes effect after `hlt`
    // starts, so one arriving in between still wakes us.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
}

/// PIT channel 0, mode 0: IRQ 0 once, after `delta_ns` (0 cancels).
pub fn set_timer(delta_ns: u64) {
    if delta_ns == 0 {
        outb(PIC1_DATA, 0xff);
        outb(0x43, 0x30); // reprogramming stops the count
        return;
    }
    let count = (u128::from(delta_ns) * u128::from(PIT_HZ)).div_ceil(1_000_000_000).clamp(1, 0xffff) as u16;
    outb(0x43, 0x30); // channel 0, low then high byte, mode 0
    outb(0x40, count as u8);
    outb(0x40, (count >> 8) as u8);
    outb(PIC1_DATA, 0xfe); // IRQ 0 only
}

/// The last byte sent, so a `\r\n` from the terminal's output processing
/// does not become `\r\r\n`.
static LAST_SENT: AtomicU8 = AtomicU8::new(b'\n');

/// Bytes as they are, but a line feed that no carriage return precedes
/// gets one: the kernel's own lines end in `\n` alone. Umbra does the
/// same for the console's owner.
pub fn console(bytes: &[u8]) {
    let mut last = LAST_SENT.load(Ordering::Relaxed);
    for &byte in bytes {
        if byte == b'\n' && last != b'\r' {
            serial_byte(b'\r');
        }
        serial_byte(byte);
        last = byte;
    }
    LAST_SENT.store(last, Ordering::Relaxed);
}

/// Bytes typed on COM1 that have arrived, up to `buf`'s length; never
/// waits. (No UART interrupt: the kernel looks when it wants input.)
pub fn console_read(buf: &mut [u8]) -> usize {
    let mut count = 0;
    while count < buf.len() && inb(COM1 + 5) & 0x01 != 0 {
        buf[count] = inb(COM1);
        count += 1;
    }
    count
}

fn serial_byte(byte: u8) {
    while inb(COM1 + 5) & 0x20 == 0 {
        core::hint::spin_loop();
    }
    outb(COM1, byte);
}

/// Writes gate `vector`. Always an interrupt gate (see the top of the
/// file); `user` lets ring 3 raise it with `int n`.
pub fn set_trap_handler(vector: u8, handler: u64, gate: Gate) {
    let dpl: u64 = if gate.user { 3 } else { 0 };
    let low = (handler & 0xffff)
        | u64::from(KERNEL_CS) << 16
        | (0x8e | dpl << 5) << 40
        | (handler >> 16 & 0xffff) << 48;
    // SAFETY: one CPU, interrupts off while the kernel installs handlers.
    unsafe { (*IDT.0.get())[usize::from(vector)] = [low, handler >> 32] };
}

pub fn set_kernel_stack(top: u64) {
    // SAFETY: as above; RSP0 sits at byte 4 of the TSS, in two halves.
    unsafe {
        (*TSS.0.get())[1] = top as u32;
        (*TSS.0.get())[2] = (top >> 32) as u32;
    }
}

/// IA32_FS_BASE, written directly at ring 0.
pub fn set_fs_base(base: u64) {
    // SAFETY: the caller passes a canonical base (a non-canonical one would
    // #GP here); FS is the running program's, nothing of ours uses it.
    unsafe {
        asm!("wrmsr", in("ecx") 0xc000_0100u32, in("eax") base as u32, in("edx") (base >> 32) as u32,
            options(nomem, nostack, preserves_flags));
    }
}

pub fn fault_address() -> u64 {
    let value;
    // SAFETY: reading CR2 at ring 0 changes nothing.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Says how it ends, then leaves QEMU through isa-debug-exit if there is
/// one (the status becomes QEMU's exit code, as under Umbra), else powers
/// off the way the FADT says (Cloud Hypervisor: its sleep-control port),
/// else through the PM1a control port of QEMU's pc and q35, else halts
/// for good.
/// Writes a power-off register in memory below 4 GiB: on the boot
/// tables, which map it (`prepare_boot_tables_for_shutdown`), whatever
/// address space the kernel was in. Nothing runs after this but the halt
/// loop, so the kernel's tables are not needed back.
fn write_power_off_register(address: u64, width: u8, value: u32) {
    // The boot tables' physical address: `native_boot_pml4` is in the image,
    // which runs at its physical address or at KERNEL_BASE above it.
    let root = (&raw const native_boot_pml4) as u64 & !0xFFFF_8000_0000_0000;
    // SAFETY: the boot tables map this code and stack in the kernel half
    // and the identity map alike, and `address` (below 4 GiB, named by
    // the FADT as a power-management register) uncached; we are about to
    // stop, so leaving the kernel's address space loses nothing.
    unsafe {
        asm!("mov cr3, {}", in(reg) root, options(nostack));
        match width {
            0..=8 => core::ptr::write_volatile(address as *mut u8, value as u8),
            9..=16 => core::ptr::write_volatile(address as *mut u16, value as u16),
            _ => core::ptr::write_volatile(address as *mut u32, value),
        }
    }
}

pub fn shutdown(status: u64, message: &str) -> ! {
    say!("native shutdown: status {status} ({message})");
    interrupts(false);
    // Statuses Umbra would not pass through become its "out of range".
    let status = if status <= umbra_abi::GUEST_STATUS_MAX {
        status as u8
    } else {
        umbra_abi::status::GUEST_STATUS_OUT_OF_RANGE
    };
    outb(DEBUG_EXIT, status);
    let writes = POWER_OFF_ADDRESS.iter().zip(&POWER_OFF_WRITE);
    let writes =
        writes.map(|(address, write)| (address.load(Ordering::Relaxed), write.load(Ordering::Relaxed)));
    for (address, write) in writes.filter(|&(_, write)| write & POWER_OFF_VALID != 0) {
        let (width, value) = ((write >> 32) as u8, write as u32);
        if write & POWER_OFF_MEMORY != 0 {
            write_power_off_register(address, width, value);
            continue;
        }
        let port = address as u16;
        // SAFETY: the FADT names this port as a power-management register;
        // the write switches the machine off.
        unsafe {
            match width {
                0..=8 => asm!("out dx, al", in("dx") port, in("al") value as u8, options(nomem, nostack)),
                9..=16 => asm!("out dx, ax", in("dx") port, in("ax") value as u16, options(nomem, nostack)),
                _ => asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack)),
            }
        }
    }
    // SAFETY: SLP_EN with sleep type 0, which QEMU's boards take as S5.
    unsafe { asm!("out dx, ax", in("dx") PM1A_CONTROL, in("ax") 0x2000u16, options(nomem, nostack)) };
    loop {
        // SAFETY: interrupts are off; nothing is left to do.
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}
