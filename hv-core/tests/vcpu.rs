//! The exit dispatcher, driven the way the switcher drives it: set up the
//! registers as a trap would leave them, call `handle_exit`, and look at
//! what comes back and what the guest's registers and memory now hold.
//! Guest memory and the shadow frame pool are simulated in plain vectors.

mod common;

use common::{Console, MEMORY, Pool, Ram};
use hv_core::vcpu::{self, Kill, Next, Vcpu};
use paging::{GuestMemory, KillReason, ShadowMmu};
use switcher_asm::layout::{GuestRegs, STATE_PAGE, SWITCHER_BASE};
use umbra_abi::{self as abi, SharedPage};

const SHARED: u64 = 0x10_0000;
const ENTRY: u64 = 0x20_0000;

fn new_vcpu() -> Vcpu<Ram, Pool> {
    let mut ram = Ram { bytes: vec![0; MEMORY as usize] };
    // The hypercall instruction, where every simulated call is made.
    ram.bytes[ENTRY as usize..ENTRY as usize + 2].copy_from_slice(&abi::HYPERCALL_INSTRUCTION);
    Vcpu::new(ShadowMmu::new(ram, Pool::default()).expect("mmu"))
}

/// Registers as the switcher leaves them after `ud2` at ring 1.
fn hypercall_regs(number: u64, args: [u64; 5]) -> GuestRegs {
    let mut regs = vcpu::initial_regs(ENTRY, MEMORY - 4096);
    regs.vector = 6;
    regs.rax = number;
    regs.rdi = args[0];
    regs.rsi = args[1];
    regs.rdx = args[2];
    regs.r10 = args[3];
    regs.r8 = args[4];
    regs
}

fn call(vcpu: &mut Vcpu<Ram, Pool>, console: &mut Console, number: u64, args: [u64; 5]) -> (Next, GuestRegs) {
    let mut regs = hypercall_regs(number, args);
    let next = vcpu.handle_exit(&mut regs, 0, console);
    (next, regs)
}

fn initialised() -> (Vcpu<Ram, Pool>, Console) {
    let mut vcpu = new_vcpu();
    let mut console = Console::default();
    let (next, regs) = call(&mut vcpu, &mut console, abi::INIT, [SHARED, 0, 0, 0, 0]);
    assert_eq!(next, Next::Resume);
    assert_eq!(regs.rax, abi::RESULT_OK);
    (vcpu, console)
}

fn kill_of(next: Next) -> Kill {
    match next {
        Next::Kill(kill) => kill,
        other => panic!("expected a kill, got {other:?}"),
    }
}

#[test]
fn init_must_come_first() {
    let mut vcpu = new_vcpu();
    let (next, _) = call(&mut vcpu, &mut Console::default(), abi::CONSOLE_WRITE, [0x1000, 4, 0, 0, 0]);
    assert_eq!(kill_of(next), Kill::FirstCallNotInit { number: abi::CONSOLE_WRITE });
    assert_eq!(kill_of(next).to_string(), "first hypercall was CONSOLE_WRITE (0x2), not INIT");
}

#[test]
fn init_fills_the_shared_page_and_steps_over_ud2() {
    let mut vcpu = new_vcpu();
    let (next, regs) = call(&mut vcpu, &mut Console::default(), abi::INIT, [SHARED, 0, 0, 0, 0]);
    assert_eq!(next, Next::Resume);
    assert_eq!(regs.rip, ENTRY + 2);
    let version = vcpu.memory().read_u64(SHARED).unwrap() as u32;
    assert_eq!(version, abi::ABI_VERSION);
    let tsc = vcpu.memory().read_u64(SHARED + std::mem::offset_of!(SharedPage, tsc_khz) as u64).unwrap();
    assert_eq!(tsc, 2_600_000);
}

#[test]
fn init_rejects_bad_pages_and_a_second_init() {
    let mut vcpu = new_vcpu();
    let (next, _) = call(&mut vcpu, &mut Console::default(), abi::INIT, [SHARED + 8, 0, 0, 0, 0]);
    assert_eq!(kill_of(next), Kill::BadSharedPage { addr: SHARED + 8 });
    let (next, _) = call(&mut vcpu, &mut Console::default(), abi::INIT, [MEMORY, 0, 0, 0, 0]);
    assert_eq!(kill_of(next), Kill::BadSharedPage { addr: MEMORY });
    let (next, _) = call(&mut vcpu, &mut Console::default(), abi::INIT, [SWITCHER_BASE, 0, 0, 0, 0]);
    assert_eq!(kill_of(next), Kill::Paging(KillReason::SwitcherTranslate));

    let (mut vcpu, mut console) = initialised();
    let (next, _) = call(&mut vcpu, &mut console, abi::INIT, [SHARED, 0, 0, 0, 0]);
    assert_eq!(kill_of(next), Kill::InitTwice);
}

#[test]
fn console_write_prints_and_checks_its_buffer() {
    let (mut vcpu, mut console) = initialised();
    vcpu::GuestRam::write_bytes(vcpu.memory_mut(), 0x3000, b"hello");
    let (next, regs) = call(&mut vcpu, &mut console, abi::CONSOLE_WRITE, [0x3000, 5, 0, 0, 0]);
    assert_eq!(next, Next::Resume);
    assert_eq!(regs.rax, 5);
    assert_eq!(console.printed, b"hello");

    let outside = 0x7000_0000_0000;
    let (next, _) = call(&mut vcpu, &mut console, abi::CONSOLE_WRITE, [outside, 16, 0, 0, 0]);
    assert_eq!(kill_of(next), Kill::BadPointer { call: abi::CONSOLE_WRITE, addr: outside, len: 16 });
    // A buffer that starts inside memory and runs past its end.
    let (next, _) = call(&mut vcpu, &mut console, abi::CONSOLE_WRITE, [MEMORY - 2, 4, 0, 0, 0]);
    assert!(matches!(kill_of(next), Kill::BadPointer { .. }));
    let (next, _) = call(&mut vcpu, &mut console, abi::CONSOLE_WRITE, [u64::MAX - 1, 4, 0, 0, 0]);
    assert!(matches!(kill_of(next), Kill::BadPointer { .. } | Kill::Paging(_)));
    let (next, _) = call(&mut vcpu, &mut console, abi::CONSOLE_WRITE, [0x3000, u64::MAX, 0, 0, 0]);
    assert_eq!(kill_of(next), Kill::TooLong { call: abi::CONSOLE_WRITE, len: u64::MAX, max: 4096 });
}

#[test]
fn unknown_calls_kill() {
    for number in [abi::CALL_COUNT, 0xdead, u64::MAX] {
        let (mut vcpu, mut console) = initialised();
        let (next, _) = call(&mut vcpu, &mut console, number, [0; 5]);
        assert_eq!(kill_of(next), Kill::UnknownHypercall { number });
    }
}

#[test]
fn send_interrupts_is_only_a_chance_to_deliver() {
    let (mut vcpu, mut console) = initialised();
    let (next, regs) = call(&mut vcpu, &mut console, abi::SEND_INTERRUPTS, [0; 5]);
    assert_eq!(next, Next::Resume);
    assert_eq!(regs.rax, abi::RESULT_OK);
}

#[test]
fn shutdown_passes_its_status_and_prints_its_message() {
    let (mut vcpu, mut console) = initialised();
    vcpu::GuestRam::write_bytes(vcpu.memory_mut(), 0x3000, b"bye");
    let (next, _) = call(&mut vcpu, &mut console, abi::SHUTDOWN, [7, 0x3000, 3, 0, 0]);
    assert_eq!(next, Next::Shutdown { status: 7 });
    assert_eq!(console.printed, b"guest shutdown: bye\n");
    let (next, _) = call(&mut vcpu, &mut console, abi::SHUTDOWN, [0, 0x3000, 1000, 0, 0]);
    assert!(matches!(kill_of(next), Kill::TooLong { .. }));
}

#[test]
fn a_ud2_from_user_mode_is_not_a_hypercall() {
    let (mut vcpu, mut console) = initialised();
    let mut regs = hypercall_regs(abi::CONSOLE_WRITE, [0x3000, 1, 0, 0, 0]);
    regs.cs = u64::from(abi::GUEST_USER_CS);
    let next = vcpu.handle_exit(&mut regs, 0, &mut console);
    assert_eq!(kill_of(next), Kill::NoHandler { vector: 6, error_code: 0, rip: ENTRY });
    assert!(kill_of(next).to_string().contains("invalid opcode (#UD)"));
    assert!(console.printed.is_empty());
}

#[test]
fn switcher_faults_are_told_apart() {
    let (mut vcpu, mut console) = initialised();
    let mut regs = hypercall_regs(0, [0; 5]);
    regs.vector = 14;
    regs.error_code = 0x3; // present, write
    let next = vcpu.handle_exit(&mut regs, STATE_PAGE + 0x10, &mut console);
    assert_eq!(kill_of(next), Kill::WroteSwitcherState { addr: STATE_PAGE + 0x10, rip: ENTRY });
    regs.error_code = 0x0;
    let next = vcpu.handle_exit(&mut regs, SWITCHER_BASE, &mut console);
    assert_eq!(kill_of(next), Kill::TouchedSwitcher { addr: SWITCHER_BASE, rip: ENTRY });

    regs.cs = 0x08;
    assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut console), Next::SwitcherFault);
}

#[test]
fn linear_mode_faults_are_filled_and_interrupts_resume() {
    let (mut vcpu, mut console) = initialised();
    let mut regs = hypercall_regs(0, [0; 5]);
    regs.vector = 14;
    regs.error_code = 0x10; // not present, instruction fetch
    assert_eq!(vcpu.handle_exit(&mut regs, ENTRY, &mut console), Next::Resume);
    assert!(vcpu.shadow_entry(ENTRY).is_some());

    // Beyond guest memory, even linear mode has nothing: the guest's own
    // business, which is fatal until faults are reflected.
    let next = vcpu.handle_exit(&mut regs, MEMORY + 0x1000, &mut console);
    assert!(matches!(kill_of(next), Kill::UnhandledPageFault { .. }));

    regs.vector = 0x20;
    assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut console), Next::Resume);
    regs.vector = 13;
    regs.error_code = 0;
    let next = vcpu.handle_exit(&mut regs, 0, &mut console);
    assert_eq!(
        kill_of(next).to_string(),
        format!(
            "general protection fault (#GP) (vector 13, error code 0x0) at rip {ENTRY:#x}, and the guest has no handler"
        )
    );
}

fn write_async(vcpu: &mut Vcpu<Ram, Pool>, slot: u64, number: u64, args: [u64; 5]) {
    common::queue_async(vcpu.memory_mut(), SHARED, slot, number, args);
}

#[test]
fn the_async_ring_drains_in_order_before_a_call() {
    let (mut vcpu, mut console) = initialised();
    vcpu::GuestRam::write_bytes(vcpu.memory_mut(), 0x3000, b"ab");
    write_async(&mut vcpu, 0, abi::CONSOLE_WRITE, [0x3000, 1, 0, 0, 0]);
    write_async(&mut vcpu, 1, abi::CONSOLE_WRITE, [0x3001, 1, 0, 0, 0]);
    // Slot 3 is ready but slot 2 is not: the drain stops at slot 2.
    write_async(&mut vcpu, 3, abi::CONSOLE_WRITE, [0x3000, 1, 0, 0, 0]);
    let (next, _) = call(&mut vcpu, &mut console, abi::FLUSH_ASYNC, [0; 5]);
    assert_eq!(next, Next::Resume);
    assert_eq!(console.printed, b"ab");
    assert_eq!(vcpu.stats.async_calls, 2);
    let ready = SHARED + std::mem::offset_of!(SharedPage, async_ring) as u64;
    assert_eq!(vcpu.memory().read_u64(ready), Some(0));
}

#[test]
fn the_async_ring_refuses_calls_that_cannot_be_queued() {
    let (mut vcpu, mut console) = initialised();
    write_async(&mut vcpu, 0, abi::SHUTDOWN, [0; 5]);
    let (next, _) = call(&mut vcpu, &mut console, abi::FLUSH_ASYNC, [0; 5]);
    assert_eq!(kill_of(next), Kill::BadAsyncCall { slot: 0, number: abi::SHUTDOWN });
}

#[test]
fn sanitize_never_lets_the_guest_in_at_ring_zero() {
    let mut regs =
        GuestRegs { cs: 0x08, ss: 0x10, rflags: 0x3000 | 0x4000 | 0x2_0000, ..GuestRegs::default() };
    vcpu::sanitize(&mut regs);
    assert_eq!(regs.cs, u64::from(abi::GUEST_KERNEL_CS));
    assert_eq!(regs.ss, u64::from(abi::GUEST_KERNEL_SS));
    assert_eq!(regs.rflags, 0x202, "IOPL, NT and VM cleared; IF set");

    let mut regs = GuestRegs { cs: 0x33, ss: 0x10, rflags: 0x1, ..GuestRegs::default() };
    vcpu::sanitize(&mut regs);
    assert_eq!((regs.cs, regs.ss, regs.rflags), (0x33, 0x2b, 0x203));
}

#[test]
fn an_invalid_opcode_that_is_not_ud2_is_not_a_hypercall() {
    let (mut vcpu, mut console) = initialised();
    let elsewhere = ENTRY + 0x10; // zeros there: not `ud2`
    let mut regs = hypercall_regs(abi::CONSOLE_WRITE, [0x3000, 1, 0, 0, 0]);
    regs.rip = elsewhere;
    let next = vcpu.handle_exit(&mut regs, 0, &mut console);
    assert_eq!(kill_of(next), Kill::NoHandler { vector: 6, error_code: 0, rip: elsewhere });
    assert!(console.printed.is_empty(), "nothing was called");
}

#[test]
fn statistics_count_exits_and_calls() {
    let (mut vcpu, mut console) = initialised();
    call(&mut vcpu, &mut console, abi::FLUSH_ASYNC, [0; 5]);
    call(&mut vcpu, &mut console, 0xdead, [0; 5]);
    assert_eq!(vcpu.stats.exits_by_vector[6], 3);
    assert_eq!(vcpu.stats.hypercalls[abi::INIT as usize], 1);
    assert_eq!(vcpu.stats.hypercalls[abi::FLUSH_ASYNC as usize], 1);
    assert_eq!(vcpu.stats.hypercalls[abi::CALL_COUNT as usize], 1);
}
