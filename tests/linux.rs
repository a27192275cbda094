//! # Linux programs, three ways: the host, the guest kernel, the guest under Umbra
//!
//! The guest kernel runs unmodified static Linux binaries from a cpio root
//! filesystem. The oracle for "runs them correctly" is Linux itself: each
//! case in `tests/linux/` is a shell script run by the very same binary
//! (Debian's busybox-static, or bash-static) three ways, and all three
//! must print the same bytes and end with the same status:
//!
//! 1. on this Linux machine, with an empty environment but for `PATH` (a
//!    directory of links to busybox, so `sort` is busybox's, not the
//!    host's), `HOME=/` and `TERM=linux`, in `/`;
//! 2. the guest kernel booted natively by QEMU, with the archive as its
//!    initrd and `init=` naming the shell and the case;
//! 3. the same guest kernel under Umbra, with the same archive.
//!
//! A guest's program output is what lies between the kernel's lines
//! `guest: linux: start` and `guest: linux: init exited with status N`.
//! Booting once per case would cost minutes, so most cases share a boot:
//! `/tests/run-cases` runs them one after another, framing each one's
//! output and status with marker lines, and every case is still judged
//! and reported by its own name. A few cases also boot alone, with the
//! case as init itself, so the kernel's framing and the exit contract
//! (init's status becomes the guest's, and QEMU's exit code follows it)
//! are checked on real statuses too.
//!
//! Consoles differ on bytes other than tab, newline and printable ASCII
//! (Umbra prints `?` for them unless the guest owns the terminal), and
//! the serial line ends lines with `\r\n`; every output is brought to one
//! form before comparing, those bytes as `?` and no `\r` (the cases print
//! ASCII anyway). A program output not ending in a newline gets one.
//!
//! Everything runs under TCG. Under this machine's nested KVM, Linux
//! programs in the guest run far slower, so there only two cases boot
//! alone, natively and under Umbra, with the XMM check; the rest is
//! skipped there by name, with the reason ([`NOT_UNDER_KVM`]).
//! `cargo test -p boot-tests --test linux -- host` runs only the host leg
//! (no QEMU): every case twice, which must agree with itself.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use boot_tests::{
    Accel, Boot, Case, Exit, Outcome, Verdict, check_exit, guest_elf, image, kvm_opens, run_cases,
    run_with_timeout, workspace_root,
};
use umbra_abi::status::qemu_exit_code;

/// The cases bash runs too (bash-only cases are named `bash_*`; the
/// others are plain POSIX shell that bash must run like busybox's does).
const BASH_CASES: [&str; 11] = [
    "bash_arrays",
    "bash_brace",
    "bash_features",
    "bash_regex",
    "bash_strings",
    "arith",
    "case_stmt",
    "functions",
    "heredoc",
    "loops",
    "pipeline",
];

/// Cases that also boot alone, as init itself: non-zero statuses, and a
/// plain one. Their output must not depend on whether stdout is a
/// terminal (alone, it is the console; in a shared boot, a pipe).
const ALONE: [(Shell, &str); 5] = [
    (Shell::Busybox, "exit3"),
    (Shell::Busybox, "exit_last"),
    (Shell::Busybox, "arith"),
    (Shell::Busybox, "uname_id"),
    (Shell::Bash, "bash_brace"),
];

/// What runs under this machine's KVM: two cases booted alone and the
/// XMM check. The rest is skipped there, by name, for this reason.
const UNDER_KVM: [&str; 3] = ["alone:exit3", "alone:arith", "xmm"];
const NOT_UNDER_KVM: &str = "this nested KVM emulates the guest kernel's every instruction (about 2 us each, see \
     docs/performance.md), so system-call-heavy programs crawl there (measured 2026-11-26: a shared boot of busybox's \
     cases ran 12 in 25 minutes, natively); every case runs under TCG, and under KVM two boot alone, natively and \
     under Umbra, with the XMM check";

/// How long one case may take on the host.
const HOST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a boot that runs every case may take: generous, as timeouts
/// only catch hangs (the measured times are in the README).
const SHARED_BOOT_TIMEOUT: Duration = Duration::from_secs(420);
/// How long a boot that runs one case may take.
const ALONE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Shell {
    Busybox,
    Bash,
}

impl Shell {
    fn name(self) -> &'static str {
        match self {
            Shell::Busybox => "busybox",
            Shell::Bash => "bash",
        }
    }

    /// Where the shell lives in the root filesystem.
    fn in_guest(self) -> &'static str {
        match self {
            Shell::Busybox => "/bin/sh",
            Shell::Bash => "/bin/bash",
        }
    }
}

/// What every leg needs: the two archives and the host's copies of the
/// shells they hold.
struct Inputs {
    rootfs: PathBuf,
    rootfs_bash: PathBuf,
    busybox: PathBuf,
    bash: PathBuf,
    /// A directory with a link to busybox for each applet, as the host's PATH.
    applets: PathBuf,
}

impl Inputs {
    fn rootfs(&self, shell: Shell) -> &Path {
        match shell {
            Shell::Busybox => &self.rootfs,
            Shell::Bash => &self.rootfs_bash,
        }
    }
}

fn work_dir() -> PathBuf {
    workspace_root().join("target/linux-tests")
}

/// Build both archives with `scripts/rootfs.sh` (which downloads the
/// Debian packages once) and the host's applet directory, once per run.
fn inputs() -> Result<&'static Inputs, String> {
    static INPUTS: OnceLock<Result<Inputs, String>> = OnceLock::new();
    INPUTS.get_or_init(make_inputs).as_ref().map_err(Clone::clone)
}

fn make_inputs() -> Result<Inputs, String> {
    let root = workspace_root();
    let dir = work_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let rootfs = dir.join("rootfs.cpio");
    let rootfs_bash = dir.join("rootfs-bash.cpio");
    // The bash archive also carries the C programs (`fuzz`, `xmm_processes`).
    for (archive, extra) in [(&rootfs, &[][..]), (&rootfs_bash, &["--bash", "--c-programs"][..])] {
        let mut script = Command::new("bash");
        script.arg(root.join("scripts/rootfs.sh")).args(extra).arg("-o").arg(archive);
        let status = script.status().map_err(|e| format!("cannot run scripts/rootfs.sh: {e}"))?;
        if !status.success() {
            return Err(format!("scripts/rootfs.sh {} failed ({status})", extra.join(" ")));
        }
    }
    let cache = root.join("target/rootfs-cache");
    let busybox = cache.join("busybox-static/bin/busybox");
    let bash = cache.join("bash-static/bin/bash-static");
    let applets = dir.join("host-applets");
    let _ = std::fs::remove_dir_all(&applets);
    std::fs::create_dir_all(&applets).map_err(|e| format!("cannot create {}: {e}", applets.display()))?;
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", busybox.display()))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| !a.is_empty()) {
        std::os::unix::fs::symlink(&busybox, applets.join(applet))
            .map_err(|e| format!("cannot link applet {applet}: {e}"))?;
    }
    Ok(Inputs { rootfs, rootfs_bash, busybox, bash, applets })
}

/// Every case's name: the scripts in `tests/linux/`, sorted.
fn case_names() -> Vec<String> {
    let dir = workspace_root().join("tests/linux");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".sh").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The cases a shell runs.
fn cases_for(shell: Shell) -> Vec<String> {
    match shell {
        Shell::Busybox => case_names().into_iter().filter(|n| !n.starts_with("bash_")).collect(),
        Shell::Bash => BASH_CASES.iter().map(|n| n.to_string()).collect(),
    }
}

/// A program's output as Umbra's console shows it, without the serial
/// line's carriage returns, ending in a newline unless empty.
fn normalise(text: impl Iterator<Item = char>) -> String {
    let mut out: String = text
        .filter(|&c| c != '\r')
        .map(|c| if c == '\n' || c == '\t' || (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// What one run of a case printed, and its status.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Run {
    output: String,
    status: i32,
    /// It printed only tab, newline and printable ASCII: what every
    /// console shows as it is.
    plain: bool,
}

/// Run a case on the host: the same shell binary, a bare environment, in
/// `/`, stdout and stderr into one pipe (as the guest's runner does).
fn host_run(inputs: &Inputs, shell: Shell, name: &str) -> Result<Run, String> {
    let script = workspace_root().join("tests/linux").join(format!("{name}.sh"));
    let mut command = match shell {
        Shell::Busybox => {
            let mut c = Command::new(&inputs.busybox);
            c.arg("sh");
            c
        }
        Shell::Bash => Command::new(&inputs.bash),
    };
    let (mut reader, writer) = std::io::pipe().map_err(|e| format!("no pipe: {e}"))?;
    let writer_too = writer.try_clone().map_err(|e| format!("no pipe: {e}"))?;
    command
        .arg(&script)
        .env_clear()
        .env("PATH", &inputs.applets)
        .env("HOME", "/")
        .env("TERM", "linux")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_too)
        // Its own process group, so a timeout ends its children too.
        .process_group(0);
    let mut child = command.spawn().map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    // The command holds the pipe's write ends: drop them, so the reader
    // sees the end once the case's processes are gone.
    drop(command);
    let output = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        bytes
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break Some(status),
            None if started.elapsed() > HOST_TIMEOUT => break None,
            None => thread::sleep(Duration::from_millis(5)),
        }
    };
    // A background child left running would hold the pipe open; the guest
    // would not print its output either, once init has ended.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let bytes = output.join().unwrap_or_default();
    let Some(status) = status else {
        return Err(format!("{name} timed out on the host after {HOST_TIMEOUT:?}"));
    };
    let status = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1);
    let plain = bytes.iter().all(|&b| b == b'\t' || b == b'\n' || (0x20..0x7f).contains(&b));
    Ok(Run { output: normalise(bytes.iter().map(|&b| char::from(b))), status, plain })
}

/// Host runs, by shell and case.
type HostRuns = HashMap<(Shell, String), Result<Run, String>>;

/// A case's host run, once per test run.
fn host_result(shell: Shell, name: &str) -> Result<Run, String> {
    static CACHE: OnceLock<Mutex<HostRuns>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(known) = cache.lock().unwrap().get(&(shell, name.to_string())) {
        return known.clone();
    }
    let run = inputs().and_then(|inputs| host_run(inputs, shell, name));
    cache.lock().unwrap().insert((shell, name.to_string()), run.clone());
    run
}

/// The guest program's output and status, cut out of the console between
/// the kernel's framing lines.
fn program_run(outcome: &Outcome) -> Result<Run, String> {
    let serial = outcome.serial.replace('\r', "");
    const START: &str = "guest: linux: start\n";
    let Some(start) = serial.find(START).map(|at| at + START.len()) else {
        return Err("no 'guest: linux: start' line".into());
    };
    let rest = &serial[start..];
    for (prefix, offset) in
        [("guest: linux: init exited with status ", 0), ("guest: linux: init killed by signal ", 128)]
    {
        let Some(at) = rest
            .rfind(&format!("\n{prefix}"))
            .map(|at| at + 1)
            .or_else(|| rest.starts_with(prefix).then_some(0))
        else {
            continue;
        };
        let line = rest[at..].lines().next().unwrap_or("");
        let number: i32 =
            line[prefix.len()..].trim().parse().map_err(|_| format!("unreadable final line {line:?}"))?;
        return Ok(Run { output: normalise(rest[..at].chars()), status: number + offset, plain: true });
    }
    Err(format!(
        "no 'guest: linux: init exited with status N' line after the start (QEMU exit code {:?})",
        outcome.exit_code
    ))
}

/// The first difference between the host's output and a guest's, as a
/// unified diff would show it, with a line of context on each side.
fn first_difference(host: &str, guest: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (host.lines().collect(), guest.lines().collect());
    let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) else {
        return "outputs differ only in their final newline".into();
    };
    let mut diff = format!("@@ line {} @@", i + 1);
    if i > 0 {
        diff += &format!("\n       {}", a[i - 1]);
    }
    for (sign, lines) in [('-', &a), ('+', &b)] {
        match lines.get(i) {
            Some(line) => diff += &format!("\n      {sign}{line}"),
            None => diff += &format!("\n      {sign}(end of output)"),
        }
    }
    diff + "\n      (- host, + guest)"
}

/// Compare a guest's run of a case with the host's.
fn compare(host: &Run, guest: &Run, leg: &str) -> Result<(), String> {
    if host.output != guest.output {
        return Err(format!(
            "{leg}: output differs from the host's:\n      {}",
            first_difference(&host.output, &guest.output)
        ));
    }
    if host.status != guest.status {
        return Err(format!("{leg}: status {}, the host's {}", guest.status, host.status));
    }
    Ok(())
}

/// One guest kernel boot: natively, or under Umbra.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Leg {
    Native,
    Umbra,
}

impl Leg {
    fn name(self) -> &'static str {
        match self {
            Leg::Native => "native",
            Leg::Umbra => "umbra",
        }
    }
}

/// Boot the guest kernel with `rootfs`, running `init` (a program and its
/// arguments); natively the kernel reads the command line itself, under
/// Umbra it gets the words after `--`.
fn boot(
    leg: Leg,
    accel: Accel,
    rootfs: &Path,
    init: &str,
    timeout: Duration,
    log: &str,
) -> Result<Outcome, String> {
    let kernel = match leg {
        Leg::Native => guest_elf()?,
        Leg::Umbra => image()?,
    };
    let append = match leg {
        Leg::Native => format!("init={init}"),
        Leg::Umbra => format!("-- init={init}"),
    };
    let mut config =
        Boot::new("microvm", accel).smp(1).mem("512M").append(append).initrd(rootfs.to_path_buf());
    config.timeout = timeout;
    run_with_timeout(config.command(&kernel), timeout, log)
}

/// The exit contract of a guest boot whose init ended with `status`:
/// natively the kernel exits through isa-debug-exit with it; under Umbra
/// the last line is Umbra's and QEMU exits accordingly.
fn check_boot_exit(leg: Leg, outcome: &Outcome, status: i32) -> Result<(), String> {
    let Ok(status) = u8::try_from(status) else {
        return Err(format!("status {status} is not a guest status"));
    };
    match leg {
        Leg::Umbra => match check_exit(outcome, status, Exit::DebugExit) {
            Verdict::Fail(why) => Err(why),
            _ => Ok(()),
        },
        Leg::Native if outcome.exit_code == Some(qemu_exit_code(status)) => Ok(()),
        Leg::Native => Err(format!(
            "QEMU exit code {:?}, expected {} for status {status}; log {}",
            outcome.exit_code,
            qemu_exit_code(status),
            outcome.log.display()
        )),
    }
}

/// The Linux-ABI fuzzer's seeds the suite runs, and the calls each makes
/// (`tests/linux-c/fuzz.c`, in the bash archive); the million-call
/// campaign is `scripts/linux-fuzz.sh`. Its verdict is its last line: the
/// guest kernel answered every call and the program reached its end.
const FUZZ_SEEDS: [u64; 2] = [1, 2];
const FUZZ_CALLS: u64 = 20_000;

/// One fuzzer seed, natively and under Umbra.
fn fuzz(accel: Accel, seed: u64, case_name: &str) -> Verdict {
    let done = format!("linux-fuzz: seed {seed}: ");
    c_program(
        accel,
        &format!("fuzz:{seed}"),
        &format!("/bin/linux-fuzz -g {seed} {FUZZ_CALLS}"),
        case_name,
        |line| line.starts_with(&done) && line.ends_with(" skipped, done"),
    )
}

/// Two processes, each checking its XMM registers and MXCSR survive the
/// other's turns (`tests/linux-c/xmm.c`).
fn xmm_processes(accel: Accel, case_name: &str) -> Verdict {
    c_program(accel, "xmm", "/bin/xmm-isolation 500", case_name, |line| {
        line == "xmm: 500 rounds in each of 2 processes, every XMM register and MXCSR kept"
    })
}

/// A C program of the bash archive as init, natively and under Umbra: a
/// line that `passed` accepts, then status 0.
fn c_program(
    accel: Accel,
    what: &str,
    init: &str,
    case_name: &str,
    passed: impl Fn(&str) -> bool,
) -> Verdict {
    if let Some(skip) = guest_skip(accel, what) {
        return skip;
    }
    let inputs = match inputs() {
        Ok(inputs) => inputs,
        Err(error) => return Verdict::Fail(error),
    };
    let mut failures = Vec::new();
    for leg in [Leg::Native, Leg::Umbra] {
        let log = format!("{case_name}_{}", leg.name());
        let checked =
            boot(leg, accel, inputs.rootfs(Shell::Bash), init, ALONE_TIMEOUT, &log).and_then(|outcome| {
                if !outcome.lines().iter().any(|line| passed(line)) {
                    return Err(format!(
                        "no passing line; last: {}; log {}",
                        outcome.last_line(),
                        outcome.log.display()
                    ));
                }
                check_boot_exit(leg, &outcome, 0)
            });
        if let Err(why) = checked {
            failures.push(format!("{}: {why}", leg.name()));
        }
    }
    if failures.is_empty() { Verdict::Pass } else { Verdict::Fail(failures.join("\n      ")) }
}

/// One boot that ran many cases through `/tests/run-cases`.
struct SharedBoot {
    outcome: Result<Outcome, String>,
    /// Each case's run, by name; a case the boot never finished has none.
    cases: BTreeMap<String, Run>,
    /// The case that was running when the boot ended, if one was.
    unfinished: Option<(String, String)>,
    /// Why the kernel's framing lines were not found, if they were not.
    framing: Result<(), String>,
}

/// Cut the runner's framed cases out of a program's output.
fn split_cases(program: &str) -> (BTreeMap<String, Run>, Option<(String, String)>) {
    let mut cases = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in program.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        if let Some(name) = bare.strip_prefix("=== case ") {
            current = Some((name.to_string(), String::new()));
        } else if let Some(rest) = bare.strip_prefix("=== status ")
            && let Some((name, status)) = rest.rsplit_once(' ')
            && let Some((running, output)) = current.take_if(|(running, _)| running == name)
        {
            let status = status.parse().unwrap_or(-1);
            cases.insert(running, Run { output, status, plain: true });
        } else if let Some((_, output)) = current.as_mut() {
            output.push_str(line);
        }
    }
    (cases, current)
}

/// One shared boot: which kernel, accelerator and shell, and which part
/// of the shell's cases (busybox's are split in two, so two boots share
/// the machine's two cores).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BootKey {
    accel: Accel,
    shell: Shell,
    leg: Leg,
    part: usize,
}

impl BootKey {
    fn name(self) -> String {
        format!("linux_{}_{}_{}_boot{}", self.accel.name(), self.shell.name(), self.leg.name(), self.part + 1)
    }
}

/// Into how many boots a shell's cases are split.
fn parts(shell: Shell) -> usize {
    match shell {
        Shell::Busybox => 2,
        Shell::Bash => 1,
    }
}

/// Which part of a shell's cases a case is in: the runner deals the
/// `/bin/sh` cases out in name order, as `cases_for` lists them.
fn part_of(shell: Shell, name: &str) -> usize {
    cases_for(shell).iter().position(|n| n == name).unwrap_or(0) % parts(shell)
}

fn shared_boot(key: BootKey) -> SharedBoot {
    let init = match key.shell {
        // Without names, the runner picks its part of every /bin/sh case.
        Shell::Busybox => {
            format!("/bin/sh /tests/run-cases /bin/sh --part {}/{}", key.part, parts(key.shell))
        }
        Shell::Bash => format!("/bin/sh /tests/run-cases /bin/bash {}", BASH_CASES.join(" ")),
    };
    let started = Instant::now();
    let outcome = inputs().and_then(|inputs| {
        boot(key.leg, key.accel, inputs.rootfs(key.shell), &init, SHARED_BOOT_TIMEOUT, &key.name())
    });
    let program = outcome.as_ref().map(program_run);
    let (cases, unfinished) = match &program {
        Ok(Ok(run)) => split_cases(&run.output),
        // Without the final line, take what the console shows after the start.
        Ok(Err(_)) => {
            let serial = outcome.as_ref().map(|o| o.serial.replace('\r', "")).unwrap_or_default();
            let after = serial.split_once("guest: linux: start\n").map(|(_, rest)| rest).unwrap_or("");
            split_cases(&normalise(after.chars()))
        }
        Err(_) => Default::default(),
    };
    let framing = match program {
        Ok(Err(why)) => Err(why),
        _ => Ok(()),
    };
    println!(
        "    {}: {} cases finished in {:.1} s",
        key.name(),
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    SharedBoot { outcome, cases, unfinished, framing }
}

/// A shared boot, booted once by whichever case needs it first and kept
/// for every other case.
fn shared(key: BootKey) -> &'static SharedBoot {
    static BOOTS: OnceLock<Mutex<HashMap<BootKey, &'static OnceLock<SharedBoot>>>> = OnceLock::new();
    let slot = *BOOTS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(key)
        .or_insert_with(|| Box::leak(Box::new(OnceLock::new())));
    slot.get_or_init(|| shared_boot(key))
}

/// Why a guest leg has no result for a case.
fn missing_case(boot: &SharedBoot, leg: Leg, name: &str) -> String {
    let leg = leg.name();
    match &boot.outcome {
        Err(error) => format!("{leg}: the boot did not run: {error}"),
        Ok(outcome) => {
            let when = match &boot.unfinished {
                Some((running, output)) if running == name => format!(
                    "it was running when the boot ended; its output so far ends {:?}",
                    output.lines().rev().take(3).collect::<Vec<_>>()
                ),
                Some((running, _)) => format!("the boot ended while {running} was running"),
                None => match &boot.framing {
                    Err(why) => format!("the boot never started it ({why})"),
                    Ok(()) => "the boot never started it".to_string(),
                },
            };
            format!(
                "{leg}: no result for {name}: {when}\n      QEMU exit code {:?}, last line {:?}; serial output kept in {}",
                outcome.exit_code,
                outcome.last_line(),
                outcome.log.display()
            )
        }
    }
}

/// Guest legs skipped under KVM, by name: all but [`UNDER_KVM`] (`what`
/// is a case's name, `alone:NAME` for one booted alone, or `shared boot`).
fn guest_skip(accel: Accel, what: &str) -> Option<Verdict> {
    if accel != Accel::Kvm {
        return None;
    }
    if !kvm_opens() {
        return Some(Verdict::Skip("/dev/kvm does not open here".into()));
    }
    (!UNDER_KVM.contains(&what)).then(|| Verdict::Skip(NOT_UNDER_KVM.into()))
}

/// A case, three ways, from the shared boots.
fn three_way(accel: Accel, shell: Shell, name: &str) -> Verdict {
    if let Some(skip) = guest_skip(accel, name) {
        return skip;
    }
    let host = match host_result(shell, name) {
        Ok(run) => run,
        Err(error) => return Verdict::Fail(format!("host: {error}")),
    };
    let mut failures = Vec::new();
    for leg in [Leg::Native, Leg::Umbra] {
        let boot = shared(BootKey { accel, shell, leg, part: part_of(shell, name) });
        let result = match boot.cases.get(name) {
            Some(run) => compare(&host, run, leg.name()).map_err(|why| {
                let log = boot.outcome.as_ref().map(|o| o.log.display().to_string()).unwrap_or_default();
                format!("{why}\n      serial output kept in {log}")
            }),
            None => Err(missing_case(boot, leg, name)),
        };
        if let Err(why) = result {
            failures.push(why);
        }
    }
    if failures.is_empty() { Verdict::Pass } else { Verdict::Fail(failures.join("\n      ")) }
}

/// A shared boot itself ended as it must: the runner's status 0 in the
/// kernel's final line, and QEMU's exit code to match.
fn shared_boot_exit(key: BootKey) -> Verdict {
    if let Some(skip) = guest_skip(key.accel, "shared boot") {
        return skip;
    }
    let boot = shared(key);
    let checked = boot.outcome.as_ref().map_err(Clone::clone).and_then(|outcome| {
        let run = program_run(outcome).map_err(|why| format!("{why}; log {}", outcome.log.display()))?;
        if run.status != 0 {
            return Err(format!(
                "the runner ended with status {}; log {}",
                run.status,
                outcome.log.display()
            ));
        }
        check_boot_exit(key.leg, outcome, 0)
    });
    match checked {
        Ok(()) => Verdict::Pass,
        Err(why) => Verdict::Fail(why),
    }
}

/// A case booted alone, as init: output, status, and the exit contract.
fn alone(accel: Accel, shell: Shell, name: &str, case_name: &str) -> Verdict {
    if let Some(skip) = guest_skip(accel, &format!("alone:{name}")) {
        return skip;
    }
    let host = match host_result(shell, name) {
        Ok(run) => run,
        Err(error) => return Verdict::Fail(format!("host: {error}")),
    };
    let inputs = match inputs() {
        Ok(inputs) => inputs,
        Err(error) => return Verdict::Fail(error),
    };
    let init = format!("{} /tests/{name}.sh", shell.in_guest());
    let legs = [Leg::Native, Leg::Umbra];
    let outcomes: Vec<_> = thread::scope(|scope| {
        let boots: Vec<_> = legs
            .iter()
            .map(|&leg| {
                let (init, rootfs) = (&init, inputs.rootfs(shell));
                let log = format!("{case_name}_{}", leg.name());
                scope.spawn(move || (leg, boot(leg, accel, rootfs, init, ALONE_TIMEOUT, &log)))
            })
            .collect();
        boots.into_iter().map(|b| b.join().expect("boot thread")).collect()
    });
    let mut failures = Vec::new();
    for (leg, outcome) in outcomes {
        let checked = outcome.and_then(|outcome| {
            let log = outcome.log.display().to_string();
            let run = program_run(&outcome).map_err(|why| format!("{why}; log {log}"))?;
            compare(&host, &run, leg.name())
                .map_err(|why| format!("{why}\n      serial output kept in {log}"))?;
            check_boot_exit(leg, &outcome, run.status)
        });
        if let Err(why) = checked {
            failures.push(format!("{}: {why}", leg.name()));
        }
    }
    if failures.is_empty() { Verdict::Pass } else { Verdict::Fail(failures.join("\n      ")) }
}

/// The host leg alone: the case runs twice and must agree with itself,
/// and must print only what Umbra's console shows as it is.
fn host_twice(shell: Shell, name: &str) -> Verdict {
    let inputs = match inputs() {
        Ok(inputs) => inputs,
        Err(error) => return Verdict::Fail(error),
    };
    let runs = [host_run(inputs, shell, name), host_run(inputs, shell, name)];
    match runs {
        [Ok(first), Ok(second)] if first == second => {
            if !first.plain {
                return Verdict::Fail("it prints bytes other than tab, newline and printable ASCII, which consoles show differently".into());
            }
            Verdict::Pass
        }
        [Ok(first), Ok(second)] => Verdict::Fail(format!(
            "two host runs differ (status {} then {}):\n      {}",
            first.status,
            second.status,
            first_difference(&first.output, &second.output)
        )),
        [Err(error), _] | [_, Err(error)] => Verdict::Fail(error),
    }
}

fn main() {
    let mut cases = Vec::new();
    for shell in [Shell::Busybox, Shell::Bash] {
        for name in cases_for(shell) {
            cases.push(Case::host(format!("linux_host_{}_{name}", shell.name()), move || {
                host_twice(shell, &name)
            }));
        }
    }
    for accel in [Accel::Tcg, Accel::Kvm] {
        // The boots first, the longest (under Umbra) first, so the two
        // workers keep two boots going; then the cases, which read them.
        for shell in [Shell::Busybox, Shell::Bash] {
            for leg in [Leg::Umbra, Leg::Native] {
                for part in 0..parts(shell) {
                    let key = BootKey { accel, shell, leg, part };
                    cases.push(Case::new(format!("{}_exit", key.name()), move |_| shared_boot_exit(key)));
                }
            }
        }
        for shell in [Shell::Busybox, Shell::Bash] {
            for name in cases_for(shell) {
                let case_name = format!("linux_{}_{}_{name}", accel.name(), shell.name());
                cases.push(Case::new(case_name, move |_| three_way(accel, shell, &name)));
            }
        }
        for (shell, name) in ALONE {
            let case_name = format!("linux_{}_{}_alone_{name}", accel.name(), shell.name());
            cases.push(Case::new(case_name, move |case_name| alone(accel, shell, name, case_name)));
        }
        let case_name = format!("linux_{}_xmm_processes", accel.name());
        cases.push(Case::new(case_name, move |case_name| xmm_processes(accel, case_name)));
        for seed in FUZZ_SEEDS {
            let case_name = format!("linux_{}_fuzz_seed{seed}", accel.name());
            cases.push(Case::new(case_name, move |case_name| fuzz(accel, seed, case_name)));
        }
    }
    run_cases(cases, 2)
}
