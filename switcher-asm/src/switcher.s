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
 * syscall_direct (guest user mode's `syscall`, when EFER.SCE is on):
 *   keep the user's stack pointer, take the guest kernel's stack from the
 *   state page, push the frame `int n` would push from ring 3 and return
 *   to the guest kernel's syscall entry at ring 1: no exit, no CR3
 *   switch. With no entry or no stack it exits as the #UD it was.
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

    .org switcher_start + {SYSCALL_OFFSET}
syscall_direct:
    /* `syscall` from guest user mode (IA32_LSTAR): CPL 0, CS and SS the
     * switcher's (IA32_STAR), RFLAGS masked by IA32_FMASK (interrupts,
     * single-step, DF, AC, NT and IOPL clear). rcx holds the user's RIP
     * after the instruction, r11 its RFLAGS. RSP is still the user's: any
     * value at all, which is never used as an address here. It is kept
     * in this CPU's scratch word, then the stack becomes the guest
     * kernel's, from the state page the guest cannot write (0 while the
     * path is closed: no entry, or no kernel stack). */
    mov %rsp, {SYSCALL_USER_RSP}
    mov {STATE_SYSCALL_STACK}, %rsp
    test %rsp, %rsp
    jz syscall_closed
    /* The frame `int n` pushes from ring 3, on the guest kernel stack
     * (pinned, so these writes cannot fault; page-aligned, as an
     * interrupt would align it): SS, RSP, RFLAGS, CS, RIP. */
    push ${USER_SS}
    pushq {SYSCALL_USER_RSP}
    push %r11
    push ${USER_CS}
    push %rcx
    /* Then down to ring 1, into the guest kernel's entry, with that frame
     * on its stack, interrupts on and no other flag: the `iretq` frame
     * goes below it, written in place so that no register changes (rcx
     * and r11 stay as `syscall` left them, for the guest kernel and for
     * the host, should anything interrupt this path). */
    movq ${KERNEL_SS}, -8(%rsp)
    mov %rsp, -16(%rsp)
    movq ${SYSCALL_ENTRY_RFLAGS}, -24(%rsp)
    movq ${KERNEL_CS}, -32(%rsp)
    sub $32, %rsp
    pushq {STATE_SYSCALL_ENTRY}
    iretq

    .org switcher_start + {SYSCALL_CLOSED_OFFSET}
syscall_compat:
    /* IA32_CSTAR: `syscall` from compatibility mode, which no guest can
     * reach; were it to, this exits like the closed path. */
    mov %rsp, {SYSCALL_USER_RSP}
syscall_closed:
    /* Exit to the host with the frame a #UD at the `syscall` would have
     * pushed, as when EFER.SCE was clear. */
    mov ${TRAP_STACK_TOP}, %rsp
    push ${USER_SS}
    pushq {SYSCALL_USER_RSP}
    push %r11
    push ${USER_CS}
    push %rcx
    subq $2, (%rsp)
    push $0
    push $6
    jmp exit_common

    .org switcher_start + {SYSCALL_END_OFFSET}
    .org switcher_start + {CODE_BYTES}
switcher_end:
    .popsection
