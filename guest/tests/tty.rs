//! Host tests of the terminal's line discipline (`src/kernel/tty.rs`).
//!
//! The file is pure logic on `core`, so it is included here as it is and
//! driven byte by byte, as the console would. Every case checks what is
//! echoed, byte for byte, against what Linux's canonical mode echoes for
//! the same keys, and what a read returns.

#[allow(dead_code)]
#[path = "../src/kernel/tty.rs"]
mod tty;

use tty::*;

/// Types `keys` into `tty`, returning everything echoed and every signal
/// asked for.
fn type_keys(tty: &mut Tty, keys: &[u8]) -> (Vec<u8>, Vec<Signal>) {
    let mut echoed = Vec::new();
    let mut signals = Vec::new();
    for &key in keys {
        if let Some(signal) = tty.receive(key, &mut |bytes| echoed.extend_from_slice(bytes)) {
            signals.push(signal);
        }
    }
    (echoed, signals)
}

fn echo_of(tty: &mut Tty, keys: &[u8]) -> Vec<u8> {
    let (echoed, signals) = type_keys(tty, keys);
    assert!(signals.is_empty(), "unexpected signals {signals:?}");
    echoed
}

/// One read with a large buffer: the bytes, or what else it returned.
fn read_all(tty: &mut Tty) -> Result<Vec<u8>, Read> {
    let mut buf = [0u8; 8192];
    match tty.read(&mut buf) {
        Read::Data(n) => Ok(buf[..n].to_vec()),
        other => Err(other),
    }
}

fn written(tty: &mut Tty, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    tty.write(bytes, &mut |b| out.extend_from_slice(b));
    out
}

/// `cfmakeraw`, as busybox's line editor and C libraries do it.
fn raw(mut t: Termios) -> Termios {
    t.iflag &= !(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
    t.oflag &= !OPOST;
    t.lflag &= !(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    t.cflag &= !(CSIZE | PARENB);
    t.cflag |= CS8;
    t.cc[VMIN] = 1;
    t.cc[VTIME] = 0;
    t
}

#[test]
fn default_console_is_linux() {
    let t = Termios::default_console();
    assert_eq!(t.iflag & (ICRNL | IXON), ICRNL | IXON);
    assert_eq!(t.oflag, OPOST | ONLCR);
    assert_eq!(t.cflag, B38400 | CS8 | CREAD | HUPCL);
    assert_eq!(t.cflag, 0o2277);
    assert_eq!(t.lflag, ISIG | ICANON | ECHO | ECHOE | ECHOK | ECHOCTL | ECHOKE | IEXTEN);
    assert_eq!(t.lflag, 0o105073);
    // Linux's INIT_C_CC, in its order.
    assert_eq!(&t.cc[..17], b"\x03\x1c\x7f\x15\x04\x00\x01\x00\x11\x13\x1a\x00\x12\x0f\x17\x16\x00");
    assert_eq!(t.line, 0);
    let tty = Tty::new();
    assert_eq!(tty.termios(), t);
    assert_eq!(tty.winsize(), Winsize { rows: 24, cols: 80, xpixel: 0, ypixel: 0 });
    assert_eq!(tty.vmin(), 1);
    assert_eq!(tty.vtime(), 0);
}

#[test]
fn termios_round_trips_through_linux_layout() {
    let t = Termios::default_console();
    let b = t.to_bytes();
    assert_eq!(b.len(), 36);
    assert_eq!(&b[0..4], &(ICRNL | IXON | IUTF8).to_le_bytes());
    assert_eq!(&b[4..8], &[0x05, 0, 0, 0]); // OPOST | ONLCR
    assert_eq!(&b[8..12], &[0xbf, 0x04, 0, 0]); // B38400 | CS8 | CREAD | HUPCL
    assert_eq!(&b[12..16], &[0x3b, 0x8a, 0, 0]); // the local flags
    assert_eq!(b[16], 0); // c_line
    assert_eq!(b[17 + VINTR], 3);
    assert_eq!(b[17 + VMIN], 1);
    assert_eq!(b[17 + VLNEXT], 0x16);
    assert_eq!(Termios::from_bytes(&b), t);

    let mut any = [0u8; 36];
    for (i, byte) in any.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    assert_eq!(Termios::from_bytes(&any).to_bytes(), any);

    let w = Winsize { rows: 50, cols: 132, xpixel: 1, ypixel: 0x1234 };
    assert_eq!(w.to_bytes(), [50, 0, 132, 0, 1, 0, 0x34, 0x12]);
    assert_eq!(Winsize::from_bytes(&w.to_bytes()), w);
    let mut tty = Tty::new();
    tty.set_winsize(w);
    assert_eq!(tty.winsize(), w);
}

#[test]
fn ioctl_numbers_are_linux() {
    assert_eq!(TCGETS, 0x5401);
    assert_eq!(TCSETS, 0x5402);
    assert_eq!(TCSETSW, 0x5403);
    assert_eq!(TCSETSF, 0x5404);
    assert_eq!(TIOCGPGRP, 0x540f);
    assert_eq!(TIOCSPGRP, 0x5410);
    assert_eq!(TIOCGWINSZ, 0x5413);
    assert_eq!(TIOCSWINSZ, 0x5414);
    assert_eq!(FIONREAD, 0x541b);
}

#[test]
fn a_line_is_echoed_and_read_with_its_newline() {
    let mut tty = Tty::new();
    assert_eq!(echo_of(&mut tty, b"ls -l"), b"ls -l");
    // Not finished: nothing to read yet.
    assert_eq!(tty.readable(), 0);
    assert!(!tty.poll_ready());
    assert_eq!(read_all(&mut tty), Err(Read::WouldBlock));
    // Enter sends CR: ICRNL makes it NL, ONLCR echoes it as CR NL.
    assert_eq!(echo_of(&mut tty, b"\r"), b"\r\n");
    assert_eq!(tty.readable(), 6);
    assert!(tty.poll_ready());
    assert_eq!(read_all(&mut tty), Ok(b"ls -l\n".to_vec()));
    assert_eq!(read_all(&mut tty), Err(Read::WouldBlock));
}

#[test]
fn erase_with_del_and_backspace() {
    let mut tty = Tty::new();
    assert_eq!(echo_of(&mut tty, b"abc\x7f"), b"abc\x08 \x08");
    assert_eq!(echo_of(&mut tty, b"\x08"), b"\x08 \x08");
    assert_eq!(echo_of(&mut tty, b"x\r"), b"x\r\n");
    assert_eq!(read_all(&mut tty), Ok(b"ax\n".to_vec()));
    // Erasing on an empty line does nothing and echoes nothing.
    assert_eq!(echo_of(&mut tty, b"\x7f\x7f\x08"), b"");
    assert_eq!(echo_of(&mut tty, b"\n"), b"\r\n");
    assert_eq!(read_all(&mut tty), Ok(b"\n".to_vec()));
}

#[test]
fn erase_never_reaches_into_a_finished_line() {
    let mut tty = Tty::new();
    echo_of(&mut tty, b"one\r");
    assert_eq!(echo_of(&mut tty, b"\x7f\x7f"), b"");
    echo_of(&mut tty, b"two\r");
    assert_eq!(read_all(&mut tty), Ok(b"one\n".to_vec()));
    assert_eq!(read_all(&mut tty), Ok(b"two\n".to_vec()));
}

#[test]
fn erasing_a_control_character_erases_its_two_columns() {
    let mut tty = Tty::new();
    // ^A is echoed as "^A" under ECHOCTL, so erasing it backs over two.
    assert_eq!(echo_of(&mut tty, b"a\x01"), b"a^A");
    assert_eq!(echo_of(&mut tty, b"\x7f"), b"\x08 \x08\x08 \x08");
    // Without ECHOCTL it was echoed raw and nothing is erased on screen.
    let mut t = tty.termios();
    t.lflag &= !ECHOCTL;
    tty.set_termios(t, false);
    assert_eq!(echo_of(&mut tty, b"\x01"), b"\x01");
    assert_eq!(echo_of(&mut tty, b"\x7f"), b"");
}

#[test]
fn erase_without_echoe_echoes_the_erase_character() {
    let mut tty = Tty::new();
    let mut t = tty.termios();
    t.lflag &= !ECHOE;
    tty.set_termios(t, false);
    assert_eq!(echo_of(&mut tty, b"ab\x7f"), b"ab^?");
    echo_of(&mut tty, b"\r");
    assert_eq!(read_all(&mut tty), Ok(b"a\n".to_vec()));
}

#[test]
fn erasing_a_tab_backs_over_its_columns() {
    let mut tty = Tty::new();
    // The prompt leaves the cursor at column 2; "ab" then a tab fills
    // columns 4..8, so erasing the tab backs over 4.
    assert_eq!(written(&mut tty, b"$ "), b"$ ");
    assert_eq!(echo_of(&mut tty, b"ab\t"), b"ab\t");
    assert_eq!(echo_of(&mut tty, b"\x7f"), b"\x08\x08\x08\x08");
    // A tab after a tab fills exactly 8.
    assert_eq!(echo_of(&mut tty, b"\t\t\x7f"), b"\t\t\x08\x08\x08\x08\x08\x08\x08\x08");
    echo_of(&mut tty, b"\r");
    assert_eq!(read_all(&mut tty), Ok(b"ab\t\n".to_vec()));
}

#[test]
fn erase_takes_a_whole_utf8_character() {
    let mut tty = Tty::new();
    assert_eq!(echo_of(&mut tty, "aé".as_bytes()), "aé".as_bytes());
    assert_eq!(echo_of(&mut tty, b"\x7f"), b"\x08 \x08");
    echo_of(&mut tty, b"\r");
    assert_eq!(read_all(&mut tty), Ok(b"a\n".to_vec()));
}

#[test]
fn kill_line_erases_the_line_visibly() {
    let mut tty = Tty::new();
    assert_eq!(echo_of(&mut tty, b"abc"), b"abc");
    // ECHOKE: every character is erased on screen.
    assert_eq!(echo_of(&mut tty, b"\x15"), b"\x08 \x08\x08 \x08\x08 \x08");
    assert_eq!(echo_of(&mut tty, b"xy\r"), b"xy\r\n");
    assert_eq!(read_all(&mut tty), Ok(b"xy\n".to_vec()));
    // On an empty line a kill does nothing.
    assert_eq!(echo_of(&mut tty, b"\x15"), b"");
}

#[test]
fn kill_line_without_echoke_echoes_the_kill_and_a_newline() {
    let mut tty = Tty::new();
    let mut t = tty.termios();
    t.lflag &= !ECHOKE;
    tty.set_termios(t, false);
    assert_eq!(echo_of(&mut tty, b"abc\x15"), b"abc^U\r\n");
    t.lflag &= !ECHOK;
    tty.set_termios(t, false);
    assert_eq!(echo_of(&mut tty, b"de\x15"), b"de^U");
    assert_eq!(echo_of(&mut tty, b"f\r"), b"f\r\n");
    assert_eq!(read_all(&mut tty), Ok(b"f\n".to_vec()));
}

#[test]
fn word_erase_takes_the_last_word_and_the_blanks_after_it() {
    let mut tty = Tty::new();
    assert_eq!(echo_of(&mut tty, b"echo foo_1 "), b"echo foo_1 ");
    let erased = echo_of(&mut tty, b"\x17");
    assert_eq!(erased, b"\x08 \x08".repeat(6));
    assert_eq!(echo_of(&mut tty, b"bar\r"), b"bar\r\n");
    assert_eq!(read_all(&mut tty), Ok(b"echo bar\n".to_vec()));
}

#[test]
fn eof_on_an_empty_line_is_end_of_file() {
    let mut tty = Tty::new();
    // VEOF is not echoed.
    assert_eq!(echo_of(&mut tty, b"\x04"), b"");
    assert_eq!(tty.readable(), 0);
    assert!(tty.poll_ready());
    assert_eq!(read_all(&mut tty), Err(Read::EndOfFile));
    // Only once: the next read waits for more.
    assert_eq!(read_all(&mut tty), Err(Read::WouldBlock));
}

#[test]
fn eof_after_text_ends_the_read_without_a_newline() {
    let mut tty = Tty::new();
    assert_eq!(echo_of(&mut tty, b"abc\x04"), b"abc");
    assert_eq!(tty.readable(), 3);
    assert_eq!(read_all(&mut tty), Ok(b"abc".to_vec()));
    assert_eq!(read_all(&mut tty), Err(Read::WouldBlock));
    // A second ^D on the now empty line is end of file.
    echo_of(&mut tty, b"\x04");
    assert_eq!(read_all(&mut tty), Err(Read::EndOfFile));
}

#[test]
fn a_long_line_is_read_in_pieces() {
    let mut tty = Tty::new();
    echo_of(&mut tty, b"abcdefg\rxy\x04");
    let mut buf = [0u8; 3];
    assert_eq!(tty.read(&mut buf), Read::Data(3));
    assert_eq!(&buf, b"abc");
    assert_eq!(tty.read(&mut buf), Read::Data(3));
    assert_eq!(&buf, b"def");
    assert_eq!(tty.read(&mut buf), Read::Data(2));
    assert_eq!(&buf[..2], b"g\n");
    let mut two = [0u8; 2];
    assert_eq!(tty.read(&mut two), Read::Data(2));
    assert_eq!(&two, b"xy");
    // The VEOF that ended "xy" went with it.
    assert_eq!(tty.read(&mut two), Read::WouldBlock);
    assert_eq!(tty.read(&mut []), Read::Data(0));
}

#[test]
fn interrupt_signals_and_flushes_the_line() {
    let mut tty = Tty::new();
    echo_of(&mut tty, b"done\r");
    let (echoed, signals) = type_keys(&mut tty, b"sleep 10\x03");
    assert_eq!(echoed, b"sleep 10^C");
    assert_eq!(signals, [Signal::Interrupt]);
    // Everything pending went, the finished line too, as with Linux.
    assert_eq!(tty.readable(), 0);
    assert_eq!(read_all(&mut tty), Err(Read::WouldBlock));
    echo_of(&mut tty, b"ok\r");
    assert_eq!(read_all(&mut tty), Ok(b"ok\n".to_vec()));
}

#[test]
fn noflsh_keeps_the_line() {
    let mut tty = Tty::new();
    let mut t = tty.termios();
    t.lflag |= NOFLSH;
    tty.set_termios(t, false);
    let (_, signals) = type_keys(&mut tty, b"ab\x03c\r");
    assert_eq!(signals, [Signal::Interrupt]);
    assert_eq!(read_all(&mut tty), Ok(b"abc\n".to_vec()));
}

#[test]
fn quit_and_suspend() {
    let mut tty = Tty::new();
    let (echoed, signals) = type_keys(&mut tty, b"\x1c\x1a");
    assert_eq!(echoed, b"^\\^Z");
    assert_eq!(signals, [Signal::Quit, Signal::Suspend]);
    // Without ISIG they are ordinary bytes.
    let mut t = tty.termios();
    t.lflag &= !ISIG;
    tty.set_termios(t, false);
    let (echoed, signals) = type_keys(&mut tty, b"\x03\x1c\r");
    assert!(signals.is_empty());
    assert_eq!(echoed, b"^C^\\\r\n");
    assert_eq!(read_all(&mut tty), Ok(b"\x03\x1c\n".to_vec()));
}

#[test]
fn cr_handling_follows_icrnl_igncr_inlcr() {
    let mut tty = Tty::new();
    echo_of(&mut tty, b"a\r");
    assert_eq!(read_all(&mut tty), Ok(b"a\n".to_vec()));

    let mut t = tty.termios();
    t.iflag |= IGNCR;
    tty.set_termios(t, false);
    assert_eq!(echo_of(&mut tty, b"b\r\n"), b"b\r\n");
    assert_eq!(read_all(&mut tty), Ok(b"b\n".to_vec()));

    // INLCR and no ICRNL: a typed NL becomes CR, which ends no line.
    t.iflag &= !(IGNCR | ICRNL);
    t.iflag |= INLCR;
    tty.set_termios(t, false);
    assert_eq!(echo_of(&mut tty, b"c\n"), b"c^M");
    assert_eq!(read_all(&mut tty), Err(Read::WouldBlock));
}

#[test]
fn literal_next_takes_the_next_byte_as_data() {
    let mut tty = Tty::new();
    // ^V echoes "^" and a backspace; the literal ^C replaces it.
    let (echoed, signals) = type_keys(&mut tty, b"\x16\x03\x16\x7f\r");
    assert!(signals.is_empty());
    assert_eq!(echoed, b"^\x08^C^\x08^?\r\n");
    assert_eq!(read_all(&mut tty), Ok(b"\x03\x7f\n".to_vec()));
}

#[test]
fn reprint_shows_the_line_again() {
    let mut tty = Tty::new();
    assert_eq!(echo_of(&mut tty, b"ab\x12"), b"ab^R\r\nab");
}

#[test]
fn echonl_without_echo() {
    let mut tty = Tty::new();
    let mut t = tty.termios();
    t.lflag &= !ECHO;
    tty.set_termios(t, false);
    assert_eq!(echo_of(&mut tty, b"secret\x7f\r"), b"");
    assert_eq!(read_all(&mut tty), Ok(b"secre\n".to_vec()));
    t.lflag |= ECHONL;
    tty.set_termios(t, false);
    assert_eq!(echo_of(&mut tty, b"pw\r"), b"\r\n");
}

#[test]
fn raw_mode_passes_everything_through() {
    let mut tty = Tty::new();
    tty.set_termios(raw(tty.termios()), false);
    // An arrow key, ^C, DEL, CR, ^D: all data, nothing echoed, no signal.
    let keys = b"\x1b[A\x03\x7f\r\x04\x1c\x1a\x11\x13q";
    let (echoed, signals) = type_keys(&mut tty, keys);
    assert!(echoed.is_empty());
    assert!(signals.is_empty());
    assert_eq!(tty.readable(), keys.len());
    assert_eq!(read_all(&mut tty), Ok(keys.to_vec()));
    assert_eq!(read_all(&mut tty), Err(Read::WouldBlock));
    // VMIN 1: one byte is enough.
    type_keys(&mut tty, b"x");
    assert_eq!(read_all(&mut tty), Ok(b"x".to_vec()));
    // Without OPOST, writes go out as they are.
    assert_eq!(written(&mut tty, b"\x1b[2K\r$ ls\n"), b"\x1b[2K\r$ ls\n");
    assert!(!tty.output_stopped());
}

#[test]
fn vmin_and_vtime() {
    let mut tty = Tty::new();
    let mut t = raw(tty.termios());
    t.cc[VMIN] = 0;
    tty.set_termios(t, false);
    // VMIN 0 never blocks, but poll waits for a byte, as Linux's does.
    assert_eq!(read_all(&mut tty), Ok(Vec::new()));
    assert!(!tty.poll_ready());
    t.cc[VMIN] = 3;
    t.cc[VTIME] = 5;
    tty.set_termios(t, false);
    assert_eq!(tty.vtime(), 5);
    type_keys(&mut tty, b"ab");
    assert!(tty.poll_ready());
    assert_eq!(read_all(&mut tty), Err(Read::WouldBlock));
    // A buffer smaller than VMIN needs only its own size.
    let mut one = [0u8; 1];
    assert_eq!(tty.read(&mut one), Read::Data(1));
    assert_eq!(&one, b"a");
    // When VTIME runs out the kernel takes what there is.
    let mut buf = [0u8; 8];
    assert_eq!(tty.read_now(&mut buf), Read::Data(1));
    assert_eq!(&buf[..1], b"b");
    type_keys(&mut tty, b"cde");
    assert_eq!(read_all(&mut tty), Ok(b"cde".to_vec()));
}

#[test]
fn cbreak_mode_echoes_with_icrnl() {
    // -icanon with echo, as some programs use: bytes readable at once,
    // CR echoed as a newline, a typed ^J as "^J".
    let mut tty = Tty::new();
    let mut t = tty.termios();
    t.lflag &= !ICANON;
    tty.set_termios(t, false);
    assert_eq!(echo_of(&mut tty, b"a\x7f\r\n"), b"a^?\r\n^J");
    assert_eq!(read_all(&mut tty), Ok(b"a\x7f\n\n".to_vec()));
}

#[test]
fn switching_modes_keeps_pending_input() {
    let mut tty = Tty::new();
    echo_of(&mut tty, b"half");
    let canonical = tty.termios();
    // Raw: what was typed is readable at once.
    tty.set_termios(raw(canonical), false);
    assert_eq!(tty.readable(), 4);
    type_keys(&mut tty, b"xy");
    // Canonical again: pending input is one finished line, as Linux
    // pushes it.
    tty.set_termios(canonical, false);
    assert_eq!(read_all(&mut tty), Ok(b"halfxy".to_vec()));
    echo_of(&mut tty, b"next\r");
    // TCSETSF throws input away.
    tty.set_termios(canonical, true);
    assert_eq!(read_all(&mut tty), Err(Read::WouldBlock));
}

#[test]
fn output_processing() {
    let mut tty = Tty::new();
    assert_eq!(written(&mut tty, b"a\nb\n"), b"a\r\nb\r\n");
    assert_eq!(written(&mut tty, b""), b"");
    let mut t = tty.termios();
    t.oflag &= !ONLCR;
    tty.set_termios(t, false);
    assert_eq!(written(&mut tty, b"a\n"), b"a\n");
    t.oflag |= XTABS;
    tty.set_termios(t, false);
    assert_eq!(written(&mut tty, b"\rab\tc"), b"\rab      c");
    t.oflag = OPOST | ONLCR | OLCUC;
    tty.set_termios(t, false);
    assert_eq!(written(&mut tty, b"shout\n"), b"SHOUT\r\n");
}

#[test]
fn flow_control_characters_are_not_data() {
    let mut tty = Tty::new();
    assert_eq!(echo_of(&mut tty, b"\x13"), b"");
    assert!(tty.output_stopped());
    assert_eq!(echo_of(&mut tty, b"\x11"), b"");
    assert!(!tty.output_stopped());
    // Turning IXON off restarts output too.
    echo_of(&mut tty, b"\x13");
    let mut t = tty.termios();
    t.iflag &= !IXON;
    tty.set_termios(t, false);
    assert!(!tty.output_stopped());
    // ...and makes ^S and ^Q data.
    echo_of(&mut tty, b"\x13\r");
    assert_eq!(read_all(&mut tty), Ok(b"\x13\n".to_vec()));
    tty.set_termios(Termios::default_console(), false);
    echo_of(&mut tty, b"a\r");
    assert_eq!(read_all(&mut tty), Ok(b"a\n".to_vec()));
}

#[test]
fn foreground_group() {
    let mut tty = Tty::new();
    assert_eq!(tty.foreground(), 0);
    tty.set_foreground(42);
    assert_eq!(tty.foreground(), 42);
}

#[test]
fn overflow_is_dropped_and_counted_but_a_line_can_end() {
    let mut tty = Tty::new();
    let long = vec![b'x'; INPUT_SIZE + 100];
    let echoed = echo_of(&mut tty, &long);
    // Only what was kept was echoed.
    assert_eq!(echoed.len(), INPUT_SIZE - 1);
    assert_eq!(tty.dropped(), 101);
    // The slot kept for the line's end lets Enter finish the line.
    assert_eq!(echo_of(&mut tty, b"\r"), b"\r\n");
    let line = read_all(&mut tty).unwrap();
    assert_eq!(line.len(), INPUT_SIZE);
    assert_eq!(line.last(), Some(&b'\n'));
    assert_eq!(tty.dropped(), 101);

    // Raw mode fills the whole ring.
    tty.set_termios(raw(tty.termios()), false);
    type_keys(&mut tty, &long);
    assert_eq!(tty.readable(), INPUT_SIZE);
    assert_eq!(tty.dropped(), 101 + 100);
}

#[test]
fn a_ten_kib_paste_in_lines_loses_nothing() {
    let mut tty = Tty::new();
    let mut paste = Vec::new();
    let mut n = 0u32;
    while paste.len() < 10 * 1024 {
        paste.extend_from_slice(format!("line {n} of the paste, some text to fill it\r").as_bytes());
        n += 1;
    }
    let expected: Vec<u8> = paste.iter().map(|&c| if c == b'\r' { b'\n' } else { c }).collect();
    let mut got = Vec::new();
    let mut echoed = Vec::new();
    let mut buf = [0u8; 100];
    for chunk in paste.chunks(700) {
        for &c in chunk {
            assert_eq!(tty.receive(c, &mut |b| echoed.extend_from_slice(b)), None);
        }
        // Reads interleaved with typing: take every finished line now.
        while let Read::Data(n) = tty.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert_eq!(got, expected);
    assert_eq!(tty.dropped(), 0);
    let expected_echo: Vec<u8> =
        paste.iter().flat_map(|&c| if c == b'\r' { b"\r\n".to_vec() } else { vec![c] }).collect();
    assert_eq!(echoed, expected_echo);
}

/// xorshift64*: a fixed seed, so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_bytes_and_settings_never_panic() {
    let mut rng = Rng(0x5eed_0013_0777_1234);
    let mut tty = Tty::new();
    let mut buf = [0u8; 97];
    let mut sink = 0usize;
    for round in 0..200_000u32 {
        let r = rng.next();
        match r % 64 {
            0 => {
                // Any 36 bytes are a termios some program may set.
                let mut bytes = [0u8; 36];
                for b in bytes.iter_mut() {
                    *b = rng.next() as u8;
                }
                let mut t = Termios::from_bytes(&bytes);
                if round % 3 == 0 {
                    t = Termios::default_console();
                }
                tty.set_termios(t, r & 0x100 != 0);
            }
            1..=6 => {
                let len = (r >> 8) as usize % buf.len();
                let before = tty.readable();
                let got =
                    if r & 0x10000 != 0 { tty.read_now(&mut buf[..len]) } else { tty.read(&mut buf[..len]) };
                if let Read::Data(n) = got {
                    assert!(n <= len);
                    assert!(n <= before.max(len));
                }
            }
            7 => {
                let bytes: Vec<u8> = (0..(r >> 8) % 40).map(|_| rng.next() as u8).collect();
                tty.write(&bytes, &mut |b| sink += b.len());
            }
            _ => {
                let _ = tty.receive((r >> 8) as u8, &mut |b| sink += b.len());
            }
        }
        assert!(tty.readable() <= INPUT_SIZE);
        let _ = tty.poll_ready();
    }
    assert!(sink > 0);
}

#[test]
fn echoprt_shows_erased_characters_between_backslash_and_slash() {
    let mut tty = Tty::new();
    let mut t = tty.termios();
    t.lflag |= ECHOPRT;
    tty.set_termios(t, false);
    // Erasing back to the line's start closes the erase at once.
    assert_eq!(echo_of(&mut tty, b"ab\x7f\x7fc"), b"ab\\ba/c");
    // Otherwise the next typed character closes it.
    assert_eq!(echo_of(&mut tty, b"de\x7fx\r"), b"de\\e/x\r\n");
    assert_eq!(read_all(&mut tty), Ok(b"cdx\n".to_vec()));
}

#[test]
fn eol_characters_end_a_line_and_stay_in_it() {
    let mut tty = Tty::new();
    let mut t = tty.termios();
    t.cc[VEOL] = b';';
    t.cc[VEOL2] = 0x07;
    tty.set_termios(t, false);
    assert_eq!(echo_of(&mut tty, b"a;b\x07"), b"a;b^G");
    assert_eq!(read_all(&mut tty), Ok(b"a;".to_vec()));
    assert_eq!(read_all(&mut tty), Ok(b"b\x07".to_vec()));
    // VEOL2 needs IEXTEN.
    t.lflag &= !IEXTEN;
    tty.set_termios(t, false);
    echo_of(&mut tty, b"c\x07");
    assert_eq!(read_all(&mut tty), Err(Read::WouldBlock));
}

#[test]
fn ixany_restarts_output_on_any_key() {
    let mut tty = Tty::new();
    let mut t = tty.termios();
    t.iflag |= IXANY;
    tty.set_termios(t, false);
    echo_of(&mut tty, b"\x13");
    assert!(tty.output_stopped());
    echo_of(&mut tty, b"z");
    assert!(!tty.output_stopped());
}

#[test]
fn a_full_input_waits_for_a_reader_instead_of_dropping() {
    let mut tty = Tty::new();
    // Finished lines fill the input: the kernel stops taking bytes, so
    // they wait where they are (nothing dropped) until a read makes room.
    let line = [b'x'; 63];
    let mut typed = 0;
    while tty.accepting() {
        let (_, signals) = type_keys(&mut tty, if typed % 64 == 63 { b"\n" } else { &line[..1] });
        assert!(signals.is_empty());
        typed += 1;
    }
    assert_eq!(tty.dropped(), 0);
    assert_eq!(typed, INPUT_SIZE - 1, "the slot kept for a line's end is not taken by data");
    assert_eq!(read_all(&mut tty).map(|l| l.len()), Ok(64));
    assert!(tty.accepting());
    // Raw mode: every slot is data.
    let mut tty = Tty::new();
    let mut t = tty.termios();
    t.lflag &= !(ICANON | ECHO);
    tty.set_termios(t, false);
    let mut typed = 0;
    while tty.accepting() {
        type_keys(&mut tty, b"y");
        typed += 1;
    }
    assert_eq!((typed, tty.dropped()), (INPUT_SIZE, 0));
}

#[test]
fn a_line_too_long_to_finish_is_still_taken_so_its_newline_gets_in() {
    let mut tty = Tty::new();
    let (_, _) = type_keys(&mut tty, &[b'z'; INPUT_SIZE - 1]);
    // Full, and nothing finished to read: bytes are taken and dropped...
    assert!(tty.accepting());
    type_keys(&mut tty, b"zz");
    assert_eq!(tty.dropped(), 2);
    // ...until the newline, which takes the kept slot and ends the line.
    type_keys(&mut tty, b"\n");
    assert!(!tty.accepting());
    assert_eq!(read_all(&mut tty).map(|l| l.len()), Ok(INPUT_SIZE));
}
