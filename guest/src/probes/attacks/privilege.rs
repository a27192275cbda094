//! Privileged instructions at ring 1, and tricks to reach ring 0.
//!
//! The guest kernel runs at ring 1, where the CPU refuses every privileged
//! instruction with a #GP, and Umbra's GDT offers no road to ring 0 that a
//! ring-1 selector may take. None of this is Umbra's business beyond
//! passing the fault on: each attack installs our handlers, runs the
//! instruction once and checks our #GP (or #UD) handler got it. `cli`
//! without a handler shows the other side: no handler, and the guest dies.

use super::{Attack, NON_CANONICAL, attack_table, expect_delivered, faulting, install_handlers};
use crate::probes::tables::{self, Frames};

/// Defines an attack that runs one faulting instruction and expects
/// `vector` at our handler.
macro_rules! privileged {
    ($function:ident, $vector:expr, $($faulting:tt)*) => {
        fn $function(name: &'static str, memory_size: u64, frames: Frames) {
            tables::build_and_switch(memory_size, frames);
            install_handlers();
            // SAFETY: the instruction faults at ring 1; our handler
            // records it and resumes right after it, with every register
            // as it was.
            unsafe { faulting!($($faulting)*) };
            expect_delivered(name, $vector)
        }
    };
}

const GP: u64 = 13;
const UD: u64 = 6;

/// A descriptor-table pointer for `lgdt`/`lidt` to load: our own garbage.
static FAKE_TABLE: [u64; 2] = [0xffff, 0];

privileged!(hlt, GP, "hlt");
privileged!(cli, GP, "cli");
privileged!(sti, GP, "sti");
privileged!(lgdt, GP, "lgdt [{p}]", p = in(reg) FAKE_TABLE.as_ptr());
privileged!(lidt, GP, "lidt [{p}]", p = in(reg) FAKE_TABLE.as_ptr());
privileged!(ltr, GP, "ltr {s:x}", s = in(reg) 0x38u64);
privileged!(read_cr0, GP, "mov {r}, cr0", r = out(reg) _);
privileged!(write_cr0, GP, "mov cr0, {r}", r = in(reg) 0x8000_0011u64);
privileged!(read_cr3, GP, "mov {r}, cr3", r = out(reg) _);
privileged!(write_cr3, GP, "mov cr3, {r}", r = in(reg) 0x1000u64);
privileged!(read_cr4, GP, "mov {r}, cr4", r = out(reg) _);
privileged!(write_cr4, GP, "mov cr4, {r}", r = in(reg) 0u64);
// EFER, and LSTAR: the system-call entry point a guest would love to own.
privileged!(rdmsr, GP, "rdmsr", in("ecx") 0xC000_0080u32, out("eax") _, out("edx") _);
privileged!(wrmsr, GP, "wrmsr", in("ecx") 0xC000_0082u32, in("eax") 0u32, in("edx") 0u32);
// Port 0xf4 is QEMU's exit device: if `out` went through, QEMU would exit.
privileged!(port_in, GP, "in al, dx", in("dx") 0xf4u16, out("al") _);
privileged!(port_out, GP, "out dx, al", in("dx") 0xf4u16, in("al") 0u8);
privileged!(invlpg, GP, "invlpg [{p}]", p = in(reg) 0x1000u64);
privileged!(wbinvd, GP, "wbinvd");
privileged!(swapgs, GP, "swapgs");
// Without EFER.SCE, which Umbra never sets, `sysretq` is undefined: #UD,
// and not a hypercall, because it is not `ud2`. (This machine's nested KVM
// runs it anyway, to ring 3 at rcx: a supervisor page, so that is a page
// fault from user mode, and we have no kernel stack for it.)
privileged!(sysretq, UD, ".byte 0x48, 0x0f, 0x07", inout("rcx") 0x1000u64 => _, inout("r11") 0x2u64 => _);
// An `iretq` to the ring-0 code selector, with a frame we built.
privileged!(
    iretq_ring0,
    GP,
    "mov {t}, rsp\npush 0x10\npush {t}\npushfq\npush 0x08\nlea {t}, [rip + 2f]\npush {t}\niretq"; then "add rsp, 40",
    t = out(reg) _
);
// A far jump through a pointer to 0x08:label (REX.W `jmp far [rax]`).
privileged!(ljmp_ring0, GP, ".byte 0x48, 0xff, 0x28", in("rax") FAR_POINTER.as_ptr());
// A far return to 0x08.
privileged!(
    lret_ring0,
    GP,
    "push 0x08\nlea {t}, [rip + 2f]\npush {t}\n.byte 0x48, 0xcb"; then "add rsp, 16",
    t = out(reg) _
);
privileged!(mov_ss_ring0, GP, "mov ss, {s:x}", s = in(reg) 0x10u64);
privileged!(mov_ds_ring0, GP, "mov ds, {s:x}", s = in(reg) 0x10u64);
privileged!(noncanonical_rip, GP, "jmp {t}", t = in(reg) NON_CANONICAL);
// `popfq` cannot raise IOPL outside ring 0 (the CPU ignores it, and Umbra
// clears it at every entry anyway): ports stay closed after it.
privileged!(
    popf_iopl,
    GP,
    "pushfq\nor qword ptr [rsp], 0x3000\npopfq\nout dx, al",
    in("dx") 0xf4u16,
    in("al") 0u8
);
// XSAVE is off in CR4, so `xrstor` is an invalid opcode: our #UD, not a
// hypercall.
privileged!(xrstor, UD, ".byte 0x0f, 0xae, 0x2f", in("rdi") BAD_IMAGE.0.as_ptr(), in("eax") !0u32, in("edx") !0u32);
// `fxrstor64` from a misaligned image: #GP whatever the image holds.
privileged!(fxrstor_misaligned, GP, ".byte 0x48, 0x0f, 0xae, 0x08", in("rax") BAD_IMAGE.0.as_ptr().wrapping_add(8));

/// The far pointer `ljmp` goes through: offset, then the ring-0 selector.
static FAR_POINTER: [u64; 2] = [0x1000, 0x08];

/// An FXSAVE image of all ones: reserved MXCSR bits set, every tag and
/// register garbage.
#[repr(align(64))]
struct Image([u8; 4096]);
static BAD_IMAGE: Image = Image([0xff; 4096]);

/// `fxrstor64` of the all-ones image, 16-aligned. MXCSR's reserved bits
/// are set, so hardware (and KVM) raise #GP, for our handler; QEMU's TCG
/// does not check them and loads the garbage into the x87 and SSE
/// registers, which are the guest's own: Umbra itself uses no floating
/// point, and it clears those bits in what it saves (`FpuState::save`),
/// so its own `fxrstor64` can never fault. Either way the guest carries on.
fn fxrstor_bad_image(name: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    install_handlers();
    // SAFETY: as in `privileged!`; if it does not fault, it only loads
    // the x87/SSE state, which nothing of ours uses.
    unsafe { faulting!(".byte 0x48, 0x0f, 0xae, 0x08", in("rax") BAD_IMAGE.0.as_ptr()) };
    let traps = super::ATTACK_TRAPS.load(core::sync::atomic::Ordering::Relaxed);
    if traps == 0 {
        super::works(name, format_args!("no fault: the garbage x87/SSE state is the guest's own"))
    }
    expect_delivered(name, GP)
}

/// `cli` with no handler installed: the guest dies, with the trap's name.
fn cli_no_handler(_: &'static str, memory_size: u64, frames: Frames) {
    tables::build_and_switch(memory_size, frames);
    // SAFETY: Umbra must kill us here.
    unsafe { core::arch::asm!("cli") };
}

pub const ATTACKS: &[Attack] = attack_table! {
    hlt, cli, sti, lgdt, lidt, ltr, read_cr0, write_cr0, read_cr3, write_cr3, read_cr4, write_cr4,
    rdmsr, wrmsr, port_in, port_out, invlpg, wbinvd, swapgs, sysretq,
    iretq_ring0, ljmp_ring0, lret_ring0, mov_ss_ring0, mov_ds_ring0, noncanonical_rip, popf_iopl,
    xrstor, fxrstor_misaligned, fxrstor_bad_image, cli_no_handler,
};
