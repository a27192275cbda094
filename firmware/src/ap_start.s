/*
 * Where an application processor starts: from a startup IPI to Rust.
 *
 * A startup IPI wakes a CPU in 16-bit real mode at CS = page >> 4, IP = 0,
 * with paging off, interrupts off and its caches disabled, on whatever
 * page below 1 MiB the IPI named. Three stages take it to Rust:
 *
 * 1. ap_trampoline (16-bit), the only part that runs on the low page: smp.rs
 *    copies it there. It loads ap_gdt (in the image), turns on protected
 *    mode and the caches, and far-jumps into the image, which is loaded
 *    where it is linked, so its 32-bit code runs in place.
 * 2. ap_start32 (32-bit, paging off): which CPU am I? It takes its initial
 *    APIC ID from CPUID leaf 1 and looks for it in smp.rs's table of slots;
 *    a CPU with no slot halts here and touches nothing. Then, from its own
 *    slot: its own root page table (below 4 GiB), PAE, the boot CPU's EFER
 *    (long mode, NX) and paging. The low page is never executed with paging
 *    on: the host tables map it non-executable.
 * 3. ap_long_mode (64-bit): the data segments, its own stack from its slot,
 *    and ap_main(number) in smp.rs, which never returns.
 *
 * The slot layout reaches this file as const operands (SLOT_*), from the
 * #[repr(C)] struct in smp.rs.
 */
    .pushsection .rodata.ap_trampoline, "a"
    .code16
    .global ap_trampoline, ap_trampoline_end
ap_trampoline:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl ap_trampoline_gdt_pointer - ap_trampoline
    mov %cr0, %eax
    and $0x9fffffff, %eax       /* CD and NW off: INIT leaves the caches off */
    or $0x1, %eax               /* PE */
    mov %eax, %cr0
    ljmpl $0x08, $ap_start32
    .balign 8
ap_trampoline_gdt_pointer:
    .word ap_gdt_end - ap_gdt - 1
    .long ap_gdt
ap_trampoline_end:

/*
 * The descriptors the start code runs under until Rust loads the CPU's own
 * GDT. Their accessed bits are set already: with paging on, this read-only
 * page cannot take the CPU's write of that bit.
 */
    .balign 8
ap_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff    /* 0x08: 32-bit code, ring 0 */
    .quad 0x00cf93000000ffff    /* 0x10: data, ring 0 */
    .quad 0x00af9b000000ffff    /* 0x18: 64-bit code, ring 0 */
ap_gdt_end:
    .popsection

    .pushsection .text.ap_start, "ax"
    .code32
ap_start32:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss

    mov $1, %eax
    cpuid
    shr $24, %ebx               /* the initial APIC ID */
    mov ${SLOTS}, %edi
    xor %esi, %esi              /* the slot's number */
1:  cmp ${MAX_CPUS}, %esi
    jae .Lap_no_slot
    cmpl $0, {SLOT_CR3}(%edi)   /* no root: not a slot to start */
    je 2f
    cmp %ebx, {SLOT_APIC_ID}(%edi)
    je 3f
2:  add ${SLOT_SIZE}, %edi
    inc %esi
    jmp 1b

3:  mov %cr4, %eax
    or $0x20, %eax              /* PAE */
    mov %eax, %cr4
    mov {SLOT_CR3}(%edi), %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx       /* EFER: the boot CPU's LME and NXE */
    mov {EFER}, %eax
    xor %edx, %edx
    wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax        /* PG | WP | PE */
    mov %eax, %cr0
    ljmp $0x18, $ap_long_mode

.Lap_no_slot:
    cli
    hlt
    jmp .Lap_no_slot

    .code64
ap_long_mode:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov %edi, %edi              /* zero-extend: the upper halves are undefined */
    mov {SLOT_STACK_TOP}(%rdi), %rsp
    xor %ebp, %ebp              /* the end of every backtrace */
    mov %esi, %edi
    call {AP_MAIN}
    ud2
    .popsection
