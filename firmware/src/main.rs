//! # Umbra: the firmware image
//!
//! This is the binary a VMM boots. The path from power-on to the banner:
//!
//! 1. `boot.s`: the VMM enters `pvh_start32` in 32-bit mode with the
//!    address of `hvm_start_info`. The stub clears .bss, takes its own
//!    stack, identity-maps 4 GiB and enters long mode, then calls
//!    [`umbra_main`].
//! 2. [`serial`] and [`cpu`]: the console first, so everything after can
//!    speak; then the host GDT, TSS and IDT, so that a fault from here on
//!    prints a crash report ([`crash`]) instead of resetting the machine.
//! 3. `umbra_firmware::bootinfo` validates start_info; the cmdline sets the
//!    log level.
//! 4. [`acpi`]: the CPUs from the MADT, the power-off method from the FADT.
//! 5. [`memory`]: the frame pool, then the host's own page tables.
//! 6. [`lapic`]: the boot CPU's local APIC, and the TSC calibrated on it.
//! 7. [`switcher`]: every CPU's switcher pages; then [`smp`] starts the
//!    other CPUs (up to `cpus=N`), which park and wait for work.
//! 8. The banner's `cpus:` line, with how many are online; then [`guest`]
//!    runs the guests (PVH modules that are ELF files, or the default
//!    guest built into the image, each with a copy of the root filesystem
//!    when a module is a cpio archive) on every CPU through hv-core's run
//!    loop, and their status becomes Umbra's, through the exit contract in
//!    [`power`].
//!
//! On a host build (plain `cargo build`) this file is only a stub that
//! says how to build the real image, so the workspace builds anywhere.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("umbra is a firmware image: build it with scripts/build.sh (--target x86_64-unknown-none)");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
#[macro_use]
mod serial;
#[cfg(target_os = "none")]
mod acpi;
#[cfg(target_os = "none")]
mod cpu;
#[cfg(target_os = "none")]
mod crash;
#[cfg(target_os = "none")]
mod guest;
#[cfg(target_os = "none")]
mod lapic;
#[cfg(target_os = "none")]
mod memory;
#[cfg(target_os = "none")]
mod power;
#[cfg(target_os = "none")]
mod smp;
#[cfg(target_os = "none")]
mod switcher;

#[cfg(target_os = "none")]
mod image {
    core::arch::global_asm!(include_str!("boot.s"), options(att_syntax));
    core::arch::global_asm!(
        switcher_asm::trap_frame_macros!(),
        include_str!("traps.s"),
        switcher_asm::trap_frame_macros_end!(),
        ERROR_CODE_VECTORS = const switcher_asm::layout::ERROR_CODE_VECTORS,
        options(att_syntax)
    );
}

#[cfg(target_os = "none")]
mod boot {
    use core::fmt;

    use umbra_abi::status;
    use umbra_firmware::VERSION;
    use umbra_firmware::bootinfo::{self, Notices};
    use umbra_firmware::cmdline::{self, CmdlineNotices, CrashKind, LogLevel};
    use umbra_firmware::modules::ModuleKind;

    use crate::{acpi, cpu, guest, lapic, memory, power, serial, smp, switcher};

    /// The guest built into the image (see build.rs), run when the VMM
    /// passes no module.
    static DEFAULT_GUEST: &[u8] = include_bytes!(env!("UMBRA_DEFAULT_GUEST"));

    /// Printable form of the VMM's command line: quoted, escaped, bounded.
    struct Quoted<'a>(&'a [u8]);

    impl fmt::Display for Quoted<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            const SHOWN: usize = 160;
            write!(f, "\"")?;
            for &byte in self.0.iter().take(SHOWN) {
                match byte {
                    b'"' | b'\\' => write!(f, "\\{}", byte as char)?,
                    b' '..=b'~' => write!(f, "{}", byte as char)?,
                    _ => write!(f, "\\x{byte:02x}")?,
                }
            }
            write!(f, "\"")?;
            if self.0.len() > SHOWN {
                write!(f, " ({} bytes, first {SHOWN} shown)", self.0.len())?;
            }
            Ok(())
        }
    }

    fn level_filter(level: LogLevel) -> log::LevelFilter {
        match level {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }

    /// One line that says what was wrong, then the exit contract.
    fn fatal(what: impl fmt::Display) -> ! {
        println!("umbra: error: {what}");
        power::exit(status::FIRMWARE_ERROR)
    }

    /// The hypervisor signature from CPUID leaf 0x4000_0000, if any.
    fn hypervisor_signature() -> Option<[u8; 12]> {
        let features = core::arch::x86_64::__cpuid(1);
        if features.ecx & (1 << 31) == 0 {
            return None;
        }
        // The hypervisor bit says leaf 0x4000_0000 exists.
        let leaf = core::arch::x86_64::__cpuid(0x4000_0000);
        let mut signature = [0u8; 12];
        signature[0..4].copy_from_slice(&leaf.ebx.to_le_bytes());
        signature[4..8].copy_from_slice(&leaf.ecx.to_le_bytes());
        signature[8..12].copy_from_slice(&leaf.edx.to_le_bytes());
        Some(signature)
    }

    fn text(bytes: &[u8]) -> &str {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        core::str::from_utf8(&bytes[..end]).unwrap_or("?").trim_end()
    }

    #[unsafe(no_mangle)]
    extern "C" fn umbra_main(start_info: u64) -> ! {
        serial::init();
        println!("umbra {VERSION}");
        cpu::init();
        cpu::silence_legacy_pic();
        let debug_exit = power::probe_debug_exit();

        let mut notices = Notices::new();
        let info = match bootinfo::parse(&memory::BootMemory, start_info, &mut notices) {
            Ok(info) => info,
            Err(error) => fatal(error),
        };
        let mut cmdline_notices = CmdlineNotices::new();
        let (host_words, guest_words) = cmdline::split_guest(&info.cmdline);
        let config = cmdline::parse(host_words, &mut cmdline_notices);
        log::set_max_level(level_filter(config.log_level));

        let hypervisor = hypervisor_signature();
        println!(
            "boot: PVH start_info v{} at {:#x}, hypervisor {}",
            info.version,
            info.start_info_addr,
            hypervisor.as_ref().map_or("none", |s| text(s)),
        );
        println!("cmdline: {}", Quoted(&info.cmdline));
        for region in &info.memory_map {
            log::debug!(
                "memory map: {:#014x}-{:#014x} {:?}",
                region.range.start,
                region.range.end,
                region.kind
            );
        }
        for notice in &notices {
            if notice.is_benign() {
                log::info!("{notice}");
            } else {
                log::warn!("{notice}");
            }
        }
        for notice in &cmdline_notices {
            log::warn!("{notice}");
        }

        let platform = match acpi::init(info.rsdp_addr) {
            Ok(platform) => Some(platform),
            Err(problem) => {
                log::warn!("acpi: {problem}; going on with the boot CPU only and no ACPI power-off");
                None
            }
        };
        let Some(platform) = platform else { boot_rest(&info, &config, guest_words, debug_exit, None) };
        let cpus = &platform.cpus;
        log::info!(
            "acpi: OEM '{}', RSDP {}, power off by {}",
            text(&platform.oem_id),
            if platform.rsdp_found_by_scan { "found by scan" } else { "from start_info" },
            PowerOffName(platform.power_off),
        );
        if cpus.disabled > 0 || cpus.ignored > 0 {
            log::warn!(
                "cpus: {} disabled, {} beyond the limit of {}",
                cpus.disabled,
                cpus.ignored,
                umbra_firmware::madt::MAX_CPUS
            );
        }

        boot_rest(&info, &config, guest_words, debug_exit, Some(cpus))
    }

    /// Memory, the other CPUs, the rest of the banner, and the end of the
    /// run. `cpus` is what the MADT lists, if there is one.
    fn boot_rest(
        info: &bootinfo::BootInfo,
        config: &cmdline::Config,
        guest_cmdline: &[u8],
        debug_exit: bool,
        cpus: Option<&umbra_firmware::madt::Cpus>,
    ) -> ! {
        let summary = match memory::init(info, &acpi::touched_ranges()) {
            Ok(summary) => summary,
            Err(error) => fatal(error),
        };
        println!(
            "memory: {} MiB usable ({} MiB RAM in the memory map)",
            summary.usable_bytes >> 20,
            info.ram_bytes() >> 20
        );
        if let Some(limit) = summary.ignored_above {
            log::warn!("memory: RAM above {} GiB is ignored", limit >> 30);
        }
        for (index, module) in info.modules.iter().enumerate() {
            log::info!(
                "module {index}: {} bytes at {:#x}, cmdline {}",
                module.range.len(),
                module.range.start,
                Quoted(&module.cmdline)
            );
        }
        log::debug!("exit: isa-debug-exit {}", if debug_exit { "present" } else { "absent" });

        if let Some(kind) = config.crash {
            crash_on_purpose(kind);
        }
        if config.start_info_test {
            start_info_test(info);
        }
        let tsc_khz = match lapic::init() {
            Ok(khz) => khz,
            Err(error) => {
                log::warn!("timer: {error}; guest clock events will not fire, TSC assumed 1 GHz");
                1_000_000
            }
        };
        log::info!("timer: local APIC one-shot at 1 GHz; TSC {} MHz", tsc_khz / 1000);

        // The CPUs: as many as the MADT lists, or `cpus=N` allows; the
        // switcher's pages first, since each CPU takes its own as it starts.
        let listed = cpus.map_or(1, |cpus| cpus.apic_ids.len().max(1));
        let wanted = config.cpus.map_or(listed, |limit| limit.min(listed));
        if let Err(error) = switcher::init(wanted) {
            fatal(format_args!("switcher: {error}"));
        }
        log::debug!("switcher: pages for {} CPUs", switcher::cpu_count());
        match cpus {
            None => println!("cpus: 1 (the boot CPU; no ACPI MADT)"),
            Some(cpus) => {
                let online = smp::start(&cpus.apic_ids, wanted);
                print_cpus(cpus, online, config.cpus.filter(|&limit| limit < listed));
            }
        }
        if config.crash == Some(CrashKind::OnAp) {
            crash_on_an_ap();
        }

        // The guests: each PVH module that is an ELF is one; without
        // such modules, `guests=N` copies of the default guest built into
        // the image. At most MAX_GUESTS distinct ones are listed; guests
        // past the list run the last one again (a campaign of thousands
        // shares one line). A module that is a cpio archive is the root
        // filesystem every guest gets a copy of.
        let mut guests: heapless::Vec<guest::GuestImage, { guest::MAX_GUESTS }> = heapless::Vec::new();
        let mut rootfs: Option<(usize, &[u8])> = None;
        let mut kernel_modules = 0;
        for (index, module) in info.modules.iter().enumerate() {
            // SAFETY: the module lies in memory the map describes (checked by
            // bootinfo), identity-mapped, and the frame pool keeps it.
            let bytes = unsafe {
                core::slice::from_raw_parts(module.range.start as *const u8, module.range.len() as usize)
            };
            match ModuleKind::of(bytes) {
                ModuleKind::GuestKernel => {
                    kernel_modules += 1;
                    let cmdline: &[u8] =
                        if guest_cmdline.is_empty() { &module.cmdline } else { guest_cmdline };
                    log::info!("guest: module {index} ({} bytes), cmdline {}", bytes.len(), Quoted(cmdline));
                    let _ = guests.push(guest::GuestImage { image: bytes, cmdline, rootfs: &[] });
                }
                ModuleKind::RootFilesystem => match rootfs {
                    None => rootfs = Some((index, bytes)),
                    Some((first, _)) => fatal(format_args!(
                        "modules {first} and {index} are both root filesystems (cpio archives); \
                         pass one"
                    )),
                },
                ModuleKind::Unknown => fatal(format_args!(
                    "module {index} ({} bytes) is neither a guest kernel (an ELF file) nor a root \
                     filesystem (a cpio archive, newc format, magic 070701)",
                    bytes.len()
                )),
            }
        }
        if guests.is_empty() {
            // More standalone `--` words give each guest its own command
            // line: guest i gets part i, and the last part repeats.
            let mut parts = guest_cmdline;
            let mut cmdline: &[u8] = &[];
            for _ in 0..config.guests.min(guest::MAX_GUESTS) {
                if !parts.is_empty() {
                    let (this, rest) = cmdline::split_guest(parts);
                    (cmdline, parts) = (this.trim_ascii(), rest);
                }
                let _ = guests.push(guest::GuestImage { image: DEFAULT_GUEST, cmdline, rootfs: &[] });
            }
            log::info!(
                "guest: the default guest ({} bytes) x{}, cmdline {}",
                DEFAULT_GUEST.len(),
                config.guests,
                Quoted(guest_cmdline)
            );
        }
        if let Some((index, archive)) = rootfs {
            log::info!("rootfs: module {index}, a cpio archive of {} bytes, for every guest", archive.len());
            for guest in guests.iter_mut() {
                guest.rootfs = archive;
            }
        }
        let total = if kernel_modules == 0 { config.guests } else { guests.len() };
        let together =
            config.guests_at_once.unwrap_or(guest::MAX_GUESTS).min(total).clamp(1, guest::MAX_GUESTS);
        let given = config.guest_mem_given.then_some(config.guest_mem);
        let Some(memory) = memory::plan_guest_memory(given, config.guest_mem, together) else {
            fatal(format_args!(
                "no room for a guest: {} MiB free, and a guest needs at least {} MiB and room for its shadow tables",
                memory::free_mib(),
                umbra_firmware::guestmem::SHARED_FLOOR >> 20
            ))
        };
        if memory.is_warning() {
            log::warn!("{memory}");
        } else {
            log::info!("{memory}");
        }
        let run = hv_core::run::RunConfig {
            total,
            at_once: memory.at_once,
            memory_size: memory.size,
            memory_origin: &memory.origin(),
            timeout_s: config.guest_timeout_s,
        };
        let status = guest::run(&guests, &run, tsc_khz);
        power::exit(status)
    }

    struct PowerOffName(Option<acpi::PowerOff>);

    impl fmt::Display for PowerOffName {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let (what, register) = match &self.0 {
                Some(acpi::PowerOff::SleepControl { register, .. }) => ("sleep-control register", register),
                Some(acpi::PowerOff::Pm1Control { a, .. }) => ("PM1a control", a),
                None => return write!(f, "nothing (no usable FADT method)"),
            };
            let space = match register.address_space {
                ::acpi::address::AddressSpace::SystemIo => "port",
                _ => "address",
            };
            write!(f, "{what} ({space} {:#x})", register.address)
        }
    }

    /// The banner's CPU line: the MADT's CPUs, and how many of them are
    /// online, every one of which runs guests.
    fn print_cpus(cpus: &umbra_firmware::madt::Cpus, online: usize, limit: Option<usize>) {
        struct Ids<'a>(&'a [u32]);
        impl fmt::Display for Ids<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for (i, id) in self.0.iter().enumerate() {
                    write!(f, "{}{id}", if i == 0 { "" } else { ", " })?;
                }
                Ok(())
            }
        }
        let ids = Ids(&cpus.apic_ids);
        match limit {
            Some(limit) => {
                println!(
                    "cpus: {} (APIC IDs {ids}), {online} running guests (cpus={limit})",
                    cpus.apic_ids.len()
                )
            }
            None => println!("cpus: {} (APIC IDs {ids}), {online} running guests", cpus.apic_ids.len()),
        }
    }

    /// `crash=ap`: an application processor crashes, and its report ends
    /// the run; this CPU waits for that, boundedly.
    fn crash_on_an_ap() {
        let Some((number, apic_id)) = smp::crash_an_ap() else {
            log::warn!("crash=ap: no other CPU is online; not crashing");
            return;
        };
        lapic::delay_us(4_000_000);
        fatal(format_args!("crash=ap: CPU {number} (APIC ID {apic_id}) did not crash within 4 s"));
    }

    /// `start_info_test`: parse the crafted start_info that module 0 holds
    /// (addresses are offsets into the module), print one line, and stop:
    /// 101 for a fatal problem, 0 otherwise (notices are printed first).
    fn start_info_test(info: &bootinfo::BootInfo) -> ! {
        let Some(module) = info.modules.first() else {
            fatal("start_info_test: no module 0 holds a crafted start_info");
        };
        // SAFETY: the module lies in memory the map describes (checked by
        // bootinfo), identity-mapped, and the frame pool keeps it.
        let bytes = unsafe {
            core::slice::from_raw_parts(module.range.start as *const u8, module.range.len() as usize)
        };
        let mut notices = Notices::new();
        match bootinfo::parse(&bootinfo::ModuleMemory(bytes), 0, &mut notices) {
            Err(error) => fatal(format_args!("crafted start_info: {error}")),
            Ok(crafted) => {
                for notice in &notices {
                    log::warn!("crafted start_info: {notice}");
                }
                println!(
                    "crafted start_info: accepted: {} memory map entries, {} modules, {} MiB RAM, cmdline {}",
                    crafted.memory_map.len(),
                    crafted.modules.len(),
                    crafted.ram_bytes() >> 20,
                    Quoted(&crafted.cmdline)
                );
                power::exit(status::SUCCESS)
            }
        }
    }

    /// The `crash=` test hooks: prove the crash report works.
    fn crash_on_purpose(kind: CrashKind) {
        if kind == CrashKind::OnAp {
            return; // after the other CPUs start (boot_rest)
        }
        log::info!("crash: {kind:?}, on purpose (crash= on the cmdline)");
        match kind {
            // SAFETY: deliberately faulting instructions; the handlers
            // report and exit, nothing returns here.
            CrashKind::InvalidOpcode => unsafe { core::arch::asm!("ud2") },
            CrashKind::PageFault => {
                // SAFETY: as above; page 0 is unmapped in the host tables.
                let _ = unsafe { core::ptr::read_volatile(0x10 as *const u64) };
            }
            CrashKind::Panic => panic!("a panic asked for on the cmdline"),
            // SAFETY: as above: a stack the CPU cannot push to turns the
            // #PF into a #DF, which runs on its own IST stack.
            CrashKind::UnusableStack => unsafe {
                core::arch::asm!("mov rsp, {0}", "push rax", in(reg) 0x8u64, options(noreturn))
            },
            // After the other CPUs start (boot_rest).
            CrashKind::OnAp => {}
        };
    }
}
