//! # Debugging with gdb, as a test
//!
//! `scripts/debug.sh` is how a person debugs Umbra and its guest kernel:
//! QEMU halted with its gdb stub, gdb holding the firmware's symbols and
//! the guest kernel's (at both addresses the kernel runs at). This test
//! drives that script in batch mode, under TCG and under KVM when
//! `/dev/kvm` opens, and reads gdb's transcript the way a person would.
//! Two sessions, each booting to the end:
//!
//! - `firmware_and_linear_mode`: it stops at `umbra_main`, then at
//!   `guest_main`, in the guest kernel, still in linear mode at ring 1
//!   (`cs` 0x19), with a backtrace down to `guest_entry`;
//! - `higher_half`: it stops at the kernel's system-call handler, in its
//!   higher half, with a backtrace naming the trap path, and steps out of
//!   it (`finish`) back into that path, in a scenario of one process.
//!
//! Both let the boot go on, and Umbra exits with status 0.
//!
//! Each backtrace must end at the entry stub it started from (the
//! firmware's, the guest's, the kernel's trap stub), which the stubs'
//! unwind information says.
//!
//! Every breakpoint is a hardware one, the only kind this nested KVM
//! survives, and the script makes gdb's own (`finish`) hardware ones too
//! there. Under KVM the linear-mode session is skipped by name: this
//! nested KVM gives a hardware breakpoint hit at those low addresses to
//! the VM rather than to gdb (seen with `--guest-break guest_entry` and
//! `guest_main`: the guest is killed with "debug trap (#DB)"). gdb's transcript is kept in
//! `target/boot-tests/<case>.log`, the serial console next to it.
//!
//! Run it with `cargo test -p boot-tests --test gdb`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use boot_tests::{
    Accel, Case, Exit, Outcome, Verdict, check_exit, kvm_opens, on_path, run_cases, run_with_timeout,
    workspace_root,
};
use umbra_abi::status::SUCCESS;

/// One gdb session: where it stops, what it does there, and what its
/// transcript must show, in order.
struct Session {
    /// The case's name after `<accel>_microvm_gdb_`.
    name: &'static str,
    /// debug.sh's options: where to stop, and what the guest runs.
    options: &'static [&'static str],
    /// What gdb does once stopped at the first breakpoint.
    commands: &'static str,
    steps: &'static [Step],
    /// Why this nested KVM cannot run it, if it cannot.
    kvm_cannot: Option<&'static str>,
}

/// One thing the transcript must show, after the previous one.
struct Step {
    what: &'static str,
    seen: Seen,
}

/// The line a step looks for.
enum Seen {
    /// One that starts with the first text and contains the second.
    Line(&'static str, &'static str),
    /// `info registers cs` showing 0x19: the guest kernel's code, ring 1.
    Ring1,
}

impl Seen {
    fn in_line(&self, line: &str) -> bool {
        match *self {
            Seen::Line(starts, contains) => line.starts_with(starts) && line.contains(contains),
            Seen::Ring1 => {
                let mut words = line.split_whitespace();
                words.next() == Some("cs") && words.next() == Some("0x19")
            }
        }
    }
}

/// A step whose line starts with `starts` and contains `contains`.
const fn step(what: &'static str, starts: &'static str, contains: &'static str) -> Step {
    Step { what, seen: Seen::Line(starts, contains) }
}

/// The firmware, then the guest kernel's first steps in linear mode, at
/// its physical addresses.
const LINEAR_MODE: Session = Session {
    name: "firmware_and_linear_mode",
    options: &["--break", "umbra_main", "--guest-break", "guest_main"],
    commands: "bt\ncontinue\nbt\ninfo registers cs\ndelete\ncontinue\n",
    steps: &[
        step("a stop at umbra_main", "", "hit Breakpoint 1, umbra::boot::umbra_main ("),
        step("umbra_main at the top of the backtrace", "#0  umbra::boot::umbra_main", ""),
        // The low location: the kernel starts in linear mode.
        step("a stop in the guest at guest_main's low address", "", "hit Breakpoint 2.1, "),
        step("guest_main in the backtrace", "#", "guest::boot::guest_main ("),
        step("guest_entry under it", "#", " in guest_entry ()"),
        Step { what: "cs 0x19 (ring 1) in guest_main", seen: Seen::Ring1 },
    ],
    kvm_cannot: Some(
        "this nested KVM hands a hardware breakpoint hit at the guest kernel's linear-mode \
         addresses to the VM as a #DB instead of to gdb (the guest is killed with 'debug trap'); \
         the same breakpoints in the kernel's higher half stop in gdb",
    ),
};

/// The guest kernel's system-call handler, in its higher half, and a
/// step out of it. The guest runs a scenario of one process: with more,
/// the timer may hand the CPU to another process while `finish` runs,
/// and that one's system call would stop at the breakpoint first (seen
/// once under TCG on a loaded machine). Breakpoints are deleted once passed: KVM has four
/// debug registers, and a guest breakpoint takes two (one per address the
/// kernel runs at).
const HIGHER_HALF: Session = Session {
    name: "higher_half",
    options: &["--guest-break", "guest::kernel::trap::syscall", "--append", "-- test=scenario:sbrk"],
    commands: "bt\ninfo registers cs\nfinish\ndelete\ncontinue\n",
    steps: &[
        step(
            "a stop at the system-call handler's high address",
            "",
            "hit Breakpoint 1.2, guest::kernel::trap::syscall (",
        ),
        step("the handler at the top of the backtrace", "#0  guest::kernel::trap::syscall (", ""),
        step("kernel_trap under it", "#1  0xffff8", " in guest::kernel::trap::kernel_trap ("),
        step("the trap stub under that", "#2  0xffff8", " in kernel_trap_common ()"),
        Step { what: "cs 0x19 (ring 1) in the handler", seen: Seen::Ring1 },
        step(
            "finish: back in kernel_trap, in the higher half",
            "0xffff8",
            " in guest::kernel::trap::kernel_trap (",
        ),
    ],
    kvm_cannot: None,
};

/// A port nothing listens on now. Another process may take it before
/// QEMU does; the case then tries another.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn fail(why: impl std::fmt::Display, transcript: &Path, serial: &Path) -> Verdict {
    Verdict::Fail(format!(
        "{why}\n      gdb's transcript kept in {}\n      serial output kept in {}",
        transcript.display(),
        serial.display()
    ))
}

fn gdb_session(accel: Accel, session: &'static Session) -> Case {
    Case::new(format!("{}_microvm_gdb_{}", accel.name(), session.name), move |name| {
        if accel == Accel::Kvm && !kvm_opens() {
            return Verdict::Skip("/dev/kvm does not open on this machine".into());
        }
        if accel == Accel::Kvm
            && let Some(why) = session.kvm_cannot
        {
            return Verdict::Skip(why.into());
        }
        if on_path("gdb").is_none() {
            return Verdict::Fail("gdb is not installed: scripts/test.sh installs Debian's gdb".into());
        }
        if let Err(e) = boot_tests::guest_symbols() {
            return Verdict::Fail(e);
        }
        let dir = workspace_root().join("target/boot-tests");
        let commands = dir.join(format!("{name}.gdb"));
        let serial = dir.join(format!("{name}-serial.log"));
        if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&commands, session.commands))
        {
            return Verdict::Fail(format!("cannot write {}: {e}", commands.display()));
        }
        let _ = std::fs::remove_file(&serial);
        // The boot's own limit, inside the script; the outer one also
        // covers the script's build check and gdb's start.
        let limit = if accel == Accel::Kvm { 300 } else { 120 };
        let mut outcome = None;
        for _ in 0..3 {
            let port = match free_port() {
                Ok(port) => port,
                Err(e) => return Verdict::Fail(e),
            };
            let mut script = Command::new("bash");
            script
                .arg(workspace_root().join("scripts/debug.sh"))
                .args(["--accel", accel.name(), "--machine", "microvm"])
                .args(session.options)
                .arg("--batch")
                .arg(&commands)
                .args(["--port", &port.to_string(), "--timeout", &limit.to_string()])
                .arg("--serial")
                .arg(&serial);
            let run = match run_with_timeout(script, Duration::from_secs(limit + 120), name) {
                Ok(run) => run,
                Err(e) => return Verdict::Fail(e),
            };
            let port_taken = run.stderr.contains("Address already in use");
            outcome = Some(run);
            if !port_taken {
                break;
            }
        }
        let Some(outcome) = outcome else { return Verdict::Fail("no run".into()) };
        let (transcript, console) = (&outcome.log, serial.as_path());
        let mut lines = outcome.lines().into_iter();
        let mut after = "the start";
        for step in session.steps {
            if !lines.any(|line| step.seen.in_line(line)) {
                return fail(
                    format_args!("gdb did not show {} (after {after})", step.what),
                    transcript,
                    console,
                );
            }
            after = step.what;
        }
        // The entry stubs say nothing called them: a backtrace ends there
        // rather than wandering into what the stack holds below.
        let lines = outcome.lines();
        for (at, line) in lines.iter().enumerate() {
            let stub = ["in long_mode_entry ()", "in guest_entry ()", "in kernel_trap_common ()"]
                .into_iter()
                .find(|stub| line.starts_with('#') && line.contains(stub));
            let next = lines.get(at + 1).copied().unwrap_or("");
            if let Some(stub) = stub
                && (next.starts_with('#') || next.starts_with("Backtrace stopped"))
            {
                return fail(
                    format_args!("the backtrace went on past '{stub}': {next:?}"),
                    transcript,
                    console,
                );
            }
        }
        // The boot itself, as debug.sh saw it end: its console, and its
        // exit code, which is Umbra's status.
        let boot = Outcome {
            serial: std::fs::read_to_string(console).unwrap_or_default(),
            stderr: outcome.stderr.clone(),
            exit_code: outcome.exit_code,
            log: console.to_path_buf(),
        };
        let ended =
            boot.lines_starting("guest: scenario ").iter().any(|l| l.ends_with("programs ended as expected"));
        if !ended {
            return fail("the scenario did not run to its end after the debugging", transcript, console);
        }
        match check_exit(&boot, SUCCESS, Exit::Status) {
            Verdict::Fail(why) => {
                Verdict::Fail(format!("{why}\n      gdb's transcript kept in {}", transcript.display()))
            }
            verdict => verdict,
        }
    })
}

fn main() {
    let mut cases = Vec::new();
    for accel in [Accel::Tcg, Accel::Kvm] {
        for session in [&LINEAR_MODE, &HIGHER_HALF] {
            cases.push(gdb_session(accel, session));
        }
    }
    run_cases(cases, 2)
}
