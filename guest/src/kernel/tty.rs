//! # The terminal's line discipline
//!
//! `/dev/console` and `/dev/tty` are a terminal, and a terminal is more
//! than a byte pipe: programs expect the kernel to edit the line being
//! typed (erase, kill the line, erase a word), to turn `^C` into a
//! signal, to echo what is typed, to hand out input a line at a time,
//! and to turn the `\n` a program writes into the `\r\n` the screen
//! needs. Linux calls that the line discipline (its `n_tty`); busybox's
//! shell relies on it twice: its line editor switches the terminal to raw
//! mode through `TCSETS` and does the editing itself, while `read` and
//! `cat` from the console get Linux's canonical mode.
//!
//! This file is that logic and nothing else: no devices, no locks, no
//! `unsafe`, only `core`. The kernel feeds it the bytes the console
//! delivers (`Tty::receive`), asks it what a `read` may return now
//! (`Tty::read`: data, end of file, or "would block", the kernel does the
//! waiting), and passes what programs write through it (`Tty::write`).
//! Echo and output leave through closures, so the kernel decides where
//! they go; the host tests capture them.
//!
//! It follows what Linux does, byte for byte where a user can see it
//! (what is echoed for an erase, a kill, a control character, a tab), and
//! says where it is simpler:
//! - input is one 4 KiB ring; a byte that does not fit is dropped and
//!   counted (`Tty::dropped`). In canonical mode the last slot is kept
//!   for the line's end, so a full line can still be finished;
//! - backspace (`0x08`) erases too, besides `VERASE` (DEL), because
//!   serial terminals send either;
//! - `VMIN`/`VTIME` are simplified: `VMIN` 0 never blocks, `VMIN` > 0
//!   returns as soon as `min(VMIN, the read's length)` bytes are there,
//!   and `VTIME` is a timeout the kernel applies itself (`Tty::vtime`);
//! - `IXON`'s stop and start characters only set a flag
//!   (`Tty::output_stopped`): output is never held back here;
//! - control characters are the ASCII ones (below 0x20, and DEL), so
//!   UTF-8 is echoed as typed; with `IUTF8` an erase removes a whole
//!   UTF-8 character.
//!
//! No byte and no setting a program can choose makes it panic or loop:
//! every position wraps through one mask, and the host tests feed it
//! seeded random bytes and random `termios` between reads and writes.

/// `struct termios` as Linux's `TCGETS` and `TCSETS` pass it: the
/// kernel's own layout (not glibc's, which is larger), 36 bytes, little
/// endian: four flag words, the line discipline number, 19 control
/// characters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: [u8; NCCS],
}

/// The number of control characters in the kernel's `struct termios`.
pub const NCCS: usize = 19;
/// The size of the kernel's `struct termios`.
pub const TERMIOS_SIZE: usize = 36;

// Indices into `Termios::cc`, as Linux numbers them.
pub const VINTR: usize = 0;
pub const VQUIT: usize = 1;
pub const VERASE: usize = 2;
pub const VKILL: usize = 3;
pub const VEOF: usize = 4;
pub const VTIME: usize = 5;
pub const VMIN: usize = 6;
pub const VSWTC: usize = 7;
pub const VSTART: usize = 8;
pub const VSTOP: usize = 9;
pub const VSUSP: usize = 10;
pub const VEOL: usize = 11;
pub const VREPRINT: usize = 12;
pub const VDISCARD: usize = 13;
pub const VWERASE: usize = 14;
pub const VLNEXT: usize = 15;
pub const VEOL2: usize = 16;

// Input flags (`c_iflag`).
pub const IGNBRK: u32 = 0o1;
pub const BRKINT: u32 = 0o2;
pub const IGNPAR: u32 = 0o4;
pub const PARMRK: u32 = 0o10;
pub const INPCK: u32 = 0o20;
pub const ISTRIP: u32 = 0o40;
pub const INLCR: u32 = 0o100;
pub const IGNCR: u32 = 0o200;
pub const ICRNL: u32 = 0o400;
pub const IUCLC: u32 = 0o1000;
pub const IXON: u32 = 0o2000;
pub const IXANY: u32 = 0o4000;
pub const IXOFF: u32 = 0o10000;
pub const IMAXBEL: u32 = 0o20000;
pub const IUTF8: u32 = 0o40000;

// Output flags (`c_oflag`).
pub const OPOST: u32 = 0o1;
pub const OLCUC: u32 = 0o2;
pub const ONLCR: u32 = 0o4;
pub const OCRNL: u32 = 0o10;
pub const ONOCR: u32 = 0o20;
pub const ONLRET: u32 = 0o40;
pub const TABDLY: u32 = 0o14000;
pub const XTABS: u32 = 0o14000;

// Control flags (`c_cflag`).
pub const CBAUD: u32 = 0o10017;
pub const B38400: u32 = 0o17;
pub const CSIZE: u32 = 0o60;
pub const CS8: u32 = 0o60;
pub const CSTOPB: u32 = 0o100;
pub const CREAD: u32 = 0o200;
pub const PARENB: u32 = 0o400;
pub const HUPCL: u32 = 0o2000;
pub const CLOCAL: u32 = 0o4000;

// Local flags (`c_lflag`).
pub const ISIG: u32 = 0o1;
pub const ICANON: u32 = 0o2;
pub const ECHO: u32 = 0o10;
pub const ECHOE: u32 = 0o20;
pub const ECHOK: u32 = 0o40;
pub const ECHONL: u32 = 0o100;
pub const NOFLSH: u32 = 0o200;
pub const TOSTOP: u32 = 0o400;
pub const ECHOCTL: u32 = 0o1000;
pub const ECHOPRT: u32 = 0o2000;
pub const ECHOKE: u32 = 0o4000;
pub const IEXTEN: u32 = 0o100000;

// The terminal `ioctl`s (x86-64 numbers).
pub const TCGETS: u32 = 0x5401;
pub const TCSETS: u32 = 0x5402;
pub const TCSETSW: u32 = 0x5403;
pub const TCSETSF: u32 = 0x5404;
pub const TIOCSCTTY: u32 = 0x540e;
pub const TIOCGPGRP: u32 = 0x540f;
pub const TIOCSPGRP: u32 = 0x5410;
pub const TIOCGWINSZ: u32 = 0x5413;
pub const TIOCSWINSZ: u32 = 0x5414;
pub const FIONREAD: u32 = 0x541b;

/// A control character's `cc` value when it is turned off: Linux never
/// treats byte 0 as special.
const DISABLED: u8 = 0;

const fn ctrl(letter: u8) -> u8 {
    letter & 0x1f
}

impl Termios {
    /// Reads the kernel's 36-byte layout; any bytes are a valid termios.
    pub fn from_bytes(b: &[u8; TERMIOS_SIZE]) -> Termios {
        let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let mut cc = [0; NCCS];
        cc.copy_from_slice(&b[17..17 + NCCS]);
        Termios { iflag: word(0), oflag: word(4), cflag: word(8), lflag: word(12), line: b[16], cc }
    }

    /// The kernel's 36-byte layout, for `TCGETS`.
    pub fn to_bytes(self) -> [u8; TERMIOS_SIZE] {
        let mut b = [0; TERMIOS_SIZE];
        b[0..4].copy_from_slice(&self.iflag.to_le_bytes());
        b[4..8].copy_from_slice(&self.oflag.to_le_bytes());
        b[8..12].copy_from_slice(&self.cflag.to_le_bytes());
        b[12..16].copy_from_slice(&self.lflag.to_le_bytes());
        b[16] = self.line;
        b[17..].copy_from_slice(&self.cc);
        b
    }

    /// What Linux gives a console when it opens: canonical mode with
    /// echo and signals, `\r` read as `\n`, `\n` written as `\r\n`, the
    /// usual control characters. `IUTF8` is on, as Linux's virtual
    /// consoles set it in UTF-8 mode.
    pub const fn default_console() -> Termios {
        let mut cc = [DISABLED; NCCS];
        cc[VINTR] = ctrl(b'C');
        cc[VQUIT] = ctrl(b'\\');
        cc[VERASE] = 0x7f;
        cc[VKILL] = ctrl(b'U');
        cc[VEOF] = ctrl(b'D');
        cc[VTIME] = 0;
        cc[VMIN] = 1;
        cc[VSTART] = ctrl(b'Q');
        cc[VSTOP] = ctrl(b'S');
        cc[VSUSP] = ctrl(b'Z');
        cc[VREPRINT] = ctrl(b'R');
        cc[VDISCARD] = ctrl(b'O');
        cc[VWERASE] = ctrl(b'W');
        cc[VLNEXT] = ctrl(b'V');
        Termios {
            iflag: ICRNL | IXON | IUTF8,
            oflag: OPOST | ONLCR,
            cflag: B38400 | CS8 | CREAD | HUPCL,
            lflag: ISIG | ICANON | ECHO | ECHOE | ECHOK | ECHOCTL | ECHOKE | IEXTEN,
            line: 0,
            cc,
        }
    }
}

/// `struct winsize` (`TIOCGWINSZ`, `TIOCSWINSZ`): four `u16`s, 8 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Winsize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

impl Winsize {
    /// A serial console cannot tell its size; 24 x 80 is what terminals
    /// have always assumed.
    pub const DEFAULT: Winsize = Winsize { rows: 24, cols: 80, xpixel: 0, ypixel: 0 };

    pub fn from_bytes(b: &[u8; 8]) -> Winsize {
        let half = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        Winsize { rows: half(0), cols: half(2), xpixel: half(4), ypixel: half(6) }
    }

    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0; 8];
        b[0..2].copy_from_slice(&self.rows.to_le_bytes());
        b[2..4].copy_from_slice(&self.cols.to_le_bytes());
        b[4..6].copy_from_slice(&self.xpixel.to_le_bytes());
        b[6..8].copy_from_slice(&self.ypixel.to_le_bytes());
        b
    }
}

impl Default for Winsize {
    fn default() -> Winsize {
        Winsize::DEFAULT
    }
}

/// A signal a typed character asks for, to be sent to the terminal's
/// foreground process group.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Signal {
    /// `VINTR` (`^C`): SIGINT.
    Interrupt,
    /// `VQUIT` (`^\`): SIGQUIT.
    Quit,
    /// `VSUSP` (`^Z`): SIGTSTP; a kernel without job control may ignore it.
    Suspend,
}

/// What a `read` may return now.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Read {
    /// This many bytes were copied (0 only for an empty buffer, or in
    /// non-canonical mode with `VMIN` 0 and nothing typed).
    Data(usize),
    /// `VEOF` on an empty line: the read returns 0.
    EndOfFile,
    /// Nothing to return yet: the kernel waits for input (and, in
    /// non-canonical mode with `VTIME`, for its timeout).
    WouldBlock,
}

/// The input ring's size. A power of two, so positions wrap with a mask.
pub const INPUT_SIZE: usize = 4096;
const MASK: usize = INPUT_SIZE - 1;
const MARK_WORDS: usize = INPUT_SIZE / 64;

/// Which erase a character asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Erase {
    Char,
    Word,
    Line,
}

/// One terminal: its settings, its typed input, and the state line
/// editing needs.
pub struct Tty {
    termios: Termios,
    winsize: Winsize,
    foreground: u32,
    /// Typed input. `head` and `tail` count bytes forever (wrapping);
    /// `head - tail` is how much is held.
    input: [u8; INPUT_SIZE],
    tail: usize,
    head: usize,
    /// Where the line being edited begins: in canonical mode, bytes
    /// before it are finished lines a read may take, bytes after it can
    /// still be erased. In non-canonical mode it follows `head`.
    canon_head: usize,
    /// Positions that end a line (a line's last byte: `\n`, `VEOL`,
    /// `VEOL2`, the `VEOF` placeholder, or the last byte of input that
    /// was pending when canonical mode was turned on).
    line_ends: [u64; MARK_WORDS],
    /// Positions holding `VEOF`'s placeholder: it ends a line but is not
    /// data.
    eofs: [u64; MARK_WORDS],
    /// The next byte is taken literally (`VLNEXT` was typed).
    literal_next: bool,
    /// An `ECHOPRT` erase is in progress (its `\` was echoed, its `/` is due).
    erasing: bool,
    /// The output column, as far as the output this discipline produced
    /// tells, and the column where the line being edited began echoing:
    /// erasing a tab needs both.
    column: usize,
    canon_column: usize,
    output_stopped: bool,
    dropped: u64,
}

impl Default for Tty {
    fn default() -> Tty {
        Tty::new()
    }
}

fn is_cntrl(c: u8) -> bool {
    c < 0x20 || c == 0x7f
}

fn is_word_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn mark(bits: &mut [u64; MARK_WORDS], at: usize, on: bool) {
    let slot = at & MASK;
    let bit = 1u64 << (slot % 64);
    if on {
        bits[slot / 64] |= bit;
    } else {
        bits[slot / 64] &= !bit;
    }
}

fn marked(bits: &[u64; MARK_WORDS], at: usize) -> bool {
    let slot = at & MASK;
    bits[slot / 64] & (1u64 << (slot % 64)) != 0
}

impl Tty {
    /// A console as Linux opens one, with nothing typed yet. `const` so a
    /// kernel can keep its terminals in statics, not on a stack.
    pub const fn new() -> Tty {
        Tty {
            termios: Termios::default_console(),
            winsize: Winsize::DEFAULT,
            foreground: 0,
            input: [0; INPUT_SIZE],
            tail: 0,
            head: 0,
            canon_head: 0,
            line_ends: [0; MARK_WORDS],
            eofs: [0; MARK_WORDS],
            literal_next: false,
            erasing: false,
            column: 0,
            canon_column: 0,
            output_stopped: false,
            dropped: 0,
        }
    }

    pub fn termios(&self) -> Termios {
        self.termios
    }

    /// `TCSETS` (and `TCSETSF`, with `flush_input`: what was typed and
    /// not read is thrown away). Turning canonical mode off makes every
    /// pending byte readable; turning it on makes what was pending one
    /// finished line, as Linux does, so nothing typed is lost.
    pub fn set_termios(&mut self, t: Termios, flush_input: bool) {
        let was_canonical = self.canonical();
        self.termios = t;
        if !self.iflag(IXON) {
            // Nothing could restart output any more.
            self.output_stopped = false;
        }
        if flush_input {
            self.flush_input();
        }
        if was_canonical != self.canonical() {
            self.line_ends = [0; MARK_WORDS];
            self.eofs = [0; MARK_WORDS];
            if self.canonical() && self.len() > 0 {
                mark(&mut self.line_ends, self.head.wrapping_sub(1), true);
            }
            self.canon_head = self.head;
            self.literal_next = false;
            self.erasing = false;
        }
    }

    pub fn winsize(&self) -> Winsize {
        self.winsize
    }

    pub fn set_winsize(&mut self, w: Winsize) {
        self.winsize = w;
    }

    /// The foreground process group (`TIOCGPGRP`); 0 until the kernel
    /// sets one.
    pub fn foreground(&self) -> u32 {
        self.foreground
    }

    pub fn set_foreground(&mut self, pgrp: u32) {
        self.foreground = pgrp;
    }

    /// How many typed bytes were dropped because the input was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// `VMIN`, for a kernel deciding whether a non-canonical read waits.
    pub fn vmin(&self) -> u8 {
        self.termios.cc[VMIN]
    }

    /// `VTIME` in tenths of a second: in non-canonical mode, how long a
    /// read that has some but not `VMIN` bytes may wait before the
    /// kernel returns what there is (`Tty::read_now`).
    pub fn vtime(&self) -> u8 {
        self.termios.cc[VTIME]
    }

    /// Whether the kernel should hand over the next typed byte now. While
    /// the input is full it should leave bytes where they wait (in the
    /// VMM's UART, or Umbra's queue), so that a paste or a fast typist
    /// loses nothing as long as programs read. One case takes them anyway:
    /// a canonical line too long to ever finish, with no finished line to
    /// read before it. Its bytes are then taken and dropped (and counted),
    /// as Linux drops them, so that the newline ending it still gets in.
    pub fn accepting(&self) -> bool {
        self.has_room() || (self.canonical() && self.tail == self.canon_head && self.len() < INPUT_SIZE)
    }

    /// Whether `VSTOP` (`^S`) asked output to stop and `VSTART` (`^Q`)
    /// has not restarted it.
    pub fn output_stopped(&self) -> bool {
        self.output_stopped
    }

    fn canonical(&self) -> bool {
        self.termios.lflag & ICANON != 0
    }

    fn lflag(&self, bit: u32) -> bool {
        self.termios.lflag & bit != 0
    }

    fn iflag(&self, bit: u32) -> bool {
        self.termios.iflag & bit != 0
    }

    /// Whether `c` is the control character at `index` (never when that
    /// one is turned off).
    fn is(&self, c: u8, index: usize) -> bool {
        let special = self.termios.cc[index];
        special != DISABLED && c == special
    }

    fn len(&self) -> usize {
        self.head.wrapping_sub(self.tail)
    }

    fn at(&self, position: usize) -> u8 {
        self.input[position & MASK]
    }

    fn is_continuation(&self, c: u8) -> bool {
        self.iflag(IUTF8) && c & 0xc0 == 0x80
    }

    fn flush_input(&mut self) {
        self.tail = self.head;
        self.canon_head = self.head;
        self.line_ends = [0; MARK_WORDS];
        self.eofs = [0; MARK_WORDS];
        self.literal_next = false;
        self.erasing = false;
    }

    /// Stores one byte; `line_end` bytes may take the slot canonical mode
    /// keeps for them. False (and counted) when there is no room.
    fn push(&mut self, c: u8, line_end: bool) -> bool {
        let room = if self.canonical() && !line_end { INPUT_SIZE - 1 } else { INPUT_SIZE };
        if self.len() >= room {
            self.dropped += 1;
            return false;
        }
        let at = self.head;
        self.input[at & MASK] = c;
        mark(&mut self.line_ends, at, false);
        mark(&mut self.eofs, at, false);
        self.head = self.head.wrapping_add(1);
        true
    }

    /// Whether a byte (not a line end) would fit, so it is not echoed
    /// when it will be dropped.
    fn has_room(&self) -> bool {
        let room = if self.canonical() { INPUT_SIZE - 1 } else { INPUT_SIZE };
        self.len() < room
    }

    // ---------------------------------------------------------------
    // Output processing, shared by echo and by what programs write.

    /// One byte out, processed per `OPOST` as Linux's output does, with
    /// the column kept up to date.
    fn output_byte(&mut self, c: u8, out: &mut dyn FnMut(&[u8])) {
        let oflag = self.termios.oflag;
        if oflag & OPOST == 0 {
            out(&[c]);
            return;
        }
        match c {
            b'\n' => {
                if oflag & ONLRET != 0 {
                    self.column = 0;
                }
                if oflag & ONLCR != 0 {
                    self.column = 0;
                    self.canon_column = 0;
                    out(b"\r\n");
                    return;
                }
                self.canon_column = self.column;
                out(b"\n");
            }
            b'\r' => {
                if oflag & ONOCR != 0 && self.column == 0 {
                    return;
                }
                if oflag & OCRNL != 0 {
                    if oflag & ONLRET != 0 {
                        self.column = 0;
                        self.canon_column = 0;
                    }
                    out(b"\n");
                    return;
                }
                self.column = 0;
                self.canon_column = 0;
                out(b"\r");
            }
            b'\t' => {
                let spaces = 8 - (self.column & 7);
                self.column += spaces;
                if oflag & TABDLY == XTABS {
                    out(&b"        "[..spaces]);
                } else {
                    out(b"\t");
                }
            }
            0x08 => {
                self.column = self.column.saturating_sub(1);
                out(&[c]);
            }
            _ => {
                let mut c = c;
                if !is_cntrl(c) {
                    if oflag & OLCUC != 0 {
                        c = c.to_ascii_uppercase();
                    }
                    if !self.is_continuation(c) {
                        self.column += 1;
                    }
                }
                out(&[c]);
            }
        }
    }

    /// Output processing for bytes a program writes.
    pub fn write(&mut self, bytes: &[u8], out: &mut dyn FnMut(&[u8])) {
        if self.termios.oflag & OPOST == 0 {
            out(bytes);
            return;
        }
        // Runs of plain bytes leave in one piece; only the bytes output
        // processing changes (or that move the column oddly) go alone.
        let mut start = 0;
        for (i, &c) in bytes.iter().enumerate() {
            if c == b'\n' || c == b'\r' || c == b'\t' || c == 0x08 || self.termios.oflag & OLCUC != 0 {
                if start < i {
                    self.plain_run(&bytes[start..i], out);
                }
                self.output_byte(c, out);
                start = i + 1;
            }
        }
        if start < bytes.len() {
            self.plain_run(&bytes[start..], out);
        }
    }

    fn plain_run(&mut self, run: &[u8], out: &mut dyn FnMut(&[u8])) {
        for &c in run {
            if !is_cntrl(c) && !self.is_continuation(c) {
                self.column += 1;
            }
        }
        out(run);
    }

    // ---------------------------------------------------------------
    // Echo.

    /// Echoes `c` as typed: a control character as `^X` under `ECHOCTL`
    /// (but a tab as itself, and a newline is echoed raw by its callers).
    fn echo_char(&mut self, c: u8, echo: &mut dyn FnMut(&[u8])) {
        if self.lflag(ECHOCTL) && is_cntrl(c) && c != b'\t' {
            echo(&[b'^', c ^ 0x40]);
            self.column += 2;
        } else {
            self.output_byte(c, echo);
        }
    }

    fn echo_raw(&mut self, c: u8, echo: &mut dyn FnMut(&[u8])) {
        self.output_byte(c, echo);
    }

    /// Ends an `ECHOPRT` erase with its `/`.
    fn finish_erasing(&mut self, echo: &mut dyn FnMut(&[u8])) {
        if self.erasing {
            self.echo_raw(b'/', echo);
            self.erasing = false;
        }
    }

    /// Remembers where the line being edited starts echoing, when its
    /// first byte is echoed.
    fn set_canon_column_if_line_starts(&mut self) {
        if self.canon_head == self.head {
            self.canon_column = self.column;
        }
    }

    // ---------------------------------------------------------------
    // Input.

    /// One byte typed. Returns the signal it asks for, if any; echo (if
    /// any) has gone through `echo`, already output-processed.
    pub fn receive(&mut self, byte: u8, echo: &mut dyn FnMut(&[u8])) -> Option<Signal> {
        let mut c = byte;
        if self.iflag(ISTRIP) {
            c &= 0x7f;
        }
        if self.iflag(IUCLC) && self.lflag(IEXTEN) {
            c = c.to_ascii_lowercase();
        }
        let typed = c;
        if self.literal_next {
            self.literal_next = false;
            self.restart_on_any_key();
            self.receive_ordinary(c, echo);
            return None;
        }

        if self.iflag(IXON) {
            if self.is(c, VSTART) {
                self.output_stopped = false;
                return None;
            }
            if self.is(c, VSTOP) {
                self.output_stopped = true;
                return None;
            }
        }
        if self.lflag(ISIG) {
            let signal = if self.is(c, VINTR) {
                Some(Signal::Interrupt)
            } else if self.is(c, VQUIT) {
                Some(Signal::Quit)
            } else if self.is(c, VSUSP) {
                Some(Signal::Suspend)
            } else {
                None
            };
            if let Some(signal) = signal {
                if !self.lflag(NOFLSH) {
                    self.flush_input();
                }
                if self.iflag(IXON) {
                    self.output_stopped = false;
                }
                if self.lflag(ECHO) {
                    self.echo_char(c, echo);
                }
                return Some(signal);
            }
        }
        self.restart_on_any_key();

        if c == b'\r' {
            if self.iflag(IGNCR) {
                return None;
            }
            if self.iflag(ICRNL) {
                c = b'\n';
            }
        } else if c == b'\n' && self.iflag(INLCR) {
            c = b'\r';
        }

        if self.canonical() {
            self.receive_canonical(c, echo);
            return None;
        }

        // Non-canonical: every byte is data, readable at once.
        // Linux echoes a newline `ICRNL` made from a typed `\r` as a
        // newline, but a `^J` typed here as any control character.
        if c == b'\n' && typed == b'\r' {
            self.receive_newline_raw_echo(c, echo);
        } else {
            self.receive_ordinary(c, echo);
        }
        self.canon_head = self.head;
        None
    }

    /// `IXANY`: any key restarts stopped output.
    fn restart_on_any_key(&mut self) {
        if self.output_stopped && self.iflag(IXON) && self.iflag(IXANY) {
            self.output_stopped = false;
        }
    }

    fn receive_newline_raw_echo(&mut self, c: u8, echo: &mut dyn FnMut(&[u8])) {
        if !self.has_room() {
            self.dropped += 1;
            return;
        }
        if self.lflag(ECHO) {
            self.finish_erasing(echo);
            self.echo_raw(b'\n', echo);
        }
        self.push(c, false);
    }

    /// A byte with no special meaning: echoed (as `^X` if a control
    /// character, under `ECHOCTL`) and stored.
    fn receive_ordinary(&mut self, c: u8, echo: &mut dyn FnMut(&[u8])) {
        if !self.has_room() {
            self.dropped += 1;
            return;
        }
        if self.lflag(ECHO) {
            self.finish_erasing(echo);
            self.set_canon_column_if_line_starts();
            self.echo_char(c, echo);
        }
        self.push(c, false);
        if !self.canonical() {
            self.canon_head = self.head;
        }
    }

    fn receive_canonical(&mut self, c: u8, echo: &mut dyn FnMut(&[u8])) {
        let iexten = self.lflag(IEXTEN);
        let ends_line = c == b'\n' || self.is(c, VEOF) || self.is(c, VEOL) || (self.is(c, VEOL2) && iexten);
        if ends_line && self.len() >= INPUT_SIZE {
            // Not even the slot kept for a line's end is free: drop it
            // before echoing it.
            self.dropped += 1;
            return;
        }
        let erase = if self.is(c, VERASE) {
            Some(Erase::Char)
        } else if self.is(c, VWERASE) && iexten {
            Some(Erase::Word)
        } else if self.is(c, VKILL) {
            Some(Erase::Line)
        } else {
            None
        };
        if let Some(kind) = erase {
            self.erase(kind, c, echo);
            return;
        }
        if self.is(c, VLNEXT) && iexten {
            self.literal_next = true;
            if self.lflag(ECHO) {
                self.finish_erasing(echo);
                if self.lflag(ECHOCTL) {
                    // A placeholder the next byte's echo overwrites.
                    self.echo_raw(b'^', echo);
                    self.echo_raw(0x08, echo);
                }
            }
            return;
        }
        if self.is(c, VREPRINT) && self.lflag(ECHO) && iexten {
            self.finish_erasing(echo);
            self.echo_char(c, echo);
            self.echo_raw(b'\n', echo);
            let mut at = self.canon_head;
            while at != self.head {
                let typed = self.at(at);
                self.echo_char(typed, echo);
                at = at.wrapping_add(1);
            }
            return;
        }
        if c == b'\n' {
            if self.lflag(ECHO) || self.lflag(ECHONL) {
                self.echo_raw(b'\n', echo);
            }
            self.end_line(c, false);
            return;
        }
        if self.is(c, VEOF) {
            self.end_line(DISABLED, true);
            return;
        }
        if self.is(c, VEOL) || (self.is(c, VEOL2) && iexten) {
            if self.lflag(ECHO) {
                self.set_canon_column_if_line_starts();
                self.echo_char(c, echo);
            }
            self.end_line(c, false);
            return;
        }
        if c == 0x08 {
            self.erase(Erase::Char, c, echo);
            return;
        }
        self.receive_ordinary(c, echo);
    }

    /// Finishes the line being edited with `c` (a data byte, or `VEOF`'s
    /// placeholder): a read may take it now.
    fn end_line(&mut self, c: u8, eof: bool) {
        let at = self.head;
        if !self.push(c, true) {
            return;
        }
        mark(&mut self.line_ends, at, true);
        mark(&mut self.eofs, at, eof);
        self.canon_head = self.head;
    }

    /// Erase a character, a word or the line being edited, echoing as
    /// Linux does: `\b \b` per column under `ECHOE`, a tab's worth of
    /// backspaces for a tab, the erase character itself without `ECHOE`,
    /// `\`...`/` under `ECHOPRT`, the kill character and a newline when
    /// a line kill cannot be shown by erasing.
    fn erase(&mut self, kind: Erase, typed: u8, echo: &mut dyn FnMut(&[u8])) {
        if self.head == self.canon_head {
            return;
        }
        let echoing = self.lflag(ECHO);
        if kind == Erase::Line {
            if !echoing {
                self.head = self.canon_head;
                return;
            }
            if !self.lflag(ECHOK) || !self.lflag(ECHOKE) || !self.lflag(ECHOE) {
                self.head = self.canon_head;
                self.finish_erasing(echo);
                self.echo_char(typed, echo);
                if self.lflag(ECHOK) {
                    self.echo_raw(b'\n', echo);
                }
                return;
            }
        }

        let mut seen_word_chars = 0usize;
        while self.head != self.canon_head {
            // One character, which under IUTF8 may be several bytes.
            let mut start = self.head;
            let mut c;
            loop {
                start = start.wrapping_sub(1);
                c = self.at(start);
                if !self.is_continuation(c) || start == self.canon_head {
                    break;
                }
            }
            if self.is_continuation(c) {
                // Never erase half a character.
                break;
            }
            if kind == Erase::Word {
                if is_word_char(c) {
                    seen_word_chars += 1;
                } else if seen_word_chars > 0 {
                    break;
                }
            }
            let bytes = self.head.wrapping_sub(start);
            self.head = start;
            if echoing {
                if self.lflag(ECHOPRT) {
                    if !self.erasing {
                        self.echo_raw(b'\\', echo);
                        self.erasing = true;
                    }
                    self.echo_char(c, echo);
                    for offset in 1..bytes {
                        let byte = self.at(start.wrapping_add(offset));
                        self.echo_raw(byte, echo);
                    }
                } else if kind == Erase::Char && !self.lflag(ECHOE) {
                    self.echo_char(typed, echo);
                } else if c == b'\t' {
                    self.erase_tab(echo);
                } else {
                    let columns = if is_cntrl(c) { if self.lflag(ECHOCTL) { 2 } else { 0 } } else { 1 };
                    for _ in 0..columns {
                        self.echo_raw(0x08, echo);
                        self.echo_raw(b' ', echo);
                        self.echo_raw(0x08, echo);
                    }
                }
            }
            if kind == Erase::Char {
                break;
            }
        }
        if self.head == self.canon_head && echoing {
            self.finish_erasing(echo);
        }
    }

    /// Backs over a tab just erased (it is no longer in the input): as
    /// many columns as it filled, which the characters before it on the
    /// line decide.
    fn erase_tab(&mut self, echo: &mut dyn FnMut(&[u8])) {
        let mut columns = 0usize;
        let mut after_tab = false;
        let mut at = self.head;
        while at != self.canon_head {
            at = at.wrapping_sub(1);
            let c = self.at(at);
            if c == b'\t' {
                after_tab = true;
                break;
            } else if is_cntrl(c) {
                if self.lflag(ECHOCTL) {
                    columns += 2;
                }
            } else if !self.is_continuation(c) {
                columns += 1;
            }
        }
        if !after_tab {
            columns += self.canon_column;
        }
        let backspaces = 8 - (columns & 7);
        for _ in 0..backspaces {
            self.echo_raw(0x08, echo);
        }
    }

    // ---------------------------------------------------------------
    // Reading.

    /// How many bytes a read could take now (`FIONREAD`, and `poll`'s
    /// "readable" when nonzero). In canonical mode, only finished lines
    /// count, and `VEOF`'s placeholders are not data. A pending end of
    /// file also makes a read return at once: see `Tty::poll_ready`.
    pub fn readable(&self) -> usize {
        if !self.canonical() {
            return self.len();
        }
        let mut count = 0;
        let mut at = self.tail;
        while at != self.canon_head {
            if !marked(&self.eofs, at) {
                count += 1;
            }
            at = at.wrapping_add(1);
        }
        count
    }

    /// Whether `poll` reports the terminal readable: in canonical mode a
    /// finished line or an end of file; otherwise, as Linux, `VMIN`
    /// bytes when `VTIME` is 0 and `VMIN` is not, one byte when not.
    pub fn poll_ready(&self) -> bool {
        if self.canonical() {
            return self.canon_head != self.tail;
        }
        let wanted = if self.vtime() == 0 && self.vmin() > 0 { usize::from(self.vmin()) } else { 1 };
        self.len() >= wanted
    }

    /// What a read into `buf` returns now. Canonical mode hands out at
    /// most one line per read (the rest of a long line stays for the
    /// next); non-canonical mode follows the simplified `VMIN`.
    pub fn read(&mut self, buf: &mut [u8]) -> Read {
        if buf.is_empty() {
            return Read::Data(0);
        }
        if self.canonical() {
            return self.read_line(buf);
        }
        let min = usize::from(self.vmin());
        let held = self.len();
        if min == 0 {
            return Read::Data(self.take(buf));
        }
        if held == 0 || held < min.min(buf.len()) {
            return Read::WouldBlock;
        }
        Read::Data(self.take(buf))
    }

    /// Takes whatever non-canonical input there is, however little: for
    /// a read whose `VTIME` ran out. In canonical mode it is `read`.
    pub fn read_now(&mut self, buf: &mut [u8]) -> Read {
        if self.canonical() {
            return self.read(buf);
        }
        Read::Data(self.take(buf))
    }

    fn take(&mut self, buf: &mut [u8]) -> usize {
        let count = self.len().min(buf.len());
        for (i, slot) in buf.iter_mut().take(count).enumerate() {
            *slot = self.at(self.tail.wrapping_add(i));
        }
        self.tail = self.tail.wrapping_add(count);
        self.canon_head = self.head;
        count
    }

    fn read_line(&mut self, buf: &mut [u8]) -> Read {
        if self.tail == self.canon_head {
            return Read::WouldBlock;
        }
        // Finished input always ends in a line end, so this finds one.
        let mut end = self.tail;
        while end != self.canon_head && !marked(&self.line_ends, end) {
            end = end.wrapping_add(1);
        }
        if end == self.canon_head {
            // Not reachable while the marks are kept right; treat it as
            // nothing finished rather than trust it.
            return Read::WouldBlock;
        }
        let eof = marked(&self.eofs, end);
        let data = end.wrapping_sub(self.tail) + usize::from(!eof);
        if eof && data == 0 {
            mark(&mut self.line_ends, end, false);
            mark(&mut self.eofs, end, false);
            self.tail = end.wrapping_add(1);
            return Read::EndOfFile;
        }
        let count = data.min(buf.len());
        for (i, slot) in buf.iter_mut().take(count).enumerate() {
            *slot = self.at(self.tail.wrapping_add(i));
        }
        self.tail = self.tail.wrapping_add(count);
        if count == data {
            // The whole line went out: its end goes too (for `VEOF`, the
            // placeholder that is not data).
            mark(&mut self.line_ends, end, false);
            mark(&mut self.eofs, end, false);
            if eof {
                self.tail = end.wrapping_add(1);
            }
        }
        Read::Data(count)
    }
}
