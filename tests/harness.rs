//! # Booting the real image, as a test
//!
//! Every boot test starts a real QEMU (or Cloud Hypervisor) on the real
//! firmware image and judges it by what a user would see: the lines on
//! the serial console and the VMM's exit code. This module is the
//! machinery: build the image once, start the VMM with a timeout, keep
//! the serial output of every boot in `target/boot-tests/`, and run the
//! cases a few at a time, reporting each one (and each skip) by name. And
//! the one check every boot ends with, the exit contract ([`check_exit`]),
//! against the ABI's own statuses.
//!
//! Nothing here measures speed: timeouts only catch hangs.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use umbra_abi::status::qemu_exit_code;

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Build the firmware image once per test run, so the tests never boot a
/// stale one.
pub fn image() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(|| build_for_target("umbra-firmware", "umbra")).clone()
}

/// The guest kernel's own ELF (for booting it as a PVH module), built
/// once per run like the image.
pub fn guest_elf() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(|| build_for_target("guest", "guest")).clone()
}

/// The default guest kernel with its symbols, for gdb: the firmware's
/// build writes it next to the image, which embeds the guest without them.
pub fn guest_symbols() -> Result<PathBuf, String> {
    let image = image()?;
    let symbols = image.with_file_name("guest-symbols");
    if symbols.is_file() {
        Ok(symbols)
    } else {
        Err(format!("the image's build left no {}", symbols.display()))
    }
}

/// `cargo build --release --target x86_64-unknown-none -p PACKAGE`, and
/// the path of its binary `BINARY`.
fn build_for_target(package: &str, binary: &str) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "--release", "--target", "x86_64-unknown-none", "-p", package])
        .status()
        .map_err(|e| format!("could not run cargo to build {package}: {e}"))?;
    if !status.success() {
        return Err(format!("building {package} failed (see above)"));
    }
    Ok(workspace_root().join("target/x86_64-unknown-none/release").join(binary))
}

/// Does `/dev/kvm` open for reading and writing?
pub fn kvm_opens() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// One boot of the image in QEMU.
#[derive(Clone, Debug)]
pub struct Boot {
    pub machine: &'static str,
    pub accel: Accel,
    /// Options for `-accel`, after the accelerator's name (`thread=single`).
    pub accel_options: Option<&'static str>,
    pub smp: u32,
    pub mem: &'static str,
    pub append: Option<Vec<u8>>,
    pub initrd: Option<PathBuf>,
    /// Without it, the firmware must power off the ACPI way.
    pub debug_exit: bool,
    /// Typed on the serial console as the boot starts.
    pub input: Option<Vec<u8>>,
    pub timeout: Duration,
}

impl Boot {
    pub fn new(machine: &'static str, accel: Accel) -> Boot {
        Boot {
            machine,
            accel,
            accel_options: None,
            smp: 2,
            mem: "256M",
            append: None,
            initrd: None,
            debug_exit: true,
            input: None,
            // Timeouts only catch hangs, so they are generous: a nested KVM
            // runs ring-1 code a thousand times slower than TCG, and q35
            // spends seconds in SeaBIOS there.
            timeout: Duration::from_secs(if accel == Accel::Kvm { 300 } else { 120 }),
        }
    }

    pub fn append(mut self, cmdline: impl Into<Vec<u8>>) -> Boot {
        self.append = Some(cmdline.into());
        self
    }

    pub fn smp(mut self, cpus: u32) -> Boot {
        self.smp = cpus;
        self
    }

    pub fn accel_options(mut self, options: &'static str) -> Boot {
        self.accel_options = Some(options);
        self
    }

    pub fn mem(mut self, mem: &'static str) -> Boot {
        self.mem = mem;
        self
    }

    pub fn initrd(mut self, path: PathBuf) -> Boot {
        self.initrd = Some(path);
        self
    }

    pub fn typing(mut self, input: &[u8]) -> Boot {
        self.input = Some(input.to_vec());
        self
    }

    pub fn without_debug_exit(mut self) -> Boot {
        self.debug_exit = false;
        self
    }

    pub fn command(&self, image: &Path) -> Command {
        let mut qemu = Command::new("qemu-system-x86_64");
        let accel = match self.accel_options {
            Some(options) => format!("{},{options}", self.accel.name()),
            None => self.accel.name().to_string(),
        };
        qemu.args(["-machine", self.machine, "-accel", &accel])
            .args(["-smp", &self.smp.to_string(), "-m", self.mem])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio", "-nic", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(image);
        if self.debug_exit {
            qemu.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        }
        if let Some(append) = &self.append {
            use std::os::unix::ffi::OsStrExt;
            qemu.arg("-append").arg(std::ffi::OsStr::from_bytes(append));
        }
        if let Some(initrd) = &self.initrd {
            qemu.arg("-initrd").arg(initrd);
        }
        qemu
    }

    pub fn run(&self, log_name: &str) -> Result<Outcome, String> {
        let image = image()?;
        run_feeding(self.command(&image), self.input.as_deref(), self.timeout, log_name)
    }

    /// Boot, and let `judge` say what the boot's output is worth. A KVM
    /// boot is skipped, by name, where `/dev/kvm` does not open.
    pub fn judged(&self, log_name: &str, judge: impl FnOnce(&Outcome) -> Verdict) -> Verdict {
        if self.accel == Accel::Kvm && !kvm_opens() {
            return Verdict::Skip("/dev/kvm does not open on this machine".into());
        }
        match self.run(log_name) {
            Ok(outcome) => judge(&outcome),
            Err(error) => Verdict::Fail(error),
        }
    }
}

/// What one boot produced.
#[derive(Debug)]
pub struct Outcome {
    pub serial: String,
    pub stderr: String,
    /// `None` when it was killed at the timeout.
    pub exit_code: Option<i32>,
    pub log: PathBuf,
}

impl Outcome {
    pub fn lines(&self) -> Vec<&str> {
        self.serial.lines().map(|l| l.trim_end_matches('\r')).collect()
    }

    pub fn has_line(&self, wanted: &str) -> bool {
        self.lines().contains(&wanted)
    }

    pub fn line_starting(&self, prefix: &str) -> Option<&str> {
        self.lines().into_iter().find(|l| l.starts_with(prefix))
    }

    /// Every line that starts with `prefix`, in order.
    pub fn lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.lines().into_iter().filter(|l| l.starts_with(prefix)).collect()
    }

    pub fn last_line(&self) -> &str {
        self.lines().into_iter().rev().find(|l| !l.is_empty()).unwrap_or("")
    }

    /// Umbra's status from the last line, `umbra: exit status N`.
    pub fn reported_status(&self) -> Option<u8> {
        self.last_line().strip_prefix("umbra: exit status ")?.parse().ok()
    }
}

/// Start `command`, collect its stdout (the serial console) and stderr,
/// kill it at `timeout`, and keep the console in `target/boot-tests/`.
pub fn run_with_timeout(command: Command, timeout: Duration, log_name: &str) -> Result<Outcome, String> {
    run_feeding(command, None, timeout, log_name)
}

/// Like [`run_with_timeout`], with `input` written to the process's
/// standard input (QEMU's serial port, with `-serial stdio`), which stays
/// open until the process ends: QEMU drops what it has not yet passed to
/// the guest when its input closes.
pub fn run_feeding(
    mut command: Command,
    input: Option<&[u8]>,
    timeout: Duration,
    log_name: &str,
) -> Result<Outcome, String> {
    let mut child = command
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start {:?}: {e}", command.get_program()))?;
    let mut stdin = child.stdin.take();
    if let (Some(pipe), Some(bytes)) = (stdin.as_mut(), input) {
        use std::io::Write as _;
        // The pipe holds far more than any test types.
        let _ = pipe.write_all(bytes);
        let _ = pipe.flush();
    }
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err_reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let started = Instant::now();
    let exit_code = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status.code(),
            None if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(20)),
        }
    };
    drop(stdin);
    let serial = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    let dir = workspace_root().join("target/boot-tests");
    let _ = std::fs::create_dir_all(&dir);
    let log = dir.join(format!("{log_name}.log"));
    let mut kept = String::new();
    let _ = writeln!(
        kept,
        "command: {command:?}\nexit code: {exit_code:?}\n--- serial ---\n{serial}\n--- stderr ---\n{stderr}"
    );
    let _ = std::fs::write(&log, kept);
    Ok(Outcome { serial, stderr, exit_code, log })
}

/// The verdict of one case.
pub enum Verdict {
    Pass,
    Skip(String),
    Fail(String),
}

/// Check a condition; on failure, say what and point at the kept log.
#[macro_export]
macro_rules! check {
    ($outcome:expr, $cond:expr, $($what:tt)*) => {
        if !$cond {
            return $crate::Verdict::Fail(format!(
                "{}\n      serial output kept in {}\n      last line: {:?}",
                format!($($what)*),
                $outcome.log.display(),
                $outcome.last_line()
            ));
        }
    };
}

/// How the process a test ran learns Umbra's status, and so what it must
/// exit with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// QEMU's isa-debug-exit: QEMU exits with `(N << 1) | 1`.
    DebugExit,
    /// An ACPI power-off, which carries no status: the VMM exits with 0.
    PowerOff,
    /// A script that passes Umbra's status on as its own
    /// (`scripts/debug.sh`): it exits with N.
    Status,
}

/// The exit contract: the last line is `umbra: exit status N`, and the
/// process exits as `exit` says it must for N.
pub fn check_exit(outcome: &Outcome, status: u8, exit: Exit) -> Verdict {
    check!(outcome, outcome.exit_code.is_some(), "timed out: the VMM was killed");
    check!(
        outcome,
        outcome.reported_status() == Some(status),
        "last line should be 'umbra: exit status {status}'"
    );
    let expected = match exit {
        Exit::DebugExit => qemu_exit_code(status),
        Exit::PowerOff => 0,
        Exit::Status => i32::from(status),
    };
    check!(
        outcome,
        outcome.exit_code == Some(expected),
        "VMM exit code {:?}, expected {expected}",
        outcome.exit_code
    );
    Verdict::Pass
}

pub struct Case {
    pub name: String,
    pub run: Box<dyn Fn(&str) -> Verdict + Send + Sync>,
    /// Whether it boots the image (which is then built before any case
    /// runs); a case that only reads files on the host does not.
    pub boots: bool,
}

impl Case {
    pub fn new(name: impl Into<String>, run: impl Fn(&str) -> Verdict + Send + Sync + 'static) -> Case {
        Case { name: name.into(), run: Box::new(run), boots: true }
    }

    /// A case that boots `config` and hands what it printed to `judge`.
    pub fn boot(
        name: impl Into<String>,
        config: Boot,
        judge: impl Fn(&Outcome) -> Verdict + Send + Sync + 'static,
    ) -> Case {
        Case::new(name, move |name| config.judged(name, &judge))
    }

    /// A case that cannot run here, for `why`: listed, and skipped by name.
    pub fn skip(name: impl Into<String>, why: &'static str) -> Case {
        Case { boots: false, ..Case::new(name, move |_| Verdict::Skip(why.into())) }
    }

    /// A case that runs on the host alone, without booting anything.
    pub fn host(name: impl Into<String>, run: impl Fn() -> Verdict + Send + Sync + 'static) -> Case {
        Case { boots: false, ..Case::new(name, move |_| run()) }
    }
}

/// Run the cases whose names contain any of the command-line filters
/// (all of them without filters), `workers` at a time, and exit non-zero
/// if any failed. Skips are listed by name with their reason.
pub fn run_cases(cases: Vec<Case>, workers: usize) -> ! {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if std::env::args().any(|a| a == "--list") {
        for case in &cases {
            println!("{}: test", case.name);
        }
        std::process::exit(0);
    }
    let selected: Vec<Case> = cases
        .into_iter()
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} boot tests", selected.len());
    if selected.iter().any(|case| case.boots)
        && let Err(error) = image()
    {
        println!("cannot run boot tests: {error}");
        std::process::exit(1);
    }
    let queue = Mutex::new(selected.into_iter());
    let results: Mutex<Vec<(String, Verdict)>> = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            scope.spawn(|| {
                loop {
                    let Some(case) = queue.lock().unwrap().next() else {
                        break;
                    };
                    let verdict = (case.run)(&case.name);
                    let line = match &verdict {
                        Verdict::Pass => format!("boot {} ... ok", case.name),
                        Verdict::Skip(why) => format!("boot {} ... skipped: {why}", case.name),
                        Verdict::Fail(why) => format!("boot {} ... FAILED\n      {why}", case.name),
                    };
                    println!("{line}");
                    results.lock().unwrap().push((case.name, verdict));
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    let failed: Vec<&String> =
        results.iter().filter(|(_, v)| matches!(v, Verdict::Fail(_))).map(|(n, _)| n).collect();
    let skipped: Vec<&String> =
        results.iter().filter(|(_, v)| matches!(v, Verdict::Skip(_))).map(|(n, _)| n).collect();
    println!(
        "\nboot test result: {}. {} passed; {} failed; {} skipped",
        if failed.is_empty() { "ok" } else { "FAILED" },
        results.len() - failed.len() - skipped.len(),
        failed.len(),
        skipped.len()
    );
    for name in &skipped {
        println!("    skipped: {name}");
    }
    for name in &failed {
        println!("    failed: {name}");
    }
    std::process::exit(if failed.is_empty() { 0 } else { 1 })
}
