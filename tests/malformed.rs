//! # Malformed boot input, booted for real
//!
//! Everything a VMM hands Umbra at boot is outside input: the
//! `hvm_start_info` block, its memory map, the command line, the module
//! list and the modules. The parser (`firmware/src/bootinfo.rs`) is
//! unit-tested on the host with crafted memory; these cases prove the
//! same thing end to end, in the real image under QEMU: for each kind of
//! bad input, Umbra prints exactly one line that names the problem (or
//! one warning per oddity it can live with), then the exit contract
//! (`umbra: exit status N` and QEMU's `(N << 1) | 1`). Never a hang,
//! never a crash report, never a second line for the same problem.
//!
//! No VMM writes a broken start_info on purpose, so most cases use the
//! firmware's test loader: with `start_info_test` on the cmdline, Umbra
//! boots normally, then parses a *crafted* start_info found at offset 0
//! of PVH module 0 (`-initrd FILE`), where every "physical address"
//! inside it is a byte offset into that file. It prints one verdict line
//! and stops. The builder below lays such a file out: start_info, memory
//! map, module list and strings at chosen offsets, one temporary file
//! per case.
//!
//! The rest are real boots with input QEMU will pass as it is: a
//! command line that is not UTF-8, a 64 KiB command line, an empty
//! `-initrd`. Under SeaBIOS (pc, q35) a long command line breaks the
//! boot before Umbra runs, and those cases record what QEMU really does
//! (see `docs/security.md`). A module that is not an ELF, and too little
//! memory, are covered in `boot.rs`.
//!
//! Run them with `cargo test -p boot-tests --test malformed`; add words
//! after `--` to run only the cases whose names contain them.

use std::path::PathBuf;
use std::time::Duration;

use boot_tests::{Accel, Boot, Case, Exit, Outcome, Verdict, check, check_exit, run_cases};
use umbra_abi::status::{FIRMWARE_ERROR, SUCCESS};

const VERSION: &str = env!("CARGO_PKG_VERSION");

// ---------------------------------------------------------------------
// Crafted start_info files
// ---------------------------------------------------------------------

const START_INFO_MAGIC: u32 = 0x336e_c578;
const RAM: u32 = 1;
const RESERVED: u32 = 2;

/// Where the builder puts things by default, as offsets into the file.
/// The memory map's one RAM entry describes 0..1 MiB, more than the
/// file: pointers must lie in mapped memory *and* in the file to be read.
const FILE_LEN: usize = 0x4000;
const MEMMAP_AT: u64 = 0x100;
const MODLIST_AT: u64 = 0x400;
const CMDLINE_AT: u64 = 0x800;
const MODULE_AT: u64 = 0x3000;
const MAPPED_END: u64 = 0x10_0000;

/// A crafted `hvm_start_info` and what hangs from it, laid out in one
/// file. Each field is written as given, however wrong.
#[derive(Clone)]
struct Crafted {
    /// Bytes in the file; anything placed beyond is cut off.
    len: usize,
    magic: u32,
    version: u32,
    memmap_at: u64,
    /// `memmap_entries` when it should not be `memmap.len()`.
    memmap_count: Option<u32>,
    /// `(addr, size, type)`.
    memmap: Vec<(u64, u64, u32)>,
    modlist_at: u64,
    /// `nr_modules` when it should not be `modules.len()`.
    module_count: Option<u32>,
    /// `(paddr, size, cmdline_paddr)`.
    modules: Vec<(u64, u64, u64)>,
    /// 0 means "no cmdline".
    cmdline_at: u64,
    /// Written at `cmdline_at` as is: the NUL is the case's business.
    cmdline: Vec<u8>,
    /// Any other bytes, at their offsets.
    blobs: Vec<(u64, Vec<u8>)>,
}

impl Crafted {
    /// A start_info the parser accepts without a word: one RAM entry,
    /// no modules, the cmdline "crafted".
    fn valid() -> Crafted {
        Crafted {
            len: FILE_LEN,
            magic: START_INFO_MAGIC,
            version: 1,
            memmap_at: MEMMAP_AT,
            memmap_count: None,
            memmap: vec![(0, MAPPED_END, RAM)],
            modlist_at: MODLIST_AT,
            module_count: None,
            modules: Vec::new(),
            cmdline_at: CMDLINE_AT,
            cmdline: b"crafted\0".to_vec(),
            blobs: Vec::new(),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Crafted)) -> Crafted {
        change(&mut self);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut file = vec![0u8; self.len];
        let mut put = |at: u64, bytes: &[u8]| {
            // Only what fits: a pointer past the end is a case, not a mistake.
            for (i, &byte) in bytes.iter().enumerate() {
                let offset = usize::try_from(at).ok().and_then(|at| at.checked_add(i));
                if let Some(slot) = offset.and_then(|offset| file.get_mut(offset)) {
                    *slot = byte;
                }
            }
        };
        let mut memmap = Vec::new();
        for &(addr, size, kind) in &self.memmap {
            memmap.extend_from_slice(&addr.to_le_bytes());
            memmap.extend_from_slice(&size.to_le_bytes());
            memmap.extend_from_slice(&kind.to_le_bytes());
            memmap.extend_from_slice(&0u32.to_le_bytes());
        }
        put(self.memmap_at, &memmap);
        let mut modlist = Vec::new();
        for &(paddr, size, cmdline) in &self.modules {
            for field in [paddr, size, cmdline, 0] {
                modlist.extend_from_slice(&field.to_le_bytes());
            }
        }
        put(self.modlist_at, &modlist);
        if self.cmdline_at != 0 {
            put(self.cmdline_at, &self.cmdline);
        }
        for (at, blob) in &self.blobs {
            put(*at, blob);
        }
        // The fixed part last, so a truncated file cuts it too.
        let mut header = vec![0u8; 56];
        header[0..4].copy_from_slice(&self.magic.to_le_bytes());
        header[4..8].copy_from_slice(&self.version.to_le_bytes());
        let nr_modules = self.module_count.unwrap_or(self.modules.len() as u32);
        header[12..16].copy_from_slice(&nr_modules.to_le_bytes());
        header[16..24].copy_from_slice(&self.modlist_at.to_le_bytes());
        header[24..32].copy_from_slice(&self.cmdline_at.to_le_bytes());
        header[40..48].copy_from_slice(&self.memmap_at.to_le_bytes());
        let entries = self.memmap_count.unwrap_or(self.memmap.len() as u32);
        header[48..52].copy_from_slice(&entries.to_le_bytes());
        put(0, &header);
        file
    }
}

/// A file that removes itself when the case is done, pass or fail.
struct TempFile(PathBuf);

impl TempFile {
    fn new(case: &str, bytes: &[u8]) -> Result<TempFile, Verdict> {
        let path = std::env::temp_dir().join(format!("umbra-{case}-{}.bin", std::process::id()));
        std::fs::write(&path, bytes)
            .map_err(|e| Verdict::Fail(format!("cannot write {}: {e}", path.display())))?;
        Ok(TempFile(path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the test loader must print for one crafted file.
enum Expect {
    /// `umbra: error: crafted start_info: <text>`, status 101.
    Error(&'static str),
    /// These warnings (each `warn: crafted start_info: <text>`), in order,
    /// then `crafted start_info: accepted: <text>`, status 0.
    Accepted { warnings: &'static [&'static str], summary: String },
}

fn accepted(summary: impl Into<String>) -> Expect {
    Expect::Accepted { warnings: &[], summary: summary.into() }
}

fn accepted_with(warnings: &'static [&'static str], summary: impl Into<String>) -> Expect {
    Expect::Accepted { warnings, summary: summary.into() }
}

/// The summary of the default map, no modules, and `cmdline` (as Umbra
/// quotes it).
fn summary(entries: usize, cmdline: &str) -> String {
    format!("{entries} memory map entries, 0 modules, 1 MiB RAM, cmdline \"{cmdline}\"")
}

/// Boot the test loader on `bytes` as module 0, and judge what it said.
fn boot_crafted(name: &str, bytes: &[u8], judge: impl FnOnce(&Outcome) -> Verdict) -> Verdict {
    let file = match TempFile::new(name, bytes) {
        Ok(file) => file,
        Err(verdict) => return verdict,
    };
    Boot::new("microvm", Accel::Tcg).append("start_info_test").initrd(file.0.clone()).judged(name, judge)
}

fn crafted(name: &'static str, file: Crafted, expect: Expect) -> Case {
    Case::new(name, move |name| boot_crafted(name, &file.bytes(), |outcome| check_verdict(outcome, &expect)))
}

/// The test loader's contract: a normal boot up to the banner, then
/// exactly one verdict line (after its warnings, if accepted) directly
/// before `umbra: exit status N`, and nothing else out of place.
fn check_verdict(outcome: &Outcome, expect: &Expect) -> Verdict {
    let (verdict, warnings, status) = match expect {
        Expect::Error(what) => {
            (format!("umbra: error: crafted start_info: {what}"), Vec::new(), FIRMWARE_ERROR)
        }
        Expect::Accepted { warnings, summary } => (
            format!("crafted start_info: accepted: {summary}"),
            warnings.iter().map(|w| format!("warn: crafted start_info: {w}")).collect(),
            SUCCESS,
        ),
    };
    check!(outcome, outcome.exit_code.is_some(), "timed out: QEMU was killed");
    check!(outcome, outcome.line_starting("umbra: crash").is_none(), "Umbra crashed");
    check!(
        outcome,
        outcome.line_starting("memory: ").is_some(),
        "the real boot should reach the banner first"
    );
    let lines = outcome.lines();
    let verdicts: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("umbra: error:") || l.starts_with("crafted start_info: "))
        .collect();
    check!(
        outcome,
        verdicts == [verdict.as_str()],
        "expected exactly one verdict line {verdict:?}, got {verdicts:?}"
    );
    let found: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("warn:")).collect();
    check!(outcome, found == warnings, "expected the warnings {warnings:?}, got {found:?}");
    let last_two = lines.iter().rev().filter(|l| !l.is_empty()).nth(1).copied();
    check!(
        outcome,
        last_two == Some(verdict.as_str()),
        "the verdict should be the line before the exit status"
    );
    check_exit(outcome, status, Exit::DebugExit)
}

fn crafted_cases() -> Vec<Case> {
    vec![
        // The control: the builder's own output is accepted in silence.
        crafted("crafted_valid", Crafted::valid(), accepted(summary(1, "crafted"))),
        // --- the fixed part ---
        crafted(
            "crafted_bad_magic",
            Crafted::valid().with(|c| c.magic = 0xdead_beef),
            Expect::Error("start_info magic is 0xdeadbeef, expected 0x336ec578: not a PVH boot"),
        ),
        crafted(
            "crafted_version_0",
            Crafted::valid().with(|c| c.version = 0),
            Expect::Error("start_info version 0 has no memory map; Umbra needs version 1 or later"),
        ),
        // Cut in the middle of the 56 bytes: magic and version read, the rest not.
        crafted(
            "crafted_start_info_truncated",
            Crafted::valid().with(|c| c.len = 40),
            Expect::Error("start_info at 0x0 is outside readable memory"),
        ),
        // --- the memory map ---
        crafted(
            "crafted_memmap_address_0",
            Crafted::valid().with(|c| c.memmap_at = 0),
            Expect::Error("start_info has no memory map (address 0 or 0 entries)"),
        ),
        crafted(
            "crafted_memmap_0_entries",
            Crafted::valid().with(|c| c.memmap_count = Some(0)),
            Expect::Error("start_info has no memory map (address 0 or 0 entries)"),
        ),
        crafted(
            "crafted_memmap_100000_entries",
            Crafted::valid().with(|c| c.memmap_count = Some(100_000)),
            Expect::Error("start_info memory map claims 100000 entries; more than 128 is not believable"),
        ),
        // One past the bound: the count alone is refused, before any entry is read.
        crafted(
            "crafted_memmap_129_entries",
            Crafted::valid().with(|c| c.memmap_count = Some(129)),
            Expect::Error("start_info memory map claims 129 entries; more than 128 is not believable"),
        ),
        crafted(
            "crafted_memmap_outside_module",
            Crafted::valid().with(|c| c.memmap_at = 0x20_0000),
            Expect::Error("start_info memory map at 0x200000 is outside readable memory"),
        ),
        // Its first entry is in the file, its second runs off the end.
        crafted(
            "crafted_memmap_runs_off_module",
            Crafted::valid().with(|c| {
                c.memmap_at = FILE_LEN as u64 - 24;
                c.memmap.push((0x20_0000, 0x1000, RAM));
            }),
            Expect::Error("start_info memory map at 0x3fe8 is outside readable memory"),
        ),
        crafted(
            "crafted_memmap_overlap",
            Crafted::valid().with(|c| c.memmap.push((0x8000, 0x1000, RESERVED))),
            accepted_with(
                &["memory map: entries overlap at 0x8000; reserved wins over RAM"],
                summary(2, "crafted"),
            ),
        ),
        crafted(
            "crafted_memmap_zero_sized_entry",
            Crafted::valid().with(|c| c.memmap.push((0x20_0000, 0, RAM))),
            accepted_with(&["memory map: ignored 1 zero-sized entries"], summary(1, "crafted")),
        ),
        crafted(
            "crafted_memmap_unknown_type",
            Crafted::valid().with(|c| c.memmap.push((0x20_0000, 0x1000, 99))),
            accepted_with(
                &["memory map: 1 entries of unknown type (first: 99) treated as reserved"],
                summary(2, "crafted"),
            ),
        ),
        crafted(
            "crafted_memmap_wrapping_entry",
            Crafted::valid().with(|c| c.memmap.push((u64::MAX - 0xfff, 0x2000, RAM))),
            accepted_with(
                &["memory map: ignored 1 entries that run past the end of the address space"],
                summary(1, "crafted"),
            ),
        ),
        crafted(
            "crafted_memmap_no_ram",
            Crafted::valid().with(|c| c.memmap = vec![(0, MAPPED_END, RESERVED), (0x20_0000, 0, RAM)]),
            Expect::Error("start_info memory map describes no RAM"),
        ),
        // --- the modules ---
        crafted(
            "crafted_modules_16",
            Crafted::valid().with(|c| c.modules = (0..16).map(|i| (MODULE_AT + i * 0x10, 0x10, 0)).collect()),
            accepted("1 memory map entries, 16 modules, 1 MiB RAM, cmdline \"crafted\""),
        ),
        crafted(
            "crafted_modules_17",
            Crafted::valid().with(|c| c.module_count = Some(17)),
            Expect::Error("start_info claims 17 modules; Umbra accepts at most 16"),
        ),
        crafted(
            "crafted_modules_4g",
            Crafted::valid().with(|c| c.module_count = Some(u32::MAX)),
            Expect::Error("start_info claims 4294967295 modules; Umbra accepts at most 16"),
        ),
        crafted(
            "crafted_modlist_outside_map",
            Crafted::valid().with(|c| {
                c.modlist_at = 0x20_0000;
                c.module_count = Some(1);
            }),
            Expect::Error("start_info module list at 0x200000 is outside the memory map"),
        ),
        // Inside what the map describes, but not in the file: unreadable.
        crafted(
            "crafted_modlist_unreadable",
            Crafted::valid().with(|c| {
                c.modlist_at = 0x8_0000;
                c.module_count = Some(1);
            }),
            Expect::Error("start_info module list at 0x80000 is outside the memory map"),
        ),
        crafted(
            "crafted_module_outside_map",
            Crafted::valid().with(|c| c.modules = vec![(0x20_0000, 0x1000, 0)]),
            Expect::Error("module 0 (4096 bytes at 0x200000) is outside the memory map"),
        ),
        crafted(
            "crafted_module_straddles_map_end",
            Crafted::valid().with(|c| c.modules = vec![(MAPPED_END - 0x1000, 0x2000, 0)]),
            Expect::Error("module 0 (8192 bytes at 0xff000) is outside the memory map"),
        ),
        crafted(
            "crafted_module_wraps",
            Crafted::valid().with(|c| c.modules = vec![(u64::MAX - 0xfff, 0x2000, 0)]),
            Expect::Error("module 0 (8192 bytes at 0xfffffffffffff000) is outside the memory map"),
        ),
        crafted(
            "crafted_module_zero_sized",
            Crafted::valid().with(|c| c.modules = vec![(MODULE_AT, 0, 0)]),
            accepted_with(&["module 0 is zero-sized; ignored"], summary(1, "crafted")),
        ),
        crafted(
            "crafted_module_cmdline_outside_map",
            Crafted::valid().with(|c| c.modules = vec![(MODULE_AT, 0x100, 0x20_0000)]),
            accepted_with(
                &["module 0: cmdline outside the memory map or longer than 255 bytes; ignored"],
                "1 memory map entries, 1 modules, 1 MiB RAM, cmdline \"crafted\"",
            ),
        ),
        // --- the command line ---
        crafted(
            "crafted_cmdline_outside_map",
            Crafted::valid().with(|c| c.cmdline_at = 0x20_0000),
            accepted_with(&["cmdline at 0x200000 is outside the memory map; ignored"], summary(1, "")),
        ),
        // 8 KiB of non-NUL bytes, the NUL only after them.
        crafted(
            "crafted_cmdline_unterminated_8k",
            Crafted::valid().with(|c| c.cmdline = [vec![b'a'; 8192], vec![0]].concat()),
            accepted_with(&["cmdline is longer than 8191 bytes or unterminated; ignored"], summary(1, "")),
        ),
        // The longest one kept; Umbra quotes only its first 160 bytes.
        crafted(
            "crafted_cmdline_8191_bytes",
            Crafted::valid().with(|c| c.cmdline = [vec![b'a'; 8191], vec![0]].concat()),
            accepted(format!("{} (8191 bytes, first 160 shown)", summary(1, &"a".repeat(160)))),
        ),
        // No NUL before the file (and the module's memory) ends: the bytes
        // that were read must not survive as the cmdline.
        crafted(
            "crafted_cmdline_runs_off_module",
            Crafted::valid().with(|c| {
                c.cmdline_at = FILE_LEN as u64 - 5;
                c.cmdline = b"abcde".to_vec();
            }),
            accepted_with(&["cmdline at 0x3ffb is outside the memory map; ignored"], summary(1, "")),
        ),
        // The last byte of the address space: a range with no end.
        crafted(
            "crafted_cmdline_at_last_address",
            Crafted::valid().with(|c| c.cmdline_at = u64::MAX),
            accepted_with(
                &["cmdline at 0xffffffffffffffff is outside the memory map; ignored"],
                summary(1, ""),
            ),
        ),
        crafted(
            "crafted_cmdline_not_utf8",
            Crafted::valid().with(|c| c.cmdline = b"caf\xe9 \xff\x01\"q\"\0".to_vec()),
            accepted(summary(1, "caf\\xe9 \\xff\\x01\\\"q\\\"")),
        ),
    ]
}

// ---------------------------------------------------------------------
// Real boots: what QEMU itself passes
// ---------------------------------------------------------------------

/// The default guest ran to its end, and the run exited 0.
fn check_guest_ran(outcome: &Outcome) -> Verdict {
    check!(
        outcome,
        outcome.lines().first() == Some(&format!("umbra {VERSION}").as_str()),
        "expected the banner"
    );
    check!(outcome, outcome.line_starting("umbra: error:").is_none(), "expected no error line");
    check!(outcome, outcome.line_starting("umbra: crash").is_none(), "Umbra crashed");
    check!(outcome, outcome.has_line("guest: hello from ring 1"), "the default guest should run");
    check!(outcome, outcome.has_line("guest exited with status 0"), "the guest should exit with status 0");
    check_exit(outcome, SUCCESS, Exit::DebugExit)
}

/// Bytes that are not UTF-8, for the host and for the guest: both see
/// them escaped, and the one warning is for the words Umbra does not know.
fn vmm_cmdline_not_utf8() -> Case {
    let cmdline = b"log=info caf\xe9 \xff\xfe -- na\xefve".to_vec();
    Case::boot("vmm_cmdline_not_utf8_microvm", Boot::new("microvm", Accel::Tcg).append(cmdline), |outcome| {
        check!(
            outcome,
            outcome.has_line(r#"cmdline: "log=info caf\xe9 \xff\xfe -- na\xefve""#),
            "the cmdline line should show the bytes escaped"
        );
        let found = outcome.lines_starting("warn:");
        check!(
            outcome,
            found == [r"warn: cmdline: ignored 2 unknown words (first: 'caf\xe9')"],
            "expected one warning for the two unknown words, got {found:?}"
        );
        let guest = outcome.line_starting("guest: the default guest (").unwrap_or("");
        check!(
            outcome,
            guest.ends_with(r#"cmdline "na\xefve""#),
            "the guest's words should be passed escaped: {guest:?}"
        );
        check_guest_ran(outcome)
    })
}

/// 64 KiB of command line. qboot (microvm) passes it whole; Umbra ignores
/// it with one warning and boots.
fn vmm_cmdline_64k_microvm() -> Case {
    let config = Boot::new("microvm", Accel::Tcg).append(vec![b'x'; 64 * 1024]);
    Case::boot("vmm_cmdline_64k_microvm", config, |outcome| {
        let found = outcome.lines_starting("warn:");
        check!(
            outcome,
            found == ["warn: cmdline is longer than 8191 bytes or unterminated; ignored"],
            "expected exactly one warning, got {found:?}"
        );
        check!(outcome, outcome.has_line("cmdline: \"\""), "the ignored cmdline should be shown empty");
        check_guest_ran(outcome)
    })
}

/// Under SeaBIOS, QEMU's PVH option ROM copies the cmdline into low
/// memory right below its start_info (4128 bytes or more overwrite it),
/// with its own stack further up (23832 bytes or more overwrite that).
/// 16 KiB lands in between: Umbra finds a start_info made of 'x' and says
/// so in one line.
fn vmm_cmdline_16k(machine: &'static str) -> Case {
    let config = Boot::new(machine, Accel::Tcg).append(vec![b'x'; 16 * 1024]);
    Case::boot(format!("vmm_cmdline_16k_{machine}"), config, |outcome| {
        let lines = outcome.lines();
        let errors = outcome.lines_starting("umbra: error:");
        check!(
            outcome,
            errors == ["umbra: error: start_info magic is 0x78787878, expected 0x336ec578: not a PVH boot"],
            "expected one bad-magic line, got {errors:?}"
        );
        let expected =
            [format!("umbra {VERSION}"), errors[0].to_string(), "umbra: exit status 101".to_string()];
        check!(outcome, lines == expected, "expected the version, the error and the exit status only");
        check_exit(outcome, FIRMWARE_ERROR, Exit::DebugExit)
    })
}

/// 64 KiB on q35 also overwrites the option ROM's stack: it returns to an
/// address made of the cmdline's bytes and never jumps to Umbra. QEMU
/// hangs with an empty console, so this case waits for a shorter
/// timeout (a good q35 boot prints its banner in about a second) and
/// asserts that Umbra never ran. If a QEMU fixes this, the case fails
/// and `docs/security.md` needs a new line.
fn vmm_cmdline_64k_q35() -> Case {
    let mut config = Boot::new("q35", Accel::Tcg).append(vec![b'x'; 64 * 1024]);
    config.timeout = Duration::from_secs(30);
    Case::boot("vmm_cmdline_64k_q35", config, |outcome| {
        check!(
            outcome,
            outcome.exit_code.is_none(),
            "QEMU exited ({:?}): SeaBIOS no longer hangs on a 64 KiB cmdline; update docs/security.md",
            outcome.exit_code
        );
        check!(outcome, !outcome.serial.contains("umbra"), "Umbra ran: the hang is not before its entry");
        Verdict::Pass
    })
}

/// The same happens on pc, at the harness's full timeout; not worth a
/// worker's two minutes to prove twice.
fn vmm_cmdline_64k_pc() -> Case {
    Case::skip("vmm_cmdline_64k_pc", "pc: SeaBIOS hangs on a 64 KiB cmdline before Umbra's entry")
}

/// `-initrd` of an empty file: QEMU starts, and its loaders (qboot on
/// microvm, the PVH option ROM on pc) pass no module at all rather than a
/// zero-sized one. So Umbra runs its default guest, without a word.
fn vmm_initrd_empty(machine: &'static str) -> Case {
    Case::new(format!("vmm_initrd_empty_{machine}"), move |name| {
        let file = match TempFile::new(name, &[]) {
            Ok(file) => file,
            Err(verdict) => return verdict,
        };
        Boot::new(machine, Accel::Tcg).initrd(file.0.clone()).judged(name, |outcome| {
            check!(outcome, outcome.line_starting("module 0:").is_none(), "QEMU should pass no module");
            check!(
                outcome,
                outcome.line_starting("guest: the default guest (").is_some(),
                "expected the default guest"
            );
            let found = outcome.lines_starting("warn:");
            check!(outcome, found.is_empty(), "expected no warnings, got {found:?}");
            check_guest_ran(outcome)
        })
    })
}

/// The same empty file for the test loader: there is no module 0 to
/// hold a crafted start_info, and it says so.
fn crafted_initrd_empty() -> Case {
    Case::new("crafted_initrd_empty", |name| {
        boot_crafted(name, &[], |outcome| {
            let errors = outcome.lines_starting("umbra: error:");
            check!(
                outcome,
                errors == ["umbra: error: start_info_test: no module 0 holds a crafted start_info"],
                "expected the no-module error, got {errors:?}"
            );
            check!(outcome, outcome.line_starting("umbra: crash").is_none(), "Umbra crashed");
            check_exit(outcome, FIRMWARE_ERROR, Exit::DebugExit)
        })
    })
}

fn main() {
    let mut cases = crafted_cases();
    cases.push(crafted_initrd_empty());
    cases.push(vmm_cmdline_not_utf8());
    cases.push(vmm_cmdline_64k_microvm());
    cases.push(vmm_cmdline_16k("q35"));
    cases.push(vmm_cmdline_16k("pc"));
    cases.push(vmm_cmdline_64k_q35());
    cases.push(vmm_cmdline_64k_pc());
    cases.push(vmm_initrd_empty("microvm"));
    cases.push(vmm_initrd_empty("pc"));
    run_cases(cases, 2)
}
