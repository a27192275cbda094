//! # The command line
//!
//! The VMM's command line (`-append` in QEMU, `--cmdline` in Cloud
//! Hypervisor) is a list of `key=value` words. A typo must not stop a boot
//! and a flood of junk must not flood the console: unknown words are
//! counted and reported in one line, a bad value falls back to its default
//! with one line of its own.
//!
//! Everything after a standalone `--` belongs to the guest and is handed
//! to it untouched (see [`split_guest`]).

use core::fmt;

use heapless::Vec;

use crate::madt::MAX_CPUS;

// The `cpus=` warning spells the range out.
const _: () = assert!(MAX_CPUS == 64);

/// How much the firmware says, from `log=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn from_word(word: &[u8]) -> Option<LogLevel> {
        Some(match word {
            b"error" => LogLevel::Error,
            b"warn" => LogLevel::Warn,
            b"info" => LogLevel::Info,
            b"debug" => LogLevel::Debug,
            b"trace" => LogLevel::Trace,
            _ => return None,
        })
    }
}

/// Deliberate crashes, so the tests can prove the crash report works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashKind {
    /// An invalid opcode (#UD).
    InvalidOpcode,
    /// A read of an unmapped address (#PF).
    PageFault,
    /// A Rust panic.
    Panic,
    /// A push onto an unmapped stack, which only an IST stack survives (#DF).
    UnusableStack,
    /// An invalid opcode on the first application processor, handed to it
    /// through its mailbox once it is parked: the report must name that CPU.
    OnAp,
}

impl CrashKind {
    fn from_word(word: &[u8]) -> Option<CrashKind> {
        Some(match word {
            b"ud" => CrashKind::InvalidOpcode,
            b"pf" => CrashKind::PageFault,
            b"panic" => CrashKind::Panic,
            b"stack" => CrashKind::UnusableStack,
            b"ap" => CrashKind::OnAp,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub log_level: LogLevel,
    pub crash: Option<CrashKind>,
    /// `start_info_test`: parse a crafted start_info from module 0 (see
    /// [`crate::bootinfo::ModuleMemory`]), report, and stop.
    pub start_info_test: bool,
    /// Bytes of memory each guest gets, from `guest_mem=`; without it, the
    /// most each gets (`guestmem` gives less where the machine is small).
    pub guest_mem: u64,
    /// Whether `guest_mem=` was given: only then is `guest_mem` taken as
    /// it is.
    pub guest_mem_given: bool,
    /// `guest_timeout=SECONDS`: kill a guest that runs longer (0, the
    /// default: never; `guest_timeout=0` itself is refused with a warning).
    pub guest_timeout_s: u64,
    /// `guests=N`: how many copies of the default guest to run, one to a
    /// million; at most [`MAX_GUESTS`] run at once, the rest wait their
    /// turn (a fuzzing campaign runs thousands in one boot).
    pub guests: usize,
    /// `guests_at_once=N`: at most N guests run together; the others wait
    /// for a place (default: all of them together).
    pub guests_at_once: Option<usize>,
    /// `cpus=N`: start at most N CPUs, the boot CPU included (default:
    /// every enabled CPU the MADT lists).
    pub cpus: Option<usize>,
    /// `console=N`: the guest that console input goes to (default: the
    /// first); `console=none`: no guest reads the console, 0 here.
    pub console: usize,
}

pub const DEFAULT_GUEST_MEM: u64 = 64 << 20;
pub const MAX_GUEST_TIMEOUT_S: u64 = 86_400;
/// The most guests run at once: as many places as the run loop has.
pub const MAX_GUESTS: usize = hv_core::run::MAX_GUESTS;
/// The most guests one boot runs in all, one after another.
pub const MAX_GUESTS_IN_ALL: usize = 1_000_000;
pub const MIN_GUEST_MEM: u64 = 4 << 20;
/// Guest-physical addresses must fit the shadow MMU's checks comfortably.
pub const MAX_GUEST_MEM: u64 = 64 << 30;

impl Default for Config {
    fn default() -> Self {
        Config {
            log_level: LogLevel::Info,
            crash: None,
            start_info_test: false,
            guest_mem: DEFAULT_GUEST_MEM,
            guest_mem_given: false,
            guest_timeout_s: 0,
            guests: 1,
            guests_at_once: None,
            cpus: None,
            console: 1,
        }
    }
}

/// Split the command line at the first standalone `--`: Umbra's words
/// before it, the guest's after it.
pub fn split_guest(cmdline: &[u8]) -> (&[u8], &[u8]) {
    let mut start = 0;
    for word in cmdline.split(|b| b.is_ascii_whitespace()) {
        let end = start + word.len();
        if word == b"--" {
            let rest = cmdline.get(end..).unwrap_or(&[]);
            let first = rest.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(rest.len());
            return (&cmdline[..start], &rest[first..]);
        }
        start = end + 1;
    }
    (cmdline, &[])
}

/// A plain decimal number, at most 12 digits.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// `64M`, `1G`, `65536K` or plain bytes; a whole number of pages.
fn parse_size(word: &[u8]) -> Option<u64> {
    let (digits, unit) = match word.last()? {
        b'K' | b'k' => (&word[..word.len() - 1], 1 << 10),
        b'M' | b'm' => (&word[..word.len() - 1], 1 << 20),
        b'G' | b'g' => (&word[..word.len() - 1], 1 << 30),
        _ => (word, 1),
    };
    parse_decimal(digits)?.checked_mul(unit).filter(|bytes| bytes % 4096 == 0)
}

/// A short, printable excerpt of a word, for messages.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Excerpt(Vec<u8, 32>);

impl Excerpt {
    fn of(word: &[u8]) -> Excerpt {
        let mut excerpt = Excerpt::default();
        for &byte in word.iter().take(excerpt.0.capacity()) {
            let _ = excerpt.0.push(byte);
        }
        excerpt
    }
}

impl fmt::Display for Excerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &byte in &self.0 {
            if byte.is_ascii_graphic() {
                write!(f, "{}", byte as char)?;
            } else {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        if self.0.len() == self.0.capacity() {
            write!(f, "...")?;
        }
        Ok(())
    }
}

/// A problem with the command line; the boot goes on with defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdlineNotice {
    UnknownWords { count: usize, first: Excerpt },
    BadValue { key: &'static str, value: Excerpt, expected: &'static str, default: &'static str },
}

impl fmt::Display for CmdlineNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownWords { count: 1, first } => {
                write!(f, "cmdline: ignored unknown word '{first}'")
            }
            Self::UnknownWords { count, first } => {
                write!(f, "cmdline: ignored {count} unknown words (first: '{first}')")
            }
            Self::BadValue { key, value, expected, default } => write!(
                f,
                "cmdline: unknown value '{value}' for {key}= (expected {expected}); using {default}"
            ),
        }
    }
}

pub type CmdlineNotices = Vec<CmdlineNotice, 4>;

/// What each `key=` takes and what is used when its value is refused, as
/// the notice words them.
const TAKES: [(&str, &str, &str); 8] = [
    ("log", "error|warn|info|debug|trace", "info"),
    ("guest_mem", "a size from 4M to 64G, like 64M", "64M or what the machine can spare"),
    ("guests", "1 to 1000000", "1"),
    ("guests_at_once", "1 to 8", "all together"),
    ("cpus", "1 to 64", "every CPU the MADT lists"),
    ("guest_timeout", "whole seconds, 1 to 86400", "no timeout"),
    ("crash", "ud|pf|panic|stack|ap", "no crash"),
    ("console", "a guest's number, 1 to 1000000, or none", "the first guest"),
];

/// A count from 1 to `max`.
fn count(value: &[u8], max: usize) -> Option<usize> {
    parse_decimal(value).filter(|n| (1..=max as u64).contains(n)).map(|n| n as usize)
}

/// Parse the command line. Any byte sequence is accepted.
pub fn parse(cmdline: &[u8], notices: &mut CmdlineNotices) -> Config {
    let mut config = Config::default();
    let mut unknown_count = 0;
    let mut first_unknown = Excerpt::default();
    for word in cmdline.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()) {
        let (key, value) = match word.iter().position(|&b| b == b'=') {
            Some(eq) => (&word[..eq], &word[eq + 1..]),
            None => (word, &b""[..]),
        };
        // Each known key's value, checked and stored; `None` where it was
        // refused, and the default stays.
        let stored = match key {
            b"log" => LogLevel::from_word(value).map(|level| config.log_level = level),
            b"guest_mem" => parse_size(value)
                .filter(|bytes| (MIN_GUEST_MEM..=MAX_GUEST_MEM).contains(bytes))
                .map(|bytes| (config.guest_mem, config.guest_mem_given) = (bytes, true)),
            b"start_info_test" if value.is_empty() => {
                config.start_info_test = true;
                Some(())
            }
            b"guests" => count(value, MAX_GUESTS_IN_ALL).map(|count| config.guests = count),
            b"guests_at_once" => count(value, MAX_GUESTS).map(|count| config.guests_at_once = Some(count)),
            b"cpus" => count(value, MAX_CPUS).map(|count| config.cpus = Some(count)),
            // 0 is refused rather than read as "never": a watchdog asked
            // for and silently not set would be worse than a warning.
            b"guest_timeout" => parse_decimal(value)
                .filter(|seconds| (1..=MAX_GUEST_TIMEOUT_S).contains(seconds))
                .map(|seconds| config.guest_timeout_s = seconds),
            b"crash" => CrashKind::from_word(value).map(|kind| config.crash = Some(kind)),
            b"console" if value == b"none" => {
                config.console = 0;
                Some(())
            }
            b"console" => count(value, MAX_GUESTS_IN_ALL).map(|number| config.console = number),
            _ => {
                if unknown_count == 0 {
                    first_unknown = Excerpt::of(word);
                }
                unknown_count += 1;
                continue;
            }
        };
        if stored.is_none()
            && let Some(&(key, expected, default)) = TAKES.iter().find(|(known, ..)| known.as_bytes() == key)
        {
            let _ =
                notices.push(CmdlineNotice::BadValue { key, value: Excerpt::of(value), expected, default });
        }
    }
    if unknown_count > 0 {
        let _ = notices.push(CmdlineNotice::UnknownWords { count: unknown_count, first: first_unknown });
    }
    config
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;
    use std::vec::Vec as StdVec;

    use super::*;

    fn parse_all(text: &[u8]) -> (Config, CmdlineNotices) {
        let mut notices = CmdlineNotices::new();
        (parse(text, &mut notices), notices)
    }

    #[test]
    fn empty_gives_defaults() {
        let (config, notices) = parse_all(b"");
        assert_eq!(config, Config::default());
        assert!(notices.is_empty());
    }

    #[test]
    fn log_levels() {
        assert_eq!(parse_all(b"log=trace").0.log_level, LogLevel::Trace);
        assert_eq!(parse_all(b"  log=error\tlog=warn ").0.log_level, LogLevel::Warn);
        let (config, notices) = parse_all(b"log=loud");
        assert_eq!(config.log_level, LogLevel::Info);
        assert_eq!(
            format!("{}", notices[0]),
            "cmdline: unknown value 'loud' for log= (expected error|warn|info|debug|trace); using info"
        );
    }

    #[test]
    fn junk_is_one_notice() {
        let junk: StdVec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let (config, notices) = parse_all(&junk);
        assert_eq!(config, Config::default());
        assert_eq!(notices.len(), 1, "{notices:?}");
        let line = format!("{}", notices[0]);
        assert!(line.starts_with("cmdline: ignored") && !line.contains('\n'), "{line}");
    }

    #[test]
    fn guest_memory_sizes() {
        assert_eq!(parse_all(b"guest_mem=128M").0.guest_mem, 128 << 20);
        assert_eq!(parse_all(b"guest_mem=1g").0.guest_mem, 1 << 30);
        for bad in
            [&b"guest_mem=1M"[..], b"guest_mem=lots", b"guest_mem=100G", b"guest_mem=4097", b"guest_mem="]
        {
            let (config, notices) = parse_all(bad);
            assert_eq!(config.guest_mem, DEFAULT_GUEST_MEM, "{bad:?}");
            assert_eq!(notices.len(), 1);
        }
    }

    #[test]
    fn guest_memory_given_or_not() {
        assert!(parse_all(b"guest_mem=16M").0.guest_mem_given);
        assert!(!parse_all(b"").0.guest_mem_given);
        let (config, notices) = parse_all(b"guest_mem=2M");
        assert!(!config.guest_mem_given);
        assert_eq!(
            format!("{}", notices[0]),
            "cmdline: unknown value '2M' for guest_mem= (expected a size from 4M to 64G, like 64M); \
             using 64M or what the machine can spare"
        );
    }

    #[test]
    fn the_guest_gets_what_follows_a_double_dash() {
        assert_eq!(split_guest(b"log=info -- test=exit:7 x"), (&b"log=info "[..], &b"test=exit:7 x"[..]));
        assert_eq!(split_guest(b"-- a"), (&b""[..], &b"a"[..]));
        assert_eq!(split_guest(b"log=info"), (&b"log=info"[..], &b""[..]));
        assert_eq!(split_guest(b"a --b c"), (&b"a --b c"[..], &b""[..]));
        assert_eq!(split_guest(b"a --"), (&b"a "[..], &b""[..]));
    }

    #[test]
    fn start_info_test_is_a_bare_flag() {
        assert!(parse_all(b"start_info_test").0.start_info_test);
        let (config, notices) = parse_all(b"start_info_test=1");
        assert!(!config.start_info_test);
        assert_eq!(notices.len(), 1);
    }

    #[test]
    fn console_owner() {
        assert_eq!(parse_all(b"").0.console, 1);
        assert_eq!(parse_all(b"console=3").0.console, 3);
        assert_eq!(parse_all(b"console=none").0.console, 0);
        for bad in [&b"console=0"[..], b"console=", b"console=first", b"console=2000000"] {
            let (config, notices) = parse_all(bad);
            assert_eq!(config.console, 1, "{bad:?}");
            assert_eq!(notices.len(), 1, "{bad:?}");
        }
    }

    #[test]
    fn guest_timeouts() {
        assert_eq!(parse_all(b"guest_timeout=30").0.guest_timeout_s, 30);
        assert_eq!(parse_all(b"").0.guest_timeout_s, 0);
        for bad in [
            &b"guest_timeout=1M"[..],
            b"guest_timeout=soon",
            b"guest_timeout=999999",
            b"guest_timeout=",
            b"guest_timeout=0",
        ] {
            let (config, notices) = parse_all(bad);
            assert_eq!(config.guest_timeout_s, 0, "{bad:?}");
            assert_eq!(notices.len(), 1);
        }
    }

    #[test]
    fn guest_counts() {
        assert_eq!(parse_all(b"guests=3").0.guests, 3);
        assert_eq!(parse_all(b"guests_at_once=2").0.guests_at_once, Some(2));
        assert_eq!(parse_all(b"guests_at_once=0").1.len(), 1);
        assert_eq!(parse_all(b"").0.guests, 1);
        assert_eq!(parse_all(b"guests=9").0.guests, 9);
        assert_eq!(parse_all(b"guests=1000000").0.guests, MAX_GUESTS_IN_ALL);
        assert_eq!(parse_all(b"guests_at_once=9").1.len(), 1);
        for bad in [&b"guests=0"[..], b"guests=1000001", b"guests=many"] {
            let (config, notices) = parse_all(bad);
            assert_eq!(config.guests, 1, "{bad:?}");
            assert_eq!(notices.len(), 1);
        }
    }

    #[test]
    fn cpu_limits() {
        assert_eq!(parse_all(b"").0.cpus, None);
        assert_eq!(parse_all(b"cpus=1").0.cpus, Some(1));
        assert_eq!(parse_all(b"cpus=4 cpus=2").0.cpus, Some(2));
        assert_eq!(parse_all(b"cpus=64").0.cpus, Some(MAX_CPUS));
        for bad in [&b"cpus=0"[..], b"cpus=65", b"cpus=", b"cpus=two", b"cpus=-1", b"cpus=99999999999999"] {
            let (config, notices) = parse_all(bad);
            assert_eq!(config.cpus, None, "{bad:?}");
            assert_eq!(notices.len(), 1, "{bad:?}");
            let line = format!("{}", notices[0]);
            assert!(
                line.starts_with("cmdline: unknown value") && line.contains("for cpus= (expected 1 to 64)")
            );
        }
    }

    /// Every key that takes a value says what it takes when refused one,
    /// and keeps its default.
    #[test]
    fn every_refused_value_is_one_notice_naming_its_key() {
        for (key, expected, default) in TAKES {
            let (config, notices) = parse_all(format!("{key}=~").as_bytes());
            assert_eq!(config, Config::default(), "{key}");
            let wanted = CmdlineNotice::BadValue { key, value: Excerpt::of(b"~"), expected, default };
            assert_eq!(notices[..], [wanted], "{key}");
        }
    }

    #[test]
    fn crash_hooks() {
        assert_eq!(parse_all(b"crash=pf").0.crash, Some(CrashKind::PageFault));
        assert_eq!(parse_all(b"crash=ap").0.crash, Some(CrashKind::OnAp));
        assert_eq!(parse_all(b"crash=").1.len(), 1);
    }

    #[test]
    fn excerpts_escape_and_truncate() {
        let text = format!("{}", Excerpt::of(b"a\x01b"));
        assert_eq!(text, "a\\x01b");
        let text = format!("{}", Excerpt::of(&[b'z'; 100]));
        assert!(text.ends_with("...") && text.len() == 35);
    }
}
