//! # Attacks: a guest that tries to break out
//!
//! Each `test=attack:NAME` is one attempt on Umbra's isolation, run after
//! INIT. The catalogue, and the outcome each attack must produce, live in
//! `docs/security.md`; `tests/attacks.rs` boots every one of them and
//! checks it.
//!
//! An attack ends in one of three ways:
//! - Umbra kills us, naming the cause ("guest killed: ..."): the attack
//!   was on Umbra itself;
//! - our own handler receives the fault, exactly as on hardware, and we
//!   say so and shut down with status 0: the misdeed is the guest's own
//!   business (a privileged instruction at ring 1 is just a #GP);
//! - for legal but tricky things, they simply work, and we say so.
//!
//! Each attack first prints "guest: attack NAME". If an attack that should
//! have been stopped comes back, we print "guest: survived" and stop with
//! status 98, which no test expects.
//!
//! The handlers below record what reached them and return to a resume
//! point the attack names just before it faults (`faulting!`), so no
//! handler needs to know how long the faulting instruction was, and a
//! fault whose RIP is itself bad (a non-canonical jump) still comes back.

use core::sync::atomic::Ordering;

use umbra_abi as abi;

use super::tables::{
    self, ADDRESS, AddressSpace, Frames, KERNEL_BASE, PAGE_SIZE, PRESENT, PT, WRITABLE, phys,
};
use super::traps::{alias, handler_statics, load_idt_entry};
use super::{
    IDT_PAGE, REGISTERS_PAGE, STATE_PAGE, SWITCHER_BASE, SWITCHER_CODE_1, SWITCHER_PD511, SWITCHER_UNMAPPED,
    survived,
};
use crate::platform::console::Printable;
use crate::platform::hypercall::{hypercall, shutdown};

mod faults;
mod flags;
mod fsbase;
mod hypercalls;
mod paging;
mod privilege;
mod switcher;
mod syscall;
mod usermode;
mod vectors;

/// One attack: its name on the command line, and what it does.
struct Attack {
    name: &'static str,
    run: fn(&'static str, u64, Frames),
}

/// The table of a group's attacks, from their functions: each attack is
/// named after its function, with dashes for underscores (`read_cr0` runs
/// as `test=attack:read-cr0`), so a name is written once and cannot drift
/// from the code it runs.
macro_rules! attack_table {
    ($($run:ident),* $(,)?) => {
        &[$(super::Attack {
            name: {
                // Worked out while compiling, and a constant, so the name
                // lies in the image like any string literal.
                const NAME: [u8; stringify!($run).len()] = super::dashes(stringify!($run));
                match core::str::from_utf8(&NAME) {
                    Ok(name) => name,
                    Err(_) => panic!("an identifier is ASCII"),
                }
            },
            run: $run,
        }),*]
    };
}
use attack_table;

/// `identifier` with its underscores made dashes: an attack's name.
const fn dashes<const N: usize>(identifier: &str) -> [u8; N] {
    let bytes = identifier.as_bytes();
    let mut name = [0; N];
    let mut i = 0;
    while i < N {
        name[i] = if bytes[i] == b'_' { b'-' } else { bytes[i] };
        i += 1;
    }
    name
}

/// Every attack, by group. `tests/attacks.rs` holds the same names.
const ATTACKS: &[&[Attack]] = &[
    privilege::ATTACKS,
    hypercalls::ATTACKS,
    paging::ATTACKS,
    switcher::ATTACKS,
    faults::ATTACKS,
    flags::ATTACKS,
    vectors::ATTACKS,
    fsbase::ATTACKS,
    usermode::ATTACKS,
    syscall::ATTACKS,
];

/// Runs attack `name`, after INIT.
pub fn run(name: &[u8], memory_size: u64, frames: Frames) -> ! {
    let Some(attack) = ATTACKS.iter().flat_map(|group| group.iter()).find(|a| a.name.as_bytes() == name)
    else {
        say!("unknown attack {}", Printable(name));
        shutdown(97, "unknown attack")
    };
    say!("attack {}", attack.name);
    (attack.run)(attack.name, memory_size, frames);
    survived()
}

/// The attack did what a guest may do, and it worked.
fn works(name: &str, what: core::fmt::Arguments) -> ! {
    say!("attack {name}: {what}");
    shutdown(0, "attack handled")
}

handler_statics! {
    /// What the last trap told our handler. Written by the handlers
    /// below, through the kernel alias; read here.
    ATTACK_TRAPS = 0;
    ATTACK_VECTOR = u64::MAX;
    ATTACK_ERROR = u64::MAX;
    ATTACK_CS = 0;
    /// The RIP in the frame: where the trap says it struck.
    ATTACK_RIP = 0;
    /// The RFLAGS in the frame: what the CPU (or Umbra) saved of ours.
    ATTACK_RFLAGS = 0;
    /// Where a handler resumes (0: where the frame says).
    ATTACK_RESUME = 0;
    /// The kernel stack pointer to go back to after a trap from user mode.
    ATTACK_KERNEL_RSP = 0;
    /// Single-step traps and clock ticks, counted apart.
    ATTACK_STEPS = 0;
    ATTACK_TICKS = 0;
}

// One handler per exception an attack expects. Each records the vector,
// the error code (u64::MAX when the CPU pushes none), the CS it came from
// and the RFLAGS it saved, counts, and resumes at ATTACK_RESUME. A trap
// from user mode cannot `iretq` back into the attack's kernel code, so it
// abandons the trap stack and jumps there on the kernel stack the attack
// saved.
core::arch::global_asm!(
    r#"
    .pushsection .text.guest_traps, "ax"
    .macro attack_handler name, vector, error
    .global \name
\name:
    .if \error
    popq ATTACK_ERROR(%rip)
    .else
    movq $-1, ATTACK_ERROR(%rip)
    .endif
    movq $\vector, ATTACK_VECTOR(%rip)
    lock incq ATTACK_TRAPS(%rip)
    pushq %rax
    movq 24(%rsp), %rax             /* the RFLAGS the trap saved */
    movq %rax, ATTACK_RFLAGS(%rip)
    movq 8(%rsp), %rax              /* the RIP the trap saved */
    movq %rax, ATTACK_RIP(%rip)
    movq 16(%rsp), %rax             /* the CS the trap came from */
    movq %rax, ATTACK_CS(%rip)
    andl $3, %eax
    cmpl $3, %eax                   /* ring 3: from user mode */
    je 1f
    movq ATTACK_RESUME(%rip), %rax
    testq %rax, %rax
    jz 2f
    movq %rax, 8(%rsp)              /* the RIP the frame returns to */
2:  popq %rax
    iretq
1:  movq ATTACK_KERNEL_RSP(%rip), %rsp
    jmp *ATTACK_RESUME(%rip)
    .endm

    attack_handler attack_trap_de, 0, 0
    attack_handler attack_trap_of, 4, 0
    attack_handler attack_trap_ud, 6, 0
    attack_handler attack_trap_nm, 7, 0
    attack_handler attack_trap_np, 11, 1
    attack_handler attack_trap_ss, 12, 1
    attack_handler attack_trap_gp, 13, 1
    attack_handler attack_trap_pf, 14, 1
    attack_handler attack_trap_mf, 16, 0
    attack_handler attack_trap_ac, 17, 1
    attack_handler attack_trap_xm, 19, 0

    .global attack_trap_db, attack_irq, attack_noirq_iret
attack_trap_db:
    lock incq ATTACK_STEPS(%rip)
    iretq
attack_irq:
    lock incq ATTACK_TICKS(%rip)
    movl $1, GUEST_SHARED_PAGE+4(%rip)    /* irq_enabled */
attack_noirq_iret:
    iretq
    .popsection
"#,
    options(att_syntax)
);

unsafe extern "C" {
    fn attack_trap_de();
    fn attack_trap_of();
    fn attack_trap_ud();
    fn attack_trap_nm();
    fn attack_trap_np();
    fn attack_trap_ss();
    fn attack_trap_gp();
    fn attack_trap_pf();
    fn attack_trap_mf();
    fn attack_trap_ac();
    fn attack_trap_xm();
    fn attack_trap_db();
    fn attack_irq();
    fn attack_noirq_iret();
}

/// Installs the recording handler for every exception an attack may
/// expect, as trap gates (the virtual interrupt flag is left alone).
fn install_handlers() {
    let gate = abi::IDT_PRESENT | abi::IDT_TRAP_GATE;
    let handlers: [(u64, unsafe extern "C" fn()); 10] = [
        (0, attack_trap_de),
        (6, attack_trap_ud),
        (7, attack_trap_nm),
        (11, attack_trap_np),
        (12, attack_trap_ss),
        (13, attack_trap_gp),
        (14, attack_trap_pf),
        (16, attack_trap_mf),
        (17, attack_trap_ac),
        (19, attack_trap_xm),
    ];
    for (vector, handler) in handlers {
        load_idt_entry(vector, alias(handler), gate);
    }
}

fn vector_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE",
        4 => "#OF",
        6 => "#UD",
        7 => "#NM",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        19 => "#XM",
        _ => "?",
    }
}

/// After an attack that our own handler should have received: exactly
/// one trap, the expected vector. Says so and stops with status 0.
fn expect_delivered(name: &str, vector: u64) -> ! {
    let traps = ATTACK_TRAPS.load(Ordering::Relaxed);
    let got = ATTACK_VECTOR.load(Ordering::Relaxed);
    let error = ATTACK_ERROR.load(Ordering::Relaxed);
    if traps == 0 {
        survived();
    }
    if traps != 1 || got != vector {
        say!("attack {name}: expected one {}, got {traps} trap(s), the last {}", vector_name(vector), got);
        shutdown(96, "attack: wrong trap");
    }
    if error == u64::MAX {
        works(name, format_args!("{} delivered to our handler", vector_name(vector)))
    }
    works(name, format_args!("{} delivered to our handler (error {error:#x})", vector_name(vector)))
}

/// Reads `va`, which Umbra must kill us for; if that comes back, the
/// attack survived.
fn peek(va: u64) {
    // SAFETY: Umbra must kill us at this read.
    unsafe { (va as *const u64).read_volatile() };
}

/// Writes `va`, which Umbra must kill us for.
fn poke(va: u64) {
    // SAFETY: Umbra must kill us at this write.
    unsafe { (va as *mut u64).write_volatile(0x5afe) };
}

/// Runs an instruction that must fault, with the handlers resuming right
/// after it. `after` runs once we are back (to undo what the instruction
/// pushed, say); the operands are named or explicit registers.
macro_rules! faulting {
    ($instr:literal $(; then $after:literal)? $(, $($operands:tt)*)?) => {
        core::arch::asm!(
            "lea {resume_at}, [rip + 2f]",
            "mov qword ptr [rip + {resume}], {resume_at}",
            $instr,
            "2:",
            $($after,)?
            resume = sym $crate::probes::attacks::ATTACK_RESUME,
            resume_at = out(reg) _,
            $($($operands)*)?
        )
    };
}
use faulting;

/// Puts the stack pointer at `rsp`, our handlers installed, then runs
/// `cli`, whose #GP Umbra must deliver by writing a frame below `rsp`.
fn trap_with_stack_at(memory_size: u64, frames: Frames, rsp: u64) {
    tables::build_and_switch(memory_size, frames);
    install_handlers();
    // SAFETY: Umbra must kill us before the handler runs; should it not,
    // the handler resumes after `cli` and the old stack is restored.
    unsafe {
        faulting!("mov {saved}, rsp\nmov rsp, {rsp}\ncli"; then "mov rsp, {saved}", saved = out(reg) _, rsp = in(reg) rsp)
    };
}

/// Canonical, user half, mapped by nothing we build.
const UNMAPPED: u64 = 0x0000_5000_0000_0000;
/// The first non-canonical address above the user half.
const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;

/// A user-mode page at this address, and its stack page above it. A PML4
/// slot we use for nothing else, so the tables are all new.
const USER_CODE: u64 = 0x0000_1000_0000_0000;
const USER_BIT: u64 = 1 << 2;

/// Maps `va` to a fresh frame, user-accessible at every level; returns
/// the frame.
fn map_user(space: &mut AddressSpace, va: u64) -> u64 {
    let frame = space.frames.alloc();
    space.set(va, PT, frame | PRESENT | WRITABLE | USER_BIT);
    // `set` made the upper tables supervisor-only; open them to ring 3.
    // They are new (never present before), so nothing needs announcing.
    let mut table = space.root;
    for level in (1..=3).rev() {
        let entry = phys::<u64>(table + 8 * ((va >> (12 + 9 * level)) & 511));
        // SAFETY: an entry of our own tables, reached by the identity map.
        unsafe {
            let value = entry.read_volatile() | USER_BIT;
            entry.write_volatile(value);
            table = value & ADDRESS;
        }
    }
    frame
}

/// The kernel stack for traps from user mode: 16 KiB of .bss, used through
/// its kernel alias.
#[repr(C, align(4096))]
struct KernelStack([u8; 16384]);
static mut KERNEL_STACK: KernelStack = KernelStack([0; 16384]);

/// Runs `code` at ring 3, on a user page of its own with a stack page
/// above it, with rax = SHUTDOWN and rdi = 98: were the trap it must end
/// in taken for a hypercall, we would exit "survived". Our handlers, which
/// the caller installs, come back here from user mode on the kernel stack
/// saved in ATTACK_KERNEL_RSP. `with_stack` says whether we name a kernel
/// stack first (without one, Umbra has nowhere to deliver the trap).
fn run_at_ring3(space: &mut AddressSpace, code: &[u8], with_stack: bool) -> (u64, u64) {
    let page = map_user(space, USER_CODE);
    map_user(space, USER_CODE + PAGE_SIZE);
    // SAFETY: a frame we just allocated, reached by the identity map; the
    // code is far shorter than a page.
    unsafe { core::ptr::copy_nonoverlapping(code.as_ptr(), phys::<u8>(page), code.len()) };
    if with_stack {
        let top = KERNEL_BASE + &raw const KERNEL_STACK as u64 + 16384;
        // SAFETY: our own .bss, mapped writable by the kernel alias.
        unsafe { hypercall(abi::SET_STACK, top, 16384, 0, 0, 0) };
    }
    let (rcx, r11);
    // SAFETY: enters ring 3 at the code; our handler comes back to label
    // 2 on the kernel stack saved in ATTACK_KERNEL_RSP, with the user
    // code's rcx and r11 as the trap left them (the handlers touch
    // neither), which `syscall` would have set.
    unsafe {
        core::arch::asm!(
            "lea {t}, [rip + 2f]",
            "mov qword ptr [rip + {resume}], {t}",
            "mov qword ptr [rip + {krsp}], rsp",
            "push {ss}",
            "push {user_rsp}",
            "push 0x202",
            "push {cs}",
            "push {user_rip}",
            "iretq",
            "2:",
            resume = sym ATTACK_RESUME,
            krsp = sym ATTACK_KERNEL_RSP,
            t = out(reg) _,
            ss = const abi::GUEST_USER_SS as u64,
            cs = const abi::GUEST_USER_CS as u64,
            user_rsp = in(reg) USER_CODE + 2 * PAGE_SIZE,
            user_rip = in(reg) USER_CODE,
            inout("rax") abi::SHUTDOWN => _,
            in("rdi") 98u64,
            in("rsi") 0u64,
            in("rdx") 0u64,
            out("rcx") rcx,
            out("r11") r11,
        );
    }
    (rcx, r11)
}
