//! # An interactive shell, typed at through a real terminal
//!
//! The proof of issue 13: a person at a terminal boots Umbra with a
//! busybox shell as the guest's init, types, reads what comes back, and
//! leaves. This suite is that person. Each case opens a pseudo-terminal
//! pair, puts it in raw mode as a terminal program would, gives the slave
//! side to QEMU as its standard input and output (`-serial mon:stdio`, as
//! `scripts/run.sh --shell` does, with `mon:` so Ctrl-A x quits and
//! Ctrl-C reaches the guest), and types into the master side:
//!
//! - the session: commands and their output, an erase in the line
//!   editor and one in the kernel's canonical mode, history (up arrow),
//!   the window size, a pipeline, `^C` on a `sleep 100` (timed in guest
//!   time by busybox's `time`, against the same command not interrupted),
//!   `^\` (SIGQUIT, status 131), a terminal read a signal interrupts, `^C`
//!   at the prompt, and `exit 3`, which must come out as Umbra's status 3. Under Umbra
//!   it runs through `scripts/run.sh --shell` itself, so the status is
//!   checked all the way: init's, the guest's, Umbra's, QEMU's and the
//!   script's;
//! - the paste: 10 KiB pasted in one write into `cat > /tmp/f` while the
//!   shell is still asleep before it, then `wc -c` and `md5sum` of the
//!   file (nothing may be lost), `^D` to end cat and `^D` to end the
//!   shell (status 0). The terminal holds 4 KiB and Umbra's queue 4 KiB
//!   more: the case reports how much waited in QEMU instead.
//!
//! Both run under Umbra and natively (the guest kernel booted as the PVH
//! kernel, the archive as its module), under TCG and, where `/dev/kvm`
//! opens, KVM. Every QEMU has a timeout; what the terminal showed is kept
//! in `target/boot-tests/shell-*.log`.

use std::ffi::CStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use boot_tests::{
    Accel, Case, Exit, Outcome, Verdict, check_exit, guest_elf, image, kvm_opens, run_cases, workspace_root,
};
use umbra_abi::status::qemu_exit_code;

/// Where the shell runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// Umbra, with its built-in guest kernel.
    Umbra,
    /// The guest kernel alone, booted natively.
    Native,
}

/// How long one step (a command's output, a prompt) may take, and a
/// whole session: generous, since they only catch hangs (this machine's
/// nested KVM runs the guest's programs far slower than TCG).
fn step_timeout(accel: Accel) -> Duration {
    Duration::from_secs(if accel == Accel::Kvm { 300 } else { 90 })
}

fn session_timeout(accel: Accel) -> Duration {
    Duration::from_secs(if accel == Accel::Kvm { 1500 } else { 420 })
}

/// The root filesystem, built once per run with `scripts/rootfs.sh`
/// (where the Linux suite builds it too).
fn rootfs() -> Result<PathBuf, String> {
    static ROOTFS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ROOTFS
        .get_or_init(|| {
            let archive = workspace_root().join("target/linux-tests/rootfs.cpio");
            let status = Command::new("bash")
                .arg(workspace_root().join("scripts/rootfs.sh"))
                .arg("-o")
                .arg(&archive)
                .stdout(Stdio::null())
                .status()
                .map_err(|e| format!("cannot run scripts/rootfs.sh: {e}"))?;
            if status.success() { Ok(archive) } else { Err(format!("scripts/rootfs.sh failed ({status})")) }
        })
        .clone()
}

/// A pseudo-terminal pair: the master (the person's side) and the slave
/// (QEMU's), in raw mode.
fn open_pty() -> Result<(File, File), String> {
    let os_error = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: posix_openpt has no memory arguments; a negative result is
    // an error, anything else a descriptor we now own.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
    if master < 0 {
        return Err(os_error("posix_openpt"));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt and unlockpt take the descriptor; ptsname_r writes
    // at most `name.len()` bytes, NUL included, into our buffer.
    let ready = unsafe {
        libc::grantpt(master.as_raw_fd()) == 0
            && libc::unlockpt(master.as_raw_fd()) == 0
            && libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) == 0
    };
    if !ready {
        return Err(os_error("setting up the pseudo-terminal"));
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated path.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    // SAFETY: termios is plain data that tcgetattr fills in; both calls
    // only read or write it and the slave's settings.
    let raw = unsafe {
        let mut termios: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(slave.as_raw_fd(), &mut termios) != 0 {
            false
        } else {
            libc::cfmakeraw(&mut termios);
            // QEMU turns OPOST back on for its terminal; without ONLCR too
            // the guest's bytes arrive as the guest sent them.
            termios.c_oflag &= !libc::ONLCR;
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &termios) == 0
        }
    };
    if !raw {
        return Err(os_error("raw mode"));
    }
    Ok((File::from(master), slave))
}

/// One boot on a terminal: what was typed, and everything shown.
struct Session {
    name: String,
    child: Child,
    command: String,
    master: File,
    shown: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
    step: Duration,
    deadline: Instant,
}

impl Session {
    fn start(name: &str, mut command: Command, accel: Accel) -> Result<Session, String> {
        let (master, slave) = open_pty()?;
        let for_stdout = slave.try_clone().map_err(|e| e.to_string())?;
        // Its own process group, so that a timeout ends QEMU and the
        // script around it together.
        command.stdin(slave).stdout(for_stdout).stderr(Stdio::piped()).process_group(0);
        let mut child =
            command.spawn().map_err(|e| format!("could not start {:?}: {e}", command.get_program()))?;
        let described = format!("{command:?}");
        // The slave's copies in `command` go with it: the master then sees
        // the end (EIO) once QEMU is gone.
        drop(command);
        let shown = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let mut from_terminal = master.try_clone().map_err(|e| e.to_string())?;
        let sink = shown.clone();
        readers.push(thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = from_terminal.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        }));
        let mut errors = child.stderr.take().expect("piped");
        let sink = stderr.clone();
        readers.push(thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = errors.read_to_end(&mut bytes);
            sink.lock().unwrap().extend(bytes);
        }));
        Ok(Session {
            name: name.to_string(),
            child,
            command: described,
            master,
            shown,
            stderr,
            readers,
            step: step_timeout(accel),
            deadline: Instant::now() + session_timeout(accel),
        })
    }

    fn shown(&self) -> Vec<u8> {
        self.shown.lock().unwrap().clone()
    }

    /// How much has been shown so far: where the next look starts.
    fn mark(&self) -> usize {
        self.shown.lock().unwrap().len()
    }

    fn type_keys(&mut self, keys: &[u8]) -> Result<(), String> {
        self.master.write_all(keys).map_err(|e| format!("typing {keys:?}: {e}"))
    }

    /// Waits until `wanted` shows at or after `from`; returns where it ends.
    fn expect(&self, wanted: &[u8], from: usize) -> Result<usize, String> {
        self.expect_within(wanted, from, self.step)
    }

    /// As [`Session::expect`], waiting at most `wait`.
    fn expect_within(&self, wanted: &[u8], from: usize, wait: Duration) -> Result<usize, String> {
        let until = (Instant::now() + wait).min(self.deadline);
        loop {
            let shown = self.shown.lock().unwrap().clone();
            if let Some(at) = find(&shown[from.min(shown.len())..], wanted) {
                return Ok(from + at + wanted.len());
            }
            if Instant::now() > until {
                let tail = String::from_utf8_lossy(&shown[shown.len().saturating_sub(600)..]).into_owned();
                return Err(format!(
                    "waited in vain for {:?}; the terminal ends with {tail:?}",
                    String::from_utf8_lossy(wanted)
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types a command line and waits for the output it must print, after
    /// the line's own echo; returns where the output ends.
    fn run(&mut self, line: &str, output: &str) -> Result<usize, String> {
        let from = self.mark();
        self.type_keys(format!("{line}\r").as_bytes())?;
        // The output starts on the line after the echo: its own \r\n
        // comes first.
        let echoed = self.expect(b"\r\n", from)?;
        self.expect(output.as_bytes(), echoed - 2)
    }

    /// Waits for the shell's next prompt after `from`.
    fn prompt(&self, from: usize) -> Result<usize, String> {
        self.expect(PROMPT, from)
    }

    /// Waits for QEMU to end (killing it at the deadline), and keeps what
    /// the terminal showed in the boot tests' folder.
    fn finish(mut self, why: Option<&str>) -> Outcome {
        let exit_code = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status.code(),
                Ok(None) if why.is_none() && Instant::now() < self.deadline => {
                    thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    // SAFETY: signals the process group we made for the
                    // child (its id is the group's).
                    unsafe { libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL) };
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        // The reader ends when the master reads EIO: every slave copy is
        // closed now. A grandchild that kept one would hold it: bounded.
        let started = Instant::now();
        for reader in std::mem::take(&mut self.readers) {
            while !reader.is_finished() && started.elapsed() < Duration::from_secs(10) {
                thread::sleep(Duration::from_millis(20));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        let serial = String::from_utf8_lossy(&self.shown()).into_owned();
        let stderr = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        let dir = workspace_root().join("target/boot-tests");
        let _ = std::fs::create_dir_all(&dir);
        let log = dir.join(format!("shell-{}.log", self.name));
        let kept = format!(
            "command: {}\nexit code: {exit_code:?}\n{}--- terminal ---\n{serial}\n--- stderr ---\n{stderr}",
            self.command,
            why.map(|w| format!("failed: {w}\n")).unwrap_or_default()
        );
        let _ = std::fs::write(&log, kept);
        Outcome { serial, stderr, exit_code, log }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in `finish`.
            unsafe { libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `PS1='\w \$ '` in `/`, as root.
const PROMPT: &[u8] = b"/ # ";

/// The guest's words: what `scripts/run.sh --shell` gives it.
const SHELL_WORDS: &str = "TERM=vt100 HOME=/root PS1='\\w \\$ ' init=/bin/sh";

/// QEMU booting `kernel` with the shell as init, its serial port on the
/// terminal as `run.sh --shell` has it.
fn qemu(kernel: Kernel, accel: Accel, rootfs: &Path) -> Result<Command, String> {
    let (image, append) = match kernel {
        Kernel::Umbra => (image()?, format!("-- {SHELL_WORDS}")),
        Kernel::Native => (guest_elf()?, SHELL_WORDS.to_string()),
    };
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-machine", "microvm", "-accel", accel.name(), "-smp", "2", "-m", "256M"])
        .args(["-display", "none", "-monitor", "none", "-serial", "mon:stdio", "-nic", "none", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(image)
        .args(["-append", &append])
        .arg("-initrd")
        .arg(rootfs);
    Ok(command)
}

/// `scripts/run.sh --shell` itself.
fn run_sh(accel: Accel, rootfs: &Path) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(workspace_root().join("scripts/run.sh"))
        .args(["--shell", "--accel", accel.name(), "--rootfs"])
        .arg(rootfs)
        .env("TERM", "vt100");
    command
}

/// busybox `time`'s "real\t0m 0.17s", in seconds.
fn real_seconds(shown: &[u8], from: usize) -> Option<f64> {
    let text = String::from_utf8_lossy(&shown[from..]).into_owned();
    let line = text.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix("real\t"))?;
    let (minutes, seconds) = line.trim().split_once('m')?;
    let minutes: f64 = minutes.trim().parse().ok()?;
    let seconds: f64 = seconds.trim().trim_end_matches('s').parse().ok()?;
    Some(minutes * 60.0 + seconds)
}

/// What the shell must do in a session; an error says what it did not.
fn session_steps(s: &mut Session) -> Result<(), String> {
    let banner = s.expect(b"Enter 'help' for a list of built-in commands.", 0)?;
    s.prompt(banner)?;
    // Output, and an environment as run.sh --shell sets it.
    s.run("echo hello from $HOME on a $TERM", "\r\nhello from /root on a vt100\r\n")?;
    // The line editor's erase (backspace and DEL), then history: the up
    // arrow brings the edited line back.
    let at = s.run("echo typo\x08\x08\x7f\x7fright", "\r\nright\r\n")?;
    s.prompt(at)?;
    let from = s.mark();
    s.type_keys(b"\x1b[A")?;
    s.expect(b"echo right", from)?;
    s.type_keys(b"\r")?;
    let at = s.expect(b"\r\nright\r\n", from)?;
    s.prompt(at)?;
    // The kernel's own canonical mode: `read` takes a line the terminal
    // edited (DEL erases, ^U kills the line so far). Typed once the shell
    // says so: until the line editor has put the terminal back in
    // canonical mode, keys would arrive raw (and become one line as they
    // were, as on Linux).
    let echoed = s.run("echo ready; read line; echo \"got $line\"", "\r\nready\r\n")?;
    s.type_keys(b"junk\x15abd\x7fc\r")?;
    let at = s.expect(b"\r\ngot abc\r\n", echoed)?;
    s.prompt(at)?;
    // The terminal's size, and a pipeline.
    let at = s.run("stty size", "\r\n24 80\r\n")?;
    s.prompt(at)?;
    let at =
        s.run("printf 'pear\\napple\\nfig\\n' | sort | tr a-z A-Z | head -n 2", "\r\nAPPLE\r\nFIG\r\n")?;
    s.prompt(at)?;
    // ^C: `sleep 100` under busybox's `time`, which reports how long it
    // ran in guest time; the same command with `sleep 0` is the baseline.
    // Both start a shell and exec sleep; ^C comes once the shell has
    // started, and must end it all within a second more than the baseline
    // took (which, on a slow machine, includes the exec that ^C may cut
    // short: seconds under this nested KVM).
    let from = s.mark();
    s.run("time sh -c 'echo started; exec sleep 0'", "\r\nstarted\r\n")?;
    s.prompt(s.expect(b"sys\t", from)?)?;
    let baseline = real_seconds(&s.shown(), from).ok_or("no 'real' line from time")?;
    let from = s.mark();
    s.run("time sh -c 'echo started; exec sleep 100'", "\r\nstarted\r\n")?;
    s.type_keys(b"\x03")?;
    let killed = s.expect(b"^CCommand terminated by signal 2\r\n", from)?;
    s.prompt(s.expect(b"sys\t", killed)?)?;
    let interrupted = real_seconds(&s.shown(), from).ok_or("no 'real' line from time")?;
    if interrupted > baseline + 1.0 {
        return Err(format!(
            "^C took {interrupted} s of guest time to end sleep 100, {baseline} s without it: more than a second"
        ));
    }
    // ^\ quits the foreground job (SIGQUIT, status 128 + 3): a `tr` that
    // has shown it is reading, by what it wrote. (Not `sh -c '...; exec
    // sleep'`: a shell ignores SIGQUIT until its `exec` builtin, so an
    // early ^\ would be lost there, as on Linux.)
    let from = s.mark();
    s.type_keys(b"tr a-z A-Z\r")?;
    let echoed = s.expect(b"\r\n", from)?;
    s.type_keys(b"ping\r")?;
    let reading = s.expect(b"PING\r\n", echoed)?;
    s.type_keys(b"\x1c")?;
    s.prompt(s.expect(b"^\\Quit\r\n", reading)?)?;
    s.run("echo status $?", "\r\nstatus 131\r\n")?;
    // A read of the terminal that a signal interrupts ends (EINTR): the
    // shell runs its trap and goes on. `read -p` writes its prompt, then
    // polls the terminal, then reads. A ^C that lands between the prompt
    // and the poll runs the handler before anything waits, and busybox
    // 1.35 then polls on regardless (later busybox closes that window
    // with a masked ppoll): on Linux too the read would wait for the next
    // signal. Where exits are slow (nested KVM) the window is wide, so ^C
    // is typed again while nothing answers; the trap runs once.
    let from = s.mark();
    s.type_keys(b"trap 'echo caught' INT; read -p 'waiting> ' x; echo \"read ended $?\"; trap - INT\r")?;
    let waiting = s.expect(b"waiting> ", s.expect(b"\r\n", from)?)?;
    let mut interrupted = Err(String::new());
    for _ in 0..3 {
        s.type_keys(b"\x03")?;
        interrupted = s.expect_within(b"^Ccaught\r\nread ended 1\r\n", waiting, s.step / 3);
        if interrupted.is_ok() {
            break;
        }
    }
    s.prompt(interrupted?)?;
    // ^C at the prompt discards the line being typed.
    let from = s.mark();
    s.type_keys(b"echo never\x03")?;
    s.prompt(from)?;
    let from = s.mark();
    s.type_keys(b"exit 3\r")?;
    s.expect(b"guest: linux: init exited with status 3", from)?;
    Ok(())
}

/// 10 KiB in lines of 64 bytes, as a terminal pastes them (`\r` ends a
/// line; the terminal turns it into `\n`).
fn paste_text() -> Vec<u8> {
    (0..160)
        .flat_map(|n| {
            format!("{n:04}abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVW\n").into_bytes()
        })
        .collect()
}

fn md5_hex(bytes: &[u8]) -> Result<String, String> {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run md5sum: {e}"))?;
    child.stdin.take().expect("piped").write_all(bytes).map_err(|e| e.to_string())?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap_or("").to_string())
}

/// How much console input Umbra holds for its owner: its queue and the
/// shared page's ring.
const UMBRA_HOLDS: usize = 4096 + 256;

/// The paste, then ^D twice; returns a note on where the paste waited.
fn paste_steps(s: &mut Session, kernel: Kernel) -> Result<String, String> {
    let text = paste_text();
    assert_eq!(text.len(), 10240);
    let sum = md5_hex(&text)?;
    let banner = s.expect(b"Enter 'help' for a list of built-in commands.", 0)?;
    s.prompt(banner)?;
    // The shell sleeps before cat reads: the paste piles up meanwhile.
    let from =
        s.run("echo go; sleep 3; echo reading; cat > /tmp/f; wc -c /tmp/f; md5sum /tmp/f", "\r\ngo\r\n")?;
    let mut typist = s.master.try_clone().map_err(|e| e.to_string())?;
    let typed: Vec<u8> = text.iter().map(|&b| if b == b'\n' { b'\r' } else { b }).collect();
    // In one write, from its own thread: it blocks while the terminal's
    // buffer is full, and a dead QEMU ends it (EIO).
    let paster = thread::spawn(move || typist.write_all(&typed));
    let reading = s.expect(b"reading\r\n", from)?;
    // What was echoed before cat began to read is what the guest's
    // terminal had taken in (each line end echoed as \r\n).
    let echoed = &s.shown()[from..reading - b"reading\r\n".len()];
    let taken = echoed.len() - echoed.iter().filter(|&&b| b == b'\r').count();
    let last_line = s.expect(b"0159abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVW\r\n", from)?;
    let _ = paster.join();
    s.type_keys(b"\x04")?;
    // cat's end (^D is not echoed), then the count and the sum.
    s.expect(b"\r\n10240 /tmp/f\r\n", last_line - 2)?;
    let at = s.expect(format!("\r\n{sum}  /tmp/f\r\n").as_bytes(), last_line - 2)?;
    s.prompt(at)?;
    s.type_keys(b"\x04")?;
    s.expect(b"guest: linux: init exited with status 0", at)?;
    let elsewhere = match kernel {
        Kernel::Umbra => "at most 4352 in Umbra's queue and ring, the rest in QEMU",
        Kernel::Native => "in QEMU",
    };
    let mut note =
        format!("{taken} of {} pasted bytes were in the guest's terminal when cat began to read", text.len());
    if kernel == Kernel::Native || taken + UMBRA_HOLDS < text.len() {
        note += &format!("; the other {} waited, {elsewhere}, and none was lost", text.len() - taken);
    }
    Ok(note)
}

/// The lines a shell session must end with, by where it ran.
fn check_end(outcome: &Outcome, kernel: Kernel, status: u8, through_run_sh: bool) -> Verdict {
    match kernel {
        Kernel::Umbra => {
            let exit = if through_run_sh { Exit::Status } else { Exit::DebugExit };
            boot_tests::check!(
                outcome,
                outcome.line_starting("guest: linux: terminal:").is_none(),
                "the terminal dropped typed bytes"
            );
            check_exit(outcome, status, exit)
        }
        Kernel::Native => {
            boot_tests::check!(
                outcome,
                outcome.exit_code == Some(qemu_exit_code(status)),
                "QEMU exit code {:?}, expected {} for status {status}",
                outcome.exit_code,
                qemu_exit_code(status)
            );
            boot_tests::check!(
                outcome,
                outcome.line_starting("guest: linux: terminal:").is_none(),
                "the terminal dropped typed bytes"
            );
            Verdict::Pass
        }
    }
}

#[derive(Clone, Copy)]
enum Script {
    Session,
    Paste,
}

fn shell_case(script: Script, kernel: Kernel, accel: Accel) -> Case {
    let name = format!(
        "{}_{}_shell_{}",
        accel.name(),
        if kernel == Kernel::Umbra { "umbra" } else { "native" },
        match script {
            Script::Session => "session",
            Script::Paste => "paste_and_ctrl_d",
        }
    );
    Case::new(name, move |name| {
        if accel == Accel::Kvm && !kvm_opens() {
            return Verdict::Skip("/dev/kvm does not open on this machine".into());
        }
        let rootfs = match rootfs() {
            Ok(path) => path,
            Err(e) => return Verdict::Fail(e),
        };
        // Under Umbra the session goes through scripts/run.sh --shell.
        let through_run_sh = matches!(script, Script::Session) && kernel == Kernel::Umbra;
        let command = if through_run_sh {
            run_sh(accel, &rootfs)
        } else {
            match qemu(kernel, accel, &rootfs) {
                Ok(command) => command,
                Err(e) => return Verdict::Fail(e),
            }
        };
        let mut session = match Session::start(name, command, accel) {
            Ok(session) => session,
            Err(e) => return Verdict::Fail(e),
        };
        let (result, status) = match script {
            Script::Session => (session_steps(&mut session).map(|()| String::new()), 3),
            Script::Paste => (paste_steps(&mut session, kernel), 0),
        };
        let outcome = session.finish(result.as_ref().err().map(String::as_str));
        match result {
            Err(why) => {
                Verdict::Fail(format!("{why}\n      the terminal is kept in {}", outcome.log.display()))
            }
            Ok(note) => {
                let verdict = check_end(&outcome, kernel, status, through_run_sh);
                if matches!(verdict, Verdict::Pass) && !note.is_empty() {
                    println!("      {name}: {note}");
                }
                verdict
            }
        }
    })
}

fn main() {
    let mut cases = Vec::new();
    for accel in [Accel::Tcg, Accel::Kvm] {
        for kernel in [Kernel::Umbra, Kernel::Native] {
            for script in [Script::Session, Script::Paste] {
                cases.push(shell_case(script, kernel, accel));
            }
        }
    }
    run_cases(cases, 2)
}
