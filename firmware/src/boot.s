/*
 * The PVH entry: from 32-bit protected mode to Rust in long mode.
 *
 * A PVH VMM jumps here in 32-bit protected mode with paging off, flat
 * segments, interrupts off, no stack, and the physical address of
 * hvm_start_info in %ebx. We clear .bss (a loader is not obliged to),
 * take our own stack, identity-map the first 4 GiB with 2 MiB pages,
 * enable PAE, long mode and NX (when the CPU has it), turn paging on,
 * and far-jump into 64-bit code that calls umbra_main(start_info).
 *
 * Two settings are for the guests, which run on the host's CR4 and EFER:
 * CR4.OSFXSR and OSXMMEXCPT turn SSE on (the host itself is soft-float
 * and never touches the XMM registers; guest.rs swaps them per guest),
 * and EFER.SCE starts clear, so `syscall` at any ring is an invalid
 * opcode, which the guest's own #UD handler sees; the run loop sets it
 * only while a guest that named a syscall entry runs (the switcher's
 * direct path). The other CPUs copy both from this one (smp.rs).
 *
 * The first 4 GiB is enough to read everything the VMM gave us; Rust
 * replaces these tables with ones that map all of RAM once it knows
 * how much there is.
 */

    .pushsection .note.pvh, "a", @note
    .balign 4
    .long 4                     /* name size: "Xen\0" */
    .long 4                     /* descriptor size */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .balign 4
    .popsection

    .pushsection .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cld
    mov %ebx, %esi              /* keep start_info out of rep stos' way */

    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx                /* both ends are page-aligned: whole dwords */
    xor %eax, %eax
    rep stosl

    mov $boot_stack_top, %esp

    /* Long mode is not optional; say so on COM1 rather than triple-fault. */
    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb .Lno_long_mode
    mov $0x80000001, %eax
    cpuid
    bt $29, %edx
    jnc .Lno_long_mode
    mov %edx, %ebp              /* remember the NX bit (20) for EFER */

    /* PML4[0] -> PDPT; PDPT[0..4] -> four PDs of 512 x 2 MiB pages. */
    mov $boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, boot_pml4
    mov $boot_pd, %edi
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax              /* present, writable, 2 MiB */
    mov %eax, (%edi, %ecx, 8)
    inc %ecx
    cmp $2048, %ecx
    jb 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $12, %eax
    add $boot_pd, %eax
    or $0x3, %eax
    mov %eax, boot_pdpt(, %ecx, 8)
    inc %ecx
    cmp $4, %ecx
    jb 2b

    mov %cr4, %eax
    or $0x620, %eax             /* PAE, OSFXSR, OSXMMEXCPT (SSE for guests) */
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3

    mov $0xC0000080, %ecx       /* EFER */
    rdmsr
    and $~0x1, %eax             /* SCE off: `syscall` anywhere is a #UD */
    or $0x100, %eax             /* LME */
    bt $20, %ebp
    jnc 3f
    or $0x800, %eax             /* NXE */
3:  wrmsr

    mov %cr0, %eax
    or $0x80010001, %eax        /* PG | WP | PE */
    mov %eax, %cr0

    lgdt boot_gdt_pointer
    ljmp $0x08, $long_mode_entry

.Lno_long_mode:
    mov $.Lno_long_mode_text, %ebx
4:  movb (%ebx), %al
    test %al, %al
    jz 5f
    mov $0x3f8, %dx
    outb %al, %dx
    inc %ebx
    jmp 4b
5:  cli
    hlt
    jmp 5b

    .code64
long_mode_entry:
    .cfi_startproc
    .cfi_undefined rip          /* for debuggers: nothing called this */
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    xor %ebp, %ebp              /* the end of every backtrace */
    mov %esi, %edi              /* zero-extends start_info into rdi */
    call umbra_main
    ud2
    .cfi_endproc
    .popsection

    .pushsection .rodata.boot, "a"
.Lno_long_mode_text:
    .asciz "umbra: this CPU has no long mode; Umbra needs x86_64\r\n"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code, ring 0 */
    .quad 0x00cf92000000ffff    /* 0x10: data, ring 0 */
boot_gdt_end:
boot_gdt_pointer:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
    .popsection

    .pushsection .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4096 * 4
    .popsection

    /* The stack is not zeroed at entry (nothing reads a stack before
     * writing it), so it lives outside .bss: under a nested hypervisor
     * that emulates each step of `rep stos`, clearing its 512 KiB took
     * longer than the rest of the boot up to the banner. */
    .pushsection .bss.stack, "aw", @nobits
    .balign 4096
    .global boot_stack_guard, boot_stack_bottom, boot_stack_top
boot_stack_guard:               /* left unmapped by the host page tables */
    .skip 4096
boot_stack_bottom:
    .skip 384 * 1024                /* room for eight guests' state: the boot tests load eight at once */
boot_stack_top:
    .popsection
