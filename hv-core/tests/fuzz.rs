//! A hypercall and trap fuzzer for the exit dispatcher, on the host.
//!
//! Each run is one guest life: a seeded generator throws exits at a vCPU
//! (hypercalls with random numbers and arguments, biased to edge values;
//! page faults at random addresses; random vectors from either ring;
//! garbage in the shared page and the async ring; random writes to the
//! guest's page tables) until the guest is killed or a step budget runs
//! out. After every step:
//! - nothing panicked (the test would fail);
//! - the registers the host would enter with are sane: ring 1 or 3,
//!   never 0, IOPL 0, interrupts on;
//! - a kill carries a one-line reason.
//!
//! `UMBRA_FUZZ_RUNS` sets the number of runs (default 300), and
//! `UMBRA_FUZZ_SEED` the first seed, so a failure replays from the seed it
//! prints.

mod common;

use common::{Console, MEMORY, Pool, Ram};
use hv_core::vcpu::{self, Next, Vcpu};
use paging::{GuestMemory, ShadowMmu};
use switcher_asm::layout::{GuestRegs, SWITCHER_BASE};
use umbra_abi::rng::{self, Rng};
use umbra_abi::{self as abi, SharedPage};

/// A value biased to the edges that break things.
fn edgy(rng: &mut Rng) -> u64 {
    const EDGES: [u64; 16] = [
        0,
        1,
        u64::MAX,
        u64::MAX - 7,
        MEMORY,
        MEMORY - 1,
        MEMORY - 8,
        MEMORY - 4096,
        SWITCHER_BASE,
        SWITCHER_BASE + 0x3000,
        0xFFFF_8000_0000_0000,
        0x0000_7fff_ffff_f000,
        0x0000_8000_0000_0000,
        0x1000,
        0x10_0001,
        1 << 52,
    ];
    match rng.below(4) {
        0 => rng.pick(&EDGES),
        1 => rng.below(MEMORY + 0x10000),
        2 => rng.pick(&EDGES).wrapping_add(rng.below(16)).wrapping_sub(8),
        _ => rng.next_u64(),
    }
}

/// An argument a working guest might pass: a small count, or an aligned
/// address in its memory.
fn plausible(rng: &mut Rng) -> u64 {
    match rng.below(3) {
        0 => rng.below(64),
        1 => rng.below(MEMORY / 4096) * 4096,
        _ => rng.below(MEMORY / 8) * 8,
    }
}

const SHARED: u64 = 0x10_0000;
const RIP: u64 = 0x20_0000;

fn fresh() -> Vcpu<Ram, Pool> {
    let mut ram = Ram { bytes: vec![0; MEMORY as usize] };
    ram.bytes[RIP as usize..RIP as usize + 2].copy_from_slice(&abi::HYPERCALL_INSTRUCTION);
    Vcpu::new(ShadowMmu::new(ram, Pool::default()).expect("mmu"))
}

fn exit_regs(rng: &mut Rng) -> GuestRegs {
    let mut regs = vcpu::initial_regs(RIP, MEMORY - 4096);
    let vector = match rng.below(10) {
        0..=4 => 6,
        5..=7 => 14,
        8 => 32 + rng.below(224),
        _ => [0, 1, 3, 13, 8, 18, 2, 7][rng.below(8) as usize],
    };
    regs.vector = vector;
    // Page faults mostly from the kernel, which linear mode serves.
    let user_bit = if rng.below(8) == 0 { 0 } else { 4 };
    regs.error_code = rng.below(32) & !user_bit;
    // Mostly calls that exist with plausible arguments, so a life lasts
    // long enough to reach deeper states; sometimes anything at all.
    let wild = rng.below(16) == 0;
    regs.rax = if wild { edgy(rng) } else { rng.below(abi::CALL_COUNT) };
    let argument = |rng: &mut Rng| if wild || rng.below(4) == 0 { edgy(rng) } else { plausible(rng) };
    (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8) =
        (argument(rng), argument(rng), argument(rng), argument(rng), argument(rng));
    if rng.below(25) == 0 {
        regs.cs = u64::from(abi::GUEST_USER_CS);
        regs.ss = u64::from(abi::GUEST_USER_SS);
    }
    if rng.below(20) == 0 {
        regs.rsp = edgy(rng);
    }
    if rng.below(100) == 0 {
        regs.rip = edgy(rng);
    }
    regs
}

/// Scribble somewhere the host reads: the shared page, its async ring, or
/// a random word of guest memory (page tables included).
fn scribble(vcpu: &mut Vcpu<Ram, Pool>, rng: &mut Rng) {
    let memory = vcpu.memory_mut();
    let target = match rng.below(3) {
        0 => SHARED + rng.below(std::mem::size_of::<SharedPage>() as u64 / 8) * 8,
        1 => SHARED + std::mem::offset_of!(SharedPage, async_ring) as u64 + rng.below(64 * 7) * 8,
        _ => rng.below(MEMORY / 8) * 8,
    };
    let value = if rng.below(4) == 0 { 1 } else { edgy(rng) };
    memory.write_u64(target, value);
}

fn run_once(seed: u64, steps: usize) -> (usize, bool) {
    let mut rng = Rng(seed | 1);
    let mut vcpu = fresh();
    let mut console = Console::default();
    if rng.below(8) != 0 {
        let mut regs = vcpu::initial_regs(RIP, MEMORY - 4096);
        regs.vector = 6;
        regs.rax = abi::INIT;
        regs.rdi = SHARED;
        assert_eq!(vcpu.handle_exit(&mut regs, 0, &mut console), Next::Resume, "seed {seed}: INIT");
    }
    for step in 0..steps {
        if rng.below(3) == 0 {
            scribble(&mut vcpu, &mut rng);
        }
        let mut regs = exit_regs(&mut rng);
        let cr2 = if rng.below(8) != 0 { plausible(&mut rng) } else { edgy(&mut rng) };
        let next = vcpu.handle_exit(&mut regs, cr2, &mut console);
        match next {
            Next::Kill(kill) => {
                let reason = kill.to_string();
                if std::env::var("UMBRA_FUZZ_VERBOSE").is_ok() {
                    eprintln!("seed {seed} step {step}: {reason}");
                }
                assert!(!reason.is_empty() && !reason.contains('\n'), "seed {seed} step {step}: {reason:?}");
                return (step + 1, true);
            }
            Next::Shutdown { .. } => return (step + 1, false),
            Next::SwitcherFault => {
                panic!("seed {seed} step {step}: an exit from ring 1/3 taken for the switcher's")
            }
            Next::Resume | Next::Halt => {}
        }
        if vcpu.prepare_entry(&mut regs, rng.below(1 << 40)).is_err() {
            return (step + 1, true);
        }
        vcpu::sanitize(&mut regs);
        assert!(regs.cs & 3 == 1 || regs.cs & 3 == 3, "seed {seed} step {step}: cs {:#x}", regs.cs);
        assert_eq!(regs.ss & 3, regs.cs & 3, "seed {seed} step {step}");
        assert_eq!(regs.rflags & 0x3000, 0, "seed {seed} step {step}: IOPL");
        assert_ne!(regs.rflags & 0x200, 0, "seed {seed} step {step}: IF");
    }
    (steps, false)
}

#[test]
fn random_exits_never_break_the_host() {
    let seeds = rng::seeds(300);
    let (first, runs) = (seeds.start, seeds.end - seeds.start);
    let (mut exits, mut kills) = (0, 0);
    for seed in seeds {
        let (steps, killed) = run_once(seed, 200);
        exits += steps;
        kills += usize::from(killed);
    }
    eprintln!(
        "fuzz: {runs} runs from seed {first}: {exits} exits, {kills} kills, {} exits per run",
        exits as u64 / runs.max(1)
    );
    assert!(kills > 0, "the generator never found a rule to break: it is not exploring");
}
