//! Traps and interrupts delivered to the guest's own handlers. The checks
//! read the guest's stack word by word after a delivery: the frame must be
//! exactly what the CPU would have pushed. The guest here has real 4-level
//! tables, built in its simulated memory: a kernel half with a stack, and
//! a user-accessible low 2 MiB.

mod common;

use common::{Console, MEMORY, Pool, Ram};
use hv_core::traps::HaltState;
use hv_core::vcpu::{self, Kill, Next, SwitcherChanges, Vcpu};
use paging::{GuestMemory, ShadowMmu};
use switcher_asm::layout::GuestRegs;
use umbra_abi::{self as abi, SharedPage};

const KERNEL: u64 = 0xFFFF_8000_0000_0000;
/// The kernel half maps gpa 0x100000.. at KERNEL.., 512 pages.
const KERNEL_GPA: u64 = 0x10_0000;
const HANDLER: u64 = KERNEL + 0x1000;
const KERNEL_STACK_TOP: u64 = KERNEL + 0x8000;
const SHARED: u64 = 0x30_0000;
const CR3: u64 = 0x1_0000;
const USER_RIP: u64 = 0x4_0000;

const P: u64 = 1;
const W: u64 = 2;
const U: u64 = 4;
const PS: u64 = 0x80;

fn write(vcpu: &mut Vcpu<Ram, Pool>, gpa: u64, value: u64) {
    assert!(vcpu.memory_mut().write_u64(gpa, value));
}

fn read(vcpu: &Vcpu<Ram, Pool>, gpa: u64) -> u64 {
    vcpu.memory().read_u64(gpa).unwrap()
}

/// The kernel-half stack address `va` as guest-physical.
fn kernel_gpa(va: u64) -> u64 {
    va - KERNEL + KERNEL_GPA
}

/// Where the simulated hypercalls are made: a `ud2` in the low 2 MiB,
/// which stays mapped after the guest leaves linear mode.
const CALL_RIP: u64 = 0x7000;

fn hypercall(vcpu: &mut Vcpu<Ram, Pool>, number: u64, args: [u64; 3]) -> Next {
    let mut regs = vcpu::initial_regs(CALL_RIP, MEMORY - 4096);
    regs.vector = 6;
    regs.rax = number;
    (regs.rdi, regs.rsi, regs.rdx) = (args[0], args[1], args[2]);
    vcpu.handle_exit(&mut regs, 0, &mut Console::default())
}

/// INIT, tables with a kernel half, NEW_PGTABLE: a guest past linear mode.
fn guest() -> Vcpu<Ram, Pool> {
    let mut ram = Ram { bytes: vec![0; MEMORY as usize] };
    ram.bytes[CALL_RIP as usize..CALL_RIP as usize + 2].copy_from_slice(&abi::HYPERCALL_INSTRUCTION);
    let mut vcpu = Vcpu::new(ShadowMmu::new(ram, Pool::default()).unwrap());
    assert_eq!(hypercall(&mut vcpu, abi::INIT, [SHARED, 0, 0]), Next::Resume);
    let (pdpt_low, pd_low, pdpt_high, pd_high, pt_high) = (0x1_1000, 0x1_2000, 0x1_3000, 0x1_4000, 0x1_5000);
    write(&mut vcpu, CR3, pdpt_low | P | W | U);
    write(&mut vcpu, pdpt_low, pd_low | P | W | U);
    write(&mut vcpu, pd_low, P | W | U | PS); // va 0..2 MiB, user
    write(&mut vcpu, CR3 + 256 * 8, pdpt_high | P | W);
    write(&mut vcpu, pdpt_high, pd_high | P | W);
    write(&mut vcpu, pd_high, pt_high | P | W);
    for page in 0..512 {
        write(&mut vcpu, pt_high + page * 8, (KERNEL_GPA + page * 4096) | P | W);
    }
    write(&mut vcpu, SHARED + std::mem::offset_of!(SharedPage, kernel_boundary) as u64, KERNEL);
    assert_eq!(hypercall(&mut vcpu, abi::NEW_PGTABLE, [CR3, 0, 0]), Next::Resume);
    vcpu
}

fn load(vcpu: &mut Vcpu<Ram, Pool>, vector: u64, handler: u64, flags: u64) -> Next {
    hypercall(vcpu, abi::LOAD_IDT_ENTRY, [vector, handler, flags])
}

fn set_virtual_if(vcpu: &mut Vcpu<Ram, Pool>, on: bool) {
    let word = read(vcpu, SHARED) & 0xffff_ffff;
    write(vcpu, SHARED, word | u64::from(on) << 32);
}

fn virtual_if(vcpu: &Vcpu<Ram, Pool>) -> bool {
    read(vcpu, SHARED) >> 32 != 0
}

fn kill_of(next: Next) -> Kill {
    match next {
        Next::Kill(kill) => kill,
        other => panic!("expected a kill, got {other:?}"),
    }
}

fn kernel_regs(vector: u64, error_code: u64) -> GuestRegs {
    GuestRegs {
        vector,
        error_code,
        rip: KERNEL + 0x2345,
        cs: u64::from(abi::GUEST_KERNEL_CS),
        rflags: 0x202 | 0x1,           // CF set, to see the flags travel
        rsp: KERNEL_STACK_TOP - 0x108, // 8 bytes off a 16-byte boundary
        ss: u64::from(abi::GUEST_KERNEL_SS),
        ..GuestRegs::default()
    }
}

#[test]
fn idt_entries_are_checked() {
    let mut vcpu = guest();
    let why = |next| match kill_of(next) {
        Kill::BadIdtEntry { why, .. } => why,
        other => panic!("{other:?}"),
    };
    assert_eq!(why(load(&mut vcpu, 256, HANDLER, abi::IDT_PRESENT)), "no such vector");
    let mut vcpu = guest();
    assert_eq!(why(load(&mut vcpu, 13, HANDLER, 0x80)), "unknown type bits");
    let mut vcpu = guest();
    assert_eq!(why(load(&mut vcpu, 13, 0x0000_8000_0000_0000, abi::IDT_PRESENT)), "non-canonical handler");
    let mut vcpu = guest();
    assert_eq!(why(load(&mut vcpu, 13, 0xFFFF_FFFF_FFC0_0010, abi::IDT_PRESENT)), "handler in the switcher");
    let mut vcpu = guest();
    assert_eq!(why(load(&mut vcpu, 13, 0x1000, abi::IDT_PRESENT)), "handler outside the guest kernel");
    let mut vcpu = guest();
    let user_gp = load(&mut vcpu, 13, HANDLER, abi::IDT_PRESENT | abi::IDT_USER);
    assert_eq!(why(user_gp), "user mode may not raise this vector");
    assert!(
        kill_of(user_gp).to_string().starts_with("LOAD_IDT_ENTRY: vector 13, handler 0xffff800000001000")
    );
}

#[test]
fn idt_entries_may_wait_in_the_async_ring_and_are_checked_there_too() {
    let mut vcpu = guest();
    let user_trap = abi::IDT_PRESENT | abi::IDT_TRAP_GATE | abi::IDT_USER;
    common::queue_async(vcpu.memory_mut(), SHARED, 0, abi::LOAD_IDT_ENTRY, [0x80, HANDLER, user_trap, 0, 0]);
    assert!(vcpu.direct_gate(0x80).is_none(), "nothing runs before the next call");
    assert_eq!(hypercall(&mut vcpu, abi::FLUSH_ASYNC, [0; 3]), Next::Resume);
    assert_eq!(vcpu.direct_gate(0x80).map(|gate| gate.handler), Some(HANDLER));
    assert!(vcpu.take_switcher_changes().gates, "the real IDT must learn of it");

    let mut vcpu = guest();
    let flags = abi::IDT_PRESENT | abi::IDT_USER;
    common::queue_async(vcpu.memory_mut(), SHARED, 0, abi::LOAD_IDT_ENTRY, [13, HANDLER, flags, 0, 0]);
    match kill_of(hypercall(&mut vcpu, abi::FLUSH_ASYNC, [0; 3])) {
        Kill::BadIdtEntry { why, .. } => assert_eq!(why, "user mode may not raise this vector"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_host_vector_can_become_a_direct_gate() {
    for vector in abi::HOST_VECTORS {
        let mut vcpu = guest();
        let flags = abi::IDT_PRESENT | abi::IDT_TRAP_GATE | abi::IDT_USER;
        let kill = kill_of(load(&mut vcpu, u64::from(vector), HANDLER, flags));
        assert!(
            matches!(
                kill,
                Kill::BadIdtEntry { why: "the host owns this vector; it may not be a direct gate", .. }
            ),
            "vector {vector:#x}: {kill:?}"
        );
        assert_eq!(vcpu.direct_gate(vector), None);
        // A plain entry is the guest's own virtual vector: accepted, and
        // still never routed through the real IDT.
        let mut vcpu = guest();
        assert_eq!(load(&mut vcpu, u64::from(vector), HANDLER, abi::IDT_PRESENT), Next::Resume);
        assert_eq!(vcpu.direct_gate(vector), None);
    }
    // The vector just below the host's is an ordinary guest vector.
    let mut vcpu = guest();
    let below = *abi::HOST_VECTORS.start() - 1;
    let flags = abi::IDT_PRESENT | abi::IDT_TRAP_GATE | abi::IDT_USER;
    assert_eq!(load(&mut vcpu, u64::from(below), HANDLER, flags), Next::Resume);
    assert!(vcpu.direct_gate(below).is_some());
}

#[test]
fn into_is_an_invalid_opcode_not_int_4() {
    let mut vcpu = guest();
    hypercall(&mut vcpu, abi::SET_STACK, [KERNEL_STACK_TOP, 4096, 0]);
    load(&mut vcpu, 4, HANDLER, abi::IDT_PRESENT | abi::IDT_TRAP_GATE | abi::IDT_USER);
    load(&mut vcpu, 6, HANDLER + 0x100, abi::IDT_PRESENT);
    put_bytes(&mut vcpu, USER_RIP, &[0xce, 0x90]);
    // 0xce is invalid in 64-bit mode: the CPU raises #UD.
    let mut regs = user_regs(6, 0);
    assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut Console::default()), Next::Resume);
    assert_eq!(regs.rip, HANDLER + 0x100, "the guest's #UD handler, not its #OF one");
    assert_eq!(read(&vcpu, kernel_gpa(KERNEL_STACK_TOP - 40)), USER_RIP, "a fault: rip not advanced");
    assert_eq!(vcpu.stats.emulated_software_interrupts, 0);
    assert_eq!(vcpu.stats.delivered[4], 0);
    assert_eq!(vcpu.stats.delivered[6], 1);
}

#[test]
fn int_n_at_ring_1_gets_hardware_error_code() {
    for (bytes, vector) in [([0xcd, 0x1f], 0x1f_u64), ([0xcd, 0x80], 0x80), ([0xcc, 0x90], 3)] {
        let mut vcpu = guest();
        load(&mut vcpu, 13, HANDLER, abi::IDT_PRESENT);
        let mut regs = kernel_regs(13, 0);
        put_bytes(&mut vcpu, KERNEL_GPA + 0x2345, &bytes);
        // QEMU's TCG shifts the vector by four where hardware shifts by three.
        regs.error_code = vector << 4 | 2;
        let top = (regs.rsp) & !0xf;
        assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut Console::default()), Next::Resume);
        assert_eq!(regs.rip, HANDLER);
        assert_eq!(read(&vcpu, kernel_gpa(top - 48)), vector << 3 | 2, "{bytes:x?}");
    }
    // A #GP at ring 1 that is not about the IDT keeps its own error code.
    let mut vcpu = guest();
    load(&mut vcpu, 13, HANDLER, abi::IDT_PRESENT);
    put_bytes(&mut vcpu, KERNEL_GPA + 0x2345, &[0xcd, 0x80]);
    let mut regs = kernel_regs(13, 0x10);
    let top = (regs.rsp) & !0xf;
    assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut Console::default()), Next::Resume);
    assert_eq!(read(&vcpu, kernel_gpa(top - 48)), 0x10);
}

#[test]
fn a_user_vector_becomes_a_direct_gate() {
    let mut vcpu = guest();
    assert!(!vcpu.take_switcher_changes().any());
    let flags = abi::IDT_PRESENT | abi::IDT_TRAP_GATE | abi::IDT_USER;
    assert_eq!(load(&mut vcpu, 0x80, HANDLER, flags), Next::Resume);
    assert_eq!(vcpu.direct_gate(0x80).map(|g| g.handler), Some(HANDLER));
    assert_eq!(
        vcpu.take_switcher_changes(),
        SwitcherChanges { kernel_stack: false, gates: true, syscall: false }
    );
    assert!(!vcpu.take_switcher_changes().any());
    assert_eq!(load(&mut vcpu, 0x81, HANDLER, abi::IDT_PRESENT), Next::Resume);
    assert!(vcpu.direct_gate(0x81).is_none(), "kernel-only vectors stay with the host");
    assert!(!vcpu.take_switcher_changes().any());
    // Removing a direct gate must reach the real IDT too.
    assert_eq!(load(&mut vcpu, 0x80, 0, 0), Next::Resume);
    assert!(vcpu.take_switcher_changes().gates);
}

#[test]
fn a_reflected_exception_pushes_the_cpu_frame() {
    let mut vcpu = guest();
    load(&mut vcpu, 13, HANDLER, abi::IDT_PRESENT);
    set_virtual_if(&mut vcpu, true);
    let mut regs = kernel_regs(13, 0x10);
    let before = regs;
    assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut Console::default()), Next::Resume);

    let top = before.rsp & !0xf;
    let frame: Vec<u64> = (1..=6).map(|i| read(&vcpu, kernel_gpa(top - i * 8))).collect();
    assert_eq!(frame, [before.ss, before.rsp, before.rflags, before.cs, before.rip, 0x10]);
    assert_eq!(regs.rsp, top - 48);
    assert_eq!(regs.rip, HANDLER);
    assert_eq!(regs.cs, u64::from(abi::GUEST_KERNEL_CS));
    assert!(!virtual_if(&vcpu), "an interrupt gate turns the virtual flag off");
    assert_eq!(vcpu.stats.delivered[13], 1);
}

#[test]
fn the_pushed_flags_carry_the_virtual_interrupt_flag_and_trap_gates_keep_it() {
    let mut vcpu = guest();
    load(&mut vcpu, 0, HANDLER, abi::IDT_PRESENT | abi::IDT_TRAP_GATE);
    set_virtual_if(&mut vcpu, false);
    let mut regs = kernel_regs(0, 0);
    vcpu.handle_exit(&mut regs, 0, &mut Console::default());
    let top = kernel_regs(0, 0).rsp & !0xf;
    let pushed_flags = read(&vcpu, kernel_gpa(top - 24));
    assert_eq!(pushed_flags & 0x200, 0, "virtual IF off, so IF is clear in the frame");
    assert_eq!(pushed_flags & 1, 1);
    assert_eq!(regs.rsp, top - 40, "#DE pushes no error code");

    set_virtual_if(&mut vcpu, true);
    let mut regs = kernel_regs(0, 0);
    vcpu.handle_exit(&mut regs, 0, &mut Console::default());
    assert!(virtual_if(&vcpu), "a trap gate leaves the virtual flag alone");
}

#[test]
fn a_page_fault_the_guest_owns_goes_to_its_handler_with_cr2() {
    let mut vcpu = guest();
    load(&mut vcpu, 14, HANDLER, abi::IDT_PRESENT);
    let mut regs = kernel_regs(14, 0x2);
    let unmapped = 0x0000_5000_0000_0000;
    assert_eq!(vcpu.handle_exit(&mut regs, unmapped, &mut Console::default()), Next::Resume);
    assert_eq!(regs.rip, HANDLER);
    assert_eq!(read(&vcpu, SHARED + std::mem::offset_of!(SharedPage, cr2) as u64), unmapped);
    let top = kernel_regs(14, 0).rsp & !0xf;
    assert_eq!(read(&vcpu, kernel_gpa(top - 48)), 0x2, "the error code travels");
}

#[test]
fn no_handler_and_no_writable_stack_both_kill() {
    let mut vcpu = guest();
    let mut regs = kernel_regs(0, 0);
    let kill = kill_of(vcpu.handle_exit(&mut regs, 0, &mut Console::default()));
    assert!(matches!(kill, Kill::NoHandler { vector: 0, .. }));

    load(&mut vcpu, 13, HANDLER, abi::IDT_PRESENT);
    let mut regs = kernel_regs(13, 0);
    regs.rsp = 0x0000_5000_0000_0000;
    let kill = kill_of(vcpu.handle_exit(&mut regs, 0, &mut Console::default()));
    assert_eq!(kill, Kill::DoubleFault { vector: 13, stack: 0x0000_4fff_ffff_fff8 });
    assert!(kill.to_string().starts_with("double fault while delivering general protection fault (#GP)"));
}

#[test]
fn machine_checks_and_double_faults_are_never_the_guests() {
    let mut vcpu = guest();
    for vector in [8, 10, 11, 12, 18] {
        load(&mut vcpu, vector, HANDLER, abi::IDT_PRESENT);
        let mut regs = kernel_regs(vector, 0);
        let kill = kill_of(vcpu.handle_exit(&mut regs, 0, &mut Console::default()));
        assert!(matches!(kill, Kill::UnhandledTrap { .. }), "vector {vector}: {kill:?}");
    }
}

fn user_regs(vector: u64, error_code: u64) -> GuestRegs {
    GuestRegs {
        vector,
        error_code,
        rip: USER_RIP,
        cs: u64::from(abi::GUEST_USER_CS),
        rflags: 0x202,
        rsp: 0x8_0000,
        ss: u64::from(abi::GUEST_USER_SS),
        ..GuestRegs::default()
    }
}

#[test]
fn traps_from_user_mode_need_the_kernel_stack() {
    let mut vcpu = guest();
    load(&mut vcpu, 0, HANDLER, abi::IDT_PRESENT);
    let mut regs = user_regs(0, 0);
    let kill = kill_of(vcpu.handle_exit(&mut regs, 0, &mut Console::default()));
    assert_eq!(kill, Kill::NoKernelStack { vector: 0 });

    let _ = vcpu.take_switcher_changes();
    assert_eq!(hypercall(&mut vcpu, abi::SET_STACK, [KERNEL_STACK_TOP, 8192, 0]), Next::Resume);
    assert_eq!(vcpu.kernel_stack_top(), Some(KERNEL_STACK_TOP));
    // The first stack opens the direct gates; a later one is one word.
    assert_eq!(
        vcpu.take_switcher_changes(),
        SwitcherChanges { kernel_stack: true, gates: true, syscall: false }
    );
    assert_eq!(hypercall(&mut vcpu, abi::SET_STACK, [KERNEL_STACK_TOP, 8192, 0]), Next::Resume);
    assert_eq!(
        vcpu.take_switcher_changes(),
        SwitcherChanges { kernel_stack: true, gates: false, syscall: false }
    );
    let mut regs = user_regs(0, 0);
    assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut Console::default()), Next::Resume);
    assert_eq!(regs.rsp, KERNEL_STACK_TOP - 40);
    assert_eq!(regs.cs, u64::from(abi::GUEST_KERNEL_CS), "the handler runs in the kernel");
    let pushed_cs = read(&vcpu, kernel_gpa(KERNEL_STACK_TOP - 32));
    assert_eq!(pushed_cs, u64::from(abi::GUEST_USER_CS), "the frame returns to user mode");
}

#[test]
fn set_stack_is_checked() {
    for (top, len) in [
        (KERNEL_STACK_TOP, 0),
        (KERNEL_STACK_TOP, 100),
        (KERNEL_STACK_TOP, 64 * 1024),
        (0x8000, 4096),
        (KERNEL_STACK_TOP - 16, 4096),
    ] {
        let mut vcpu = guest();
        let kill = kill_of(hypercall(&mut vcpu, abi::SET_STACK, [top, len, 0]));
        assert!(matches!(kill, Kill::BadStack { .. }), "{top:#x}+{len}: {kill:?}");
    }
    let mut vcpu = guest();
    let kill = kill_of(hypercall(&mut vcpu, abi::SET_STACK, [0xFFFF_FFFF_FFC0_2000, 4096, 0]));
    assert!(matches!(kill, Kill::BadStack { .. } | Kill::Paging(_)), "{kill:?}");
}

#[test]
fn switch_context_is_new_pgtable_and_set_stack_in_one() {
    let mut vcpu = guest();
    // A second address space with the same kernel half.
    const CR3_B: u64 = 0x1_6000;
    for index in [0, 256] {
        let entry = read(&vcpu, CR3 + index * 8);
        write(&mut vcpu, CR3_B + index * 8, entry);
    }
    let (stack_a, stack_b) = (KERNEL_STACK_TOP, KERNEL_STACK_TOP + 0x8000);
    assert_eq!(hypercall(&mut vcpu, abi::SET_STACK, [stack_a, 4096, 0]), Next::Resume);
    let _ = vcpu.take_switcher_changes();
    assert_eq!(hypercall(&mut vcpu, abi::SWITCH_CONTEXT, [CR3_B, stack_b, 8192]), Next::Resume);
    assert_eq!(vcpu.kernel_stack_top(), Some(stack_b));
    assert_eq!(
        vcpu.take_switcher_changes(),
        SwitcherChanges { kernel_stack: true, gates: false, syscall: false }
    );
    assert!(vcpu.shadow_entry(stack_b - 4096).is_some() && vcpu.shadow_entry(stack_b - 8192).is_some());
    assert_eq!(vcpu.shadow_entry(stack_a - 4096), None, "the old stack is not pinned into the new root");
    assert_eq!(vcpu.stats.hypercalls[abi::SWITCH_CONTEXT as usize], 1);
    // Back, and the first root is found again.
    assert_eq!(hypercall(&mut vcpu, abi::SWITCH_CONTEXT, [CR3, stack_a, 4096]), Next::Resume);
    assert!(vcpu.shadow_entry(stack_a - 4096).is_some());
    assert_eq!(vcpu.counters().root_hits, 1);

    // Each half is checked as its own call would be.
    let kill = kill_of(hypercall(&mut vcpu, abi::SWITCH_CONTEXT, [CR3_B, stack_b, 100]));
    assert!(matches!(kill, Kill::BadStack { .. }), "{kill:?}");
    let mut vcpu = guest();
    let kill = kill_of(hypercall(&mut vcpu, abi::SWITCH_CONTEXT, [CR3_B + 8, stack_b, 4096]));
    assert!(matches!(kill, Kill::Paging(paging::KillReason::Cr3NotAligned)), "{kill:?}");
}

#[test]
fn the_hypercall_check_of_one_address_space_is_not_another_s() {
    let mut vcpu = guest();
    // B maps the low 2 MiB, where CALL_RIP is, to other memory (2-4 MiB),
    // whose bytes at CALL_RIP are first a `ud2` and then not.
    const CR3_B: u64 = 0x1_6000;
    const PDPT_B: u64 = 0x1_7000;
    const PD_B: u64 = 0x1_8000;
    const B_LOW: u64 = 0x20_0000;
    write(&mut vcpu, CR3_B, PDPT_B | P | W | U);
    write(&mut vcpu, PDPT_B, PD_B | P | W | U);
    write(&mut vcpu, PD_B, B_LOW | P | W | U | PS);
    let high = read(&vcpu, CR3 + 256 * 8);
    write(&mut vcpu, CR3_B + 256 * 8, high);
    put_bytes(&mut vcpu, B_LOW + CALL_RIP, &abi::HYPERCALL_INSTRUCTION);
    let (stack_a, stack_b) = (KERNEL_STACK_TOP, KERNEL_STACK_TOP + 0x8000);
    let calls = |vcpu: &Vcpu<Ram, Pool>| vcpu.stats.hypercalls.iter().sum::<u64>();
    // The CPU fetches CALL_RIP in the current space: a fill, so that the
    // check has a shadow leaf to keep its answer with.
    let fetch_fault = |vcpu: &mut Vcpu<Ram, Pool>| {
        let mut regs = GuestRegs { rip: CALL_RIP, ..kernel_regs(14, 0x10) };
        assert_eq!(vcpu.handle_exit(&mut regs, CALL_RIP, &mut Console::default()), Next::Resume);
        assert!(vcpu.shadow_entry(CALL_RIP).is_some());
    };
    // Calls from each space, back and forth: each space's answer is kept.
    fetch_fault(&mut vcpu);
    for (cr3, stack) in [(CR3_B, stack_b), (CR3, stack_a), (CR3_B, stack_b), (CR3, stack_a)] {
        assert_eq!(hypercall(&mut vcpu, abi::SWITCH_CONTEXT, [cr3, stack, 4096]), Next::Resume);
        fetch_fault(&mut vcpu);
    }
    // A's answer (a `ud2` at CALL_RIP) must not serve B, where CALL_RIP
    // now holds something else: the same #UD in B is no call.
    put_bytes(&mut vcpu, B_LOW + CALL_RIP, &[0x0f, 0xff]);
    assert_eq!(hypercall(&mut vcpu, abi::SWITCH_CONTEXT, [CR3_B, stack_b, 4096]), Next::Resume);
    let before = calls(&vcpu);
    let next = hypercall(&mut vcpu, abi::FLUSH_ASYNC, [0, 0, 0]);
    assert_eq!(calls(&vcpu), before, "a #UD in B was taken for a call: {next:?}");
}

fn put_bytes(vcpu: &mut Vcpu<Ram, Pool>, gpa: u64, bytes: &[u8]) {
    assert!(vcpu::GuestRam::write_bytes(vcpu.memory_mut(), gpa, bytes));
}

#[test]
fn int_n_that_the_cpu_refused_is_delivered_by_hand() {
    let mut vcpu = guest();
    hypercall(&mut vcpu, abi::SET_STACK, [KERNEL_STACK_TOP, 4096, 0]);
    load(&mut vcpu, 0x80, HANDLER, abi::IDT_PRESENT | abi::IDT_TRAP_GATE | abi::IDT_USER);
    put_bytes(&mut vcpu, USER_RIP, &[0xcd, 0x80]);
    // As this machine's nested KVM reports it: #UD from ring 3.
    let mut regs = user_regs(6, 0);
    assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut Console::default()), Next::Resume);
    assert_eq!(regs.rip, HANDLER);
    assert_eq!(read(&vcpu, kernel_gpa(KERNEL_STACK_TOP - 40)), USER_RIP + 2, "returns after the int");
    assert_eq!(vcpu.stats.emulated_software_interrupts, 1);

    // As TCG reports a gate user mode may not use: #GP.
    let mut regs = user_regs(13, 0x80 * 8 + 2);
    assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut Console::default()), Next::Resume);
    assert_eq!(vcpu.stats.emulated_software_interrupts, 2);
}

#[test]
fn a_syscall_a_nested_kvm_ran_is_the_invalid_opcode_it_owed() {
    // EFER.SCE is clear; the KVM ran `syscall` at USER_RIP anyway: rcx is
    // the address after it, and the fetch at LSTAR (0) faulted at ring 3.
    let mut vcpu = guest();
    hypercall(&mut vcpu, abi::SET_STACK, [KERNEL_STACK_TOP, 4096, 0]);
    load(&mut vcpu, 6, HANDLER, abi::IDT_PRESENT);
    put_bytes(&mut vcpu, USER_RIP, &[0x0f, 0x05]);
    let stray =
        |rcx: u64, error_code: u64| GuestRegs { rip: 0, rcx, r11: 0x202, ..user_regs(14, error_code) };
    let mut regs = stray(USER_RIP + 2, 0x14);
    assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut Console::default()), Next::Resume);
    assert_eq!(regs.rip, HANDLER, "to the #UD handler");
    assert_eq!(read(&vcpu, kernel_gpa(KERNEL_STACK_TOP - 40)), USER_RIP, "at the syscall, as a fault");
    assert_eq!(vcpu.stats.delivered[6], 1);
    assert_eq!(vcpu.stats.stray_syscalls, 1);

    // Anything else stays a page fault, for the shadow MMU (which fills
    // it here) or the guest: other bytes before rcx, a data access, a
    // fault elsewhere.
    for (mut regs, cr2) in [
        (stray(USER_RIP + 0x12, 0x14), 0),
        (stray(USER_RIP + 2, 0x04), 0),
        (GuestRegs { rip: 0x1000, ..stray(USER_RIP + 2, 0x14) }, 0x1000),
        (stray(1, 0x14), 0),
    ] {
        put_bytes(&mut vcpu, USER_RIP + 0x10, &[0x0f, 0x0b]);
        assert_eq!(vcpu.handle_exit(&mut regs, cr2, &mut Console::default()), Next::Resume);
        assert_ne!(regs.rip, HANDLER, "not a #UD: {regs:?}");
    }
    assert_eq!(vcpu.stats.stray_syscalls, 1);
    assert_eq!(vcpu.stats.delivered[6], 1);
}

#[test]
fn the_syscall_entry_is_checked_as_a_handler() {
    for (handler, why) in [
        (0x0000_8000_0000_0000, "non-canonical handler"),
        (0xFFFF_FFFF_FFC0_1000, "handler in the switcher"),
        (0x4_0000, "handler outside the guest kernel"),
    ] {
        let mut vcpu = guest();
        let kill = kill_of(hypercall(&mut vcpu, abi::SET_SYSCALL_ENTRY, [handler, 0, 0]));
        assert_eq!(kill, Kill::BadSyscallEntry { handler, why });
    }
    let mut vcpu = guest();
    let _ = vcpu.take_switcher_changes();
    assert_eq!(hypercall(&mut vcpu, abi::SET_SYSCALL_ENTRY, [HANDLER, 0, 0]), Next::Resume);
    assert_eq!(vcpu.syscall_entry(), Some(HANDLER));
    assert!(vcpu.take_switcher_changes().syscall, "the switcher pages must learn of it");
    assert_eq!(hypercall(&mut vcpu, abi::SET_SYSCALL_ENTRY, [0, 0, 0]), Next::Resume);
    assert_eq!(vcpu.syscall_entry(), None, "0 closes the path");
}

/// The frame the direct path (or the host, in its place) leaves on the
/// kernel stack for a `syscall` at USER_RIP, and the registers the entry
/// starts with.
fn assert_syscall_delivered(vcpu: &Vcpu<Ram, Pool>, regs: &GuestRegs, user_rsp: u64, user_rflags: u64) {
    let after = USER_RIP + 2;
    assert_eq!(regs.rip, HANDLER);
    assert_eq!(regs.cs, u64::from(abi::GUEST_KERNEL_CS));
    assert_eq!(regs.ss, u64::from(abi::GUEST_KERNEL_SS));
    assert_eq!(regs.rsp, KERNEL_STACK_TOP - 40);
    assert_eq!((regs.rcx, regs.r11), (after, user_rflags), "rcx and r11 as syscall sets them");
    let frame: Vec<u64> = (0..5).map(|i| read(vcpu, kernel_gpa(KERNEL_STACK_TOP - 40 + i * 8))).collect();
    assert_eq!(
        frame,
        [after, u64::from(abi::GUEST_USER_CS), user_rflags, user_rsp, u64::from(abi::GUEST_USER_SS)],
        "RIP, CS, RFLAGS, RSP, SS"
    );
}

#[test]
fn a_syscall_the_direct_path_did_not_take_is_made_by_the_host() {
    let mut vcpu = guest();
    hypercall(&mut vcpu, abi::SET_STACK, [KERNEL_STACK_TOP, 4096, 0]);
    hypercall(&mut vcpu, abi::SET_SYSCALL_ENTRY, [HANDLER, 0, 0]);
    put_bytes(&mut vcpu, USER_RIP, &[0x0f, 0x05]);
    // This nested KVM: syscall ran at ring 3 to LSTAR, and the fetch of
    // the switcher's code there faulted.
    let lstar = switcher_asm::layout::SYSCALL_VA;
    let mut regs = GuestRegs { rip: lstar, rcx: USER_RIP + 2, r11: 0x246, ..user_regs(14, 0x15) };
    assert_eq!(vcpu.handle_exit(&mut regs, lstar, &mut Console::default()), Next::Resume);
    assert_syscall_delivered(&vcpu, &regs, 0x8_0000, 0x246);
    assert_eq!((vcpu.stats.stray_syscalls, vcpu.stats.syscalls_by_host), (1, 1));

    // A trap that interrupted the direct path at ring 0: the machine has
    // put the user's RSP back; rcx and r11 are syscall's.
    let mut regs = GuestRegs {
        rip: lstar + 0x10,
        cs: u64::from(switcher_asm::layout::SWITCHER_CS),
        rsp: 0x7_0000,
        rcx: USER_RIP + 2,
        r11: 0x202 | 0x100,
        vector: 1,
        ..GuestRegs::default()
    };
    assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut Console::default()), Next::Resume);
    assert_syscall_delivered(&vcpu, &regs, 0x7_0000, 0x302);
    assert_eq!(vcpu.stats.syscalls_by_host, 2);

    // A ring-0 exit anywhere else is still the switcher's own fault.
    let mut regs = GuestRegs { rip: lstar - 0x10, cs: 0x08, vector: 14, ..GuestRegs::default() };
    assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut Console::default()), Next::SwitcherFault);
}

#[test]
fn a_closed_direct_path_is_the_invalid_opcode_or_a_kill() {
    // An entry but no stack: the stub exits as a #UD at the syscall.
    let mut vcpu = guest();
    load(&mut vcpu, 6, HANDLER + 0x100, abi::IDT_PRESENT);
    hypercall(&mut vcpu, abi::SET_SYSCALL_ENTRY, [HANDLER, 0, 0]);
    put_bytes(&mut vcpu, USER_RIP, &[0x0f, 0x05]);
    let mut regs = user_regs(6, 0);
    assert_eq!(kill_of(vcpu.handle_exit(&mut regs, 0, &mut Console::default())), Kill::SyscallBeforeStack);

    // No entry: the #UD it always was, for the guest's own handler.
    let mut vcpu = guest();
    hypercall(&mut vcpu, abi::SET_STACK, [KERNEL_STACK_TOP, 4096, 0]);
    load(&mut vcpu, 6, HANDLER + 0x100, abi::IDT_PRESENT);
    put_bytes(&mut vcpu, USER_RIP, &[0x0f, 0x05]);
    let mut regs = user_regs(6, 0);
    assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut Console::default()), Next::Resume);
    assert_eq!(regs.rip, HANDLER + 0x100);
    assert_eq!(read(&vcpu, kernel_gpa(KERNEL_STACK_TOP - 40)), USER_RIP, "at the syscall, as a fault");
}

#[test]
fn a_syscall_whose_stack_cannot_be_written_kills_the_guest_not_the_host() {
    let mut vcpu = guest();
    // A kernel stack the tables stop mapping after SET_STACK pinned it.
    hypercall(&mut vcpu, abi::SET_STACK, [KERNEL_STACK_TOP, 4096, 0]);
    hypercall(&mut vcpu, abi::SET_SYSCALL_ENTRY, [HANDLER, 0, 0]);
    let pt_high = 0x1_5000;
    let index = (KERNEL_STACK_TOP - 4096 - KERNEL) / 4096;
    write(&mut vcpu, pt_high + index * 8, 0);
    put_bytes(&mut vcpu, USER_RIP, &[0x0f, 0x05]);
    let lstar = switcher_asm::layout::SYSCALL_VA;
    let mut regs = GuestRegs {
        rip: lstar + 0x20,
        cs: 0x08,
        rsp: 0x8_0000,
        rcx: USER_RIP + 2,
        r11: 0x202,
        vector: 14,
        ..GuestRegs::default()
    };
    let kill = kill_of(vcpu.handle_exit(&mut regs, KERNEL_STACK_TOP - 8, &mut Console::default()));
    assert_eq!(kill, Kill::SyscallStackFault { stack: KERNEL_STACK_TOP - 8 });
}

#[test]
fn int_n_on_a_kernel_only_vector_is_a_general_protection_fault() {
    let mut vcpu = guest();
    hypercall(&mut vcpu, abi::SET_STACK, [KERNEL_STACK_TOP, 4096, 0]);
    load(&mut vcpu, 0x81, HANDLER, abi::IDT_PRESENT);
    load(&mut vcpu, 13, HANDLER + 0x100, abi::IDT_PRESENT);
    put_bytes(&mut vcpu, USER_RIP, &[0xcd, 0x81]);
    let mut regs = user_regs(13, 0);
    assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut Console::default()), Next::Resume);
    assert_eq!(regs.rip, HANDLER + 0x100);
    assert_eq!(read(&vcpu, kernel_gpa(KERNEL_STACK_TOP - 48)), 0x81 << 3 | 2, "the CPU's error code");
    assert_eq!(read(&vcpu, kernel_gpa(KERNEL_STACK_TOP - 40)), USER_RIP, "a fault: rip not advanced");
}

#[test]
fn the_clock_raises_irq_0_when_due_and_it_waits_for_the_flag() {
    let mut vcpu = guest();
    load(&mut vcpu, abi::IRQ_BASE, HANDLER, abi::IDT_PRESENT);
    assert_eq!(hypercall(&mut vcpu, abi::SET_CLOCKEVENT, [1_000_000, 0, 0]), Next::Resume);
    let deadline = vcpu.next_deadline_ns().unwrap();

    let mut regs = kernel_regs(0, 0);
    set_virtual_if(&mut vcpu, false);
    vcpu.prepare_entry(&mut regs, deadline).unwrap();
    assert_eq!(regs.rip, kernel_regs(0, 0).rip, "virtual IF off: nothing delivered");
    assert_eq!(vcpu.next_deadline_ns(), None, "the one shot fired");

    // On the guest's own iretq, still nothing.
    let noirq = std::mem::offset_of!(SharedPage, noirq_iret) as u64;
    write(&mut vcpu, SHARED + noirq, regs.rip);
    set_virtual_if(&mut vcpu, true);
    vcpu.prepare_entry(&mut regs, deadline).unwrap();
    assert_ne!(regs.rip, HANDLER);

    write(&mut vcpu, SHARED + noirq, 0);
    vcpu.prepare_entry(&mut regs, deadline).unwrap();
    assert_eq!(regs.rip, HANDLER);
    assert_eq!(vcpu.stats.delivered[abi::IRQ_BASE as usize], 1);
    assert!(!virtual_if(&vcpu));
}

#[test]
fn clock_events_cancel_and_clamp() {
    let mut vcpu = guest();
    hypercall(&mut vcpu, abi::SET_CLOCKEVENT, [u64::MAX, 0, 0]);
    let far = vcpu.next_deadline_ns().unwrap();
    assert!(far <= 42 + abi::CLOCK_DELTA_MAX_NS, "clamped to an hour");
    hypercall(&mut vcpu, abi::SET_CLOCKEVENT, [0, 0, 0]);
    assert_eq!(vcpu.next_deadline_ns(), None, "0 cancels");
}

#[test]
fn halt_sleeps_until_the_clock_and_never_for_ever() {
    let mut vcpu = guest();
    load(&mut vcpu, abi::IRQ_BASE, HANDLER, abi::IDT_PRESENT);
    set_virtual_if(&mut vcpu, true);
    assert_eq!(hypercall(&mut vcpu, abi::HALT, [0; 3]), Next::Halt);
    assert_eq!(vcpu.halt_state(0, None), HaltState::Forever, "no clock armed");
    hypercall(&mut vcpu, abi::SET_CLOCKEVENT, [1000, 0, 0]);
    let deadline = vcpu.next_deadline_ns().unwrap();
    assert_eq!(vcpu.halt_state(deadline - 1, None), HaltState::SleepUntil(deadline));
    assert_eq!(vcpu.halt_state(deadline, None), HaltState::Ready);
    set_virtual_if(&mut vcpu, false);
    assert_eq!(vcpu.halt_state(deadline, None), HaltState::Forever, "virtual IF off");
}

#[test]
fn halt_turns_the_flag_on_like_sti_hlt() {
    let mut vcpu = guest();
    set_virtual_if(&mut vcpu, false);
    hypercall(&mut vcpu, abi::SET_CLOCKEVENT, [1000, 0, 0]);
    assert_eq!(hypercall(&mut vcpu, abi::HALT, [0; 3]), Next::Halt);
    assert!(virtual_if(&vcpu), "HALT enables, as `sti; hlt` does");
}

#[test]
fn a_clock_that_fired_before_the_halt_still_wakes_it() {
    let mut vcpu = guest();
    // No handler for IRQ 0: the tick stays pending, and must still count.
    hypercall(&mut vcpu, abi::SET_CLOCKEVENT, [1000, 0, 0]);
    let deadline = vcpu.next_deadline_ns().unwrap();
    let mut regs = kernel_regs(0, 0);
    vcpu.prepare_entry(&mut regs, deadline + 1).unwrap();
    assert_eq!(vcpu.next_deadline_ns(), None, "the tick fired, before the HALT");
    set_virtual_if(&mut vcpu, true);
    assert_eq!(vcpu.halt_state(deadline + 2, None), HaltState::Ready);
}
