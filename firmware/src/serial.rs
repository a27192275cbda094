//! # The console: COM1 and the `log` crate
//!
//! Everything Umbra says goes out of the first 16550 UART at port 0x3f8,
//! which QEMU (`-serial stdio`) and Cloud Hypervisor (`--serial tty`)
//! both provide. Waiting for the transmitter is bounded, so a machine
//! without a UART is slow to talk to but never hangs.
//!
//! Two kinds of output go through here: the lines that form the boot
//! contract (the banner, `umbra: exit status N`), which are always
//! printed, and `log` records, filtered by `log=` on the command line.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, Ordering};

use spin::Mutex;
use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;
const LINE_STATUS: u16 = COM1 + 5;
const TRANSMIT_EMPTY: u8 = 1 << 5;
const DATA_READY: u8 = 1 << 0;

/// Bytes typed before Umbra started, taken from the receiver while the
/// UART was set up; more than this many may lose one byte.
const EARLY_MAX: usize = 64;
static EARLY: Mutex<heapless::Deque<u8, EARLY_MAX>> = Mutex::new(heapless::Deque::new());
/// How long to wait for the transmitter before writing anyway.
const TRANSMIT_SPINS: u32 = 100_000;

pub struct Serial;

impl Serial {
    fn out(port: u16, value: u8) {
        // SAFETY: the COM1 registers have no effect beyond the UART.
        unsafe { Port::new(port).write(value) }
    }

    fn line_status() -> u8 {
        // SAFETY: reading the line status register has no side effects.
        unsafe { Port::<u8>::new(LINE_STATUS).read() }
    }

    /// 115200 baud, 8N1, FIFOs on, interrupts off.
    ///
    /// Input typed before Umbra started must survive this. The UART comes
    /// up without FIFOs, holding one byte at most; a VMM passes the next
    /// only once that one is read (QEMU's 16550 asks its input for more at
    /// each read of the receiver), and turning the FIFOs on empties them.
    /// So what waits is taken first, byte by byte, until no more comes
    /// (up to [`EARLY_MAX`] bytes, kept for [`read_byte`]); and once the
    /// FIFOs are on the receiver is read once more, which asks the VMM for
    /// the rest: without that read it would wait for ever.
    fn init() {
        Self::take_early_input();
        Self::out(COM1 + 1, 0x00);
        Self::out(COM1 + 3, 0x80);
        Self::out(COM1, 0x01);
        Self::out(COM1 + 1, 0x00);
        Self::out(COM1 + 3, 0x03);
        Self::out(COM1 + 2, 0xc7);
        Self::out(COM1 + 4, 0x03);
        if Self::line_status() & DATA_READY == 0 {
            // SAFETY: reading the empty receiver gives 0 and takes nothing.
            let _ = unsafe { Port::<u8>::new(COM1).read() };
        }
    }

    /// Take the bytes waiting in the receiver into [`EARLY`], waiting a
    /// little for each next one the VMM passes, while any come.
    fn take_early_input() {
        const PATIENCE: u32 = 100_000;
        let mut early = EARLY.lock();
        let mut quiet = 0;
        while quiet < PATIENCE && !early.is_full() {
            if Self::line_status() & DATA_READY == 0 {
                if early.is_empty() {
                    return;
                }
                quiet += 1;
                core::hint::spin_loop();
                continue;
            }
            // SAFETY: reading the receive register takes the byte; nothing else.
            let _ = early.push_back(unsafe { Port::<u8>::new(COM1).read() });
            quiet = 0;
        }
    }

    fn put(byte: u8) {
        for _ in 0..TRANSMIT_SPINS {
            if Self::line_status() & TRANSMIT_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        Self::out(COM1, byte);
    }
}

/// One byte typed on the console, if one is waiting; never waits. The
/// UART's interrupts stay off: the run loop looks at every host tick
/// (`hv_core::run`), and a VMM holds further input until the UART has room
/// for it, so nothing is lost between looks.
pub fn read_byte() -> Option<u8> {
    // The console's lock keeps this CPU's look at the line status and its
    // read of the byte together, away from another CPU's.
    let _console = CONSOLE.lock();
    if let Some(byte) = EARLY.lock().pop_front() {
        return Some(byte);
    }
    if Serial::line_status() & DATA_READY == 0 {
        return None;
    }
    // SAFETY: reading the receive register takes the byte; nothing else.
    Some(unsafe { Port::<u8>::new(COM1).read() })
}

impl Write for Serial {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for byte in text.bytes() {
            if byte == b'\n' {
                Serial::put(b'\r');
            }
            Serial::put(byte);
        }
        Ok(())
    }
}

/// Keeps lines from different CPUs whole.
static CONSOLE: Mutex<Serial> = Mutex::new(Serial);

pub fn print(args: fmt::Arguments) {
    let _ = CONSOLE.lock().write_fmt(args);
}

/// A guest's console output: its bytes, but never control sequences that
/// could rewrite the host's terminal; anything unprintable becomes '?'.
pub fn write_bytes(bytes: &[u8]) {
    let _console = CONSOLE.lock();
    put_guest_bytes(bytes);
}

/// The last byte of the terminal owner's output, so that its `\r\n`
/// (a guest kernel's terminal does `ONLCR`) does not become `\r\r\n`.
static TERMINAL_LAST: AtomicU8 = AtomicU8::new(b'\n');

/// The console owner's output, when it runs alone: the bytes as they are,
/// escape sequences included, for it owns the terminal (a shell's line
/// editor needs them); only a line feed without its carriage return gets
/// one, as Umbra's own lines and a guest's `\n` need on a serial line.
pub fn write_terminal_bytes(bytes: &[u8]) {
    let _console = CONSOLE.lock();
    let mut last = TERMINAL_LAST.load(Ordering::Relaxed);
    for &byte in bytes {
        if byte == b'\n' && last != b'\r' {
            Serial::put(b'\r');
        }
        Serial::put(byte);
        last = byte;
    }
    TERMINAL_LAST.store(last, Ordering::Relaxed);
}

/// `[gN] ` and a piece of guest N's output, under one hold of the lock,
/// so no other CPU's output lands inside the line.
pub fn write_guest_line(number: usize, bytes: &[u8]) {
    let mut console = CONSOLE.lock();
    let _ = write!(console, "[g{number}] ");
    put_guest_bytes(bytes);
}

/// A carriage return is dropped, since a guest's terminal ends its
/// lines with `\r\n` and the `\n` brings its own; alone it could only
/// serve to write over the start of a line (a `[gN] ` prefix, say).
fn put_guest_bytes(bytes: &[u8]) {
    for &byte in bytes {
        match byte {
            b'\n' => {
                Serial::put(b'\r');
                Serial::put(b'\n');
            }
            b'\r' => {}
            b'\t' | b' '..=b'~' => Serial::put(byte),
            _ => Serial::put(b'?'),
        }
    }
}

/// For the crash path: write around the console lock, whoever holds it.
pub fn print_crashing(args: fmt::Arguments) {
    let _ = Serial.write_fmt(args);
}

/// For the crash path, first: take the console for good, so that no other
/// CPU's line lands inside the report. A CPU holding it is mid-line and
/// lets go soon; if it never does (this CPU crashed holding it), the
/// report goes out around it after a bounded wait.
pub fn seize_for_crash() {
    for _ in 0..10_000_000 {
        if let Some(guard) = CONSOLE.try_lock() {
            core::mem::forget(guard);
            return;
        }
        core::hint::spin_loop();
    }
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::serial::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let prefix = match record.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warn: ",
            log::Level::Info => "",
            log::Level::Debug => "debug: ",
            log::Level::Trace => "trace: ",
        };
        // The acpi crate logs too; name foreign sources.
        let target = record.target();
        if target.starts_with("umbra") {
            print(format_args!("{prefix}{}\n", record.args()));
        } else {
            print(format_args!("{prefix}{target}: {}\n", record.args()));
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Never inlined: it is the first thing `umbra_main` does, and gdb puts a
/// breakpoint on a function after its prologue, so an inlined body here
/// would make `break umbra_main` stop "in" a port write instead.
#[inline(never)]
pub fn init() {
    Serial::init();
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}
