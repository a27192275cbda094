//! # Boot tests
//!
//! Each case boots the real image and checks what a user would see. The
//! matrix: pc, q35 and microvm, under TCG always and under KVM when
//! `/dev/kvm` opens (otherwise those cases are skipped by name), each with
//! one, two and four CPUs, every one of which must come online. QEMU 7.2
//! runs an x86_64 guest's TCG multi-threaded by default, one host thread
//! per CPU; one case asks for the single-threaded kind, where the other
//! CPUs run only in the boot CPU's gaps. Then `cpus=1` holding four CPUs
//! to one, the odd inputs: junk and over-long command lines, an unknown
//! log level, a bad CPU count, too little RAM, the deliberate crashes
//! (one on an application processor), a module, power-off through ACPI
//! without QEMU's exit device (with the other CPUs parked), and Cloud
//! Hypervisor when it is installed. Small machines (32 and 64 MiB) run
//! the showcase in what they can spare, several guests share memory, and
//! a `guest_mem=` too large is one clear error. Two cases only read the
//! image: its PVH note, and its size stripped (at most 512 KiB, default
//! guest included).
//!
//! Every good boot also runs the default guest to its end. The guest
//! cases: a guest passed as a module, a guest's own exit status passed
//! through, and one case per rule a guest can break, each of which must
//! end in `guest killed: <reason>` and the "guest killed" status.
//!
//! Run them with `cargo test -p boot-tests`; add words after `--` to run
//! only the cases whose names contain them.

use boot_tests::{
    Accel, Boot, Case, Exit, Outcome, Verdict, check, check_exit, guest_elf, kvm_opens, on_path, run_cases,
};
use umbra_abi::status::{CRASH, FIRMWARE_ERROR, GUEST_KILLED, GUEST_STATUS_OUT_OF_RANGE};

const MACHINES: [&str; 3] = ["pc", "q35", "microvm"];
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The banner every good boot prints.
fn check_banner(outcome: &Outcome, cpus: usize, mem_mib: u64) -> Verdict {
    let lines = outcome.lines();
    check!(
        outcome,
        lines.first() == Some(&format!("umbra {VERSION}").as_str()),
        "first line should be 'umbra {VERSION}'"
    );
    check!(
        outcome,
        outcome.line_starting(&format!("cpus: {cpus} ")).is_some(),
        "expected a 'cpus: {cpus}' line"
    );
    let usable = outcome
        .line_starting("memory: ")
        .and_then(|l| l.strip_prefix("memory: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    check!(
        outcome,
        usable.is_some_and(|mib| mib + 16 >= mem_mib && mib <= mem_mib),
        "memory line should report about {mem_mib} MiB usable, found {usable:?}"
    );
    check!(outcome, outcome.line_starting("cmdline: \"").is_some(), "expected the VMM cmdline line");
    Verdict::Pass
}

/// The default guest, the process kernel's showcase: its summary, and
/// the statistics block after it.
fn check_default_guest_ran(outcome: &Outcome) -> Verdict {
    check!(outcome, outcome.has_line("guest: hello from ring 1"), "the guest should greet from ring 1");
    check!(
        outcome,
        outcome.has_line("guest: scenario showcase: all 6 programs ended as expected"),
        "the default guest should run the showcase to its end"
    );
    check!(outcome, outcome.has_line("guest: [tree] exited with status 7"), "the fork tree should finish");
    check_guest_exit_and_stats(outcome)
}

/// The first program this guest ran (`test=pages`): its own page tables,
/// a few hundred pages touched every way the ABI allows.
fn check_pages_guest_ran(outcome: &Outcome) -> Verdict {
    let summary = outcome.line_starting("guest: touched ").unwrap_or("");
    check!(
        outcome,
        summary.ends_with("; all verified")
            && summary.contains("demand-filled")
            && summary.contains("async ring"),
        "the guest should report its pages verified: {summary:?}"
    );
    check_guest_exit_and_stats(outcome)
}

fn check_guest_exit_and_stats(outcome: &Outcome) -> Verdict {
    check!(outcome, outcome.has_line("guest exited with status 0"), "the guest should exit with status 0");
    for stats in ["stats: exits ", "stats: hypercalls ", "stats: paging: ", "stats: cycles: "] {
        check!(outcome, outcome.line_starting(stats).is_some(), "expected a '{stats}' line");
    }
    Verdict::Pass
}

/// The banner's CPU line, whole: `cpus: N (APIC IDs 0, ..., N-1), K
/// online` and the limit, if one held (QEMU numbers its APICs from 0).
fn check_online(outcome: &Outcome, listed: u32, online: u32, limit: Option<u32>) -> Verdict {
    let ids: Vec<String> = (0..listed).map(|id| id.to_string()).collect();
    let mut expected = format!("cpus: {listed} (APIC IDs {}), {online} running guests", ids.join(", "));
    if let Some(limit) = limit {
        expected.push_str(&format!(" (cpus={limit})"));
    }
    check!(outcome, outcome.has_line(&expected), "expected the line {expected:?}");
    Verdict::Pass
}

fn both(first: Verdict, second: impl FnOnce() -> Verdict) -> Verdict {
    match first {
        Verdict::Pass => second(),
        other => other,
    }
}

/// A clean boot with `smp` CPUs: all of them come online, the others
/// park, and the boot CPU runs the guest to its end.
fn standard_boot(machine: &'static str, accel: Accel, smp: u32) -> Case {
    // The firmware is under test here, so the guest is the quick one.
    let config = Boot::new(machine, accel).smp(smp).append("log=info -- test=pages");
    Case::boot(format!("{}_{machine}_smp{smp}", accel.name()), config, move |outcome| {
        both(check_banner(outcome, smp as usize, 256), || {
            if let Verdict::Fail(why) = check_online(outcome, smp, smp, None) {
                return Verdict::Fail(why);
            }
            both(check_exit(outcome, 0, Exit::DebugExit), || {
                if let Verdict::Fail(why) = check_pages_guest_ran(outcome) {
                    return Verdict::Fail(why);
                }
                check!(
                    outcome,
                    outcome.has_line("cmdline: \"log=info -- test=pages\""),
                    "the cmdline line should quote the cmdline"
                );
                check!(outcome, !outcome.serial.contains("warn:"), "a clean boot should print no warnings");
                Verdict::Pass
            })
        })
    })
}

/// Four CPUs on single-threaded TCG, where the others run only when the
/// boot CPU's slice ends: they still come up in time.
fn single_threaded_tcg() -> Case {
    let config =
        Boot::new("microvm", Accel::Tcg).accel_options("thread=single").smp(4).append("-- test=exit:0");
    Case::boot("tcg_single_thread_microvm_smp4", config, |outcome| {
        check!(outcome, !outcome.serial.contains("warn:"), "a clean boot should print no warnings");
        both(check_online(outcome, 4, 4, None), || check_exit(outcome, 0, Exit::DebugExit))
    })
}

/// `cpus=1` on a machine of four: only the boot CPU starts, the banner
/// says why, and nothing warns.
fn cpus_limit(accel: Accel) -> Case {
    let config = Boot::new("microvm", accel).smp(4).append("cpus=1 -- test=exit:0");
    Case::boot(format!("{}_microvm_smp4_cpus1", accel.name()), config, move |outcome| {
        check!(outcome, !outcome.serial.contains("warn:"), "a limit is not a problem: no warnings");
        both(check_online(outcome, 4, 1, Some(1)), || check_exit(outcome, 0, Exit::DebugExit))
    })
}

/// A boot on microvm (TCG) that must warn once and still exit 0.
fn warns_and_goes_on(case: &'static str, cmdline: Vec<u8>, warning_prefix: &'static str) -> Case {
    let config = Boot::new("microvm", Accel::Tcg).append(cmdline);
    Case::boot(case, config, move |outcome| {
        let warnings = outcome.lines_starting("warn: cmdline");
        check!(outcome, warnings.len() == 1, "expected exactly one cmdline warning, got {warnings:?}");
        check!(
            outcome,
            warnings[0].starts_with(warning_prefix),
            "warning should start '{warning_prefix}': {:?}",
            warnings[0]
        );
        both(check_banner(outcome, 2, 256), || check_exit(outcome, 0, Exit::DebugExit))
    })
}

/// Printable junk with spaces, a deterministic 4 KiB of it.
fn junk(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b"abcdefxyz=-_,./%@!~ "[(state % 20) as usize]
        })
        .collect()
}

fn too_little_ram(machine: &'static str) -> Case {
    let config = Boot::new(machine, Accel::Tcg).mem("24M");
    Case::boot(format!("tcg_{machine}_too_little_ram"), config, move |outcome| {
        let errors = outcome.lines_starting("umbra: error:");
        check!(outcome, errors.len() == 1, "expected one error line, got {errors:?}");
        check!(
            outcome,
            errors[0].contains("too little memory"),
            "error should say too little memory: {:?}",
            errors[0]
        );
        check_exit(outcome, FIRMWARE_ERROR, Exit::DebugExit)
    })
}

/// A small machine without `guest_mem=`: the guest gets what the machine
/// can spare, the line says so, and the showcase runs to status 0.
fn small_machine(accel: Accel, mem: &'static str, mib: u64) -> Case {
    let config = Boot::new("microvm", accel).mem(mem);
    Case::boot(
        format!("{}_microvm_{}_default_showcase", accel.name(), mem.to_lowercase()),
        config,
        move |outcome| {
            let line = outcome.line_starting("guest memory: ").unwrap_or("");
            let size = line.strip_prefix("guest memory: ").and_then(|l| l.split(' ').next()).unwrap_or("?");
            check!(
                outcome,
                line.ends_with(" MiB, what this machine can spare (less than the default 64 MiB)"),
                "the guest memory line should say it is what the machine can spare: {line:?}"
            );
            check!(
                outcome,
                outcome.line_starting(&format!("guest: memory: {size} MiB (")).is_some(),
                "the guest should have the {size} MiB the line names"
            );
            both(check_banner(outcome, 2, mib), || {
                both(check_default_guest_ran(outcome), || check_exit(outcome, 0, Exit::DebugExit))
            })
        },
    )
}

/// Several guests without `guest_mem=` share the memory; under the
/// floor, fewer run at once, said in one line, and all still run.
fn guests_share(mem: &'static str, guests: usize, line: (&'static str, &'static str)) -> Case {
    let config = Boot::new("microvm", Accel::Tcg).mem(mem).append(format!("guests={guests}"));
    Case::boot(format!("tcg_microvm_{}_{guests}_guests_share", mem.to_lowercase()), config, move |outcome| {
        let lines: Vec<&str> = outcome.lines().into_iter().filter(|l| l.contains("guest memory: ")).collect();
        check!(outcome, lines.len() == 1, "expected one guest memory line, got {lines:?}");
        // How much each gets depends on Umbra's own footprint; the words
        // around it do not.
        let (start, end) = line;
        check!(
            outcome,
            lines[0].starts_with(start) && lines[0].ends_with(end),
            "expected {start:?}...{end:?}, got {:?}",
            lines[0]
        );
        let ended = format!("guests: {guests} ended: {guests} exited 0, 0 killed, 0 other; ");
        check!(outcome, outcome.line_starting(&ended).is_some(), "expected every guest to exit 0: {ended:?}");
        check_exit(outcome, 0, Exit::DebugExit)
    })
}

/// The smallest guest memory still runs the default guest's showcase.
fn smallest_guest() -> Case {
    let config = Boot::new("microvm", Accel::Tcg).append("guest_mem=4M");
    Case::boot("tcg_microvm_guest_mem_4m_showcase", config, |outcome| {
        check!(
            outcome,
            outcome.has_line("guest memory: 4 MiB (guest_mem=4M)"),
            "expected 'guest memory: 4 MiB (guest_mem=4M)'"
        );
        both(check_default_guest_ran(outcome), || check_exit(outcome, 0, Exit::DebugExit))
    })
}

/// `guest_mem=` too large for the machine: one clear error naming it.
fn guest_mem_too_large() -> Case {
    let config = Boot::new("microvm", Accel::Tcg).mem("64M").append("guest_mem=64M");
    Case::boot("tcg_microvm_64m_guest_mem_too_large", config, |outcome| {
        let errors = outcome.lines_starting("umbra: error:");
        check!(
            outcome,
            errors == ["umbra: error: no 64 MiB of contiguous memory for guest 1 (guest_mem=64M)"],
            "expected the one error naming guest_mem=64M, got {errors:?}"
        );
        check_exit(outcome, FIRMWARE_ERROR, Exit::DebugExit)
    })
}

/// `crash=KIND`: the report names what happened and where. `ap` crashes
/// the first application processor, whose report must name it.
fn deliberate_crash(accel: Accel, kind: &'static str, expect: &'static str) -> Case {
    let config = Boot::new("microvm", accel).append(format!("crash={kind}"));
    Case::boot(format!("{}_microvm_crash_{kind}", accel.name()), config, move |outcome| {
        let report = outcome.line_starting("umbra: crash: ").unwrap_or("");
        check!(outcome, report.contains(expect), "crash report should name '{expect}': {report:?}");
        let cpu = if kind == "ap" { "CPU 1 (APIC ID 1)" } else { "CPU 0 (APIC ID 0)" };
        check!(outcome, report.contains(&format!(" on {cpu}")), "crash report should name {cpu}: {report:?}");
        let reports = outcome.lines().into_iter().filter(|l| l.starts_with("umbra: crash")).count();
        check!(outcome, reports == 1, "expected one crash report, found {reports}");
        check!(
            outcome,
            outcome.line_starting("  backtrace").is_some(),
            "crash report should have a backtrace"
        );
        if kind != "panic" {
            check!(outcome, outcome.line_starting("  rip 0x").is_some(), "crash report should show rip");
            check!(outcome, outcome.line_starting("  cr2 0x").is_some(), "crash report should show cr2");
        }
        check_exit(outcome, CRASH, Exit::DebugExit)
    })
}

fn acpi_power_off(machine: &'static str) -> Case {
    let config = Boot::new(machine, Accel::Tcg).without_debug_exit();
    Case::boot(format!("tcg_{machine}_acpi_power_off"), config, move |outcome| {
        // The boot CPU powers off while the other one is parked.
        both(check_banner(outcome, 2, 256), || {
            both(check_online(outcome, 2, 2, None), || check_exit(outcome, 0, Exit::PowerOff))
        })
    })
}

/// No ACPI at all: the RSDP scan finds nothing, one warning, and the
/// boot goes on with the boot CPU (exit through isa-debug-exit).
fn no_acpi() -> Case {
    let config = Boot::new("microvm,acpi=off", Accel::Tcg);
    Case::boot("tcg_microvm_no_acpi", config, |outcome| {
        let warning = outcome.line_starting("warn: acpi: no valid RSDP found").is_some();
        check!(outcome, warning, "expected 'warn: acpi: no valid RSDP found ...'");
        both(check_banner(outcome, 1, 256), || check_exit(outcome, 0, Exit::DebugExit))
    })
}

/// The line Umbra refuses a module with that is neither a guest kernel
/// nor a root filesystem.
const NOT_A_MODULE_UMBRA_TAKES: &str = "umbra: error: module 0 (12345 bytes) is neither a guest kernel (an \
     ELF file) nor a root filesystem (a cpio archive, newc format, magic 070701)";

/// A PVH module is a guest kernel (an ELF) or a root filesystem (a cpio
/// archive); junk is neither, and the boot stops before any guest runs.
fn junk_module_is_refused(accel: Accel) -> Case {
    Case::new(format!("{}_pc_module_not_an_elf", accel.name()), move |name| {
        let module =
            std::env::temp_dir().join(format!("umbra-test-module-{}-{}", accel.name(), std::process::id()));
        if let Err(e) = std::fs::write(&module, vec![0x5a; 12345]) {
            return Verdict::Fail(format!("cannot write a module file: {e}"));
        }
        let verdict = Boot::new("pc", accel).initrd(module.clone()).judged(name, |outcome| {
            check!(
                outcome,
                outcome.line_starting("module 0: 12345 bytes at 0x").is_some(),
                "expected 'module 0: 12345 bytes at ...'"
            );
            check!(
                outcome,
                outcome.has_line(NOT_A_MODULE_UMBRA_TAKES),
                "expected the module to be refused: {NOT_A_MODULE_UMBRA_TAKES}"
            );
            check!(outcome, outcome.line_starting("guest").is_none(), "no guest should run");
            check_exit(outcome, FIRMWARE_ERROR, Exit::DebugExit)
        });
        let _ = std::fs::remove_file(&module);
        verdict
    })
}

/// A small cpio archive (newc): one directory and one file, of about
/// `size` bytes in all, then the trailer.
fn cpio_archive(size: usize) -> Vec<u8> {
    fn entry(archive: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8]) {
        let name = format!("{name}\0");
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len(),
            0
        );
        archive.extend(header.as_bytes());
        archive.extend(name.as_bytes());
        archive.resize(archive.len().next_multiple_of(4), 0);
        archive.extend(data);
        archive.resize(archive.len().next_multiple_of(4), 0);
    }
    let mut archive = Vec::new();
    entry(&mut archive, 1, 0o40755, "bin", &[]);
    let data: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    entry(&mut archive, 2, 0o100644, "bin/data", &data);
    entry(&mut archive, 0, 0, "TRAILER!!!", &[]);
    archive
}

/// What the guest says when it finds a root filesystem and no `test=`
/// word: its Linux layer (`kernel/linux/`) unpacks the archive and looks
/// for the default init, `/init`, which these small archives lack: one
/// line naming it (error 2, ENOENT), and status 1.
fn linux_layer_ran(outcome: &Outcome, prefix: &str) -> Verdict {
    let line = format!("{prefix}guest: linux: cannot run init /init: error 2");
    check!(outcome, outcome.has_line(&line), "expected the line {line:?}");
    Verdict::Pass
}
const LINUX_LAYER_STATUS: u8 = 1;

/// A cpio archive as module 0 is a root filesystem: the built-in guest
/// runs, each copy with the archive in its memory, and hands it to its
/// Linux layer.
fn rootfs_reaches_the_guest(accel: Accel) -> Case {
    Case::new(format!("{}_microvm_rootfs_reaches_the_guest", accel.name()), move |name| {
        let archive = cpio_archive(100_000);
        let file = std::env::temp_dir().join(format!("umbra-test-rootfs-{name}-{}", std::process::id()));
        if let Err(e) = std::fs::write(&file, &archive) {
            return Verdict::Fail(format!("cannot write the archive: {e}"));
        }
        let config = Boot::new("microvm", accel).initrd(file.clone()).append("log=info guests=2 -- log=info");
        let verdict = config.judged(name, |outcome| {
            let len = archive.len();
            let line = format!("rootfs: module 0, a cpio archive of {len} bytes, for every guest");
            check!(outcome, outcome.has_line(&line), "expected the line {line:?}");
            check!(
                outcome,
                outcome.line_starting("guest: the default guest (").is_some(),
                "the default guest should run"
            );
            for prefix in ["[g1] ", "[g2] "] {
                if let Verdict::Fail(why) = linux_layer_ran(outcome, prefix) {
                    return Verdict::Fail(why);
                }
            }
            check_exit(outcome, LINUX_LAYER_STATUS, Exit::DebugExit)
        });
        let _ = std::fs::remove_file(&file);
        verdict
    })
}

/// A root filesystem larger than a guest's memory can hold after the
/// image: one line, and the firmware's status.
fn rootfs_too_large() -> Case {
    Case::new("tcg_microvm_rootfs_too_large", |name| {
        let archive = cpio_archive(5 << 20);
        let file = std::env::temp_dir().join(format!("umbra-test-rootfs-{name}-{}", std::process::id()));
        if let Err(e) = std::fs::write(&file, &archive) {
            return Verdict::Fail(format!("cannot write the archive: {e}"));
        }
        let config = Boot::new("microvm", Accel::Tcg).initrd(file.clone()).append("guest_mem=4M");
        let verdict = config.judged(name, |outcome| {
            let line = format!(
                "umbra: error: guest 1: no room for its root filesystem ({} bytes) after its image in 4 MiB \
                 of memory (guest_mem=4M)",
                archive.len()
            );
            check!(outcome, outcome.has_line(&line), "expected the line {line:?}");
            check_exit(outcome, FIRMWARE_ERROR, Exit::DebugExit)
        });
        let _ = std::fs::remove_file(&file);
        verdict
    })
}

/// Boot the guest kernel natively (its own PVH entry, ring 0), with
/// `config`, and judge what it printed.
fn native_judged(config: &Boot, name: &str, judge: impl FnOnce(&Outcome) -> Verdict) -> Verdict {
    if config.accel == Accel::Kvm && !kvm_opens() {
        return Verdict::Skip("/dev/kvm does not open on this machine".into());
    }
    let elf = match guest_elf() {
        Ok(elf) => elf,
        Err(e) => return Verdict::Fail(e),
    };
    match boot_tests::run_with_timeout(config.command(&elf), config.timeout, name) {
        Ok(outcome) => judge(&outcome),
        Err(error) => Verdict::Fail(error),
    }
}

/// The guest kernel on its own, with no isa-debug-exit, switches the
/// machine off the way the FADT says, as Umbra does: PM1a control with
/// the DSDT's S5 type on pc and q35, the sleep-control register (in
/// memory, at 0xfea00200) on microvm.
fn native_acpi_power_off(machine: &'static str) -> Case {
    Case::new(format!("tcg_{machine}_native_acpi_power_off"), move |name| {
        let config = Boot::new(machine, Accel::Tcg).without_debug_exit().append("test=scenario:hello");
        native_judged(&config, name, |outcome| {
            let line = "guest: native shutdown: status 0 (scenario passed)";
            check!(outcome, outcome.has_line(line), "expected the line {line:?}");
            check!(outcome, outcome.exit_code == Some(0), "QEMU should exit 0: {:?}", outcome.exit_code);
            Verdict::Pass
        })
    })
}

/// The guest kernel on its own takes the same cpio archive through its
/// PVH module list, and hands it to its Linux layer too.
fn native_rootfs(accel: Accel) -> Case {
    Case::new(format!("{}_microvm_native_rootfs", accel.name()), move |name| {
        let archive = cpio_archive(100_000);
        let file = std::env::temp_dir().join(format!("umbra-test-rootfs-{name}-{}", std::process::id()));
        if let Err(e) = std::fs::write(&file, &archive) {
            return Verdict::Fail(format!("cannot write the archive: {e}"));
        }
        let config = Boot::new("microvm", accel).initrd(file.clone()).append("log=info");
        let verdict = native_judged(&config, name, |outcome| {
            check!(outcome, outcome.has_line("guest: hello from ring 0 (native)"), "the native entry");
            if let Verdict::Fail(why) = linux_layer_ran(outcome, "") {
                return Verdict::Fail(why);
            }
            let expected = umbra_abi::status::qemu_exit_code(LINUX_LAYER_STATUS);
            check!(outcome, outcome.exit_code == Some(expected), "exit code {:?}", outcome.exit_code);
            Verdict::Pass
        });
        let _ = std::fs::remove_file(&file);
        verdict
    })
}

/// The guest ELF passed as PVH module 0 instead of the built-in one.
fn guest_as_module(accel: Accel) -> Case {
    Case::new(format!("{}_microvm_guest_as_module", accel.name()), move |name| {
        let elf = match guest_elf() {
            Ok(elf) => elf,
            Err(e) => return Verdict::Fail(e),
        };
        Boot::new("microvm", accel).initrd(elf).judged(name, |outcome| {
            check!(
                outcome,
                outcome.line_starting("guest: module 0 (").is_some(),
                "the guest should come from module 0"
            );
            both(check_default_guest_ran(outcome), || check_exit(outcome, 0, Exit::DebugExit))
        })
    })
}

/// The guest built without its probes (`--no-default-features`), in a
/// target directory of its own, so the default guest that `guest_elf`
/// builds is left alone; `scripts/test.sh` builds the same one first.
fn guest_without_probes_elf() -> Result<std::path::PathBuf, String> {
    let root = boot_tests::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "-p", "guest", "--no-default-features"])
        .args(["--target", "x86_64-unknown-none", "--target-dir", "target/guest-no-probes"])
        .status()
        .map_err(|e| format!("could not run cargo to build the guest without probes: {e}"))?;
    if !status.success() {
        return Err("building the guest without probes failed (see above)".into());
    }
    Ok(root.join("target/guest-no-probes/x86_64-unknown-none/release/guest"))
}

/// That guest, as module 0, given a probe's `test=` word: one line says it
/// needs the probes, and it shuts down with status 97.
fn guest_without_probes() -> Case {
    Case::new("tcg_microvm_guest_without_probes", |name| {
        let elf = match guest_without_probes_elf() {
            Ok(elf) => elf,
            Err(e) => return Verdict::Fail(e),
        };
        let config = Boot::new("microvm", Accel::Tcg).initrd(elf).append("-- test=attack:cli");
        config.judged(name, |outcome| {
            let line = "guest: test=attack:cli needs a guest built with the probes feature";
            check!(outcome, outcome.has_line(line), "expected the line {line:?}");
            // 97 is the guest's own status: a killed guest would be 100.
            check_exit(outcome, 97, Exit::DebugExit)
        })
    })
}

/// A guest's SHUTDOWN status becomes the firmware's.
fn guest_status(accel: Accel, status: u64, expected: u8, line: &'static str) -> Case {
    let config = Boot::new("microvm", accel).append(format!("-- test=exit:{status}"));
    Case::boot(format!("{}_microvm_guest_exit_{status}", accel.name()), config, move |outcome| {
        check!(outcome, outcome.line_starting(line).is_some(), "expected a line starting '{line}'");
        check_exit(outcome, expected, Exit::DebugExit)
    })
}

/// A path the guest proves works: its last word before exit 0 is `line`.
fn guest_proves(accel: Accel, test: &'static str, line: &'static str) -> Case {
    let config = Boot::new("microvm", accel).append(format!("-- test={test}"));
    Case::boot(format!("{}_microvm_guest_{test}", accel.name()), config, move |outcome| {
        check!(outcome, outcome.has_line(line), "expected the line {line:?}");
        check!(
            outcome,
            outcome.has_line("guest exited with status 0"),
            "the guest should exit with status 0"
        );
        check_exit(outcome, 0, Exit::DebugExit)
    })
}

/// `guest_timeout=`: a guest that will not stop is stopped.
fn watchdog(accel: Accel) -> Case {
    let config = Boot::new("microvm", accel).append("guest_timeout=1 -- test=null-hypercalls:1000000000");
    Case::boot(format!("{}_microvm_watchdog", accel.name()), config, move |outcome| {
        check!(
            outcome,
            outcome.has_line("guest killed: watchdog: still running after guest_timeout=1 seconds"),
            "the watchdog should kill the guest"
        );
        check_exit(outcome, GUEST_KILLED, Exit::DebugExit)
    })
}

/// Several guests, time-sliced: one is killed, the others go on to the
/// end; the firmware reports the first failure.
fn several_guests(accel: Accel) -> Case {
    let config =
        Boot::new("microvm", accel).mem("512M").append("guests=3 -- test=unknown-hypercall -- test=timer");
    Case::boot(format!("{}_microvm_three_guests_one_killed", accel.name()), config, move |outcome| {
        check!(
            outcome,
            outcome.has_line("[g1] guest killed: unknown hypercall 0xdead"),
            "guest 1 should be killed"
        );
        for guest in ["[g2]", "[g3]"] {
            let ticks = format!("{guest} guest: 5 clock ticks, each after a HALT");
            check!(outcome, outcome.has_line(&ticks), "expected {ticks:?}");
            let exited = format!("{guest} guest exited with status 0");
            check!(outcome, outcome.has_line(&exited), "expected {exited:?}");
        }
        check_exit(outcome, GUEST_KILLED, Exit::DebugExit)
    })
}

/// Guests on every CPU: `guests` copies of the preemption scenario (four
/// spinners, each printing a checksum of its work) on `smp` CPUs. Every
/// guest's statistics name the CPUs it ran on; together they name every
/// CPU, some guest moved between CPUs (there are more guests than CPUs),
/// and still every spinner's checksum is the same in every guest: a guest
/// that moves goes on correctly.
fn guests_on_every_cpu(accel: Accel, smp: u32, guests: usize) -> Case {
    let config = Boot::new("microvm", accel)
        .smp(smp)
        .mem("512M")
        .append(format!("log=info guests={guests} guest_mem=8M -- test=scenario:preempt"));
    let name = format!("{}_microvm_smp{smp}_guests{guests}_on_every_cpu", accel.name());
    Case::boot(name, config, move |outcome| {
        let running = format!("cpus: {smp} ");
        let banner = outcome.line_starting(&running).unwrap_or("");
        check!(
            outcome,
            banner.ends_with(&format!("{smp} running guests")),
            "expected all {smp} CPUs running guests: {banner:?}"
        );
        for guest in 1..=guests {
            let passed = format!("[g{guest}] guest: scenario preempt: all 4 programs ended as expected");
            check!(outcome, outcome.has_line(&passed), "expected {passed:?}");
        }
        let placements: Vec<&str> =
            outcome.lines().into_iter().filter_map(|l| l.strip_prefix("stats: cpus: ran on ")).collect();
        check!(outcome, placements.len() == guests, "expected {guests} 'stats: cpus:' lines: {placements:?}");
        let mut cpus_used = std::collections::BTreeSet::new();
        let mut moves = 0;
        for placement in &placements {
            let (cpus, moved) = placement.split_once("; moved ").unwrap_or(("", ""));
            cpus_used.extend(cpus.split(", ").map(str::to_string));
            moves += moved.trim_end_matches(" times").parse::<u64>().unwrap_or(0);
        }
        check!(outcome, cpus_used.len() == smp as usize, "guests ran on CPUs {cpus_used:?}, not all {smp}");
        // With more guests than CPUs, turns end with others waiting, so
        // guests must move.
        check!(outcome, guests <= smp as usize || moves > 0, "no guest moved between CPUs: {placements:?}");
        // The same programs compute the same checksums, wherever they ran.
        let mut checksums = std::collections::BTreeMap::new();
        for line in outcome.lines() {
            if let Some((_, rest)) = line.split_once("] guest: [spin")
                && let Some((spinner, checksum)) = rest.split_once(": checksum ")
            {
                checksums.entry(spinner.to_string()).or_insert_with(Vec::new).push(checksum.to_string());
            }
        }
        check!(outcome, checksums.len() == 4, "expected four spinners' checksums: {checksums:?}");
        for (spinner, sums) in &checksums {
            check!(
                outcome,
                sums.len() == guests && sums.iter().all(|s| s == &sums[0]),
                "spinner {spinner}'s checksums differ between guests: {sums:?}"
            );
        }
        let totals = format!("guests: {guests} ended: {guests} exited 0, 0 killed, 0 other;");
        let line = outcome.line_starting(&totals).unwrap_or("");
        // Every CPU's share, and their sum: every exit of the run.
        let shares = outcome.lines_starting("cpus: CPU ");
        check!(outcome, shares.len() == smp as usize, "expected {smp} 'cpus: CPU' lines: {shares:?}");
        let all = outcome
            .line_starting("cpus: all: ")
            .and_then(|line| line.split_once(" turns, "))
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("?");
        check!(
            outcome,
            line.contains(&format!(", exits {all};")),
            "the CPUs' exits ({all}) should add up to the totals': {line:?}"
        );
        let frames: Vec<&str> = line.rsplit_once("free frames ").map_or("", |(_, f)| f).split(' ').collect();
        check!(
            outcome,
            frames.len() == 4 && frames[0] == frames[2],
            "expected {totals:?} with equal free frames before and after: {line:?}"
        );
        check_exit(outcome, 0, Exit::DebugExit)
    })
}

/// Isolation: guest A fills its memory with a secret; B scans every page
/// it can map while A runs; A is killed; a later scanner (C or D) starts
/// in A's frames, scrubbed, and scans too. Each scanner plants one control
/// page of its own, so finding exactly 1 proves the scan could see the
/// secret; none may find more. Then each tries to map past its memory and
/// is killed. Which scanner lands in A's frames depends on whether A or B
/// ends first (two CPUs, and the host's load decides): with three
/// scanners one always does, unless both later ones end before A.
fn isolation(accel: Accel) -> Case {
    let config = Boot::new("microvm", accel)
        .mem("512M")
        // 16 MiB each: enough pages to prove the point, few enough that
        // the scans stay quick under a nested KVM.
        .append("log=debug guests=4 guests_at_once=2 guest_mem=16M -- test=secret -- test=scan");
    Case::boot(format!("{}_microvm_isolation", accel.name()), config, move |outcome| {
        let written = outcome.line_starting("[g1] guest: secret written to ").unwrap_or("");
        check!(outcome, written.ends_with(" pages"), "guest A should write its secret: {written:?}");
        for scanner in ["[g2]", "[g3]", "[g4]"] {
            let scanned = format!(
                "{scanner} guest: scanned 4096 pages of its memory: the secret in 1 (1 is our own control page)"
            );
            check!(outcome, outcome.has_line(&scanned), "expected {scanned:?}");
            let killed = format!("{scanner} guest killed: guest PTE frame beyond guest memory");
            check!(outcome, outcome.has_line(&killed), "expected {killed:?}");
        }
        let memory_of = |guest: &str| {
            outcome
                .line_starting(&format!("debug: guest {guest}: memory at host "))
                .map(|l| l.split(' ').nth(6).unwrap_or("").to_string())
        };
        check!(
            outcome,
            memory_of("1").is_some()
                && (memory_of("3") == memory_of("1") || memory_of("4") == memory_of("1")),
            "guest C or D should reuse guest A's frames: {:?} and {:?} vs {:?}",
            memory_of("3"),
            memory_of("4"),
            memory_of("1")
        );
        check!(
            outcome,
            outcome.has_line("[g1] guest killed: unknown hypercall 0x5ec2e7"),
            "A should be killed"
        );
        // Two CPUs, two guests at a time: the guests ran on both.
        let placements = outcome.lines_starting("stats: cpus: ran on ");
        let cpus: std::collections::BTreeSet<&str> = placements
            .iter()
            .filter_map(|l| l.strip_prefix("stats: cpus: ran on ")?.split_once("; moved"))
            .flat_map(|(cpus, _)| cpus.split(", "))
            .collect();
        check!(
            outcome,
            placements.len() == 4 && cpus.len() == 2,
            "the guests should run on both CPUs: {placements:?}"
        );
        check_exit(outcome, GUEST_KILLED, Exit::DebugExit)
    })
}

/// The x87 and SSE registers are swapped with the guests: a guest that
/// left pi in ST0, a pattern in every XMM register and its own MXCSR
/// cannot hand them to the next one, which starts from the clean state,
/// and gets its own back after the other's turns. Without the swap, the
/// scanner sees them (and exits 96); with the old start state (`fninit`,
/// then `fxsave` of what the CPU held) it saw the XMM registers in turn.
/// The probes use only `fxsave64`/`fxrstor64`, which this nested KVM runs
/// at ring 1, so this runs under KVM too.
fn fpu_isolation(accel: Accel, at_once: usize) -> Case {
    let name = match at_once {
        1 => format!("{}_microvm_fpu_isolation_in_turn", accel.name()),
        _ => format!("{}_microvm_fpu_isolation", accel.name()),
    };
    // One CPU, so the two guests share its registers: side by side, each
    // taking turns; or in turn, the second starting on the CPU the first
    // has just left.
    let config = Boot::new("microvm", accel).append(format!(
        "guests=2 guests_at_once={at_once} cpus=1 guest_mem=16M -- test=fpu-secret -- test=fpu-scan"
    ));
    Case::boot(name, config, move |outcome| {
        let planted = "[g1] guest: fpu secret: pi in st0, a pattern in xmm0-15, mxcsr 0x9f80";
        check!(outcome, outcome.has_line(planted), "guest 1 should plant its secret: {planted:?}");
        let kept = "[g1] guest: fpu secret: all still ours after the other guest's turns";
        check!(outcome, at_once == 1 || outcome.has_line(kept), "guest 1 should keep its own: {kept:?}");
        let scan = outcome.line_starting("[g2] guest: fpu scan: ").unwrap_or("");
        check!(
            outcome,
            scan.ends_with(": a clean state"),
            "guest 2 must start clean, with nothing of guest 1's: {scan:?}"
        );
        check_exit(outcome, 0, Exit::DebugExit)
    })
}

/// A short run of the guest's hypercall fuzzer: whatever it asks, it is
/// killed with a reason or finishes; the host never crashes or hangs.
fn fuzz_seed(accel: Accel, seed: u64) -> Case {
    let config = Boot::new("microvm", accel).append(format!("guest_timeout=20 -- test=fuzz:{seed}:3000"));
    Case::boot(format!("{}_microvm_fuzz_seed_{seed}", accel.name()), config, move |outcome| {
        check!(
            outcome,
            outcome.has_line(&format!("guest: fuzz seed {seed} count 3000")),
            "the seed is printed"
        );
        // Killed for what it asked, by the watchdog if its own traps kept
        // it busy, or finished.
        let ended = outcome.line_starting("guest killed: ").is_some()
            || outcome.line_starting("guest: fuzz: 3000 operations").is_some();
        check!(outcome, ended, "the run should end with a kill reason or complete");
        check!(outcome, outcome.line_starting("umbra: crash").is_none(), "the host crashed");
        let status = outcome.reported_status();
        check!(outcome, status == Some(0) || status == Some(GUEST_KILLED), "status {status:?}");
        Verdict::Pass
    })
}

/// The guest kernel's processes: a showcase or a scenario runs its user
/// programs to the end, and the kernel checks each one's outcome.
fn kernel_scenario(accel: Accel, mode: &'static str) -> Case {
    let config = Boot::new("microvm", accel).append(format!("-- test={mode}"));
    Case::boot(
        format!("{}_microvm_kernel_{}", accel.name(), mode.replace(':', "_")),
        config,
        move |outcome| {
            let scenario = mode.strip_prefix("scenario:").unwrap_or(mode);
            let summary = outcome.line_starting(&format!("guest: scenario {scenario}: all ")).unwrap_or("");
            check!(
                outcome,
                summary.ends_with("programs ended as expected"),
                "expected the scenario summary: {summary:?}"
            );
            check!(outcome, !outcome.serial.contains("FAILED"), "a program reported FAILED");
            check!(
                outcome,
                outcome.has_line("guest exited with status 0"),
                "the guest should exit with status 0"
            );
            check_exit(outcome, 0, Exit::DebugExit)
        },
    )
}

/// A guest that breaks a rule is killed with a reason naming it.
fn guest_killed(accel: Accel, test: &'static str, reason: &'static str) -> Case {
    let config = Boot::new("microvm", accel).append(format!("-- test={test}"));
    Case::boot(format!("{}_microvm_kill_{test}", accel.name()), config, move |outcome| {
        let killed = outcome.line_starting("guest killed: ").unwrap_or("");
        check!(outcome, killed.contains(reason), "expected 'guest killed: ...{reason}...', got {killed:?}");
        check!(
            outcome,
            !outcome.serial.contains("guest: survived"),
            "the guest went on after breaking the rule"
        );
        check!(outcome, outcome.line_starting("umbra: crash").is_none(), "the host crashed");
        check_exit(outcome, GUEST_KILLED, Exit::DebugExit)
    })
}

/// Cloud Hypervisor: hardware-reduced ACPI, power-off through the
/// sleep-control register, no isa-debug-exit.
fn cloud_hypervisor(cpus: u32) -> Case {
    Case::new(format!("cloud_hypervisor_smp{cpus}"), move |name| {
        let Some(vmm) = on_path("cloud-hypervisor") else {
            return Verdict::Skip("cloud-hypervisor is not on PATH".into());
        };
        if !kvm_opens() {
            return Verdict::Skip("cloud-hypervisor needs /dev/kvm, which does not open here".into());
        }
        let image = match boot_tests::image() {
            Ok(image) => image,
            Err(e) => return Verdict::Fail(e),
        };
        let mut command = std::process::Command::new(vmm);
        command
            .arg("--kernel")
            .arg(image)
            .args(["--serial", "tty", "--console", "off", "--cpus", &format!("boot={cpus}")])
            .args(["--memory", "size=256M", "--cmdline", "log=info"]);
        let outcome = match boot_tests::run_with_timeout(command, std::time::Duration::from_secs(120), name) {
            Ok(outcome) => outcome,
            Err(e) => return Verdict::Fail(e),
        };
        both(check_banner(&outcome, cpus as usize, 256), || {
            both(check_online(&outcome, cpus, cpus, None), || check_exit(&outcome, 0, Exit::PowerOff))
        })
    })
}

/// The image itself: ET_EXEC, loaded at 1 MiB or above, with a PVH note
/// whose entry is the ELF entry point.
fn image_is_a_pvh_exec() -> Case {
    Case::new("image_pvh_note", |_| {
        let image = match boot_tests::image().and_then(|p| std::fs::read(p).map_err(|e| e.to_string())) {
            Ok(bytes) => bytes,
            Err(e) => return Verdict::Fail(e),
        };
        match pvh_entry(&image) {
            Ok((entry, note_entry)) if entry == note_entry && entry >= 0x10_0000 => Verdict::Pass,
            Ok((entry, note_entry)) => Verdict::Fail(format!(
                "ELF entry {entry:#x}, PVH note entry {note_entry:#x}: must match, at or above 1 MiB"
            )),
            Err(e) => Verdict::Fail(e),
        }
    })
}

/// The switcher's exit path leaves FS and GS as the guest set them
/// (docs/switcher.md, "The host's state at an exit"). That is sound only
/// while no host code uses them: no `%fs:`/`%gs:` operand, no FS/GS-base
/// instruction, no `swapgs` anywhere in the image.
fn image_uses_no_fs_or_gs() -> Case {
    Case::new("image_uses_no_fs_or_gs", |_| {
        let image = match boot_tests::image() {
            Ok(path) => path,
            Err(e) => return Verdict::Fail(e),
        };
        let output = match std::process::Command::new("objdump")
            .args(["-d", "--no-show-raw-insn"])
            .arg(&image)
            .output()
        {
            Ok(output) if output.status.success() => output,
            Ok(output) => {
                return Verdict::Fail(format!("objdump failed: {}", String::from_utf8_lossy(&output.stderr)));
            }
            Err(e) => return Verdict::Fail(format!("objdump (Debian's binutils) could not run: {e}")),
        };
        let text = String::from_utf8_lossy(&output.stdout);
        let forbidden = ["%fs:", "%gs:", "rdfsbase", "wrfsbase", "rdgsbase", "wrgsbase", "swapgs"];
        let uses: Vec<&str> =
            text.lines().filter(|line| forbidden.iter().any(|f| line.contains(f))).take(5).collect();
        if text.lines().count() < 1000 {
            return Verdict::Fail("objdump printed almost nothing: is the image's code there?".into());
        }
        if uses.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail(format!("host code uses FS or GS: {uses:?}"))
        }
    })
}

/// The image stays lean: stripped, with its default guest inside, at most
/// 512 KiB. Measured the loader's way (what the VMM reads: headers and
/// segments, as `hv_core::elf::strip` keeps), and with binutils' `strip`
/// when it is installed, which keeps a few section headers more.
fn image_is_lean() -> Case {
    Case::new("image_stripped_size", |name| {
        const LIMIT: usize = 512 << 10;
        let path = match boot_tests::image() {
            Ok(path) => path,
            Err(e) => return Verdict::Fail(e),
        };
        let mut image = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => return Verdict::Fail(format!("cannot read {}: {e}", path.display())),
        };
        let loaded = match hv_core::elf::strip(&mut image) {
            Ok(keep) => keep,
            Err(e) => return Verdict::Fail(format!("the image is not an ELF the loader takes: {e}")),
        };
        if loaded > LIMIT {
            return Verdict::Fail(format!(
                "the image's headers and segments take {loaded} bytes, over {LIMIT}"
            ));
        }
        if on_path("strip").is_none() {
            return Verdict::Pass;
        }
        let stripped = std::env::temp_dir().join(format!("umbra-{name}-{}", std::process::id()));
        let status = std::process::Command::new("strip").arg("-o").arg(&stripped).arg(&path).status();
        let size = std::fs::metadata(&stripped).map(|m| m.len());
        let _ = std::fs::remove_file(&stripped);
        match (status, size) {
            (Ok(status), Ok(size)) if status.success() && size <= LIMIT as u64 => Verdict::Pass,
            (Ok(status), Ok(size)) if status.success() => {
                Verdict::Fail(format!("strip leaves {size} bytes of the image, over {LIMIT}"))
            }
            (status, size) => Verdict::Fail(format!("strip failed: {status:?}, {size:?}")),
        }
    })
}

/// The firmware's memory (its loaded segments and its bss) ends below the
/// lowest address of the guest kernel. Both run at low addresses, the
/// firmware identity-mapped and the guest kernel in linear mode, and gdb
/// holds both symbol files (scripts/debug.sh): where they overlap, gdb
/// names a guest address after a firmware symbol.
fn image_clear_of_the_guest_kernel() -> Case {
    Case::new("image_clear_of_the_guest_kernel", |_| {
        let read = |path: Result<std::path::PathBuf, String>| {
            path.and_then(|p| std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display())))
        };
        let (firmware, guest) = match (read(boot_tests::image()), read(boot_tests::guest_symbols())) {
            (Ok(firmware), Ok(guest)) => (firmware, guest),
            (Err(e), _) | (_, Err(e)) => return Verdict::Fail(e),
        };
        let (firmware, guest) = match (load_ranges(&firmware), load_ranges(&guest)) {
            (Ok(firmware), Ok(guest)) => (firmware, guest),
            (Err(e), _) | (_, Err(e)) => return Verdict::Fail(e),
        };
        let firmware_end = firmware.iter().map(|&(_, end)| end).max().unwrap_or(0);
        let guest_start = guest.iter().map(|&(start, _)| start).min().unwrap_or(0);
        if firmware_end != 0 && guest_start != 0 && firmware_end <= guest_start {
            Verdict::Pass
        } else {
            Verdict::Fail(format!(
                "the firmware's memory ends at {firmware_end:#x}, past the guest kernel's start at {guest_start:#x}"
            ))
        }
    })
}

/// The address ranges of an ELF's PT_LOAD segments, in memory (bss too).
fn load_ranges(elf: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    if elf.get(0..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) {
        return Err("not a 64-bit ELF".into());
    }
    let phoff = u64_at(32).ok_or("short ELF header")? as usize;
    let phentsize = u16_at(54).ok_or("short ELF header")? as usize;
    let phnum = u16_at(56).ok_or("short ELF header")? as usize;
    let mut ranges = Vec::new();
    for index in 0..phnum {
        let at = phoff + index * phentsize;
        if u32_at(at).ok_or("short program header")? == 1 {
            let vaddr = u64_at(at + 16).ok_or("short program header")?;
            let memsz = u64_at(at + 40).ok_or("short program header")?;
            ranges.push((vaddr, vaddr + memsz));
        }
    }
    Ok(ranges)
}

fn pvh_entry(elf: &[u8]) -> Result<(u64, u64), String> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    if elf.get(0..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) {
        return Err("not a 64-bit ELF".into());
    }
    if u16_at(16) != Some(2) {
        return Err(format!("ELF type {:?}, expected 2 (EXEC)", u16_at(16)));
    }
    let entry = u64_at(24).ok_or("short ELF header")?;
    let phoff = u64_at(32).ok_or("short ELF header")? as usize;
    let phentsize = u16_at(54).ok_or("short ELF header")? as usize;
    let phnum = u16_at(56).ok_or("short ELF header")? as usize;
    for index in 0..phnum {
        let ph = phoff + index * phentsize;
        if u32_at(ph) != Some(4) {
            continue; // not PT_NOTE
        }
        let (mut at, end) = (u64_at(ph + 8).unwrap_or(0) as usize, 0);
        let end = end + at + u64_at(ph + 32).unwrap_or(0) as usize;
        while at + 12 <= end {
            let (namesz, descsz, kind) =
                (u32_at(at).unwrap_or(0), u32_at(at + 4).unwrap_or(0), u32_at(at + 8).unwrap_or(0));
            let name_at = at + 12;
            let desc_at = name_at + (namesz as usize).div_ceil(4) * 4;
            if kind == 18 && elf.get(name_at..name_at + 4) == Some(b"Xen\0") {
                return Ok((entry, u32_at(desc_at).ok_or("short note")? as u64));
            }
            at = desc_at + (descsz as usize).div_ceil(4) * 4;
        }
    }
    Err("no XEN_ELFNOTE_PHYS32_ENTRY note".into())
}

/// A reset of the VM from QEMU's monitor keeps RAM as it was, the first
/// boot's guest memory included. The second boot must notice (the mark
/// the first boot left after its frame bitmaps) and count every frame as
/// dirty, so guest memory is scrubbed before it is handed out; the first
/// boot, on a new VM's RAM, must not. A hundred thousand guests one
/// after the other keep each boot running while the test acts.
fn reset_keeps_ram_dirty() -> Case {
    Case::new("tcg_microvm_reset_keeps_ram_dirty", |name| {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        use std::time::{Duration, Instant};

        const USED_BEFORE: &str = "memory: this RAM was used by an earlier boot";
        let image = match boot_tests::image() {
            Ok(image) => image,
            Err(error) => return Verdict::Fail(error),
        };
        let dir = boot_tests::workspace_root().join("target/boot-tests");
        let _ = std::fs::create_dir_all(&dir);
        let serial = dir.join(format!("{name}.log"));
        let _ = std::fs::remove_file(&serial);
        // No -no-reboot: with it, QEMU ends at a reset instead of
        // rebooting. The monitor reads the test's commands from stdin.
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-machine", "microvm", "-accel", "tcg", "-smp", "1", "-m", "128M"])
            .args(["-display", "none", "-nic", "none", "-monitor", "stdio"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-kernel")
            .arg(&image)
            .args(["-append", "log=debug guests=100000 guests_at_once=1 -- test=exit:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = match qemu.spawn() {
            Ok(child) => child,
            Err(error) => return Verdict::Fail(format!("could not start QEMU: {error}")),
        };
        let read = || std::fs::read_to_string(&serial).unwrap_or_default().replace('\r', "");
        // Waits until `done` holds of the serial output, for at most 120 s.
        let wait_for = |done: &dyn Fn(&str) -> bool| {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(120) {
                if done(&read()) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        };
        let banner = format!("umbra {VERSION}");
        // The output of the latest boot, and how many boots there were.
        let boots = |text: &str| text.matches(&banner).count();
        let latest_has_hello =
            |text: &str| text.rsplit(&banner).next().is_some_and(|boot| boot.contains("hello from ring 1"));
        let first_up = wait_for(&|text| boots(text) == 1 && latest_has_hello(text));
        let mut monitor = child.stdin.take().expect("piped");
        let _ = monitor.write_all(b"system_reset\n");
        let second_up = first_up && wait_for(&|text| boots(text) == 2 && latest_has_hello(text));
        let _ = monitor.write_all(b"quit\n");
        drop(monitor);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        let text = read();
        let fail =
            |why: &str| Verdict::Fail(format!("{why}\n      serial output kept in {}", serial.display()));
        if !first_up || !second_up {
            return fail("the guest did not come up twice, once before the reset and once after");
        }
        let (first, second) = text.split_at(text.rfind(&banner).unwrap_or(0));
        if first.contains(USED_BEFORE) {
            return fail("the first boot, on a new VM's RAM, took its RAM for used");
        }
        if !second.contains(USED_BEFORE) {
            return fail(&format!("the boot after the reset should say '{USED_BEFORE}'"));
        }
        // "guest memory: S KiB of T KiB scrubbed, the rest fresh" (log=debug).
        let scrubbed = |boot: &str| {
            let line = boot.lines().find_map(|l| l.strip_prefix("debug: guest memory: "))?;
            let mut words = line.split(' ');
            let scrubbed = words.next()?.parse::<u64>().ok()?;
            let total = words.nth(2)?.parse::<u64>().ok()?;
            Some((scrubbed, total))
        };
        match (scrubbed(first), scrubbed(second)) {
            (Some((0, _)), Some((all, total))) if all == total && total > 0 => {}
            other => {
                return fail(&format!(
                    "expected nothing scrubbed before the reset and all after, got {other:?}"
                ));
            }
        }
        Verdict::Pass
    })
}

/// Console input: bytes typed on QEMU's serial port reach the guest that
/// owns the console, through its shared page's input ring, with the input
/// ring's interrupt waking it from a HALT that has no clock armed. The
/// probe (`test=input:N`) says back what it read, escaped.
fn console_input(accel: Accel) -> Case {
    let config = Boot::new("microvm", accel).append("-- test=input:9").typing(b"hi there\n");
    Case::boot(format!("{}_microvm_console_input", accel.name()), config, |outcome| {
        check!(
            outcome,
            outcome.has_line("guest: input: hi there\\x0a"),
            "the guest should say back what was typed"
        );
        check!(outcome, outcome.has_line("stats: console input 9 bytes"), "the stats should count the input");
        check_exit(outcome, 0, Exit::DebugExit)
    })
}

/// `console=2`: the second of two guests gets the input; the first,
/// which ends at once, never reads any.
fn console_input_to_another_guest() -> Case {
    let config = Boot::new("microvm", Accel::Tcg)
        .append("guests=2 console=2 -- test=exit:0 -- test=input:5")
        .typing(b"hello");
    Case::boot("tcg_microvm_console_input_to_guest_2", config, |outcome| {
        check!(
            outcome,
            outcome.has_line("[g2] guest: input: hello"),
            "guest 2 should say back what was typed"
        );
        check!(
            outcome,
            outcome.lines_starting("stats: console input ").len() == 1,
            "only one guest should have console input in its stats"
        );
        check_exit(outcome, 0, Exit::DebugExit)
    })
}

/// HALT with no clock armed (`test=halt-forever`): nothing could ever wake
/// a guest that does not own the console, so it is killed; the guest that
/// owns the console waits for input instead, here until the watchdog.
fn halt_with_no_clock(accel: Accel, owns_console: bool) -> Case {
    let (name, words) = if owns_console {
        ("console_owner_halts_until_the_watchdog", "guest_timeout=2 -- test=halt-forever")
    } else {
        ("kill_halt-forever", "console=none -- test=halt-forever")
    };
    let config = Boot::new("microvm", accel).append(words);
    Case::boot(format!("{}_microvm_{name}", accel.name()), config, move |outcome| {
        let killed = outcome.line_starting("guest killed: ").unwrap_or("");
        let reason = if owns_console {
            "watchdog: still running after guest_timeout=2 seconds"
        } else {
            "HALT with virtual interrupts off or no clock armed"
        };
        check!(outcome, killed.contains(reason), "expected 'guest killed: ...{reason}...', got {killed:?}");
        check!(outcome, outcome.line_starting("umbra: crash").is_none(), "the host crashed");
        check_exit(outcome, GUEST_KILLED, Exit::DebugExit)
    })
}

fn main() {
    let mut cases = vec![
        image_is_a_pvh_exec(),
        image_is_lean(),
        image_uses_no_fs_or_gs(),
        image_clear_of_the_guest_kernel(),
    ];
    for accel in [Accel::Tcg, Accel::Kvm] {
        for machine in MACHINES {
            for smp in [1, 2, 4] {
                cases.push(standard_boot(machine, accel, smp));
            }
        }
        cases.push(cpus_limit(accel));
    }
    cases.push(single_threaded_tcg());
    cases.push(reset_keeps_ram_dirty());
    cases.push(console_input(Accel::Tcg));
    cases.push(console_input(Accel::Kvm));
    cases.push(console_input_to_another_guest());
    cases.push(warns_and_goes_on("tcg_microvm_junk_cmdline_4k", junk(4096), "warn: cmdline: ignored"));
    cases.push(warns_and_goes_on(
        "tcg_microvm_unknown_log_level",
        b"log=verbose".to_vec(),
        "warn: cmdline: unknown value 'verbose' for log=",
    ));
    cases.push(warns_and_goes_on(
        "tcg_microvm_bad_cpu_count",
        b"cpus=0".to_vec(),
        "warn: cmdline: unknown value '0' for cpus= (expected 1 to 64)",
    ));
    cases.push(warns_and_goes_on(
        "tcg_microvm_cmdline_too_long",
        vec![b'x'; 10_000],
        "warn: cmdline is longer than",
    ));
    for machine in MACHINES {
        cases.push(too_little_ram(machine));
        cases.push(acpi_power_off(machine));
        cases.push(native_acpi_power_off(machine));
    }
    for accel in [Accel::Tcg, Accel::Kvm] {
        cases.push(small_machine(accel, "64M", 64));
        cases.push(small_machine(accel, "32M", 32));
    }
    cases.push(guests_share(
        "64M",
        4,
        ("guest memory: ", " MiB each, so that 4 guests fit at once (less than the default 64 MiB)"),
    ));
    cases.push(guests_share(
        "32M",
        8,
        (
            "warn: guest memory: 4 MiB each, the least; this machine has room for ",
            " guests at once, not 8: the others wait their turn",
        ),
    ));
    cases.push(smallest_guest());
    cases.push(guest_mem_too_large());
    for (kind, expect) in [("ud", "#UD"), ("pf", "#PF"), ("panic", "panic"), ("stack", "#DF"), ("ap", "#UD")]
    {
        cases.push(deliberate_crash(Accel::Tcg, kind, expect));
    }
    cases.push(deliberate_crash(Accel::Kvm, "ap", "#UD"));
    cases.push(no_acpi());
    cases.push(rootfs_too_large());
    cases.push(guest_without_probes());
    for accel in [Accel::Tcg, Accel::Kvm] {
        cases.push(junk_module_is_refused(accel));
        cases.push(rootfs_reaches_the_guest(accel));
        cases.push(native_rootfs(accel));
        cases.push(guest_as_module(accel));
        cases.push(guest_status(accel, 7, 7, "guest exited with status 7"));
        cases.push(guest_status(
            accel,
            150,
            GUEST_STATUS_OUT_OF_RANGE,
            "guest exited with status 150, which is out of range",
        ));
        for (test, reason) in [
            ("map-switcher", "switcher region"),
            ("touch-switcher", "wrote the switcher's read-only state at 0xffffffffffc03000"),
            ("bad-console", "CONSOLE_WRITE: buffer 0x700000000000 (+16) is not the guest's memory"),
            ("unknown-hypercall", "unknown hypercall 0xdead"),
            ("no-init", "first hypercall was CONSOLE_WRITE (0x2), not INIT"),
            ("first-init-at-switcher", "guest asked the host to access the switcher region"),
            ("bad-idt", "LOAD_IDT_ENTRY: vector 13, handler 0xffffffffffc00000: handler in the switcher"),
            ("fault-on-bad-stack", "double fault while delivering general protection fault (#GP)"),
        ] {
            cases.push(guest_killed(accel, test, reason));
        }
        cases.push(halt_with_no_clock(accel, false));
        cases.push(halt_with_no_clock(accel, true));
        cases.push(guest_proves(
            accel,
            "reflect",
            "guest: reflected #DE x1, #GP x1 (error 0x0), #PF x1 at 0x500000000000 (error 0x0)",
        ));
        cases.push(guest_proves(accel, "timer", "guest: 5 clock ticks, each after a HALT"));
        cases.push(watchdog(accel));
        cases.push(several_guests(accel));
        cases.push(guests_on_every_cpu(accel, 2, 3));
        // Under KVM six guests: eight take this nested KVM minutes when
        // the machine is busy, and prove nothing more. More guests than
        // CPUs, so that some must move.
        cases.push(guests_on_every_cpu(accel, 4, if accel == Accel::Kvm { 6 } else { 8 }));
        cases.push(isolation(accel));
        cases.push(fpu_isolation(accel, 2));
        cases.push(fpu_isolation(accel, 1));
        cases.push(kernel_scenario(accel, "showcase"));
        cases.push(kernel_scenario(accel, "scenario:kill"));
    }
    for scenario in ["hello", "demand-zero", "cow", "preempt", "sbrk", "churn"] {
        cases.push(kernel_scenario(Accel::Tcg, Box::leak(format!("scenario:{scenario}").into_boxed_str())));
    }
    for seed in 1..=6 {
        cases.push(fuzz_seed(Accel::Tcg, seed));
    }
    for seed in 1..=2 {
        cases.push(fuzz_seed(Accel::Kvm, seed));
    }
    cases.push(cloud_hypervisor(2));
    cases.push(cloud_hypervisor(4));
    run_cases(cases, 2)
}
