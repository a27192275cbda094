/*
 * Exception entry for the host.
 *
 * Every one of the 32 architectural exception vectors gets a stub that
 * makes the stack uniform: a zero where the CPU pushes no error code
 * (ERROR_CODE_VECTORS, in braces, says where it does), then the vector
 * number. The common path saves every general register on top, so the
 * stack holds a complete frame, and hands its address to Rust. The
 * frame is the switcher's: the switcher's own macros build it
 * (push_error_code_and_vector, push_general_registers, from
 * switcher-asm's trap_frame_macros!, which main.rs puts before this
 * file), so crash.rs reads it as a `GuestRegs`. The host never resumes
 * from an exception in its own code: the Rust side prints a crash report
 * and exits.
 */
    .pushsection .text.traps, "ax"
    .code64

    .irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 16
exception_stub_\vector:
    push_error_code_and_vector \vector
    jmp exception_common
    .endr

/*
 * The host's own interrupts: only the APIC timer and the wake-up IPI one
 * CPU sends another (each just wakes a halted CPU: acknowledge it and
 * return) and the APIC's spurious vector (nothing to acknowledge). The
 * host runs with interrupts off except around `hlt`.
 */
    .global host_timer_interrupt, host_wake_interrupt, host_spurious_interrupt
host_timer_interrupt:
host_wake_interrupt:
    push %rax
    mov LAPIC_EOI_ADDRESS(%rip), %rax
    movl $0, (%rax)
    pop %rax
    iretq
host_spurious_interrupt:
    iretq

exception_common:
    push_general_registers
    mov %rsp, %rdi
    cld
    call crash_from_exception
    ud2
    .popsection

    .pushsection .rodata.traps, "a"
    .balign 8
    .global exception_stubs
exception_stubs:
    .irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exception_stub_\vector
    .endr
    .popsection
