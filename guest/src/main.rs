//! # guest: the kernel Umbra runs, which also runs without it
//!
//! One ELF image, two entries:
//! - **under Umbra** it starts at `guest_entry` (below), named by our own
//!   ELF note, at ring 1, where every privileged instruction faults: it
//!   asks Umbra for everything through hypercalls
//!   (`platform/hypercall.rs`);
//! - **natively**, booted by QEMU as a PVH kernel, it starts at
//!   `native_entry32` (`platform/native.rs`), named by the PVH note, at
//!   ring 0, and drives the machine itself.
//!
//! Either way it ends up in the process kernel (`kernel/`: address spaces,
//! user programs at ring 3, fork, copy-on-write, a preemptive scheduler)
//! on top of the platform layer (`platform/`), which is the only code that
//! knows which entry was taken. docs/guest.md describes it.
//!
//! The folders keep apart what the kernel is and what tests Umbra:
//!
//! | where | what |
//! | --- | --- |
//! | `kernel/` | the process kernel |
//! | `platform/` | the platform layer: its two backends, and the console |
//! | `probes/` | Umbra's test subjects: test modes, attacks, the fuzzer (the `probes` feature) |
//! | `cmdline.rs` | the command-line words all three read |
//! | `../user/` | the user programs, built by `build.rs` |
//!
//! The paravirtual path of one run:
//!
//! 1. `guest_entry` clears .bss and calls [`guest_main`] with the address
//!    of the `BootInfo` Umbra left at the top of guest memory.
//! 2. [`guest_main`] checks the `BootInfo`, copies the command line (its
//!    memory will be reused), registers the shared page with INIT and says
//!    hello. (Two probes must come before INIT; they run first.)
//! 3. With a root filesystem (a cpio archive Umbra copied in after the
//!    image, `BootInfo.rootfs_*`) and no `test=` word, the Linux layer
//!    runs its programs (`kernel/linux/`).
//! 4. Without a `test=` word, or with `test=showcase`, `test=scenario:NAME`
//!    or `test=bench:...`, the process kernel runs: the showcase by
//!    default. Any other `test=` word picks a probe (`probes/`), most of
//!    which break a rule on purpose to see Umbra kill the guest, and which
//!    natively have no meaning. A guest built without the `probes` feature
//!    refuses such a word in one line and stops with status 97.
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
extern crate alloc;

#[cfg(target_os = "none")]
#[macro_use]
mod platform;
#[cfg(target_os = "none")]
mod cmdline;
#[cfg(target_os = "none")]
mod kernel;
#[cfg(all(target_os = "none", feature = "probes"))]
mod probes;

// The paravirtual entry point, and the note that names it for Umbra's
// loader (`umbra_abi::PV_ENTRY_NOTE_*`). Umbra starts us here in 64-bit
// mode with `rdi` and `rsp` both holding the address of the `BootInfo`;
// the stack grows down from it. A loader should zero .bss, but clearing
// it ourselves costs a few instructions and spares us from trusting that.
// `rbp` is cleared so a frame-pointer backtrace ends here, and the
// unwind information says so to gdb.
#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .pushsection .note.umbra, "a", @note
    .balign 4
    .long 6, 8, 1               /* name size, payload size, PV_ENTRY_NOTE_TYPE */
    .asciz "Umbra"
    .balign 4
    .quad guest_entry
    .popsection

    .section .text.entry, "ax"
    .global guest_entry
guest_entry:
    .cfi_startproc
    .cfi_undefined rip          /* for debuggers: nothing called this */
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
    .cfi_endproc
    "#,
    options(att_syntax)
);

#[cfg(target_os = "none")]
mod boot {
    use core::panic::PanicInfo;

    use umbra_abi::{self as abi, BootInfo};

    use crate::cmdline::test_word;
    use crate::kernel;
    use crate::platform::console::Printable;
    use crate::platform::hypercall::{self, shutdown};
    use crate::platform::{self, Backend};

    /// How much of the command line we keep; the rest is ignored. (Umbra
    /// passes at most what fits in the boot-info page.)
    const CMDLINE_MAX: usize = 4096;

    /// Exit status for a broken start or a panic.
    const STATUS_BROKEN: u64 = 99;

    /// Exit status for a `test=` word this guest cannot run here, as for
    /// an unknown one.
    const STATUS_CANNOT_RUN: u64 = 97;

    const PAGE_SIZE: u64 = 4096;

    /// Room left for the stack below the `BootInfo`.
    const STACK_RESERVE: u64 = 256 * 1024;

    unsafe extern "C" {
        /// From link.ld: the first page after the image.
        static __image_end: u8;
    }

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

    /// The root filesystem Umbra copied in, if it is one we can use:
    /// inside guest memory, past our own image. None when there is none;
    /// Err when the fields make no sense.
    fn rootfs(info: &BootInfo) -> Result<Option<(u64, u64)>, &'static str> {
        if info.rootfs_len == 0 {
            return Ok(None);
        }
        let image_end = &raw const __image_end as u64;
        let end = info.rootfs_addr.checked_add(info.rootfs_len);
        if info.rootfs_addr < image_end || end.is_none_or(|end| end > info.memory_size) {
            return Err("the boot info's root filesystem is not in our free memory");
        }
        Ok(Some((info.rootfs_addr, info.rootfs_len)))
    }

    /// The free memory under Umbra, as `[start, end)`: from the end of the
    /// image, or of the root filesystem after it, up to `STACK_RESERVE`
    /// below the `BootInfo` at `boot`, where the stack starts. (Natively,
    /// `native_main` finds its own.)
    fn free_memory(boot: u64, rootfs: Option<(u64, u64)>) -> (u64, u64) {
        let image_end = &raw const __image_end as u64;
        let taken = rootfs.map_or(image_end, |(addr, len)| (addr + len).max(image_end));
        (taken.next_multiple_of(PAGE_SIZE), (boot & !(PAGE_SIZE - 1)).saturating_sub(STACK_RESERVE))
    }

    /// Stops a guest that cannot go on. SHUTDOWN is only legal after INIT,
    /// so INIT first: the point is to say what went wrong.
    fn broken(why: &str) -> ! {
        hypercall::init();
        say!("{why}");
        shutdown(STATUS_BROKEN, why)
    }

    /// The process kernel's scenario for a `test=` word: the showcase when
    /// there is none; the benchmark is one too. None for the probes, which
    /// are Umbra's alone.
    fn kernel_scenario(test: Option<&[u8]>) -> Option<&[u8]> {
        match test {
            None | Some(b"showcase") => Some(b"showcase"),
            Some(word) if word.starts_with(b"bench:") => Some(word),
            Some(word) => word.strip_prefix(b"scenario:"),
        }
    }

    /// The native entry's way into the process kernel, with the free
    /// memory `[free_start, free_end)` of `memory_size` bytes, and the
    /// root filesystem's archive, if the VMM passed one.
    pub fn run_kernel(
        cmdline: &[u8],
        memory_size: u64,
        free_start: u64,
        free_end: u64,
        rootfs: Option<(u64, u64)>,
    ) -> ! {
        let test = test_word(cmdline);
        if let (None, Some((rootfs_pa, rootfs_len))) = (test, rootfs) {
            run_linux(cmdline, memory_size, free_start, free_end, rootfs_pa, rootfs_len);
        }
        match kernel_scenario(test) {
            Some(scenario) => kernel::run(scenario, memory_size, free_start, free_end),
            None => {
                let test = Printable(test.unwrap_or_default());
                say!("test {test} makes hypercalls: it runs only under Umbra");
                platform::shutdown(STATUS_CANNOT_RUN, "test needs Umbra")
            }
        }
    }

    /// A root filesystem and no `test=` word: the Linux layer runs its
    /// programs. Both boot paths come here.
    fn run_linux(
        cmdline: &[u8],
        memory_size: u64,
        free_start: u64,
        free_end: u64,
        rootfs_pa: u64,
        rootfs_len: u64,
    ) -> ! {
        if free_start >= free_end {
            say!("no free memory left after the root filesystem ({rootfs_len} bytes)");
            platform::shutdown(STATUS_BROKEN, "no memory after the root filesystem")
        }
        let boot = kernel::linux::Boot { cmdline, memory_size, free_start, free_end, rootfs_pa, rootfs_len };
        kernel::linux::run(boot)
    }

    /// Any other `test=` word is a probe's (`probes/`), after INIT.
    #[cfg(feature = "probes")]
    fn run_probe(name: &[u8], memory_size: u64, free_start: u64, free_end: u64) -> ! {
        crate::probes::run(name, memory_size, free_start, free_end)
    }

    /// Built without the probes, this guest cannot run a probe's `test=`
    /// word: one line says so, and the guest stops with the status of a
    /// test it cannot run rather than run something else. The SHUTDOWN
    /// message is left empty: the line says it all.
    #[cfg(not(feature = "probes"))]
    fn run_probe(name: &[u8], _: u64, _: u64, _: u64) -> ! {
        say!("test={} needs a guest built with the probes feature", Printable(name));
        shutdown(STATUS_CANNOT_RUN, "")
    }

    /// Called by `guest_entry` with the address of the `BootInfo`.
    #[unsafe(no_mangle)]
    extern "C" fn guest_main(boot: *const BootInfo) -> ! {
        platform::choose(Backend::Paravirtual);
        let Some(info) = read_boot_info(boot) else { broken("bad boot info") };
        let cmdline = Cmdline::copy(&info);
        let test = test_word(cmdline.bytes());
        // The probes that must come before INIT, if it is one of them.
        #[cfg(feature = "probes")]
        crate::probes::before_init(test);

        hypercall::init();
        if hypercall::shared_abi_version() != abi::ABI_VERSION {
            say!("Umbra wrote the wrong ABI version in the shared page");
            shutdown(STATUS_BROKEN, "shared page ABI version mismatch");
        }
        say!("hello from ring 1");
        say!("memory: {} MiB ({:#x} bytes)", info.memory_size >> 20, info.memory_size);
        say!("cmdline: \"{}\"", Printable(cmdline.bytes()));

        let rootfs = match rootfs(&info) {
            Ok(rootfs) => rootfs,
            Err(why) => {
                say!("{why}");
                shutdown(STATUS_BROKEN, why)
            }
        };
        let (start, end) = free_memory(boot as u64, rootfs);
        if let (None, Some((rootfs_pa, rootfs_len))) = (test, rootfs) {
            run_linux(cmdline.bytes(), info.memory_size, start, end, rootfs_pa, rootfs_len);
        }
        match (kernel_scenario(test), test) {
            (Some(scenario), _) => kernel::run(scenario, info.memory_size, start, end),
            (None, Some(name)) => run_probe(name, info.memory_size, start, end),
            (None, None) => unreachable!("no test word means the showcase"),
        }
    }

    /// Says what went wrong, then stops with status 99.
    #[panic_handler]
    fn panic(info: &PanicInfo) -> ! {
        match info.location() {
            Some(at) => say!("panic: {} at {}:{}", info.message(), at.file(), at.line()),
            None => say!("panic: {}", info.message()),
        }
        platform::shutdown(STATUS_BROKEN, "panic")
    }
}
