/*
 * The switcher: the only code that runs on both sides of the world.
 *
 * It is assembled into its own two pages and mapped at the top of every
 * address space, so it keeps running while CR3 changes under it. Every
 * address it uses is a constant from layout.rs (the names in braces), and it
 * never names a host symbol: the host's state reaches it through the
 * per-CPU state page. The macros that build the guest's frame
 * (push_error_code_and_vector, push_general_registers and
 * pop_general_registers) come first, from lib.rs's trap_frame_macros!: the
 * firmware's own exception entry builds its frames with them too.
 *
 * Page 0 holds 256 exit stubs, one per vector, 16 bytes apart: the guest
 * IDT points each vector at its stub. Page 1 holds the two paths:
 *
 * switcher_enter (called by the host, on host tables):
 *   save the host's callee-saved registers and stack pointer;
 *   load the guest GDT, TSS (clearing its busy bit first: the GDT is
 *   writable only from here, on the host side) and IDT;
 *   load the guest's shadow CR3; from now on only this region, the guest's
 *   memory and nothing of the host is mapped;
 *   pop the guest's registers from the registers page and iretq to it.
 *
 * exit (any trap or interrupt while the guest runs):
 *   the CPU has switched to TSS.RSP0 (or IST1), the end of the registers
 *   page, and pushed its frame there; the stub adds an error code where
 *   the CPU did not, and the vector; exit_common pushes every register,
 *   completing GuestRegs in place;
 *   set RFLAGS to the host's own value, whatever the guest left in it
 *   (the CPU clears only TF, NT, RF and IF on the way in: DF and AC come
 *   through, and the compiler assumes DF clear at every call);
 *   load the host CR3, GDT, TSS and IDT back, restore the host's data
 *   segments and stack (FS and GS stay the guest's: the host never uses
 *   them, and a guest's thread pointer must survive its exits), pop its callee-saved registers
 *   and return to the host as if switcher_enter were an ordinary
 *   function. docs/switcher.md lists every piece of state an exit can
 *   carry in, and why each is safe.
 */
    .pushsection .text.switcher, "ax"
    .balign 4096
    .global switcher_start, switcher_end
switcher_start:

    /* .org pads to the given place, and fails to assemble if the code
     * before it has already run past: that is the layout check. */
    .set vector, 0
    .rept 256
    .org switcher_start + vector * {STUB_SIZE}
    /* The CPU pushes an error code only for the exceptions whose bits
     * are set in ERROR_CODE_VECTORS (layout.rs), all below 32. */
    push_error_code_and_vector vector
    jmp exit_common
    .set vector, vector + 1
    .endr

    .org switcher_start + {ENTRY_OFFSET}
switcher_enter:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, {STATE_HOST_RSP}
    lgdt {STATE_GUEST_GDT}
    andb $0xfd, {STATE_GUEST_TSS_ACCESS}
    mov ${TSS_SELECTOR}, %ax
    ltr %ax
    lidt {STATE_GUEST_IDT}
    mov {STATE_GUEST_CR3}, %rax
    mov %rax, %cr3
    mov ${GUEST_REGS_VA}, %rsp
    pop_general_registers
    add $16, %rsp               /* vector and error code */
    iretq

exit_common:
    /* First of all, the host's flags: DF and AC clear, IOPL 0, IF off. */
    pushq ${HOST_RFLAGS}
    popfq
    push_general_registers
    mov {STATE_HOST_CR3}, %rax
    mov %rax, %cr3
    lgdt {STATE_HOST_GDT}
    mov {STATE_HOST_TSS_DESCRIPTOR}, %rax
    andb $0xfd, 5(%rax)
    mov {STATE_HOST_TSS_SELECTOR}, %ax
    ltr %ax
    lidt {STATE_HOST_IDT}
    mov ${SWITCHER_DS}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov {STATE_HOST_RSP}, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

    .org switcher_start + {CODE_BYTES}
switcher_end:
    .popsection
