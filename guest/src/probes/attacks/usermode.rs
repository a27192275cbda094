//! What Linux programs need from the CPU at ring 3, and get.
//!
//! A static Linux binary uses SSE freely (glibc's string functions, any
//! floating point), traps on an unmasked SIMD exception with #XM, and
//! makes its system calls with `syscall`. Under Umbra CR4.OSFXSR and
//! OSXMMEXCPT are on, so the first two work as on Linux; EFER.SCE is off,
//! so `syscall` is an invalid opcode, which reaches the guest kernel's
//! #UD handler, whose business it is to run the call. These run the
//! instructions at ring 3 and come back through a trap to our handler.

use core::sync::atomic::Ordering;

use umbra_abi as abi;

use super::{
    ATTACK_CS, ATTACK_ERROR, ATTACK_RIP, ATTACK_TRAPS, ATTACK_VECTOR, Attack, USER_CODE, attack_table,
    install_handlers, run_at_ring3, works,
};
use crate::platform::hypercall::{self, shutdown};
use crate::probes::tables::{self, Frames};

/// What came back from ring 3: the one trap (its vector and error code,
/// u64::MAX for none), and the user code's rcx and r11 at that moment.
struct Came {
    vector: u64,
    error: u64,
    rcx: u64,
    r11: u64,
}

/// Runs `code` at ring 3; returns the one trap that came back from it,
/// from user mode.
fn at_ring3(name: &str, memory_size: u64, frames: Frames, code: &[u8]) -> Came {
    let mut space = tables::build_and_switch(memory_size, frames);
    install_handlers();
    let (rcx, r11) = run_at_ring3(&mut space, code, true);
    let (traps, vector, error, cs) = (
        ATTACK_TRAPS.load(Ordering::Relaxed),
        ATTACK_VECTOR.load(Ordering::Relaxed),
        ATTACK_ERROR.load(Ordering::Relaxed),
        ATTACK_CS.load(Ordering::Relaxed),
    );
    if traps != 1 || cs != u64::from(abi::GUEST_USER_CS) {
        say!(
            "attack {name}: {traps} traps, the last vector {vector}, from cs {cs:#x}; expected one from ring 3"
        );
        shutdown(96, "attack: wrong trap");
    }
    Came { vector, error, rcx, r11 }
}

/// Says what came back instead, and stops.
fn unexpected(name: &str, vector: u64, error: u64, rcx: u64, r11: u64) -> ! {
    let cr2 = hypercall::fault_address();
    say!(
        "attack {name}: vector {vector} (error {error:#x}, cr2 {cr2:#x}, rcx {rcx:#x}, r11 {r11:#x}) came back"
    );
    shutdown(96, "attack: wrong trap")
}

/// `syscall` from ring 3: EFER.SCE is off, so it is a #UD for the guest
/// kernel (as on a CPU without the instruction), not a jump to an MSR's
/// address nor a hypercall.
fn syscall_from_user(name: &'static str, memory_size: u64, frames: Frames) {
    // mov ecx, 0x1111; mov r11d, 0x2222; syscall
    let code = [0xb9, 0x11, 0x11, 0, 0, 0x41, 0xbb, 0x22, 0x22, 0, 0, 0x0f, 0x05];
    let came = at_ring3(name, memory_size, frames, &code);
    let rip = ATTACK_RIP.load(Ordering::Relaxed);
    // This machine's nested KVM runs `syscall` whatever EFER.SCE says,
    // and Umbra turns the fault that follows back into the #UD, at the
    // instruction (`hv-core/src/traps.rs`); rcx and r11 then hold what
    // the KVM's `syscall` put there, the address after it and the flags.
    let after = USER_CODE + code.len() as u64;
    let registers_as_a_cpu_leaves_them = (came.rcx, came.r11) == (0x1111, 0x2222) || came.rcx == after;
    if came.vector != 6 || rip != after - 2 || !registers_as_a_cpu_leaves_them {
        say!("attack {name}: the trap came at rip {rip:#x}, not at the syscall, {:#x}", after - 2);
        unexpected(name, came.vector, came.error, came.rcx, came.r11);
    }
    works(name, format_args!("#UD from ring 3 delivered to our handler, at the syscall: EFER.SCE is off"))
}

/// SSE at ring 3: all ones into XMM3, shifted right by 8 bytes, then
/// `ud2` to come back. The register is read at ring 1 with `fxsave64`
/// (SSE arithmetic at ring 1 stops this machine's nested KVM).
fn sse_at_ring3(name: &'static str, memory_size: u64, frames: Frames) {
    // pcmpeqd xmm3, xmm3; psrldq xmm3, 8; ud2
    let code = [0x66, 0x0f, 0x76, 0xdb, 0x66, 0x0f, 0x73, 0xdb, 0x08, 0x0f, 0x0b];
    let came = at_ring3(name, memory_size, frames, &code);
    if came.vector != 6 {
        unexpected(name, came.vector, came.error, came.rcx, came.r11);
    }
    #[repr(C, align(16))]
    struct Image([u8; 512]);
    let mut image = Image([0; 512]);
    // SAFETY: a 512-byte, 16-byte-aligned area of ours.
    unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) image.0.as_mut_ptr(), options(nostack)) };
    const XMM3: usize = 160 + 3 * 16;
    let mut halves = [0u64; 2];
    for (half, bytes) in halves.iter_mut().zip(image.0[XMM3..XMM3 + 16].chunks_exact(8)) {
        *half = u64::from_le_bytes(bytes.try_into().unwrap_or_default());
    }
    let [low, high] = halves;
    if (low, high) != (u64::MAX, 0) {
        say!("attack {name}: xmm3 holds {high:#018x}{low:016x}, not what the code computed");
        shutdown(96, "attack: SSE went wrong");
    }
    works(name, format_args!("SSE ran at ring 3: xmm3 holds 0x0000000000000000ffffffffffffffff"))
}

/// An unmasked SIMD exception at ring 3: MXCSR with divide-by-zero
/// unmasked, then 1.0 / 0.0 in `divss`. With CR4.OSXMMEXCPT on it is #XM
/// (vector 19), for the guest kernel; without, it would be a #UD.
fn simd_exception_at_ring3(name: &'static str, memory_size: u64, frames: Frames) {
    let code = [
        0xc7, 0x44, 0x24, 0xf8, 0x80, 0x1d, 0x00, 0x00, // mov dword [rsp-8], 0x1d80
        0x0f, 0xae, 0x54, 0x24, 0xf8, // ldmxcsr [rsp-8]
        0x0f, 0x57, 0xc0, // xorps xmm0, xmm0
        0xb8, 0x00, 0x00, 0x80, 0x3f, // mov eax, 1.0
        0x66, 0x0f, 0x6e, 0xc8, // movd xmm1, eax
        0xf3, 0x0f, 0x5e, 0xc8, // divss xmm1, xmm0
        0x0f, 0x0b, // ud2, never reached
    ];
    match at_ring3(name, memory_size, frames, &code) {
        Came { vector: 19, .. } => works(name, format_args!("#XM from ring 3 delivered to our handler")),
        // QEMU's TCG does not raise SIMD floating-point exceptions: the
        // division completes, and the `ud2` after it comes back.
        Came { vector: 6, .. } => {
            works(name, format_args!("no #XM: divss did not fault, and the ud2 after it came back"))
        }
        Came { vector, error, rcx, r11 } => unexpected(name, vector, error, rcx, r11),
    }
}

pub const ATTACKS: &[Attack] = attack_table! {
    syscall_from_user, sse_at_ring3, simd_exception_at_ring3,
};
