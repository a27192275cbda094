//! # The console as a terminal
//!
//! `/dev/console` and `/dev/tty` (and init's descriptors 0, 1 and 2) are
//! one terminal: the line discipline of `../tty.rs` between the console
//! and the programs. This file is the wiring, the part that knows about
//! processes and devices:
//!
//! - **Input.** What the console delivers (`platform::console_read`: the
//!   shared page's input ring under Umbra, COM1 natively) is fed to
//!   `Tty::receive` by [`pump`], which runs at every clock tick (that is
//!   how natively typed bytes are found: the UART's interrupt stays off,
//!   and the tick comes every millisecond), on Umbra's console interrupt,
//!   and before a read or a poll looks. Echo goes straight to the
//!   console; `^C` and `^\` become SIGINT and SIGQUIT for the foreground
//!   process group; readers and pollers are woken. While the terminal's
//!   input is full, bytes are left where they wait (`Tty::accepting`), so
//!   a paste is never dropped here: the console holds back the rest.
//! - **Reading** sleeps the process until the discipline has something
//!   for it (a line, in canonical mode), or returns EAGAIN with
//!   O_NONBLOCK; a signal cuts the sleep short (EINTR, or a restart under
//!   SA_RESTART, as everywhere). With everybody asleep the kernel halts
//!   until the next interrupt: the clock's, or the console's.
//! - **Writing** goes through `Tty::write` (`OPOST`, `ONLCR`).
//! - **ioctl**: the termios calls, the window size, the foreground group,
//!   FIONREAD; `poll` and `select` ask [`readable`].
//!
//! The terminal lives on the heap, made when the Linux personality
//! starts; before that (and in the scenarios) there is none, and the
//! console's input is left alone.

use alloc::boxed::Box;
use core::cell::UnsafeCell;

use super::super::proc::k;
use super::super::tty::{self, Read, Signal, TERMIOS_SIZE, Termios, Tty, Winsize};
use super::mm::{get, put, put_u32};
use super::signal::{self, SIGINT, SIGQUIT, SIGTSTP, SIGWINCH};
use super::task::task;
use super::{EAGAIN, EINVAL, ENOTTY, EPERM, POLL_CHANNEL, sleep_on, wake};
use crate::platform;

/// What readers of the terminal sleep on.
const READ_CHANNEL: usize = 4;

struct TerminalCell(UnsafeCell<Option<Box<Tty>>>);

// SAFETY: one CPU, and the kernel runs with interrupts off; the interrupt
// handlers that pump input run only where the kernel allows interrupts
// (halted, or at the system-call gate's first instruction), never in the
// middle of a use of the terminal.
unsafe impl Sync for TerminalCell {}

static TERMINAL: TerminalCell = TerminalCell(UnsafeCell::new(None));

fn terminal() -> Option<&'static mut Tty> {
    // SAFETY: see `TerminalCell`.
    unsafe { (*TERMINAL.0.get()).as_deref_mut() }
}

/// Makes the terminal, with `foreground` (init's group) in front: a shell
/// with job control checks that it is, and waits until it is otherwise.
pub fn start(foreground: u32) {
    let mut tty = Box::new(Tty::new());
    tty.set_foreground(foreground);
    // SAFETY: see `TerminalCell`; nothing uses the terminal yet.
    unsafe { *TERMINAL.0.get() = Some(tty) };
}

/// The console's output, for echo: as it is, the discipline processed it.
fn to_console(bytes: &[u8]) {
    super::console_write(bytes);
}

/// Output gathered before it goes to the console: the discipline hands
/// it over in small pieces (a line, then its `\r\n`; one echo per typed
/// byte), and under Umbra each console write is a hypercall.
struct Batch {
    bytes: [u8; 1024],
    len: usize,
}

impl Batch {
    fn new() -> Batch {
        Batch { bytes: [0; 1024], len: 0 }
    }

    fn push(&mut self, out: &[u8]) {
        if self.len + out.len() > self.bytes.len() {
            self.flush();
        }
        if out.len() > self.bytes.len() {
            to_console(out);
            return;
        }
        self.bytes[self.len..self.len + out.len()].copy_from_slice(out);
        self.len += out.len();
    }

    fn flush(&mut self) {
        to_console(&self.bytes[..self.len]);
        self.len = 0;
    }
}

/// Takes what the console has delivered, as much as the terminal will
/// take, and runs it through the line discipline.
///
/// It runs at every tick, so finding nothing costs one look (under a
/// nested hypervisor that emulates the kernel's instructions, each one
/// counts).
pub fn pump() {
    let Some(tty) = terminal() else { return };
    let mut byte = [0u8; 1];
    // One byte at a time: whether the next one is taken depends on what
    // the ones before it did (a line's end frees a full terminal).
    let next = |tty: &Tty, byte: &mut [u8; 1]| tty.accepting() && platform::console_read(byte) == 1;
    if !next(tty, &mut byte) {
        return;
    }
    let mut echo = Batch::new();
    loop {
        let foreground = u64::from(tty.foreground());
        match tty.receive(byte[0], &mut |out| echo.push(out)) {
            Some(Signal::Interrupt) => signal::send_group(foreground, SIGINT),
            Some(Signal::Quit) => signal::send_group(foreground, SIGQUIT),
            Some(Signal::Suspend) => signal::send_group(foreground, SIGTSTP),
            None => false,
        };
        if !next(tty, &mut byte) {
            break;
        }
    }
    echo.flush();
    wake(READ_CHANNEL);
    wake(POLL_CHANNEL);
}

/// How many typed bytes the terminal had to drop: only those of a line
/// too long for it, since a full terminal leaves the rest waiting.
pub fn dropped() -> u64 {
    terminal().map_or(0, |tty| tty.dropped())
}

/// Whether a read would return at once (`poll`'s POLLIN).
pub fn readable() -> bool {
    pump();
    terminal().is_some_and(|tty| tty.poll_ready())
}

/// read(2) of the terminal into user memory at `buf`.
pub fn read(buf: u64, len: u64, nonblocking: bool) -> Result<u64, i64> {
    let mut data = [0u8; 512];
    let want = (len as usize).min(data.len());
    // VTIME (non-canonical): a read with some bytes, but not VMIN of
    // them, or with VMIN 0, returns what there is after this long.
    let mut deadline = 0;
    loop {
        pump();
        let Some(tty) = terminal() else { return Ok(0) };
        let timed = tty.termios().lflag & tty::ICANON == 0 && tty.vtime() > 0;
        let outcome = match tty.read(&mut data[..want]) {
            Read::Data(0) if timed && tty.vmin() == 0 => Read::WouldBlock,
            outcome => outcome,
        };
        match outcome {
            Read::Data(n) => {
                put(buf, &data[..n])?;
                return Ok(n as u64);
            }
            Read::EndOfFile => return Ok(0),
            Read::WouldBlock if nonblocking => return Err(EAGAIN),
            Read::WouldBlock => {}
        }
        let now = platform::now_ns();
        if timed && (tty.vmin() == 0 || tty.readable() > 0) {
            if deadline == 0 {
                deadline = now + u64::from(tty.vtime()) * 100_000_000;
            } else if now >= deadline {
                let Read::Data(n) = tty.read_now(&mut data[..want]) else { return Ok(0) };
                put(buf, &data[..n])?;
                return Ok(n as u64);
            }
        }
        super::set_wake_at(deadline);
        let slept = sleep_on(READ_CHANNEL);
        super::set_wake_at(0);
        slept?;
    }
}

/// write(2) to the terminal: output processing, then the console.
pub fn write(bytes: &[u8]) {
    let Some(tty) = terminal() else { return to_console(bytes) };
    let mut out = Batch::new();
    tty.write(bytes, &mut |piece| out.push(piece));
    out.flush();
}

// The requests, as Linux numbers them on x86-64.
const TCGETS: u64 = tty::TCGETS as u64;
const TCSETS: u64 = tty::TCSETS as u64;
const TCSETSW: u64 = tty::TCSETSW as u64;
const TCSETSF: u64 = tty::TCSETSF as u64;
const TCSBRK: u64 = 0x5409;
const TCXONC: u64 = 0x540a;
const TCFLSH: u64 = 0x540b;
const TIOCSCTTY: u64 = tty::TIOCSCTTY as u64;
const TIOCGPGRP: u64 = tty::TIOCGPGRP as u64;
const TIOCSPGRP: u64 = tty::TIOCSPGRP as u64;
const TIOCGWINSZ: u64 = tty::TIOCGWINSZ as u64;
const TIOCSWINSZ: u64 = tty::TIOCSWINSZ as u64;
const FIONREAD: u64 = tty::FIONREAD as u64;
const TIOCNOTTY: u64 = 0x5422;
const TIOCGSID: u64 = 0x5429;

/// ioctl(2) on the terminal.
pub fn ioctl(request: u64, arg: u64) -> Result<u64, i64> {
    let Some(tty) = terminal() else { return Err(ENOTTY) };
    match request {
        TCGETS => put(arg, &tty.termios().to_bytes())?,
        TCSETS | TCSETSW | TCSETSF => {
            let mut bytes = [0u8; TERMIOS_SIZE];
            get(arg, &mut bytes)?;
            // Output is never held back here, so TCSETSW has nothing to
            // wait for.
            tty.set_termios(Termios::from_bytes(&bytes), request == TCSETSF);
            // Leaving canonical mode can make typed bytes readable at once.
            wake(READ_CHANNEL);
            wake(POLL_CHANNEL);
        }
        TIOCGWINSZ => put(arg, &tty.winsize().to_bytes())?,
        TIOCSWINSZ => {
            let mut bytes = [0u8; 8];
            get(arg, &mut bytes)?;
            let size = Winsize::from_bytes(&bytes);
            if size != tty.winsize() {
                tty.set_winsize(size);
                signal::send_group(u64::from(tty.foreground()), SIGWINCH);
            }
        }
        TIOCGPGRP => put_u32(arg, tty.foreground())?,
        TIOCSPGRP => {
            let mut bytes = [0u8; 4];
            get(arg, &mut bytes)?;
            let group = i32::from_le_bytes(bytes);
            if group < 0 {
                return Err(EINVAL);
            }
            if !group_exists(group as u64) {
                return Err(EPERM);
            }
            tty.set_foreground(group as u32);
        }
        TIOCGSID => put_u32(arg, task(k().current).sid as u32)?,
        FIONREAD => {
            pump();
            put_u32(arg, tty.readable() as u32)?
        }
        TCFLSH => {
            // TCIFLUSH (0) and TCIOFLUSH (2) drop typed input; output is
            // never held, so TCOFLUSH (1) has nothing to drop.
            match arg {
                0 | 2 => tty.set_termios(tty.termios(), true),
                1 => {}
                _ => return Err(EINVAL),
            }
        }
        // The one terminal is everybody's controlling terminal already;
        // breaks, drains and flow control have nothing to do on it.
        TIOCSCTTY | TIOCNOTTY | TCSBRK | TCXONC => {}
        _ => return Err(ENOTTY),
    }
    Ok(0)
}

/// Whether some live Linux process is in group `group`.
fn group_exists(group: u64) -> bool {
    (1..super::super::proc::MAX_PROCS).any(|index| {
        k().procs[index].linux && super::task::task_slot(index).as_ref().is_some_and(|t| t.pgid == group)
    })
}
