//! # Unpacking the root filesystem: cpio "newc" archives
//!
//! The root filesystem arrives as one cpio archive in the "newc" format
//! (what `cpio -H newc` and Linux's initramfs use), and is unpacked into
//! the in-memory filesystem (`fs.rs`) at boot. The format is simple:
//!
//! - each entry is a 110-byte header of ASCII: the magic `070701` (or
//!   `070702`, which adds a checksum we do not check) and thirteen 8-digit
//!   hex numbers: inode, mode, uid, gid, link count, mtime, data size,
//!   the device's and the node's major and minor numbers, the name's size
//!   (with its NUL) and the checksum;
//! - then the name, NUL-terminated, padded so header and name end on a
//!   4-byte boundary; then the data, padded to 4 bytes;
//! - the entry named `TRAILER!!!` ends the archive. Archives may be
//!   concatenated (with zero padding between), as Linux accepts; what
//!   follows the last trailer and is not another archive is ignored.
//!
//! Directories, regular files, symbolic links (the target is the data) and
//! character devices are made; other types (block devices, fifos,
//! sockets) are skipped and counted. Hard links: regular files that share
//! a (device, inode) pair and have a link count above one are one inode;
//! the archivers put the data with the last of them and size 0 on the
//! others. Directories whose parents are missing get them made (mode
//! 0755); a directory's own entry later sets its attributes. Modes,
//! owners and modification times are kept, a directory's once all of the
//! archive is in (its entries would change it).
//!
//! A malformed archive (truncated, bad magic, bad hex, an empty name, a
//! size that runs past the end, a `..` in a name) is `EINVAL`, never a
//! panic; what was unpacked before the bad entry stays. An entry that
//! cannot be made where the archive says (a name whose parent is a file)
//! is skipped and counted; running out of memory stops with `ENOSPC`.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::fs::errno::{EINVAL, ENOENT, ENOMEM, ENOSPC};
use super::fs::{Fs, Ino, Kind, ROOT, Result, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, Time, makedev};

/// The size of a newc header.
pub const HEADER_SIZE: usize = 110;
/// The name that ends an archive.
pub const TRAILER: &[u8] = b"TRAILER!!!";

/// One parsed header with its name and data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// Without its NUL.
    pub name: &'a [u8],
    pub data: &'a [u8],
}

/// What `unpack` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries made (or, for a directory that was there, updated).
    pub made: usize,
    /// Entries of a type the filesystem does not have, or that could not
    /// be put where the archive says.
    pub skipped: usize,
}

/// Walks an archive entry by entry; `next` is `Ok(None)` after the last
/// trailer.
pub struct Reader<'a> {
    archive: &'a [u8],
    offset: usize,
}

fn round_up_4(value: usize) -> Option<usize> {
    value.checked_add(3).map(|value| value & !3)
}

fn hex_field(header: &[u8], index: usize) -> Result<u32> {
    let start = 6 + index * 8;
    let digits = header.get(start..start + 8).ok_or(EINVAL)?;
    let mut value: u32 = 0;
    for &digit in digits {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            b'A'..=b'F' => digit - b'A' + 10,
            _ => return Err(EINVAL),
        };
        value = (value << 4) | u32::from(nibble);
    }
    Ok(value)
}

impl<'a> Reader<'a> {
    pub fn new(archive: &'a [u8]) -> Reader<'a> {
        Reader { archive, offset: 0 }
    }

    /// The next entry, trailers included; `Ok(None)` at the end, which is
    /// after a trailer followed by nothing but zeros (or by nothing).
    pub fn next_entry(&mut self) -> Result<Option<Entry<'a>>> {
        let archive = self.archive;
        let header = archive.get(self.offset..).ok_or(EINVAL)?;
        if header.is_empty() {
            // An archive must end with its trailer: running out first means
            // it was cut short.
            return Err(EINVAL);
        }
        let header = header.get(..HEADER_SIZE).ok_or(EINVAL)?;
        if &header[..6] != b"070701" && &header[..6] != b"070702" {
            return Err(EINVAL);
        }
        let field = |index| hex_field(header, index);
        let size = field(6)? as usize;
        let name_size = field(11)? as usize;
        if name_size == 0 {
            return Err(EINVAL);
        }
        let name_start = self.offset.checked_add(HEADER_SIZE).ok_or(EINVAL)?;
        let name_end = name_start.checked_add(name_size).ok_or(EINVAL)?;
        let name = archive.get(name_start..name_end).ok_or(EINVAL)?;
        let (nul, name) = name.split_last().ok_or(EINVAL)?;
        if *nul != 0 || name.contains(&0) {
            return Err(EINVAL);
        }
        let data_start = round_up_4(name_end).ok_or(EINVAL)?;
        let data_end = data_start.checked_add(size).ok_or(EINVAL)?;
        let data = archive.get(data_start..data_end).ok_or(EINVAL)?;
        let next = round_up_4(data_end).ok_or(EINVAL)?;
        // The last entry's padding may be missing at the very end.
        self.offset = next.min(archive.len());
        Ok(Some(Entry {
            ino: field(0)?,
            mode: field(1)?,
            uid: field(2)?,
            gid: field(3)?,
            nlink: field(4)?,
            mtime: field(5)?,
            dev_major: field(7)?,
            dev_minor: field(8)?,
            rdev_major: field(9)?,
            rdev_minor: field(10)?,
            name,
            data,
        }))
    }

    /// After a trailer: skips the zero padding and says whether another
    /// archive follows. Anything else after a trailer is not ours (a boot
    /// loader may round the module up) and is ignored.
    fn another_archive_follows(&mut self) -> bool {
        let rest = self.archive.get(self.offset..).unwrap_or(&[]);
        let zeros = rest.iter().take_while(|&&byte| byte == 0).count();
        self.offset += zeros;
        rest.get(zeros..).is_some_and(|next| next.starts_with(b"07070"))
    }
}

/// An archive's name, made relative to the root: leading `/` and `./`
/// dropped, empty and `.` components dropped. `None` for a name with `..`.
/// The root itself is the empty list.
fn components(name: &[u8]) -> Option<Vec<&[u8]>> {
    let mut parts = Vec::new();
    for part in name.split(|&byte| byte == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            part => parts.push(part),
        }
    }
    Some(parts)
}

/// Errors that mean the filesystem is full, which stop the unpacking; any
/// other error from the filesystem is about one entry, which is skipped.
fn is_out_of_memory(error: i64) -> bool {
    error == ENOSPC || error == ENOMEM || error == super::fs::errno::EFBIG
}

struct Unpacker<'f> {
    fs: &'f mut Fs,
    now: Time,
    /// Regular files with more than one link, by (device, inode) in this
    /// archive.
    links: BTreeMap<(u32, u32, u32), Ino>,
    /// Directory modification times, applied at the end.
    directory_times: Vec<(Ino, Time)>,
    unpacked: Unpacked,
}

/// Unpacks `archive` into `fs`.
pub fn unpack(fs: &mut Fs, archive: &[u8], now: Time) -> Result<Unpacked> {
    let mut unpacker = Unpacker {
        fs,
        now,
        links: BTreeMap::new(),
        directory_times: Vec::new(),
        unpacked: Unpacked::default(),
    };
    let result = unpacker.run(archive);
    // Even after an error, what was made keeps the times it came with.
    for (ino, mtime) in core::mem::take(&mut unpacker.directory_times) {
        let _ = unpacker.fs.set_times(ino, Some(mtime), Some(mtime), now);
    }
    result.map(|()| unpacker.unpacked)
}

impl Unpacker<'_> {
    fn run(&mut self, archive: &[u8]) -> Result<()> {
        let mut reader = Reader::new(archive);
        loop {
            let Some(entry) = reader.next_entry()? else {
                return Ok(());
            };
            if entry.name == TRAILER {
                self.links.clear();
                if !reader.another_archive_follows() {
                    return Ok(());
                }
                continue;
            }
            match self.make(&entry) {
                Ok(true) => self.unpacked.made += 1,
                Ok(false) => self.unpacked.skipped += 1,
                Err(error) if is_out_of_memory(error) => return Err(error),
                Err(EINVAL) => return Err(EINVAL),
                Err(_) => self.unpacked.skipped += 1,
            }
        }
    }

    /// Makes one entry; `Ok(false)` for a type that is skipped.
    fn make(&mut self, entry: &Entry) -> Result<bool> {
        let parts = components(entry.name).ok_or(EINVAL)?;
        let kind = match entry.mode & S_IFMT {
            S_IFDIR => Kind::Directory,
            S_IFREG => Kind::Regular,
            S_IFLNK => Kind::Symlink,
            S_IFCHR => Kind::CharDevice,
            _ => return Ok(false),
        };
        let mtime = (i64::from(entry.mtime), 0);
        let Some((name, parents)) = parts.split_last() else {
            // The root's own entry (".").
            if kind != Kind::Directory {
                return Ok(false);
            }
            self.set_attributes(ROOT, entry)?;
            self.directory_times.push((ROOT, mtime));
            return Ok(true);
        };
        let dir = self.parent_directory(parents)?;
        let existing = self.fs.lookup(dir, name).ok();
        if let Some(existing) = existing {
            if kind == Kind::Directory && self.fs.kind(existing) == Kind::Directory {
                self.set_attributes(existing, entry)?;
                self.directory_times.push((existing, mtime));
                return Ok(true);
            }
            let linking_here = kind == Kind::Regular && self.links.get(&link_key(entry)) == Some(&existing);
            if !linking_here {
                self.remove(dir, name, existing)?;
            }
        }
        let now = self.now;
        let ino = match kind {
            Kind::Directory => {
                let ino = self.fs.mkdir(dir, name, entry.mode, now)?;
                self.directory_times.push((ino, mtime));
                ino
            }
            Kind::Regular => self.make_regular(dir, name, entry)?,
            Kind::Symlink => {
                // The target is a C string to the archivers: it ends at a NUL.
                let end = entry.data.iter().position(|&byte| byte == 0).unwrap_or(entry.data.len());
                self.fs.symlink(dir, name, &entry.data[..end], now)?
            }
            Kind::CharDevice => {
                let rdev = makedev(entry.rdev_major, entry.rdev_minor);
                self.fs.mknod_char(dir, name, entry.mode, rdev, now)?
            }
        };
        self.set_attributes(ino, entry)?;
        if kind != Kind::Directory {
            self.fs.set_times(ino, Some(mtime), Some(mtime), now)?;
        }
        Ok(true)
    }

    /// A regular file, or one more name for a file with hard links; the
    /// data goes in either way (hard links carry it on their last name).
    fn make_regular(&mut self, dir: Ino, name: &[u8], entry: &Entry) -> Result<Ino> {
        let now = self.now;
        let key = link_key(entry);
        let linked = match self.links.get(&key) {
            Some(&ino) if entry.nlink > 1 && self.fs.exists(ino) => {
                if self.fs.lookup(dir, name) != Ok(ino) {
                    self.fs.link(dir, name, ino, now)?;
                }
                Some(ino)
            }
            _ => None,
        };
        let ino = match linked {
            Some(ino) => ino,
            None => {
                let ino = self.fs.create(dir, name, entry.mode, now)?;
                if entry.nlink > 1 {
                    self.links.insert(key, ino);
                }
                ino
            }
        };
        if !entry.data.is_empty() || linked.is_none() {
            self.fs.truncate(ino, entry.data.len() as u64, now)?;
            let mut offset = 0;
            while offset < entry.data.len() {
                let data = entry.data.get(offset..).unwrap_or(&[]);
                offset += self.fs.write(ino, offset as u64, data, now)?;
            }
        }
        Ok(ino)
    }

    fn set_attributes(&mut self, ino: Ino, entry: &Entry) -> Result<()> {
        let now = self.now;
        self.fs.chmod(ino, entry.mode, now)?;
        self.fs.chown(ino, Some(entry.uid), Some(entry.gid), now)
    }

    /// Clears the way for an entry whose name is taken by something of
    /// another type (or by another file): a file is unlinked, an empty
    /// directory removed; a directory with entries stays, and the entry is
    /// skipped.
    fn remove(&mut self, dir: Ino, name: &[u8], existing: Ino) -> Result<()> {
        if self.fs.kind(existing) == Kind::Directory {
            self.fs.rmdir(dir, name, self.now)?;
        } else {
            self.fs.unlink(dir, name, self.now)?;
        }
        if !self.fs.exists(existing) {
            // Its number may come back for another file, which must not
            // get this one's links or time.
            self.links.retain(|_, ino| *ino != existing);
            self.directory_times.retain(|(ino, _)| *ino != existing);
        }
        Ok(())
    }

    /// The directory named by `parents` (from the root), made as needed
    /// with mode 0755. Symbolic links on the way are followed, as Linux's
    /// unpacker follows them.
    fn parent_directory(&mut self, parents: &[&[u8]]) -> Result<Ino> {
        let mut dir = ROOT;
        for &part in parents {
            dir = match self.fs.resolve(dir, part, true) {
                Ok(ino) if self.fs.kind(ino) == Kind::Directory => ino,
                Ok(_) => return Err(super::fs::errno::ENOTDIR),
                Err(ENOENT) if self.fs.lookup(dir, part).is_err() => {
                    self.fs.mkdir(dir, part, 0o755, self.now)?
                }
                Err(error) => return Err(error),
            };
        }
        Ok(dir)
    }
}

fn link_key(entry: &Entry) -> (u32, u32, u32) {
    (entry.dev_major, entry.dev_minor, entry.ino)
}
