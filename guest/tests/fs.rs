//! Host tests of the guest kernel's in-memory filesystem (`src/kernel/fs.rs`)
//! and its cpio unpacker (`src/kernel/cpio.rs`).
//!
//! Both files are pure logic on `core` and `alloc`, so they are included
//! here as they are and run on the host. The archives are built by a small
//! newc encoder below, so every case says exactly what its archive holds;
//! one more case unpacks the real root filesystems (`target/rootfs*.cpio`)
//! a build has left there.

extern crate alloc;

#[allow(dead_code)]
#[path = "../src/kernel/fs.rs"]
mod fs;

#[allow(dead_code)]
#[path = "../src/kernel/cpio.rs"]
mod cpio;

use fs::errno::*;
use fs::{Fs, Ino, Kind, ROOT, Time};

const NOW: Time = (1_700_000_000, 5);
const LATER: Time = (1_700_000_100, 7);

// ---------------------------------------------------------------------
// A newc encoder.

/// One header's numbers; what a case does not set is zero (nlink 1).
#[derive(Clone, Copy)]
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    dev: (u32, u32),
    rdev: (u32, u32),
}

impl Header {
    fn new(mode: u32) -> Header {
        Header { ino: 0, mode, uid: 0, gid: 0, nlink: 1, mtime: 0, dev: (8, 1), rdev: (0, 0) }
    }
}

#[derive(Default)]
struct Archive {
    bytes: Vec<u8>,
    next_ino: u32,
}

impl Archive {
    fn raw(&mut self, header: Header, name: &[u8], data: &[u8]) -> &mut Archive {
        let fields = [
            header.ino,
            header.mode,
            header.uid,
            header.gid,
            header.nlink,
            header.mtime,
            data.len() as u32,
            header.dev.0,
            header.dev.1,
            header.rdev.0,
            header.rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name);
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn ino(&mut self) -> u32 {
        self.next_ino += 1;
        self.next_ino
    }

    fn with(&mut self, mut header: Header, name: &str, data: &[u8]) -> &mut Archive {
        if header.ino == 0 {
            header.ino = self.ino();
        }
        self.raw(header, name.as_bytes(), data)
    }

    fn dir(&mut self, name: &str, permissions: u32) -> &mut Archive {
        let mut header = Header::new(0o040_000 | permissions);
        header.nlink = 2;
        self.with(header, name, b"")
    }

    fn file(&mut self, name: &str, permissions: u32, data: &[u8]) -> &mut Archive {
        self.with(Header::new(0o100_000 | permissions), name, data)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Archive {
        self.with(Header::new(0o120_777), name, target.as_bytes())
    }

    fn trailer(&mut self) -> &mut Archive {
        self.raw(Header::new(0), b"TRAILER!!!", b"")
    }

    fn finish(&mut self) -> Vec<u8> {
        self.trailer();
        core::mem::take(&mut self.bytes)
    }
}

/// Deterministic bytes (xorshift), for data and for the fuzzer.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }

    fn bytes(&mut self, length: usize) -> Vec<u8> {
        (0..length).map(|_| self.next() as u8).collect()
    }
}

fn resolve(fs: &Fs, path: &str) -> fs::Result<Ino> {
    fs.resolve(ROOT, path.as_bytes(), true)
}

fn read_all(fs: &Fs, ino: Ino) -> Vec<u8> {
    let mut data = vec![0; fs.stat(ino).size as usize];
    assert_eq!(fs.read(ino, 0, &mut data), Ok(data.len()));
    data
}

fn names(fs: &Fs, dir: Ino) -> Vec<String> {
    fs.entries(dir, 0).map(|(_, entry)| String::from_utf8_lossy(entry.name).into_owned()).collect()
}

// ---------------------------------------------------------------------
// The fresh tree.

#[test]
fn a_new_filesystem_has_dev_and_tmp() {
    let fs = Fs::new();
    let root = fs.stat(ROOT);
    assert_eq!(root.mode, 0o040_755);
    assert_eq!(root.nlink, 4, "2 + dev + tmp");
    let console = fs.stat(resolve(&fs, "/dev/console").unwrap());
    assert_eq!(console.mode, 0o020_620);
    assert_eq!(console.rdev, (5 << 8) | 1);
    let null = fs.stat(resolve(&fs, "/dev/null").unwrap());
    assert_eq!((null.mode, null.rdev), (0o020_666, (1 << 8) | 3));
    let tty = fs.stat(resolve(&fs, "/dev/tty").unwrap());
    assert_eq!((tty.mode, tty.rdev), (0o020_666, 5 << 8));
    assert_eq!(fs.stat(resolve(&fs, "/tmp").unwrap()).mode, 0o041_777);
    assert_eq!(names(&fs, ROOT), [".", "..", "dev", "tmp"]);
    assert_eq!(fs::makedev(0x12345, 0x6789a), 0x0001_2000_6783_459a);
}

// ---------------------------------------------------------------------
// Unpacking.

/// A busybox-style tree: one binary under many names (its data with the
/// last), nested and implicit directories, symbolic links, a device, and
/// types the filesystem skips.
fn busybox_style(binary: &[u8]) -> Vec<u8> {
    let mut archive = Archive::default();
    let mut root = Header::new(0o040_700);
    root.mtime = 111;
    archive.with(root, ".", b"");
    archive.dir("bin", 0o755);
    let mut link = Header::new(0o100_755);
    link.ino = 500;
    link.nlink = 3;
    archive.with(link, "bin/sh", b"");
    archive.with(link, "./bin/ls", b"");
    archive.with(link, "bin/busybox", binary);
    let mut motd = Header::new(0o100_640);
    (motd.uid, motd.gid, motd.mtime) = (1000, 100, 12_345);
    archive.with(motd, "/etc/motd", b"welcome\n");
    archive.file("usr/lib/deep/file", 0o600, b"deep");
    archive.symlink("lib", "usr/lib");
    archive.file("lib/deep/other", 0o644, b"through a link");
    let mut dir_time = Header::new(0o040_750);
    (dir_time.nlink, dir_time.mtime) = (2, 777);
    archive.with(dir_time, "usr", b"");
    let mut zero = Header::new(0o020_666);
    zero.rdev = (1, 5);
    archive.with(zero, "dev/zero", b"");
    archive.with(Header::new(0o010_644), "dev/fifo", b"");
    archive.with(Header::new(0o060_660), "dev/sda", b"");
    archive.with(Header::new(0o140_755), "dev/socket", b"");
    archive.file("etc/empty", 0o644, b"");
    archive.finish()
}

#[test]
fn unpacks_a_busybox_style_tree() {
    let binary = Rng(7).bytes(1_500_000);
    let archive = busybox_style(&binary);
    let mut fs = Fs::new();
    let unpacked = cpio::unpack(&mut fs, &archive, NOW).unwrap();
    assert_eq!(unpacked, cpio::Unpacked { made: 12, skipped: 3 });

    // One inode, three names, the data of the last.
    let busybox = resolve(&fs, "/bin/busybox").unwrap();
    assert_eq!(resolve(&fs, "/bin/sh"), Ok(busybox));
    assert_eq!(resolve(&fs, "bin/ls"), Ok(busybox));
    let stat = fs.stat(busybox);
    assert_eq!((stat.mode, stat.nlink, stat.size), (0o100_755, 3, binary.len() as u64));
    assert_eq!(stat.blocks, binary.len().div_ceil(4096) as u64 * 8);
    assert!(read_all(&fs, busybox) == binary);
    for index in 0..stat.size.div_ceil(4096) {
        let page = fs.page(busybox, index).expect("every page was written");
        let start = index as usize * 4096;
        let end = (start + 4096).min(binary.len());
        assert!(page[..end - start] == binary[start..end]);
        assert!(page[end - start..].iter().all(|&byte| byte == 0));
    }
    assert_eq!(fs.page(busybox, stat.size.div_ceil(4096)), None);

    let motd = fs.stat(resolve(&fs, "/etc/motd").unwrap());
    assert_eq!(
        (motd.mode, motd.uid, motd.gid, motd.mtime, motd.size),
        (0o100_640, 1000, 100, (12_345, 0), 8)
    );
    // Implicit parents: 0755, made "now"; an explicit entry later sets the
    // attributes, and a directory keeps its archive time.
    let etc = fs.stat(resolve(&fs, "/etc").unwrap());
    assert_eq!(etc.mode, 0o040_755);
    let usr = fs.stat(resolve(&fs, "/usr").unwrap());
    assert_eq!((usr.mode, usr.mtime), (0o040_750, (777, 0)));
    assert_eq!(fs.stat(ROOT).mode, 0o040_700);
    assert_eq!(fs.stat(ROOT).mtime, (111, 0));
    // The file written through the symbolic link is under its target.
    let other = resolve(&fs, "/usr/lib/deep/other").unwrap();
    assert_eq!(read_all(&fs, other), b"through a link");
    assert_eq!(fs.readlink(fs.resolve(ROOT, b"lib", false).unwrap()), Ok(&b"usr/lib"[..]));
    let zero = fs.stat(resolve(&fs, "/dev/zero").unwrap());
    assert_eq!((zero.mode, zero.rdev), (0o020_666, fs::makedev(1, 5)));
    for skipped in ["/dev/fifo", "/dev/sda", "/dev/socket"] {
        assert_eq!(resolve(&fs, skipped), Err(ENOENT), "{skipped}");
    }
    // The fresh tree's entries are still there.
    assert!(resolve(&fs, "/dev/console").is_ok());
    assert_eq!(fs.stat(resolve(&fs, "/etc/empty").unwrap()).size, 0);
    // root: dev, tmp, bin, etc, usr
    assert_eq!(fs.stat(ROOT).nlink, 7);
}

#[test]
fn an_archive_replaces_what_is_there_and_may_be_concatenated() {
    let mut first = Archive::default();
    first.file("dev/console", 0o600, b"");
    first.file("a", 0o644, b"old");
    first.dir("d", 0o755);
    let mut archive = first.finish();
    archive.extend_from_slice(&[0; 512]);
    let mut second = Archive::default();
    second.file("a", 0o600, b"new");
    second.symlink("d", "a");
    archive.extend(second.finish());
    let mut fs = Fs::new();
    assert_eq!(fs.unpack_cpio(&archive, NOW), Ok(5));
    assert_eq!(fs.kind(resolve(&fs, "/dev/console").unwrap()), Kind::Regular);
    let a = resolve(&fs, "a").unwrap();
    assert_eq!(read_all(&fs, a), b"new");
    assert_eq!(fs.stat(a).mode, 0o100_600);
    assert_eq!(resolve(&fs, "d"), Ok(a));
}

#[test]
fn a_directory_with_entries_is_not_replaced() {
    let mut archive = Archive::default();
    archive.file("d/x", 0o644, b"x");
    archive.file("d", 0o644, b"a file where a directory is");
    archive.file("d/x/y", 0o644, b"under a file");
    let archive = archive.finish();
    let mut fs = Fs::new();
    assert_eq!(cpio::unpack(&mut fs, &archive, NOW), Ok(cpio::Unpacked { made: 1, skipped: 2 }));
    assert_eq!(fs.kind(resolve(&fs, "d").unwrap()), Kind::Directory);
}

#[test]
fn a_file_over_one_mib_round_trips() {
    let data = Rng(99).bytes(3 << 20 | 123);
    let mut archive = Archive::default();
    archive.file("big", 0o644, &data);
    let mut fs = Fs::new();
    assert_eq!(fs.unpack_cpio(&archive.finish(), NOW), Ok(1));
    let big = resolve(&fs, "big").unwrap();
    assert!(read_all(&fs, big) == data);
    // Reading at an odd offset across pages.
    let mut window = vec![0; 10_000];
    assert_eq!(fs.read(big, 4090, &mut window), Ok(10_000));
    assert!(window == data[4090..14_090]);
}

#[test]
fn real_root_filesystems_unpack_if_a_build_left_them() {
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let archives: Vec<_> = std::fs::read_dir(&target)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("rootfs") && name.ends_with(".cpio")
        })
        .collect();
    if archives.is_empty() {
        eprintln!("no rootfs*.cpio in {}: skipped", target.display());
    }
    for path in archives {
        let archive = std::fs::read(&path).unwrap();
        check_real_archive(&path.display().to_string(), &archive);
    }
}

/// Unpacks an archive made by a real archiver and checks that every entry
/// is where the archive says, with its type, permissions, time and (for
/// the name that carries them) its bytes.
fn check_real_archive(what: &str, archive: &[u8]) {
    let mut fs = Fs::new();
    let unpacked = cpio::unpack(&mut fs, archive, NOW).expect("the root filesystem unpacks");
    eprintln!("{what}: {unpacked:?}");
    assert!(unpacked.made > 10);
    let sh = resolve(&fs, "/bin/sh").expect("/bin/sh");
    let mut magic = [0; 4];
    assert_eq!(fs.read(sh, 0, &mut magic), Ok(4));
    assert_eq!(&magic, b"\x7fELF");
    let mut reader = cpio::Reader::new(archive);
    let mut checked = 0;
    while let Some(entry) = reader.next_entry().unwrap() {
        if entry.name == cpio::TRAILER {
            break;
        }
        let name = String::from_utf8_lossy(entry.name);
        let Ok(ino) = fs.resolve(ROOT, entry.name, false) else {
            panic!("{what}: {name} is missing");
        };
        let stat = fs.stat(ino);
        if entry.name != b"." {
            assert_eq!(stat.mode, entry.mode, "{what}: {name}");
            assert_eq!(stat.mtime.0, i64::from(entry.mtime), "{what}: {name}");
            assert_eq!((stat.uid, stat.gid), (entry.uid, entry.gid), "{what}: {name}");
        }
        if stat.mode & fs::S_IFMT == fs::S_IFREG && !entry.data.is_empty() {
            assert!(read_all(&fs, ino) == entry.data, "{what}: {name}");
            assert_eq!(stat.nlink, entry.nlink, "{what}: {name}");
        }
        if stat.mode & fs::S_IFMT == fs::S_IFLNK {
            assert_eq!(fs.readlink(ino), Ok(entry.data), "{what}: {name}");
        }
        checked += 1;
    }
    assert_eq!(checked, unpacked.made + unpacked.skipped);
}

#[test]
fn a_link_target_ends_at_a_nul() {
    let mut archive = Archive::default();
    archive.with(Header::new(0o120_777), "l", b"target\0junk");
    archive.with(Header::new(0o120_777), "empty", b"\0");
    let mut fs = Fs::new();
    assert_eq!(cpio::unpack(&mut fs, &archive.finish(), NOW), Ok(cpio::Unpacked { made: 1, skipped: 1 }));
    assert_eq!(fs.readlink(fs.resolve(ROOT, b"l", false).unwrap()), Ok(&b"target"[..]));
}

#[test]
fn what_follows_the_last_trailer_is_ignored() {
    let mut archive = one_file_archive();
    archive.extend_from_slice(&[0; 100]);
    archive.extend_from_slice(b"junk that is not an archive");
    let mut fs = Fs::new();
    assert_eq!(fs.unpack_cpio(&archive, NOW), Ok(1));
}

#[test]
fn a_replaced_directory_leaves_no_time_behind() {
    let mut archive = Archive::default();
    let mut dir = Header::new(0o040_755);
    (dir.nlink, dir.mtime) = (2, 1);
    archive.with(dir, "x", b"");
    let mut file = Header::new(0o100_644);
    file.mtime = 2;
    archive.with(file, "x", b"file");
    let mut fs = Fs::new();
    assert_eq!(fs.unpack_cpio(&archive.finish(), NOW), Ok(2));
    let x = fs.stat(resolve(&fs, "x").unwrap());
    assert_eq!((x.mode, x.mtime), (0o100_644, (2, 0)));
}

// ---------------------------------------------------------------------
// Malformed archives.

fn one_file_archive() -> Vec<u8> {
    let mut archive = Archive::default();
    archive.file("a/b", 0o644, b"hello");
    archive.finish()
}

#[test]
fn malformed_archives_are_einval() {
    let good = one_file_archive();
    let mut fs = Fs::new();
    assert_eq!(fs.unpack_cpio(&good, NOW), Ok(1));

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated header", good[..50].to_vec()),
        ("no trailer", good[..good.len() - 124].to_vec()),
        ("truncated data", good[..115].to_vec()),
        ("bad magic", [b"070707", &good[6..]].concat()),
        ("bad hex", {
            let mut bad = good.clone();
            bad[20] = b'g';
            bad
        }),
        ("name size 0", {
            let mut bad = good.clone();
            bad[94..102].copy_from_slice(b"00000000");
            bad
        }),
        ("huge name size", {
            let mut bad = good.clone();
            bad[94..102].copy_from_slice(b"FFFFFFFF");
            bad
        }),
        ("huge data size", {
            let mut bad = good.clone();
            bad[54..62].copy_from_slice(b"FFFFFFFF");
            bad
        }),
        ("name without its NUL", {
            let mut bad = good.clone();
            bad[113] = b'x';
            bad
        }),
        ("dot dot", {
            let mut archive = Archive::default();
            archive.file("../escape", 0o644, b"");
            archive.finish()
        }),
    ];
    for (what, archive) in cases {
        let mut fs = Fs::new();
        assert_eq!(fs.unpack_cpio(&archive, NOW), Err(EINVAL), "{what}");
    }
    // Entries before the bad one stay.
    let mut archive = Archive::default();
    archive.file("kept", 0o644, b"k");
    let mut bytes = archive.bytes.clone();
    bytes.extend_from_slice(b"070701zz");
    let mut fs = Fs::new();
    assert_eq!(fs.unpack_cpio(&bytes, NOW), Err(EINVAL));
    assert!(resolve(&fs, "kept").is_ok());
}

#[test]
fn ten_thousand_mutated_archives_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut base = Archive::default();
    base.dir("d", 0o755).file("d/f", 0o644, &rng.bytes(5000)).symlink("d/l", "f").symlink("loop", "loop");
    let mut link = Header::new(0o100_644);
    (link.ino, link.nlink) = (900, 2);
    base.with(link, "x", b"").with(link, "d/y", b"data");
    let mut device = Header::new(0o020_600);
    device.rdev = (4, 1);
    base.with(device, "d/tty", b"");
    let base = base.finish();
    let mut outcomes = [0usize; 2];
    for round in 0..10_000 {
        let mut archive = base.clone();
        for _ in 0..=rng.below(4) {
            if archive.is_empty() {
                break;
            }
            match rng.below(5) {
                0 => {
                    let at = rng.below(archive.len());
                    archive[at] = rng.next() as u8;
                }
                1 => {
                    // A hex digit somewhere in a header field.
                    let at = rng.below(archive.len());
                    archive[at] = b"0123456789abcdefF"[rng.below(17)];
                }
                2 => archive.truncate(rng.below(archive.len() + 1)),
                3 => {
                    let at = rng.below(archive.len());
                    let length = rng.below(200).min(archive.len() - at);
                    archive.drain(at..at + length);
                }
                _ => {
                    let at = rng.below(archive.len() + 1);
                    let length = rng.below(64);
                    let junk = rng.bytes(length);
                    archive.splice(at..at, junk);
                }
            }
        }
        let mut fs = Fs::new();
        let result = fs.unpack_cpio(&archive, (round, 0));
        outcomes[usize::from(result.is_ok())] += 1;
        // Whatever was unpacked is a tree that can be walked.
        for (_, entry) in fs.entries(ROOT, 0) {
            let _ = fs.stat(entry.ino);
        }
        let _ = fs.resolve(ROOT, b"/d/l", true);
        let _ = fs.resolve(ROOT, b"/loop", true);
    }
    assert!(outcomes[0] > 1000 && outcomes[1] > 100, "{outcomes:?}");
}

// ---------------------------------------------------------------------
// Paths.

/// /a/b/c (dirs), /a/file, links: /abs -> /a/b, /rel -> a/b/c, /chain1 ->
/// chain2 -> /a, /loop1 <-> /loop2, /a/up -> .., /a/b/dangling -> nowhere,
/// /a/tofile -> file.
fn tree() -> Fs {
    let mut fs = Fs::new();
    let a = fs.mkdir(ROOT, b"a", 0o755, NOW).unwrap();
    let b = fs.mkdir(a, b"b", 0o755, NOW).unwrap();
    fs.mkdir(b, b"c", 0o755, NOW).unwrap();
    fs.create(a, b"file", 0o644, NOW).unwrap();
    fs.symlink(ROOT, b"abs", b"/a/b", NOW).unwrap();
    fs.symlink(ROOT, b"rel", b"a/b/c", NOW).unwrap();
    fs.symlink(ROOT, b"chain1", b"chain2", NOW).unwrap();
    fs.symlink(ROOT, b"chain2", b"/a", NOW).unwrap();
    fs.symlink(ROOT, b"loop1", b"loop2", NOW).unwrap();
    fs.symlink(ROOT, b"loop2", b"/loop1", NOW).unwrap();
    fs.symlink(a, b"up", b"..", NOW).unwrap();
    fs.symlink(b, b"dangling", b"nowhere", NOW).unwrap();
    fs.symlink(a, b"tofile", b"file", NOW).unwrap();
    fs
}

#[test]
fn paths_resolve_like_linux() {
    let fs = tree();
    let a = resolve(&fs, "/a").unwrap();
    let b = resolve(&fs, "/a/b").unwrap();
    let c = resolve(&fs, "/a/b/c").unwrap();
    let file = resolve(&fs, "/a/file").unwrap();
    let r = |cwd, path: &str, follow| fs.resolve(cwd, path.as_bytes(), follow);

    assert_eq!(r(ROOT, "/", true), Ok(ROOT));
    assert_eq!(r(b, "///", true), Ok(ROOT));
    assert_eq!(r(b, ".", true), Ok(b));
    assert_eq!(r(b, "..", true), Ok(a));
    assert_eq!(r(b, "c/../..", true), Ok(a));
    assert_eq!(r(ROOT, "/..", true), Ok(ROOT));
    assert_eq!(r(ROOT, "/../../a", true), Ok(a));
    assert_eq!(r(c, "../../../../a/./b//c/", true), Ok(c));
    assert_eq!(r(ROOT, "a/b/", true), Ok(b));
    assert_eq!(r(ROOT, "a/file/", true), Err(ENOTDIR));
    assert_eq!(r(ROOT, "a/file/x", true), Err(ENOTDIR));
    assert_eq!(r(ROOT, "a/file/..", true), Err(ENOTDIR));
    assert_eq!(r(ROOT, "a/missing", true), Err(ENOENT));
    assert_eq!(r(ROOT, "a/missing/x", true), Err(ENOENT));
    assert_eq!(r(ROOT, "", true), Err(ENOENT));
    // Symbolic links: absolute, relative to their directory, chains.
    assert_eq!(r(c, "/abs", true), Ok(b));
    assert_eq!(r(ROOT, "abs/c", false), Ok(c));
    assert_eq!(r(ROOT, "rel", true), Ok(c));
    assert_eq!(r(ROOT, "chain1/b", false), Ok(b));
    assert_eq!(r(ROOT, "a/up/a/up/a", true), Ok(a));
    assert_eq!(r(ROOT, "a/tofile", true), Ok(file));
    assert_eq!(r(ROOT, "a/tofile/", true), Err(ENOTDIR));
    // The last link is followed only when asked, or with a trailing slash.
    let abs = r(ROOT, "abs", false).unwrap();
    assert_eq!(fs.kind(abs), Kind::Symlink);
    assert_eq!(r(ROOT, "abs/", false), Ok(b));
    assert_eq!(r(ROOT, "a/b/dangling", true), Err(ENOENT));
    assert_eq!(fs.kind(r(ROOT, "a/b/dangling", false).unwrap()), Kind::Symlink);
    // Loops.
    assert_eq!(r(ROOT, "loop1", true), Err(ELOOP));
    assert_eq!(r(ROOT, "loop1/x", false), Err(ELOOP));
    assert_eq!(fs.kind(r(ROOT, "loop1", false).unwrap()), Kind::Symlink);
    // Lengths.
    let long_name = "x".repeat(256);
    assert_eq!(r(ROOT, &long_name, true), Err(ENAMETOOLONG));
    let long_path = "a/".repeat(2048);
    assert_eq!(r(ROOT, &long_path, true), Err(ENAMETOOLONG));
    // A cwd that is not a directory.
    assert_eq!(r(file, "x", true), Err(ENOTDIR));
    assert_eq!(r(9999, "x", true), Err(EBADF));
}

#[test]
fn forty_links_resolve_and_forty_one_do_not() {
    let mut fs = Fs::new();
    fs.create(ROOT, b"l0", 0o644, NOW).unwrap();
    for n in 1..=41 {
        let target = format!("l{}", n - 1);
        fs.symlink(ROOT, format!("l{n}").as_bytes(), target.as_bytes(), NOW).unwrap();
    }
    let l0 = resolve(&fs, "l0").unwrap();
    assert_eq!(resolve(&fs, "l40"), Ok(l0));
    assert_eq!(resolve(&fs, "l41"), Err(ELOOP));
}

#[test]
fn parents_of_paths() {
    let fs = tree();
    let a = resolve(&fs, "/a").unwrap();
    let b = resolve(&fs, "/a/b").unwrap();
    let p = |path: &'static str| fs.resolve_parent(b, path.as_bytes());
    assert_eq!(p("x"), Ok((b, &b"x"[..])));
    assert_eq!(p("x///"), Ok((b, &b"x"[..])));
    assert_eq!(p("/a/new"), Ok((a, &b"new"[..])));
    assert_eq!(p("/new"), Ok((ROOT, &b"new"[..])));
    assert_eq!(p("../new/"), Ok((a, &b"new"[..])));
    assert_eq!(p("/abs/c"), Ok((b, &b"c"[..])));
    assert_eq!(p("c/.."), Ok((resolve(&fs, "/a/b/c").unwrap(), &b".."[..])));
    assert_eq!(p("/"), Ok((ROOT, &b"."[..])));
    assert_eq!(p(""), Err(ENOENT));
    assert_eq!(p("/a/file/x"), Err(ENOTDIR));
    assert_eq!(p("/missing/x"), Err(ENOENT));
    let long = "y".repeat(300);
    assert_eq!(fs.resolve_parent(b, long.as_bytes()), Err(ENAMETOOLONG));
}

#[test]
fn path_of_directories() {
    let mut fs = tree();
    let c = resolve(&fs, "/a/b/c").unwrap();
    assert_eq!(fs.path_of(ROOT).unwrap(), b"/");
    assert_eq!(fs.path_of(c).unwrap(), b"/a/b/c");
    let a = resolve(&fs, "/a").unwrap();
    fs.rename(a, b"b", ROOT, b"moved", NOW).unwrap();
    assert_eq!(fs.path_of(c).unwrap(), b"/moved/c");
    assert_eq!(fs.path_of(resolve(&fs, "/a/file").unwrap()), Err(ENOTDIR));
    let moved = resolve(&fs, "/moved").unwrap();
    fs.open_ref(c);
    fs.rmdir(moved, b"c", NOW).unwrap();
    assert_eq!(fs.path_of(c), Err(ENOENT));
    assert_eq!(fs.entries(c, 0).count(), 0, "a removed directory lists nothing");
    assert_eq!(fs.lookup(c, b".."), Err(ENOENT));
    assert_eq!(fs.create(c, b"x", 0o644, NOW), Err(ENOENT));
    fs.close_ref(c);
    assert!(!fs.exists(c));
}

// ---------------------------------------------------------------------
// Files.

/// The version a copy of a file's bytes is checked against: it moves with
/// every change of the bytes and with nothing else, and an inode number
/// used again does not bring an old version back.
#[test]
fn a_files_content_version_changes_with_its_bytes_only() {
    let mut fs = Fs::new();
    let f = fs.create(ROOT, b"f", 0o644, NOW).unwrap();
    let created = fs.content_version(f).unwrap();
    fs.write(f, 0, b"hello", NOW).unwrap();
    let written = fs.content_version(f).unwrap();
    assert_ne!(written, created);
    let mut buf = [0; 8];
    fs.read(f, 0, &mut buf).unwrap();
    fs.chmod(f, 0o600, LATER).unwrap();
    assert_eq!(fs.content_version(f), Ok(written), "reads and metadata leave it");
    fs.truncate(f, 2, NOW).unwrap();
    let truncated = fs.content_version(f).unwrap();
    assert_ne!(truncated, written);

    fs.unlink(ROOT, b"f", NOW).unwrap();
    let g = fs.create(ROOT, b"g", 0o644, NOW).unwrap();
    assert_eq!(g, f, "the number is used again");
    assert!(![created, written, truncated].contains(&fs.content_version(g).unwrap()));
    assert_eq!(fs.content_version(ROOT), Err(EISDIR));
}

#[test]
fn writes_reads_holes_and_truncation() {
    let mut fs = Fs::new();
    let f = fs.create(ROOT, b"f", 0o644, NOW).unwrap();
    assert_eq!(fs.create(ROOT, b"f", 0o644, NOW), Err(EEXIST));
    assert_eq!(fs.write(f, 0, b"hello", LATER), Ok(5));
    assert_eq!(fs.stat(f).mtime, LATER);
    let mut buf = [0xaa; 16];
    assert_eq!(fs.read(f, 0, &mut buf), Ok(5));
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(fs.read(f, 5, &mut buf), Ok(0));
    assert_eq!(fs.read(f, u64::MAX, &mut buf), Ok(0));

    // A write far out leaves a hole that reads as zeros and costs nothing.
    let far = 5 * 4096 + 100;
    assert_eq!(fs.write(f, far, b"end", NOW), Ok(3));
    assert_eq!(fs.stat(f).size, far + 3);
    assert_eq!(fs.stat(f).blocks, 16, "two pages");
    assert!(fs.page(f, 2).is_none());
    let all = read_all(&fs, f);
    assert_eq!(&all[..5], b"hello");
    assert!(all[5..far as usize].iter().all(|&byte| byte == 0));
    assert_eq!(&all[far as usize..], b"end");

    // Shrinking frees pages and zeroes what was past the new end, so
    // growing again shows zeros.
    fs.truncate(f, 3, NOW).unwrap();
    assert_eq!(fs.stat(f).blocks, 8);
    fs.truncate(f, 5, NOW).unwrap();
    assert_eq!(read_all(&fs, f), b"hel\0\0");
    assert_eq!(fs.page(f, 0).unwrap()[..6], *b"hel\0\0\0");
    fs.truncate(f, 0, NOW).unwrap();
    assert_eq!(fs.stat(f).blocks, 0);
    assert_eq!(fs.page(f, 0), None);
    fs.truncate(f, 1 << 20, NOW).unwrap();
    assert_eq!((fs.stat(f).size, fs.stat(f).blocks), (1 << 20, 0));
    assert!(read_all(&fs, f).iter().all(|&byte| byte == 0));

    // Shrinking to a point past the last page that exists leaves that
    // page alone.
    let g = fs.create(ROOT, b"g", 0o644, NOW).unwrap();
    fs.write(g, 0, &[7; 4096], NOW).unwrap();
    fs.truncate(g, 10_000, NOW).unwrap();
    fs.truncate(g, 6000, NOW).unwrap();
    assert!(read_all(&fs, g)[..4096].iter().all(|&byte| byte == 7));

    // The size cap.
    let cap = fs::MAX_FILE_SIZE;
    assert_eq!(fs.truncate(f, cap + 1, NOW), Err(EFBIG));
    assert_eq!(fs.write(f, cap, b"x", NOW), Err(EFBIG));
    assert_eq!(fs.write(f, u64::MAX - 1, b"xyz", NOW), Err(EFBIG));
    assert_eq!(fs.write(f, cap - 2, b"xyz", NOW), Ok(2));
    assert_eq!(fs.stat(f).size, cap);
    assert_eq!(fs.read(f, cap - 2, &mut buf), Ok(2));
    assert_eq!(fs.write(f, 0, b"", NOW), Ok(0));

    // Other kinds.
    let dev = resolve(&fs, "/dev").unwrap();
    assert_eq!(fs.read(dev, 0, &mut buf), Err(EISDIR));
    assert_eq!(fs.write(dev, 0, b"x", NOW), Err(EISDIR));
    assert_eq!(fs.truncate(dev, 0, NOW), Err(EISDIR));
    let null = resolve(&fs, "/dev/null").unwrap();
    assert_eq!(fs.read(null, 0, &mut buf), Ok(0));
    assert_eq!(fs.write(null, 0, b"gone", NOW), Ok(4));
    let link = fs.symlink(ROOT, b"l", b"f", NOW).unwrap();
    assert_eq!(fs.readlink(link), Ok(&b"f"[..]));
    assert_eq!(fs.readlink(f), Err(EINVAL));
    assert_eq!(fs.stat(link).size, 1);
    assert_eq!(fs.read(9999, 0, &mut buf), Err(EBADF));
    assert_eq!(fs.write(9999, 0, b"x", NOW), Err(EBADF));
    assert_eq!(fs.stat(9999), fs::Stat::default());
}

#[test]
fn attributes() {
    let mut fs = Fs::new();
    let f = fs.create(ROOT, b"f", 0o4755, NOW).unwrap();
    assert_eq!(fs.stat(f).mode, 0o104_755);
    fs.chmod(f, 0o170_600, LATER).unwrap();
    assert_eq!(fs.stat(f).mode, 0o100_600, "type bits stay");
    assert_eq!(fs.stat(f).ctime, LATER);
    fs.chown(f, Some(5), None, NOW).unwrap();
    assert_eq!((fs.stat(f).uid, fs.stat(f).gid), (5, 0));
    fs.set_times(f, Some((1, 2)), None, NOW).unwrap();
    assert_eq!((fs.stat(f).atime, fs.stat(f).mtime), ((1, 2), NOW));
    let d = fs.mkdir(ROOT, b"d", 0o2775, NOW).unwrap();
    assert_eq!(fs.stat(d).mode, 0o042_775);
    assert_eq!(fs.chmod(12345, 0, NOW), Err(EBADF));
    // A new entry touches its directory.
    fs.create(d, b"x", 0o644, LATER).unwrap();
    assert_eq!(fs.stat(d).mtime, LATER);
}

// ---------------------------------------------------------------------
// Names: links, removal, renames.

#[test]
fn hard_links_and_unlink() {
    let mut fs = Fs::new();
    let f = fs.create(ROOT, b"f", 0o644, NOW).unwrap();
    fs.write(f, 0, b"shared", NOW).unwrap();
    fs.link(ROOT, b"g", f, NOW).unwrap();
    assert_eq!(fs.stat(f).nlink, 2);
    assert_eq!(fs.link(ROOT, b"g", f, NOW), Err(EEXIST));
    let dev = resolve(&fs, "/dev").unwrap();
    assert_eq!(fs.link(ROOT, b"dev2", dev, NOW), Err(EPERM));
    fs.unlink(ROOT, b"f", NOW).unwrap();
    assert_eq!(fs.lookup(ROOT, b"f"), Err(ENOENT));
    assert_eq!(read_all(&fs, resolve(&fs, "g").unwrap()), b"shared");
    assert_eq!(fs.stat(f).nlink, 1);
    assert_eq!(fs.unlink(ROOT, b"dev", NOW), Err(EISDIR));
    assert_eq!(fs.unlink(ROOT, b".", NOW), Err(EISDIR));
    assert_eq!(fs.unlink(ROOT, b"missing", NOW), Err(ENOENT));
    fs.unlink(ROOT, b"g", NOW).unwrap();
    assert!(!fs.exists(f));
}

#[test]
fn an_unlinked_open_file_lives_until_closed() {
    let mut fs = Fs::new();
    let f = fs.create(ROOT, b"f", 0o644, NOW).unwrap();
    fs.write(f, 0, b"still here", NOW).unwrap();
    fs.open_ref(f);
    fs.open_ref(f);
    fs.unlink(ROOT, b"f", NOW).unwrap();
    assert_eq!(fs.stat(f).nlink, 0);
    assert_eq!(read_all(&fs, f), b"still here");
    assert_eq!(fs.write(f, 10, b"!", NOW), Ok(1));
    assert_eq!(fs.link(ROOT, b"back", f, NOW), Err(ENOENT));
    // A new file does not get its number while it lives.
    let other = fs.create(ROOT, b"other", 0o644, NOW).unwrap();
    assert_ne!(other, f);
    fs.close_ref(f);
    assert!(fs.exists(f));
    fs.close_ref(f);
    assert!(!fs.exists(f));
    assert_eq!(fs.read(f, 0, &mut [0; 4]), Err(EBADF));
    // Closing what is gone, or too often, is harmless.
    fs.close_ref(f);
    fs.close_ref(other);
    assert!(fs.exists(other));
}

#[test]
fn directories_and_rmdir() {
    let mut fs = Fs::new();
    let d = fs.mkdir(ROOT, b"d", 0o755, NOW).unwrap();
    assert_eq!(fs.stat(ROOT).nlink, 5);
    assert_eq!(fs.mkdir(ROOT, b"d", 0o755, NOW), Err(EEXIST));
    assert_eq!(fs.mkdir(ROOT, b".", 0o755, NOW), Err(EEXIST));
    assert_eq!(fs.mkdir(ROOT, b"..", 0o755, NOW), Err(EEXIST));
    assert_eq!(fs.mkdir(ROOT, &[b'n'; 256], 0o755, NOW), Err(ENAMETOOLONG));
    let e = fs.mkdir(d, b"e", 0o755, NOW).unwrap();
    assert_eq!(fs.stat(d).nlink, 3);
    assert_eq!(fs.rmdir(ROOT, b"d", NOW), Err(ENOTEMPTY));
    assert_eq!(fs.rmdir(d, b".", NOW), Err(EINVAL));
    assert_eq!(fs.rmdir(e, b"..", NOW), Err(ENOTEMPTY));
    assert_eq!(fs.rmdir(ROOT, b"..", NOW), Err(EBUSY));
    let f = fs.create(d, b"f", 0o644, NOW).unwrap();
    assert_eq!(fs.rmdir(d, b"f", NOW), Err(ENOTDIR));
    fs.unlink(d, b"f", NOW).unwrap();
    assert!(!fs.exists(f));
    fs.rmdir(d, b"e", LATER).unwrap();
    assert!(!fs.exists(e));
    assert_eq!((fs.stat(d).nlink, fs.stat(d).mtime), (2, LATER));
    fs.rmdir(ROOT, b"d", NOW).unwrap();
    assert_eq!(fs.stat(ROOT).nlink, 4);
    assert_eq!(fs.lookup(ROOT, b"d"), Err(ENOENT));
    assert_eq!(fs.create(f, b"x", 0o644, NOW), Err(EBADF), "a freed inode");
    let g = fs.create(ROOT, b"g", 0o644, NOW).unwrap();
    assert_eq!(fs.create(g, b"x", 0o644, NOW), Err(ENOTDIR));
}

#[test]
fn renames_follow_posix() {
    let mut fs = tree();
    let a = resolve(&fs, "/a").unwrap();
    let b = resolve(&fs, "/a/b").unwrap();
    let c = resolve(&fs, "/a/b/c").unwrap();
    let file = resolve(&fs, "/a/file").unwrap();

    // A file over a file: the old one goes.
    let victim = fs.create(ROOT, b"victim", 0o644, NOW).unwrap();
    fs.rename(a, b"file", ROOT, b"victim", LATER).unwrap();
    assert_eq!(fs.lookup(ROOT, b"victim"), Ok(file));
    assert_eq!(fs.lookup(a, b"file"), Err(ENOENT));
    assert!(!fs.exists(victim));
    assert_eq!(fs.stat(a).mtime, LATER);
    // Two names of one inode: nothing happens.
    fs.link(ROOT, b"alias", file, NOW).unwrap();
    fs.rename(ROOT, b"alias", ROOT, b"victim", NOW).unwrap();
    assert_eq!(fs.lookup(ROOT, b"alias"), Ok(file));
    assert_eq!(fs.stat(file).nlink, 2);
    // Onto itself.
    fs.rename(ROOT, b"victim", ROOT, b"victim", NOW).unwrap();
    assert_eq!(fs.lookup(ROOT, b"victim"), Ok(file));

    // A directory over an empty directory, across parents.
    let empty = fs.mkdir(ROOT, b"empty", 0o755, NOW).unwrap();
    let root_links = fs.stat(ROOT).nlink;
    fs.rename(b, b"c", ROOT, b"empty", NOW).unwrap();
    assert_eq!(fs.lookup(ROOT, b"empty"), Ok(c));
    assert!(!fs.exists(empty));
    assert_eq!(fs.stat(ROOT).nlink, root_links);
    assert_eq!(fs.stat(b).nlink, 2);
    assert_eq!(fs.lookup(c, b".."), Ok(ROOT));
    // Over a non-empty one; kinds that do not match.
    fs.create(c, b"inside", 0o644, NOW).unwrap();
    let other = fs.mkdir(ROOT, b"other", 0o755, NOW).unwrap();
    assert_eq!(fs.rename(ROOT, b"other", ROOT, b"empty", NOW), Err(ENOTEMPTY));
    assert_eq!(fs.rename(ROOT, b"other", ROOT, b"victim", NOW), Err(ENOTDIR));
    assert_eq!(fs.rename(ROOT, b"victim", ROOT, b"other", NOW), Err(EISDIR));
    // Into itself or below itself.
    assert_eq!(fs.rename(ROOT, b"a", b, b"a", NOW), Err(EINVAL));
    assert_eq!(fs.rename(ROOT, b"a", a, b"a", NOW), Err(EINVAL));
    assert_eq!(fs.rename(ROOT, b".", ROOT, b"x", NOW), Err(EBUSY));
    assert_eq!(fs.rename(ROOT, b"x", ROOT, b"..", NOW), Err(EBUSY));
    assert_eq!(fs.rename(ROOT, b"missing", ROOT, b"x", NOW), Err(ENOENT));
    // A directory to a new name in the same parent keeps the link counts.
    let links = fs.stat(ROOT).nlink;
    fs.rename(ROOT, b"other", ROOT, b"renamed", NOW).unwrap();
    assert_eq!(fs.lookup(ROOT, b"renamed"), Ok(other));
    assert_eq!(fs.stat(ROOT).nlink, links);
    // Down into another directory.
    fs.rename(ROOT, b"renamed", b, b"down", NOW).unwrap();
    assert_eq!((fs.stat(ROOT).nlink, fs.stat(b).nlink), (links - 1, 3));
    assert_eq!(fs.path_of(other).unwrap(), b"/a/b/down");
    // A directory over an empty one in the same parent.
    fs.mkdir(b, b"spare", 0o755, NOW).unwrap();
    fs.rename(b, b"down", b, b"spare", NOW).unwrap();
    assert_eq!(fs.stat(b).nlink, 3);
    assert_eq!(names(&fs, b), [".", "..", "dangling", "spare"]);
    // A symbolic link moves as itself.
    fs.rename(ROOT, b"abs", a, b"abs2", NOW).unwrap();
    assert_eq!(fs.resolve(a, b"abs2", true), Ok(b));
}

#[test]
fn entry_cookies_survive_changes() {
    let mut fs = Fs::new();
    let d = fs.mkdir(ROOT, b"d", 0o755, NOW).unwrap();
    for n in 0..10 {
        fs.create(d, format!("f{n}").as_bytes(), 0o644, NOW).unwrap();
    }
    let first: Vec<(usize, String)> = fs
        .entries(d, 0)
        .map(|(cookie, entry)| (cookie, String::from_utf8_lossy(entry.name).into()))
        .collect();
    assert_eq!(first.len(), 12);
    assert_eq!(first[0].1, ".");
    assert_eq!(first[1].1, "..");
    let (dot, dotdot) = (fs.entries(d, 0).next().unwrap().1, fs.entries(d, 1).next().unwrap().1);
    assert_eq!((dot.ino, dot.kind, dotdot.ino), (d, Kind::Directory, ROOT));
    // Stop after f3, remove f2 (seen) and f5 (not yet), add f10, resume.
    let resume = first[5].0;
    assert_eq!(first[5].1, "f3");
    fs.unlink(d, b"f2", NOW).unwrap();
    fs.unlink(d, b"f5", NOW).unwrap();
    fs.create(d, b"f10", 0o644, NOW).unwrap();
    let rest: Vec<String> =
        fs.entries(d, resume).map(|(_, entry)| String::from_utf8_lossy(entry.name).into()).collect();
    assert_eq!(rest, ["f4", "f6", "f7", "f8", "f9", "f10"]);
    // Past the end, and for what is not a directory: nothing.
    let end = fs.entries(d, 0).last().unwrap().0;
    assert_eq!(fs.entries(d, end).count(), 0);
    assert_eq!(fs.entries(d, usize::MAX).count(), 0);
    let f = fs.lookup(d, b"f1").unwrap();
    assert_eq!(fs.entries(f, 0).count(), 0);
    assert_eq!(fs.entries(4321, 0).count(), 0);
    // Kinds.
    fs.symlink(d, b"s", b"f1", NOW).unwrap();
    fs.mkdir(d, b"sub", 0o755, NOW).unwrap();
    let kinds: Vec<Kind> = fs.entries(d, end).map(|(_, entry)| entry.kind).collect();
    assert_eq!(kinds, [Kind::Symlink, Kind::Directory]);
    let dev = resolve(&fs, "/dev").unwrap();
    assert!(fs.entries(dev, 2).all(|(_, entry)| entry.kind == Kind::CharDevice));
}

#[test]
fn inode_numbers_are_reused_but_never_zero() {
    let mut fs = Fs::new();
    let mut seen = Vec::new();
    for round in 0..3 {
        let f = fs.create(ROOT, b"f", 0o644, NOW).unwrap();
        assert_ne!(f, 0);
        if round > 0 {
            assert!(seen.contains(&f), "reused");
        }
        seen.push(f);
        fs.unlink(ROOT, b"f", NOW).unwrap();
    }
    assert!(fs.entries(ROOT, 0).all(|(_, entry)| entry.ino != 0));
}

// ---------------------------------------------------------------------
// Random operations against the invariants.

/// Checks what must always hold, walking the tree from the root: every
/// directory is reached once, lists `.` and `..` first, has 2 plus its
/// subdirectories as its link count; every other inode's link count is its
/// number of names; nothing is alive that no name or open reference holds;
/// the pages add up. Returns the directories and the other inodes found.
fn check_invariants(fs: &Fs, held: &[Ino]) -> (Vec<Ino>, Vec<Ino>) {
    use std::collections::{BTreeMap, BTreeSet};
    let mut links: BTreeMap<Ino, u32> = BTreeMap::new();
    let mut pending = vec![(ROOT, ROOT)];
    let mut dirs = Vec::new();
    while let Some((dir, parent)) = pending.pop() {
        assert!(!dirs.contains(&dir), "directory {dir} reached twice");
        dirs.push(dir);
        let mut entries = fs.entries(dir, 0);
        let (_, dot) = entries.next().expect(".");
        let (_, dotdot) = entries.next().expect("..");
        assert_eq!((dot.name, dot.ino, dotdot.name, dotdot.ino), (&b"."[..], dir, &b".."[..], parent));
        let mut names = BTreeSet::new();
        let mut subdirs = 0;
        let mut last_cookie = 2;
        for (cookie, entry) in entries {
            assert!(cookie > last_cookie, "cookies increase");
            last_cookie = cookie;
            assert!(names.insert(entry.name.to_vec()), "a name twice");
            assert_eq!(fs.lookup(dir, entry.name), Ok(entry.ino));
            assert!(fs.exists(entry.ino));
            assert_eq!(entry.kind, fs.kind(entry.ino));
            if entry.kind == Kind::Directory {
                subdirs += 1;
                pending.push((entry.ino, dir));
            } else {
                *links.entry(entry.ino).or_default() += 1;
            }
        }
        assert_eq!(fs.stat(dir).nlink, 2 + subdirs, "directory {dir}");
    }
    for (&ino, &count) in &links {
        assert_eq!(fs.stat(ino).nlink, count, "inode {ino}");
    }
    let mut live: BTreeSet<Ino> = dirs.iter().chain(links.keys()).copied().collect();
    for &ino in held {
        assert!(fs.exists(ino), "held inode {ino} was freed");
        live.insert(ino);
    }
    let usage = fs.usage();
    assert_eq!(usage.inodes, live.len() as u64, "no leaked or missing inodes");
    let pages: u64 =
        live.iter().filter(|&&ino| fs.kind(ino) == Kind::Regular).map(|&ino| fs.stat(ino).blocks / 8).sum();
    assert_eq!(usage.pages, pages);
    (dirs, links.into_keys().collect())
}

#[test]
fn random_operations_keep_the_invariants() {
    use std::collections::BTreeMap;
    let mut rng = Rng(0xf11e_0000_e000_1234);
    let mut fs = Fs::new();
    let mut held: Vec<Ino> = Vec::new();
    // What each regular file should hold.
    let mut contents: BTreeMap<Ino, Vec<u8>> = BTreeMap::new();
    let names: [&[u8]; 6] = [b"a", b"b", b"c", b"d", b"e", b".."];
    let targets: [&[u8]; 5] = [b"a", b"../b", b"/a/b", b"c/", b"/"];
    let (mut dirs, mut others) = check_invariants(&fs, &held);
    let mut successes = 0;
    for step in 0..10_000 {
        let now = (step, 0);
        let dir = dirs[rng.below(dirs.len())];
        let name = names[rng.below(names.len())];
        let any = if rng.below(2) == 0 || others.is_empty() {
            dirs[rng.below(dirs.len())]
        } else {
            others[rng.below(others.len())]
        };
        let result: fs::Result<()> = match rng.below(13) {
            0 | 1 => fs.create(dir, name, 0o644, now).map(|ino| {
                contents.insert(ino, Vec::new());
            }),
            2 => fs.mkdir(dir, name, 0o755, now).map(|ino| {
                contents.remove(&ino);
            }),
            3 => fs.symlink(dir, name, targets[rng.below(targets.len())], now).map(|ino| {
                contents.remove(&ino);
            }),
            4 => fs.link(dir, name, any, now),
            5 => fs.unlink(dir, name, now),
            6 => fs.rmdir(dir, name, now),
            7 => {
                let to_dir = dirs[rng.below(dirs.len())];
                fs.rename(dir, name, to_dir, names[rng.below(names.len())], now)
            }
            8 => {
                let offset = rng.below(3 * 4096) as u64;
                let length = rng.below(6000);
                let data = rng.bytes(length);
                fs.write(any, offset, &data, now).map(|written| {
                    assert_eq!(written, data.len());
                    if let Some(model) = contents.get_mut(&any) {
                        let end = offset as usize + written;
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[offset as usize..end].copy_from_slice(&data);
                    }
                })
            }
            9 => {
                let size = rng.below(4 * 4096);
                fs.truncate(any, size as u64, now).map(|()| {
                    if let Some(model) = contents.get_mut(&any) {
                        model.resize(size, 0);
                    }
                })
            }
            10 => {
                fs.open_ref(any);
                held.push(any);
                Ok(())
            }
            11 if !held.is_empty() => {
                let ino = held.swap_remove(rng.below(held.len()));
                fs.close_ref(ino);
                Ok(())
            }
            _ => fs.resolve(dir, targets[rng.below(targets.len())], rng.below(2) == 0).map(|_| ()),
        };
        match result {
            Ok(()) => successes += 1,
            Err(error) => assert!(
                [ENOENT, EEXIST, ENOTDIR, EISDIR, EINVAL, ENOTEMPTY, EPERM, EBUSY, ELOOP].contains(&error),
                "step {step}: errno {error}"
            ),
        }
        (dirs, others) = check_invariants(&fs, &held);
        contents.retain(|&ino, _| fs.exists(ino) && fs.kind(ino) == Kind::Regular);
        if step % 100 == 0 {
            for (&ino, model) in &contents {
                let actual = read_all(&fs, ino);
                if actual != *model {
                    let first = actual.iter().zip(model.iter()).position(|(a, b)| a != b);
                    panic!(
                        "step {step}: inode {ino}: {} vs model {} bytes, first difference {first:?}",
                        actual.len(),
                        model.len()
                    );
                }
            }
        }
    }
    assert!(successes > 2500, "{successes} operations succeeded");
    for ino in held.drain(..) {
        fs.close_ref(ino);
    }
    check_invariants(&fs, &held);
}
