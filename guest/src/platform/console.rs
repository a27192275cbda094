//! # The console: one line at a time
//!
//! Under Umbra the guest has no serial port of its own; Umbra prints for
//! it. Each `say!` builds one line, "guest: " and the text and a newline,
//! in a buffer on the stack, and hands it to the platform in one piece
//! (one CONSOLE_WRITE under Umbra), so lines from the guest and from
//! Umbra never interleave mid-line. A line too long for the buffer goes
//! out in pieces. Natively the same line goes to COM1, prefix and all, so
//! both transcripts read alike.

use core::fmt::{self, Write};

use crate::platform;

/// Prints one line on Umbra's console, prefixed "guest: ".
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::platform::console::say(format_args!($($arg)*))
    };
}

/// A line being built; it goes out when full or when done.
struct Line {
    buffer: [u8; 256],
    len: usize,
}

impl Line {
    fn flush(&mut self) {
        if self.len > 0 {
            platform::console(&self.buffer[..self.len]);
            self.len = 0;
        }
    }
}

impl Write for Line {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for &byte in text.as_bytes() {
            if self.len == self.buffer.len() {
                self.flush();
            }
            self.buffer[self.len] = byte;
            self.len += 1;
        }
        Ok(())
    }
}

/// The body of `say!`.
pub fn say(args: fmt::Arguments) {
    let mut line = Line { buffer: [0; 256], len: 0 };
    // Writing to a Line never fails.
    let _ = line.write_str("guest: ");
    let _ = line.write_fmt(args);
    let _ = line.write_str("\n");
    line.flush();
}

/// Bytes from outside (the command line) shown as text: printable ASCII
/// as is, anything else as `?`.
pub struct Printable<'a>(pub &'a [u8]);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &byte in self.0 {
            let shown = if byte.is_ascii_graphic() || byte == b' ' { byte as char } else { '?' };
            f.write_char(shown)?;
        }
        Ok(())
    }
}
