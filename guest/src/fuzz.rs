//! # The hypercall fuzzer: a guest that asks for everything
//!
//! `test=fuzz:SEED:COUNT` makes COUNT random requests of Umbra, from a
//! generator seeded with SEED (printed first, so any run can be replayed):
//! - hypercalls with random numbers and arguments, biased to the values
//!   that break hypervisors: 0 and all-ones, the edges of guest memory,
//!   switcher addresses, the kernel boundary, misaligned pointers;
//! - writes to its own page tables, announced with SET_PTE or not, mapping
//!   random frames with random flags, then touching the address;
//! - traps it causes on purpose (`int3`, `cli`, a division by zero),
//!   which its own handlers take;
//! - garbage in the shared page and the async ring.
//!
//! The guest may well be killed: that is Umbra doing its job, and the
//! reason says why. What must never happen is a crash or a hang of the
//! host; `scripts/fuzz.sh` runs campaigns over many seeds and checks that.

use core::arch::global_asm;

use hv_core::abi;

use crate::hypercall::{hypercall, shutdown};
use crate::modes::decimal;
use crate::tables::{self, ACCESSED, DIRTY, Frames, KERNEL_BASE, PRESENT, PT, WRITABLE};

/// xorshift64*: small and replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn edgy(&mut self, memory_size: u64) -> u64 {
        let edges = [
            0,
            u64::MAX,
            memory_size,
            memory_size - 1,
            memory_size - 8,
            memory_size - 4096,
            SWITCHER,
            SWITCHER + 0x3000,
            KERNEL_BASE,
            KERNEL_BASE - 1,
            0x0000_8000_0000_0000,
            0x0000_7fff_ffff_fff8,
        ];
        match self.below(4) {
            0 => edges[self.below(edges.len() as u64) as usize],
            1 => self.below(memory_size) | self.below(8), // maybe misaligned
            2 => KERNEL_BASE + self.below(16 << 20),
            _ => self.next(),
        }
    }
}

const SWITCHER: u64 = 0xFFFF_FFFF_FFC0_0000;
/// The page-table writes stay in two scratch windows, one page table each,
/// so the fuzzer never unmaps its own code or stack.
const KERNEL_SCRATCH: u64 = 0xFFFF_A000_0000_0000;
const USER_SCRATCH: u64 = 0x0000_1000_0000_0000;

#[unsafe(no_mangle)]
static FUZZ_TRAPS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

global_asm!(
    r#"
    .pushsection .text.guest_fuzz, "ax"
    .global fuzz_trap_bp, fuzz_trap_gp, fuzz_trap_de, fuzz_trap_pf
fuzz_trap_bp:                       /* a trap: rip is already past int3 */
    lock incq FUZZ_TRAPS(%rip)
    iretq
fuzz_trap_gp:                       /* only from `cli` (fa) */
    add $8, %rsp
    lock incq FUZZ_TRAPS(%rip)
    addq $1, (%rsp)
    iretq
fuzz_trap_de:                       /* only from `div %rcx` (48 f7 f1) */
    lock incq FUZZ_TRAPS(%rip)
    addq $3, (%rsp)
    iretq
fuzz_trap_pf:                       /* only from `mov (%rax), %rcx` (48 8b 08) */
    add $8, %rsp
    lock incq FUZZ_TRAPS(%rip)
    addq $3, (%rsp)
    iretq
    .popsection
"#,
    options(att_syntax)
);

unsafe extern "C" {
    fn fuzz_trap_bp();
    fn fuzz_trap_gp();
    fn fuzz_trap_de();
    fn fuzz_trap_pf();
}

fn alias(function: unsafe extern "C" fn()) -> u64 {
    KERNEL_BASE + function as usize as u64
}

/// Does CPUID name KVM as the hypervisor we (and Umbra) run on?
fn under_kvm() -> bool {
    let leaf = core::arch::x86_64::__cpuid(0x4000_0000);
    [leaf.ebx, leaf.ecx, leaf.edx] == [0x4b4d_564b, 0x564b_4d56, 0x0000_004d]
}

/// `SEED:COUNT`, both decimal.
fn parse(spec: &[u8]) -> Option<(u64, u64)> {
    let colon = spec.iter().position(|&b| b == b':')?;
    Some((decimal(&spec[..colon])?, decimal(&spec[colon + 1..])?))
}

/// `test=fuzz:SEED:COUNT`.
pub fn run(spec: &[u8], memory_size: u64, frames: Frames) -> ! {
    let Some((seed, count)) = parse(spec) else {
        say!("fuzz: expected test=fuzz:SEED:COUNT");
        shutdown(97, "bad fuzz spec")
    };
    say!("fuzz seed {seed} count {count}");
    let mut space = tables::build_and_switch(memory_size, frames);
    for (vector, handler) in [
        (3, fuzz_trap_bp as unsafe extern "C" fn()),
        (13, fuzz_trap_gp),
        (0, fuzz_trap_de),
        (14, fuzz_trap_pf),
    ] {
        // SAFETY: our own handlers, in the kernel half.
        unsafe { hypercall(abi::LOAD_IDT_ENTRY, vector, alias(handler), abi::IDT_PRESENT, 0, 0) };
    }
    // On a nested KVM like this project's test machines, `int3` at ring 1
    // dies in the outer hypervisor's instruction emulator and takes the
    // whole VM with it, before Umbra sees anything: no hypervisor below
    // could stop that, so the fuzzer leaves it out there and says so.
    let int3 = !under_kvm();
    if !int3 {
        say!("fuzz: int3 left out: it kills the VM under a nested KVM");
    }
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    for _ in 0..count {
        match rng.below(10) {
            0..=4 => random_call(&mut rng, memory_size),
            5..=7 => {
                let window = if rng.below(2) == 0 { KERNEL_SCRATCH } else { USER_SCRATCH };
                let va = window + rng.below(512) * 4096;
                let frame = if rng.below(4) == 0 {
                    rng.edgy(memory_size)
                } else {
                    rng.below(memory_size / 4096) * 4096
                };
                let flags = [
                    PRESENT | WRITABLE | ACCESSED | DIRTY,
                    PRESENT,
                    0,
                    rng.next() & 0xfff,
                    1 << 63 | PRESENT,
                ];
                let pte = (frame & 0x000f_ffff_ffff_f000) | flags[rng.below(flags.len() as u64) as usize];
                space.set(va, PT, pte);
                if rng.below(2) == 0 {
                    // SAFETY: announcing our own write.
                    unsafe { hypercall(abi::SET_PTE, space.root, va, pte, 0, 0) };
                }
                if rng.below(2) == 0 {
                    // SAFETY: the address may fault; our #PF handler steps
                    // over this 3-byte load, whatever the mapping says.
                    unsafe { core::arch::asm!(".byte 0x48, 0x8b, 0x08", in("rax") va, out("rcx") _) };
                }
            }
            8 => match rng.below(3) {
                // SAFETY: each traps to a handler of ours that resumes us.
                0 if int3 => unsafe { core::arch::asm!("int3") },
                0 => {}
                // SAFETY: as above.
                1 => unsafe { core::arch::asm!(".byte 0xfa") },
                // SAFETY: as above.
                _ => unsafe {
                    core::arch::asm!(".byte 0x48, 0xf7, 0xf1", in("rcx") 0u64, inout("rax") 1u64 => _, inout("rdx") 0u64 => _)
                },
            },
            _ => scribble_shared_page(&mut rng, memory_size),
        }
    }
    say!(
        "fuzz: {count} operations, {} traps taken, not killed",
        FUZZ_TRAPS.load(core::sync::atomic::Ordering::Relaxed)
    );
    shutdown(0, "fuzz done")
}

/// Any call but the ones that end the run for sure: a second INIT,
/// SHUTDOWN, and HALT (with no clock armed, a kill of its own).
fn random_call(rng: &mut Rng, memory_size: u64) {
    let number = match rng.below(20) {
        0 => rng.edgy(memory_size),
        _ => loop {
            let number = rng.below(abi::CALL_COUNT);
            if !matches!(number, abi::INIT | abi::SHUTDOWN | abi::HALT) {
                break number;
            }
        },
    };
    // Mostly plausible arguments, so a run lives long enough to reach
    // deeper states; an edge value one time in four.
    let args = [0; 5].map(|_: u64| match rng.below(4) {
        0 => rng.edgy(memory_size),
        1 => rng.below(64),
        _ => KERNEL_BASE + rng.below(16 << 20) / 8 * 8,
    });
    // SAFETY: a request to Umbra, which must check every argument.
    unsafe { hypercall(number, args[0], args[1], args[2], args[3], args[4]) };
}

/// Garbage where Umbra reads: pending bits, the clock, the async ring.
fn scribble_shared_page(rng: &mut Rng, memory_size: u64) {
    let page = crate::hypercall::shared_page_address();
    let word = 8 + rng.below(4096 / 8 - 1) * 8;
    let value = if rng.below(3) == 0 { 1 } else { rng.edgy(memory_size) };
    // SAFETY: our own shared page, which Umbra reads as untrusted.
    unsafe { ((page + word) as *mut u64).write_volatile(value) };
}
