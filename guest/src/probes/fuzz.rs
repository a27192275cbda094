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
//!
//! Umbra is strict, so such a run is usually killed within a few dozen
//! requests. Two optional parts of the spec serve long campaigns, where
//! thousands of guests run one after another in one boot:
//! - `fuzz:SEED:COUNT:H` makes only one request in H (on average) one of
//!   the hostile kind above; the others are *calm*: random requests that a
//!   correct guest may make, with random arguments inside the rules (edge
//!   values included where the rules allow them: a zero-length write from
//!   any pointer, a non-present IDT entry with any handler, the last frame
//!   of memory, the longest clock delay). A guest then lives about H times
//!   longer and reaches deeper host state before a hostile request ends it.
//!   H = 1, the default, is the plain fuzzer, request for request.
//! - `fuzz:BASE+INDEX:COUNT...`: the seed is BASE + INDEX. Umbra writes
//!   each guest's number for `{n}` in its command line, so one line
//!   (`test=fuzz:5000+{n}:...`) gives every guest its own seed. The guest
//!   prints the sum, and `test=fuzz:SUM:COUNT:H` alone replays the run.

use core::arch::global_asm;

use umbra_abi as abi;
use umbra_abi::rng::Rng;

use super::traps::{alias, handler_statics, load_idt_entry};
use super::{STATE_PAGE, SWITCHER_BASE};
use crate::cmdline::decimal;
use crate::platform::hypercall::{hypercall, shutdown};
use crate::probes::tables::{
    self, ACCESSED, AddressSpace, DIRTY, Frames, KERNEL_ALIAS_SIZE, KERNEL_BASE, PRESENT, PT, WRITABLE,
};

/// A value biased to the edges that break hypervisors.
fn edgy(rng: &mut Rng, memory_size: u64) -> u64 {
    let edges = [
        0,
        u64::MAX,
        memory_size,
        memory_size - 1,
        memory_size - 8,
        memory_size - 4096,
        SWITCHER_BASE,
        STATE_PAGE,
        KERNEL_BASE,
        KERNEL_BASE - 1,
        0x0000_8000_0000_0000,
        0x0000_7fff_ffff_fff8,
    ];
    match rng.below(4) {
        0 => rng.pick(&edges),
        1 => rng.below(memory_size) | rng.below(8), // maybe misaligned
        2 => KERNEL_BASE + rng.below(16 << 20),
        _ => rng.next_u64(),
    }
}

/// The page-table writes stay in two scratch windows, one page table each,
/// so the fuzzer never unmaps its own code or stack.
const KERNEL_SCRATCH: u64 = 0xFFFF_A000_0000_0000;
const USER_SCRATCH: u64 = 0x0000_1000_0000_0000;

handler_statics! {
    FUZZ_TRAPS = 0;
}

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

/// Does CPUID name KVM as the hypervisor we (and Umbra) run on?
fn under_kvm() -> bool {
    let leaf = core::arch::x86_64::__cpuid(0x4000_0000);
    [leaf.ebx, leaf.ecx, leaf.edx] == [0x4b4d_564b, 0x564b_4d56, 0x0000_004d]
}

/// What `test=fuzz:...` asks for.
struct Spec {
    seed: u64,
    count: u64,
    /// One request in `hostile` is of the hostile kind.
    hostile: u64,
}

/// `SEED:COUNT` or `SEED:COUNT:H`, all decimal; SEED may be `BASE+INDEX`.
fn parse(spec: &[u8]) -> Option<Spec> {
    let mut fields = spec.split(|&b| b == b':');
    let seed_field = fields.next()?;
    let seed = match seed_field.iter().position(|&b| b == b'+') {
        Some(plus) => decimal(&seed_field[..plus])?.checked_add(decimal(&seed_field[plus + 1..])?)?,
        None => decimal(seed_field)?,
    };
    let count = decimal(fields.next()?)?;
    let hostile = match fields.next() {
        Some(field) => decimal(field).filter(|&h| h >= 1)?,
        None => 1,
    };
    fields.next().is_none().then_some(Spec { seed, count, hostile })
}

/// `test=fuzz:SEED:COUNT[:H]`.
pub fn run(spec: &[u8], memory_size: u64, frames: Frames) -> ! {
    let Some(Spec { seed, count, hostile }) = parse(spec) else {
        say!("fuzz: expected test=fuzz:SEED:COUNT or test=fuzz:SEED:COUNT:H (SEED may be BASE+INDEX)");
        shutdown(97, "bad fuzz spec")
    };
    if hostile == 1 {
        say!("fuzz seed {seed} count {count}");
    } else {
        say!(
            "fuzz seed {seed} count {count} hostile 1 in {hostile} (replay: test=fuzz:{seed}:{count}:{hostile})"
        );
    }
    let mut space = tables::build_and_switch(memory_size, frames);
    for (vector, handler) in HANDLERS {
        load_idt_entry(vector, alias(handler), abi::IDT_PRESENT);
    }
    // On a nested KVM like this project's test machines, `int3` at ring 1
    // dies in the outer hypervisor's instruction emulator and takes the
    // whole VM with it, before Umbra sees anything: no hypervisor below
    // could stop that, so the fuzzer leaves it out there and says so.
    let int3 = !under_kvm();
    if !int3 {
        say!("fuzz: int3 left out: it kills the VM under a nested KVM");
    }
    let mut rng = Rng::seeded(seed);
    let mut ring = Ring { next: 0 };
    for _ in 0..count {
        // With H = 1 no number is drawn here, so the plain fuzzer's runs
        // stay what they always were, seed for seed.
        if hostile == 1 || rng.below(hostile) == 0 {
            hostile_request(&mut rng, memory_size, &mut space, int3);
        } else {
            calm_request(&mut rng, memory_size, &mut space, &mut ring, int3);
        }
    }
    say!(
        "fuzz: {count} operations, {} traps taken, not killed",
        FUZZ_TRAPS.load(core::sync::atomic::Ordering::Relaxed)
    );
    shutdown(0, "fuzz done")
}

/// Our trap handlers, by vector.
const HANDLERS: [(u64, unsafe extern "C" fn()); 4] =
    [(3, fuzz_trap_bp), (13, fuzz_trap_gp), (0, fuzz_trap_de), (14, fuzz_trap_pf)];

/// One request of the plain fuzzer: anything, biased to edge values.
fn hostile_request(rng: &mut Rng, memory_size: u64, space: &mut AddressSpace, int3: bool) {
    match rng.below(10) {
        0..=4 => random_call(rng, memory_size),
        5..=7 => {
            let window = if rng.below(2) == 0 { KERNEL_SCRATCH } else { USER_SCRATCH };
            let va = window + rng.below(512) * 4096;
            let frame =
                if rng.below(4) == 0 { edgy(rng, memory_size) } else { rng.below(memory_size / 4096) * 4096 };
            let flags = [
                PRESENT | WRITABLE | ACCESSED | DIRTY,
                PRESENT,
                0,
                rng.next_u64() & 0xfff,
                1 << 63 | PRESENT,
            ];
            let pte = (frame & 0x000f_ffff_ffff_f000) | flags[rng.below(flags.len() as u64) as usize];
            space.set(va, PT, pte);
            if rng.below(2) == 0 {
                // SAFETY: announcing our own write.
                unsafe { hypercall(abi::SET_PTE, space.root, va, pte, 0, 0) };
            }
            if rng.below(2) == 0 {
                touch(va);
            }
        }
        8 => random_trap(rng, int3),
        _ => scribble_shared_page(rng, memory_size),
    }
}

/// Reads `va`. It may fault: our #PF handler steps over the 3-byte load,
/// whatever the mapping says. `va` must be canonical (a #GP would land in
/// the handler meant for `cli`).
fn touch(va: u64) {
    // SAFETY: as above; the load changes nothing but rcx.
    unsafe { core::arch::asm!(".byte 0x48, 0x8b, 0x08", in("rax") va, out("rcx") _) };
}

/// A trap our own handlers take and return from.
fn random_trap(rng: &mut Rng, int3: bool) {
    match rng.below(3) {
        // SAFETY: each traps to a handler of ours that resumes us.
        0 if int3 => unsafe { core::arch::asm!("int3") },
        0 => {}
        // SAFETY: as above.
        1 => unsafe { core::arch::asm!(".byte 0xfa") },
        // SAFETY: as above.
        _ => unsafe {
            core::arch::asm!(".byte 0x48, 0xf7, 0xf1", in("rcx") 0u64, inout("rax") 1u64 => _, inout("rdx") 0u64 => _)
        },
    }
}

/// Our own writer of the async ring, apart from the platform's
/// (`platform/hypercall.rs`): hostile scribbles may have left slots that
/// Umbra never drains, and a calm request must not wait for them; it
/// skips a busy slot instead.
struct Ring {
    next: usize,
}

impl Ring {
    fn queue(&mut self, number: u64, args: [u64; 5]) {
        let page = crate::platform::hypercall::shared_page();
        let index = self.next;
        self.next = (index + 1) % abi::ASYNC_SLOTS;
        // SAFETY: an in-bounds slot of our own shared page; volatile
        // because Umbra reads it behind the compiler's back, and `ready`
        // goes last so Umbra never sees half a slot.
        unsafe {
            let slot = &raw mut (*page).async_ring[index];
            if (&raw const (*slot).ready).read_volatile() != 0 {
                return;
            }
            (&raw mut (*slot).number).write_volatile(number);
            (&raw mut (*slot).args).write_volatile(args);
            core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
            (&raw mut (*slot).ready).write_volatile(1);
        }
    }
}

/// A canonical address where an invalidation or a read is harmless: the
/// scratch windows, the identity map, the kernel alias, the edges of the
/// two halves, the page just below the switcher.
fn calm_address(rng: &mut Rng, memory_size: u64) -> u64 {
    match rng.below(6) {
        0 => KERNEL_SCRATCH + rng.below(512 * 4096),
        1 => USER_SCRATCH + rng.below(512 * 4096),
        2 => rng.below(memory_size),
        3 => KERNEL_BASE + rng.below(memory_size.min(KERNEL_ALIAS_SIZE)),
        4 => [0, 0x0000_7fff_ffff_f000, KERNEL_BASE, SWITCHER_BASE - 4096][rng.below(4) as usize],
        _ => rng.below(0x0000_8000_0000_0000),
    }
}

/// A calm request: inside the ABI's rules, about our own tables, handlers
/// and memory. Its result does not matter.
fn calm_call(number: u64, a: u64, b: u64, c: u64, d: u64, e: u64) {
    // SAFETY: a request of Umbra that asks nothing of our own state that
    // could break us (the callers keep to the rules), and Umbra checks
    // every argument anyway.
    unsafe { hypercall(number, a, b, c, d, e) };
}

/// One request a correct guest may make, with random arguments inside the
/// rules; where the rules leave an argument free (ignored, or unchecked
/// because a length is zero or an entry not present), an edge value.
fn calm_request(rng: &mut Rng, memory_size: u64, space: &mut AddressSpace, ring: &mut Ring, int3: bool) {
    let edgy = |rng: &mut Rng| edgy(rng, memory_size);
    match rng.below(16) {
        0..=4 => {
            let window = if rng.below(2) == 0 { KERNEL_SCRATCH } else { USER_SCRATCH };
            let page = [0, 511, rng.below(512)][rng.below(3) as usize];
            let va = window + page * 4096;
            let frame = match rng.below(4) {
                0 => [0, memory_size - 4096][rng.below(2) as usize],
                _ => rng.below(memory_size / 4096) * 4096,
            };
            // Any low flag bits, and the bits above the address that the
            // CPU ignores (or reads as no-execute): none is reserved.
            let flags = match rng.below(3) {
                0 => PRESENT | WRITABLE | ACCESSED | DIRTY,
                1 => rng.next_u64() & 0xfff,
                _ => rng.next_u64() & 0xfff0_0000_0000_0fff,
            };
            let pte = frame | flags;
            space.set(va, PT, pte);
            match rng.below(4) {
                0 => {}
                1 => ring.queue(abi::SET_PTE, [space.root, va, pte, edgy(rng), edgy(rng)]),
                _ => calm_call(abi::SET_PTE, space.root, va, pte, edgy(rng), edgy(rng)),
            };
            if rng.below(2) == 0 {
                touch(va);
            }
        }
        5 if rng.below(2) == 0 => {
            calm_call(abi::NEW_PGTABLE, space.root, edgy(rng), edgy(rng), edgy(rng), edgy(rng))
        }
        // The same switch, and a kernel stack, in one call.
        5 => {
            let (top, len) = calm_stack(rng, memory_size);
            calm_call(abi::SWITCH_CONTEXT, space.root, top, len, edgy(rng), edgy(rng))
        }
        6 => {
            let number = [abi::SET_PMD, abi::SET_PUD, abi::SET_PGD][rng.below(3) as usize];
            let va = calm_address(rng, memory_size);
            if rng.below(3) == 0 {
                ring.queue(number, [space.root, va, edgy(rng), edgy(rng), edgy(rng)]);
            } else {
                calm_call(number, space.root, va, edgy(rng), edgy(rng), edgy(rng));
            }
        }
        7 => {
            let all = [0, 1, edgy(rng)][rng.below(3) as usize];
            if rng.below(3) == 0 {
                ring.queue(abi::FLUSH_TLB, [all, edgy(rng), edgy(rng), edgy(rng), edgy(rng)]);
            } else {
                calm_call(abi::FLUSH_TLB, all, edgy(rng), edgy(rng), edgy(rng), edgy(rng));
            }
        }
        8 => {
            let number = [abi::FLUSH_ASYNC, abi::SEND_INTERRUPTS][rng.below(2) as usize];
            calm_call(number, edgy(rng), edgy(rng), edgy(rng), edgy(rng), edgy(rng));
        }
        9 => {
            if rng.below(2) == 0 {
                // One of ours again, as an interrupt or a trap gate.
                let (vector, handler) = HANDLERS[rng.below(HANDLERS.len() as u64) as usize];
                let mut flags = abi::IDT_PRESENT | [0, abi::IDT_TRAP_GATE][rng.below(2) as usize];
                if vector == 3 && rng.below(2) == 0 {
                    flags |= abi::IDT_USER;
                }
                calm_call(abi::LOAD_IDT_ENTRY, vector, alias(handler), flags, edgy(rng), edgy(rng));
            } else {
                // A vector we leave alone, made not present: its handler
                // is not looked at, so any value will do.
                let vector = loop {
                    let vector = rng.below(256);
                    if !matches!(vector, 0 | 3 | 6 | 13 | 14) {
                        break vector;
                    }
                };
                let flags = [0, abi::IDT_TRAP_GATE, abi::IDT_USER][rng.below(3) as usize];
                calm_call(abi::LOAD_IDT_ENTRY, vector, edgy(rng), flags, edgy(rng), edgy(rng));
            }
        }
        10 if rng.below(3) != 0 => {
            let (top, len) = calm_stack(rng, memory_size);
            calm_call(abi::SET_STACK, top, len, edgy(rng), edgy(rng), edgy(rng));
        }
        // A syscall entry of ours (nothing here runs `syscall`), or none.
        10 => {
            let handler = HANDLERS[rng.below(HANDLERS.len() as u64) as usize].1;
            let entry = [alias(handler), 0][rng.below(2) as usize];
            calm_call(abi::SET_SYSCALL_ENTRY, entry, edgy(rng), edgy(rng), edgy(rng), edgy(rng));
        }
        11 => {
            // Cancelled, or so far off that it never fires in a run.
            let delta =
                [0, u64::MAX, abi::CLOCK_DELTA_MAX_NS, abi::CLOCK_DELTA_MAX_NS / 2 + rng.below(1 << 40)]
                    [rng.below(4) as usize];
            calm_call(abi::SET_CLOCKEVENT, delta, edgy(rng), edgy(rng), edgy(rng), edgy(rng));
        }
        12 => {
            let buffer = edgy(rng);
            if rng.below(3) == 0 {
                ring.queue(abi::CONSOLE_WRITE, [buffer, 0, edgy(rng), edgy(rng), edgy(rng)]);
            } else {
                calm_call(abi::CONSOLE_WRITE, buffer, 0, edgy(rng), edgy(rng), edgy(rng));
            }
        }
        13 => random_trap(rng, int3),
        _ => touch(calm_address(rng, memory_size)),
    }
}

/// A kernel stack anywhere in the kernel alias, as SET_STACK takes it.
fn calm_stack(rng: &mut Rng, memory_size: u64) -> (u64, u64) {
    let len = (1 + rng.below(abi::KERNEL_STACK_MAX / 4096)) * 4096;
    let alias_end = memory_size.min(KERNEL_ALIAS_SIZE);
    let top = KERNEL_BASE + len + rng.below((alias_end - len) / 4096 + 1) * 4096;
    (top, len)
}

/// Any call but the ones that end the run for sure: a second INIT,
/// SHUTDOWN, and HALT (with no clock armed, a kill of its own).
fn random_call(rng: &mut Rng, memory_size: u64) {
    let number = match rng.below(20) {
        0 => edgy(rng, memory_size),
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
        0 => edgy(rng, memory_size),
        1 => rng.below(64),
        _ => KERNEL_BASE + rng.below(16 << 20) / 8 * 8,
    });
    // SAFETY: a request to Umbra, which must check every argument.
    unsafe { hypercall(number, args[0], args[1], args[2], args[3], args[4]) };
}

/// Garbage where Umbra reads: pending bits, the clock, the async ring.
fn scribble_shared_page(rng: &mut Rng, memory_size: u64) {
    let page = crate::platform::hypercall::shared_page_address();
    let word = 8 + rng.below(4096 / 8 - 1) * 8;
    let value = if rng.below(3) == 0 { 1 } else { edgy(rng, memory_size) };
    // SAFETY: our own shared page, which Umbra reads as untrusted.
    unsafe { ((page + word) as *mut u64).write_volatile(value) };
}
