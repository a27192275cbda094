//! # guest: the paravirtual kernel Umbra runs
//!
//! This is the first kernel to run under Umbra, and so far its only job is
//! to prove that the hypercall ABI works. It runs at ring 1, where every
//! privileged instruction faults, so it never touches the hardware: it
//! asks Umbra for everything through hypercalls (`hypercall.rs`).
//!
//! The path of one run:
//!
//! 1. `guest_entry` (below) clears .bss and calls [`guest_main`] with the
//!    address of the `BootInfo` Umbra left at the top of guest memory.
//! 2. [`guest_main`] checks the `BootInfo`, copies the command line (its
//!    memory will be reused), registers the shared page with INIT and says
//!    hello.
//! 3. A `test=...` word on the command line picks one of the small tests
//!    in `modes.rs`, most of which break a rule on purpose to see Umbra
//!    kill the guest. Without one, `touch.rs` builds page tables
//!    (`tables.rs`), switches to them and touches a few hundred pages every
//!    way the ABI allows, then shuts down with status 0.
//!
//! `test=showcase` and `test=scenario:NAME` go further: they run the
//! process kernel in `kernel/` (address spaces, user programs at ring 3,
//! fork, copy-on-write, a preemptive scheduler), on top of the platform
//! layer in `platform.rs`. docs/guest.md describes it.
//!
//! On a host build (plain `cargo build`) this file is only a stub that
//! says how to build the real image, so the workspace builds anywhere.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("guest is a freestanding kernel image: build it with --target x86_64-unknown-none");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
#[macro_use]
mod console;
#[cfg(target_os = "none")]
mod attacks;
#[cfg(target_os = "none")]
mod fuzz;
#[cfg(target_os = "none")]
mod hypercall;
#[cfg(target_os = "none")]
mod isolation;
#[cfg(target_os = "none")]
mod kernel;
#[cfg(target_os = "none")]
mod modes;
#[cfg(target_os = "none")]
mod platform;
#[cfg(target_os = "none")]
mod tables;
#[cfg(target_os = "none")]
mod touch;
#[cfg(target_os = "none")]
mod traps;

// The entry point. Umbra starts us here in 64-bit mode with `rdi` and
// `rsp` both holding the address of the `BootInfo`; the stack grows down
// from it. A loader should zero .bss, but clearing it ourselves costs a
// few instructions and spares us from trusting that. `rbp` is cleared so
// a frame-pointer backtrace ends here.
#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .section .text.entry, "ax"
    .global guest_entry
guest_entry:
    mov %rdi, %rdx
    lea __bss_start(%rip), %rdi
    lea __bss_end(%rip), %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    cld
    rep stosb
    mov %rdx, %rdi
    and $-16, %rsp
    xor %ebp, %ebp
    call guest_main
1:  jmp 1b
    "#,
    options(att_syntax)
);

#[cfg(target_os = "none")]
mod boot {
    use core::panic::PanicInfo;

    use hv_core::abi::{self, BootInfo};

    use crate::console::Printable;
    use crate::hypercall::{self, shutdown};
    use crate::tables::Frames;
    use crate::{modes, tables, touch};

    /// How much of the command line we keep; the rest is ignored.
    const CMDLINE_MAX: usize = 512;

    /// Exit status for a broken start or a panic.
    const STATUS_BROKEN: u64 = 99;

    /// The command line, copied out of the page Umbra put it in.
    struct Cmdline {
        bytes: [u8; CMDLINE_MAX],
        len: usize,
    }

    impl Cmdline {
        /// Copies the command line named by `boot`, if it lies inside guest
        /// memory (and is not at address 0, which Rust may not read).
        fn copy(boot: &BootInfo) -> Cmdline {
            let mut cmdline = Cmdline { bytes: [0; CMDLINE_MAX], len: 0 };
            let inside =
                boot.cmdline_addr.checked_add(boot.cmdline_len).is_some_and(|end| end <= boot.memory_size);
            if boot.cmdline_addr == 0 || !inside {
                return cmdline;
            }
            cmdline.len = (boot.cmdline_len as usize).min(CMDLINE_MAX);
            for (i, byte) in cmdline.bytes[..cmdline.len].iter_mut().enumerate() {
                // SAFETY: in linear mode every address below memory_size is
                // mapped, and we checked the range lies there.
                *byte = unsafe { ((boot.cmdline_addr as usize + i) as *const u8).read_volatile() };
            }
            cmdline
        }

        fn bytes(&self) -> &[u8] {
            &self.bytes[..self.len]
        }
    }

    /// Reads the `BootInfo` and checks it is one we understand: the magic,
    /// our ABI version, and that it sits inside the memory it describes.
    fn read_boot_info(boot: *const BootInfo) -> Option<BootInfo> {
        if boot.is_null() || !boot.is_aligned() {
            return None;
        }
        // SAFETY: Umbra promises rdi points at a BootInfo; we only checked
        // what can be checked before reading it.
        let info = unsafe { boot.read_volatile() };
        let size = size_of::<BootInfo>() as u64;
        let valid = info.magic == abi::BOOT_INFO_MAGIC
            && info.abi_version == abi::ABI_VERSION
            && (boot as u64).checked_add(size).is_some_and(|end| end <= info.memory_size);
        valid.then_some(info)
    }

    /// Stops a guest that cannot go on. SHUTDOWN is only legal after INIT,
    /// so INIT first: the point is to say what went wrong.
    fn broken(why: &str) -> ! {
        hypercall::init();
        say!("{why}");
        shutdown(STATUS_BROKEN, why)
    }

    /// Called by `guest_entry` with the address of the `BootInfo`.
    #[unsafe(no_mangle)]
    extern "C" fn guest_main(boot: *const BootInfo) -> ! {
        let Some(info) = read_boot_info(boot) else { broken("bad boot info") };
        let cmdline = Cmdline::copy(&info);
        let test = modes::test_word(cmdline.bytes());
        if test == Some(b"no-init".as_slice()) {
            modes::no_init();
        }

        hypercall::init();
        if hypercall::shared_abi_version() != abi::ABI_VERSION {
            say!("Umbra wrote the wrong ABI version in the shared page");
            shutdown(STATUS_BROKEN, "shared page ABI version mismatch");
        }
        say!("hello from ring 1");
        say!("memory: {} MiB ({:#x} bytes)", info.memory_size >> 20, info.memory_size);
        say!("cmdline: \"{}\"", Printable(cmdline.bytes()));

        let frames = Frames::between_image_and_stack(boot as u64);
        match test {
            Some(name) => modes::run(name, info.memory_size, frames),
            None => {
                let space = tables::build_and_switch(info.memory_size, frames);
                touch::run(space)
            }
        }
    }

    /// Says what went wrong, then stops with status 99.
    #[panic_handler]
    fn panic(info: &PanicInfo) -> ! {
        match info.location() {
            Some(at) => say!("panic: {} at {}:{}", info.message(), at.file(), at.line()),
            None => say!("panic: {}", info.message()),
        }
        shutdown(STATUS_BROKEN, "panic")
    }
}
