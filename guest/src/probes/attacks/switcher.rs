//! The switcher region: the top 4 MiB of every address space, Umbra's.
//!
//! We may read our own switcher code, state and IDT pages, and read and
//! write our own registers page (the CPU's frame lands there at every
//! exit, overwriting whatever we left, and Umbra sanitizes it at every
//! entry). Any other access, and any attempt to make Umbra itself write
//! there for us by pointing our stack at it, kills.

use super::{
    Attack, IDT_PAGE, REGISTERS_PAGE, STATE_PAGE, SWITCHER_CODE_1, SWITCHER_PD511, SWITCHER_UNMAPPED,
    attack_table, peek, poke, trap_with_stack_at, works,
};
use crate::platform::hypercall;
use crate::probes::tables::{self, Frames, PAGE_SIZE};

fn write_state_page(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    poke(STATE_PAGE);
}

fn write_idt_page(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    poke(IDT_PAGE + 13 * 16);
}

fn write_switcher_code(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    poke(SWITCHER_CODE_1);
}

/// Where another CPU's pages would be if they were mapped: the slot past
/// ours, which nothing maps.
fn read_past_our_pages(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    peek(SWITCHER_UNMAPPED);
}

fn read_pd511(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    peek(SWITCHER_PD511);
}

fn stack_on_registers_page(_: &'static str, memory_size: u64, frames: Frames) {
    trap_with_stack_at(memory_size, frames, REGISTERS_PAGE + PAGE_SIZE);
}

fn stack_on_switcher_code(_: &'static str, memory_size: u64, frames: Frames) {
    trap_with_stack_at(memory_size, frames, SWITCHER_CODE_1 + 0x800);
}

/// Our own pushes onto the read-only state page.
fn push_on_state_page(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    // SAFETY: Umbra must kill us at the push.
    unsafe {
        core::arch::asm!(
            "mov {saved}, rsp", "mov rsp, {rsp}", "push rax", "mov rsp, {saved}",
            saved = out(reg) _, rsp = in(reg) STATE_PAGE + PAGE_SIZE
        )
    };
}

/// Legal: scribble ring-0 selectors and every flag over our registers
/// page, then trap. The exit overwrites it and Umbra sanitizes what it
/// enters with: we come back at ring 1.
fn scribble_registers_page(name: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    for offset in (0..PAGE_SIZE).step_by(8) {
        let value = if offset % 16 == 0 { 0x08 } else { 0xffff_ffff_ffff_ffff };
        // SAFETY: our own registers page, mapped writable by design.
        unsafe { ((REGISTERS_PAGE + offset) as *mut u64).write_volatile(value) };
    }
    hypercall::flush_async();
    let (cs, ss): (u64, u64);
    // SAFETY: reads our own segment selectors.
    unsafe { core::arch::asm!("mov {c:x}, cs", "mov {s:x}, ss", c = out(reg) cs, s = out(reg) ss) };
    let (cs, ss) = (cs & 0xffff, ss & 0xffff);
    if cs != 0x19 || ss != 0x21 {
        say!("attack {name}: came back with cs {cs:#x}, ss {ss:#x}");
        hypercall::shutdown(96, "attack: wrong ring");
    }
    works(name, format_args!("registers page scribbled; back at ring 1 (cs 0x19, ss 0x21)"))
}

/// How our markers start: the rest is this guest's own.
const MARKER_TAG: u64 = 0x5ec0_cc00_0000_0000;
const MARKER_TAG_MASK: u64 = 0xffff_ff00_0000_0000;
/// Exits with our marker in the registers page, each followed by a look:
/// this many, or as many as fit in [`MARKER_MS`] (an exit is slow under
/// a nested KVM).
const MARKER_ROUNDS: u32 = 5_000;
const MARKER_MS: u64 = 500;

/// Run as two guests at once, one per CPU (`guests=2` on two CPUs). Each
/// keeps a marker of its own in r12-r15 at every exit, so the registers
/// page of the CPU it runs on holds it, and after every exit reads all of
/// the switcher pages it can see, looking for a marker that is not its
/// own: the other guest's, from the other CPU's pages. It must find none.
/// Then it reads past its own pages, where lguest would put the next
/// CPU's: that is no one's, and kills.
fn other_cpu_pages(name: &'static str, memory_size: u64, frames: Frames) {
    look_for_the_other_cpu(name, memory_size, frames);
    peek(SWITCHER_UNMAPPED);
}

/// The same, ending with a write where another CPU's pages would be.
fn other_cpu_pages_write(name: &'static str, memory_size: u64, frames: Frames) {
    look_for_the_other_cpu(name, memory_size, frames);
    poke(SWITCHER_UNMAPPED);
}

/// The marker search of [`other_cpu_pages`].
fn look_for_the_other_cpu(name: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    let rdtsc = || {
        let tsc: u64;
        // SAFETY: reads the time stamp counter, which ring 1 may.
        unsafe { core::arch::asm!("rdtsc", "shl rdx, 32", "or rax, rdx", out("rax") tsc, out("rdx") _) };
        tsc
    };
    let start = rdtsc();
    let until = start.saturating_add(hypercall::tsc_khz().saturating_mul(MARKER_MS));
    // Never all zero below the tag: the tag alone is a constant the
    // compiler may well keep in a register at an exit.
    let marker = MARKER_TAG | (start & !MARKER_TAG_MASK) | 1;
    let (mut seen, mut rounds) = (0u64, 0u32);
    while rounds < MARKER_ROUNDS && rdtsc() < until {
        rounds += 1;
        // SAFETY: FLUSH_ASYNC with nothing queued does nothing but exit
        // and come back; r12-r15 are only read.
        unsafe {
            core::arch::asm!(
                "ud2",
                inlateout("rax") umbra_abi::FLUSH_ASYNC => _,
                in("r12") marker, in("r13") marker, in("r14") marker, in("r15") marker,
            )
        };
        for page in [REGISTERS_PAGE, STATE_PAGE, IDT_PAGE] {
            for offset in (0..PAGE_SIZE).step_by(8) {
                // SAFETY: our CPU's switcher pages, which we may read.
                let word = unsafe { ((page + offset) as *const u64).read_volatile() };
                if word & MARKER_TAG_MASK == MARKER_TAG && word & !MARKER_TAG_MASK & 1 == 1 && word != marker
                {
                    seen += 1;
                }
            }
        }
    }
    if seen != 0 {
        say!("attack {name}: another guest's marker seen {seen} times in this CPU's switcher pages");
        super::survived();
    }
    say!("attack {name}: {rounds} exits, no other guest's registers in this CPU's switcher pages");
}

pub const ATTACKS: &[Attack] = attack_table! {
    other_cpu_pages, other_cpu_pages_write,
    write_state_page, write_idt_page, write_switcher_code, read_past_our_pages, read_pd511,
    stack_on_registers_page, stack_on_switcher_code, push_on_state_page, scribble_registers_page,
};
