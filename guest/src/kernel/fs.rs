//! # The in-memory filesystem
//!
//! The Linux programs the guest kernel runs expect a filesystem: a root
//! with `/bin/sh`, `/dev/console`, a writable `/tmp`. There is no disk, so
//! everything lives in the kernel's heap, filled at boot from the cpio
//! archive the boot loader passed (`cpio.rs`), much as Linux fills its
//! initramfs. This file is that filesystem, and only that: pure data
//! structures on `core` and `alloc`, with no knowledge of processes, file
//! descriptors or devices. The Linux layer turns system calls into calls
//! here; the host tests (`guest/tests/fs.rs`) include this file as it is.
//!
//! The pieces:
//!
//! - **Inodes** live in a table indexed by their number, with a free list
//!   so numbers are reused. Slot 0 is never used: a directory entry with
//!   inode number 0 is one `readdir` skips.
//! - **Directories** map names to inode numbers. Each entry also has a
//!   *cookie*, handed out in increasing order and never reused in that
//!   directory, which is what `getdents64` resumes from: entries added or
//!   removed while a program reads a directory do not shift the others.
//!   Cookies 0 and 1 are `.` and `..`.
//! - **Regular files** are 4 KiB pages, each allocated on its own and
//!   fallibly, so a file of many MiB never needs contiguous heap and a
//!   full heap is `ENOSPC`, not an abort. A page that was never written is
//!   absent (a hole) and reads as zeros. Bytes past the end of a file are
//!   always zero in its pages, so growing it again shows zeros. (The
//!   directory maps' small tree nodes are the one allocation that is not
//!   fallible: `BTreeMap` has no `try_insert` on stable Rust.)
//! - **Links.** Hard links share one inode; an inode whose last name is
//!   gone lives on while something holds it open (`open_ref`), and its
//!   pages go with the last `close_ref`. A directory's link count is two
//!   plus its subdirectories, as on Linux.
//!
//! Errors are Linux's errno values, positive, so the Linux layer returns
//! their negation. No input panics: unknown inode numbers are `EBADF` (or
//! an empty answer where the signature has no error), offsets and sizes
//! are checked before any arithmetic.
//!
//! `cpio.rs` must be declared next to this file (the two are siblings
//! under one parent module): `Fs::unpack_cpio` is written there.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// An inode number.
pub type Ino = usize;

/// The root directory's inode number.
pub const ROOT: Ino = 1;

/// Seconds and nanoseconds since the epoch, as in Linux's `timespec`.
pub type Time = (i64, u32);

/// Every call's result: the error is a positive Linux errno.
pub type Result<T> = core::result::Result<T, i64>;

/// Linux's errno values (x86-64), positive.
pub mod errno {
    pub const EPERM: i64 = 1;
    pub const ENOENT: i64 = 2;
    pub const ESRCH: i64 = 3;
    pub const EINTR: i64 = 4;
    pub const EIO: i64 = 5;
    pub const ENXIO: i64 = 6;
    pub const E2BIG: i64 = 7;
    pub const ENOEXEC: i64 = 8;
    pub const EBADF: i64 = 9;
    pub const ECHILD: i64 = 10;
    pub const EAGAIN: i64 = 11;
    pub const ENOMEM: i64 = 12;
    pub const EACCES: i64 = 13;
    pub const EFAULT: i64 = 14;
    pub const ENOTBLK: i64 = 15;
    pub const EBUSY: i64 = 16;
    pub const EEXIST: i64 = 17;
    pub const EXDEV: i64 = 18;
    pub const ENODEV: i64 = 19;
    pub const ENOTDIR: i64 = 20;
    pub const EISDIR: i64 = 21;
    pub const EINVAL: i64 = 22;
    pub const ENFILE: i64 = 23;
    pub const EMFILE: i64 = 24;
    pub const ENOTTY: i64 = 25;
    pub const ETXTBSY: i64 = 26;
    pub const EFBIG: i64 = 27;
    pub const ENOSPC: i64 = 28;
    pub const ESPIPE: i64 = 29;
    pub const EROFS: i64 = 30;
    pub const EMLINK: i64 = 31;
    pub const EPIPE: i64 = 32;
    pub const EDOM: i64 = 33;
    pub const ERANGE: i64 = 34;
    pub const EDEADLK: i64 = 35;
    pub const ENAMETOOLONG: i64 = 36;
    pub const ENOLCK: i64 = 37;
    pub const ENOSYS: i64 = 38;
    pub const ENOTEMPTY: i64 = 39;
    pub const ELOOP: i64 = 40;
    pub const ENOMSG: i64 = 42;
    pub const ENODATA: i64 = 61;
    pub const ETIME: i64 = 62;
    pub const EOVERFLOW: i64 = 75;
    pub const EILSEQ: i64 = 84;
    pub const ENOTSOCK: i64 = 88;
    pub const EDESTADDRREQ: i64 = 89;
    pub const EMSGSIZE: i64 = 90;
    pub const EPROTOTYPE: i64 = 91;
    pub const ENOPROTOOPT: i64 = 92;
    pub const EPROTONOSUPPORT: i64 = 93;
    pub const EOPNOTSUPP: i64 = 95;
    pub const ENOTSUP: i64 = EOPNOTSUPP;
    pub const EAFNOSUPPORT: i64 = 97;
    pub const EADDRINUSE: i64 = 98;
    pub const ECONNREFUSED: i64 = 111;
    pub const ETIMEDOUT: i64 = 110;
}
use errno::*;

/// The size of a file page.
pub const PAGE_SIZE: usize = 4096;
/// The largest regular file: past it, `write` and `truncate` say `EFBIG`.
pub const MAX_FILE_SIZE: u64 = 1 << 30;
/// The longest name of one directory entry.
pub const NAME_MAX: usize = 255;
/// The longest path, counting the NUL a C string would end with.
pub const PATH_MAX: usize = 4096;
/// How many symbolic links one resolution may follow.
pub const MAX_SYMLINKS: u32 = 40;
/// The most links an inode may have (for a directory: subdirectories + 2).
pub const LINK_MAX: u32 = 65_000;

/// The type bits of a mode (`S_IFMT`) and the types this filesystem knows.
pub const S_IFMT: u32 = 0o170_000;
pub const S_IFSOCK: u32 = 0o140_000;
pub const S_IFLNK: u32 = 0o120_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFBLK: u32 = 0o060_000;
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFCHR: u32 = 0o020_000;
pub const S_IFIFO: u32 = 0o010_000;
/// The permission bits, with set-user-ID, set-group-ID and sticky.
pub const PERMISSIONS: u32 = 0o7777;

/// Linux's encoding of a device number (`makedev`) in `st_rdev`.
pub const fn makedev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (major as u64, minor as u64);
    ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
}

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Directory,
    Regular,
    Symlink,
    CharDevice,
}

impl Kind {
    /// The mode's type bits (`S_IFDIR`...).
    pub const fn type_bits(self) -> u32 {
        match self {
            Kind::Directory => S_IFDIR,
            Kind::Regular => S_IFREG,
            Kind::Symlink => S_IFLNK,
            Kind::CharDevice => S_IFCHR,
        }
    }

    /// The `d_type` of a `getdents64` record (`DT_DIR`...).
    pub const fn dirent_type(self) -> u8 {
        match self {
            Kind::Directory => 4,
            Kind::Regular => 8,
            Kind::Symlink => 10,
            Kind::CharDevice => 2,
        }
    }
}

/// What `stat` says about an inode, in the units of Linux's `struct stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub ino: Ino,
    /// The type bits (`S_IFMT`) and the permissions.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// For a device: its number, in `makedev`'s encoding.
    pub rdev: u64,
    pub size: u64,
    /// 512-byte blocks in use.
    pub blocks: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

/// One name in a directory, as `entries` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    pub name: &'a [u8],
    pub ino: Ino,
    pub kind: Kind,
}

/// What the filesystem holds (`Fs::usage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Live inodes, the root included.
    pub inodes: u64,
    /// File pages allocated.
    pub pages: u64,
}

/// A page of file data.
type Page = Box<[u8; PAGE_SIZE]>;

struct Inode {
    /// The permission bits only: the type is the body's.
    permissions: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    atime: Time,
    mtime: Time,
    ctime: Time,
    /// Open files (and anything else that keeps the inode alive after its
    /// last name is gone, such as a running program's image).
    open_refs: u32,
    /// Which bytes a regular file holds: see [`Fs::content_version`].
    version: u64,
    body: Body,
}

enum Body {
    Directory(Directory),
    Regular(FileData),
    Symlink(Vec<u8>),
    CharDevice(u64),
}

impl Body {
    fn kind(&self) -> Kind {
        match self {
            Body::Directory(_) => Kind::Directory,
            Body::Regular(_) => Kind::Regular,
            Body::Symlink(_) => Kind::Symlink,
            Body::CharDevice(_) => Kind::CharDevice,
        }
    }
}

/// A directory: its entries by cookie (the order `entries` lists them in)
/// and an index from name to cookie.
struct Directory {
    parent: Ino,
    by_cookie: BTreeMap<usize, (Vec<u8>, Ino)>,
    by_name: BTreeMap<Vec<u8>, usize>,
    next_cookie: usize,
}

/// The first cookie of a real entry: 0 and 1 are `.` and `..`.
const FIRST_COOKIE: usize = 2;

impl Directory {
    fn new(parent: Ino) -> Directory {
        Directory { parent, by_cookie: BTreeMap::new(), by_name: BTreeMap::new(), next_cookie: FIRST_COOKIE }
    }

    fn get(&self, name: &[u8]) -> Option<Ino> {
        let cookie = self.by_name.get(name)?;
        self.by_cookie.get(cookie).map(|(_, ino)| *ino)
    }

    fn insert(&mut self, names: (Vec<u8>, Vec<u8>), ino: Ino) {
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.saturating_add(1);
        self.by_name.insert(names.0, cookie);
        self.by_cookie.insert(cookie, (names.1, ino));
    }

    fn remove(&mut self, name: &[u8]) -> Option<Ino> {
        let cookie = self.by_name.remove(name)?;
        self.by_cookie.remove(&cookie).map(|(_, ino)| ino)
    }

    /// Points an existing name at another inode, keeping its cookie.
    fn replace(&mut self, name: &[u8], ino: Ino) {
        if let Some(cookie) = self.by_name.get(name)
            && let Some(entry) = self.by_cookie.get_mut(cookie)
        {
            entry.1 = ino;
        }
    }

    fn name_of(&self, ino: Ino) -> Option<&[u8]> {
        self.by_cookie.values().find(|(_, child)| *child == ino).map(|(name, _)| name.as_slice())
    }

    fn is_empty(&self) -> bool {
        self.by_cookie.is_empty()
    }
}

/// A regular file's data: its size and its pages, `None` for a hole. The
/// page list only reaches the last page ever written, so a file grown by
/// `truncate` costs nothing.
struct FileData {
    size: u64,
    pages: Vec<Option<Page>>,
}

impl FileData {
    fn page(&self, index: u64) -> Option<&[u8; PAGE_SIZE]> {
        let index = usize::try_from(index).ok()?;
        self.pages.get(index)?.as_deref()
    }

    fn allocated_pages(&self) -> u64 {
        self.pages.iter().filter(|page| page.is_some()).count() as u64
    }

    /// The page at `index`, allocated (zeroed) if it was a hole.
    fn page_mut(&mut self, index: usize) -> Result<&mut [u8; PAGE_SIZE]> {
        if index >= self.pages.len() {
            let more = index - self.pages.len() + 1;
            self.pages.try_reserve(more).map_err(|_| ENOSPC)?;
            self.pages.resize_with(index + 1, || None);
        }
        let slot = self.pages.get_mut(index).ok_or(EIO)?;
        if slot.is_none() {
            *slot = Some(zeroed_page()?);
        }
        slot.as_deref_mut().ok_or(EIO)
    }

    /// Shrinks or grows to `size`, keeping the rule that bytes past the end
    /// are zero.
    fn set_size(&mut self, size: u64) {
        if size < self.size {
            let keep = size.div_ceil(PAGE_SIZE as u64);
            let keep = usize::try_from(keep).unwrap_or(usize::MAX);
            if keep < self.pages.len() {
                self.pages.truncate(keep);
                self.pages.shrink_to_fit();
            }
            // The page the new end falls in, if it has one: not always the
            // last in the list, which may stop short of it.
            let tail = (size % PAGE_SIZE as u64) as usize;
            let end_page = usize::try_from(size / PAGE_SIZE as u64).unwrap_or(usize::MAX);
            if tail != 0
                && let Some(Some(page)) = self.pages.get_mut(end_page)
            {
                page[tail..].fill(0);
            }
        }
        self.size = size;
    }
}

/// A zeroed page, allocated without aborting when the heap is full.
fn zeroed_page() -> Result<Page> {
    zeroed(PAGE_SIZE).ok_or(ENOSPC)?.into_boxed_slice().try_into().map_err(|_| ENOSPC)
}

/// `len` zero bytes, or None when the heap is full.
///
/// Not `Vec::resize`: in the kernel's build for size that is a loop that
/// stores one byte at a time, and a nested hypervisor that emulates the
/// kernel's instructions made every page of every file cost seconds.
/// Copying from a block of zeros is a `memcpy`, a few string instructions.
pub fn zeroed(len: usize) -> Option<Vec<u8>> {
    static ZEROS: [u8; 256] = [0; 256];
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len).ok()?;
    while bytes.len() < len {
        let n = (len - bytes.len()).min(ZEROS.len());
        bytes.extend_from_slice(&ZEROS[..n]);
    }
    Some(bytes)
}

/// A copy of a name, allocated without aborting when the heap is full.
fn copy_name(name: &[u8]) -> Result<Vec<u8>> {
    let mut copy = Vec::new();
    copy.try_reserve_exact(name.len()).map_err(|_| ENOSPC)?;
    copy.extend_from_slice(name);
    Ok(copy)
}

fn is_dot_or_dotdot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// A name a new entry may have: one component, not empty, not too long.
fn check_new_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(ENOENT);
    }
    if name.len() > NAME_MAX {
        return Err(ENAMETOOLONG);
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(EINVAL);
    }
    if is_dot_or_dotdot(name) {
        return Err(EEXIST);
    }
    Ok(())
}

/// The filesystem: a table of inodes, the root at [`ROOT`].
pub struct Fs {
    inodes: Vec<Option<Inode>>,
    free: Vec<Ino>,
    /// The last content version handed out.
    versions: u64,
}

impl Default for Fs {
    fn default() -> Fs {
        Fs::new()
    }
}

impl Fs {
    /// An empty root with what every Linux program takes for granted:
    /// `/dev` with `console`, `null` and `tty`, and a world-writable,
    /// sticky `/tmp`. An archive unpacked on top may replace any of them.
    pub fn new() -> Fs {
        Fs::new_at((0, 0))
    }

    /// As `new`, with `now` as the time of what it makes.
    pub fn new_at(now: Time) -> Fs {
        let root = Inode {
            permissions: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            atime: now,
            mtime: now,
            ctime: now,
            open_refs: 0,
            version: 0,
            body: Body::Directory(Directory::new(ROOT)),
        };
        let mut fs = Fs { inodes: Vec::new(), free: Vec::new(), versions: 0 };
        fs.inodes.push(None);
        fs.inodes.push(Some(root));
        // Only an empty heap could refuse these few bytes, and then there
        // is no kernel to run anyway: a missing entry is the most an
        // allocation failure here costs.
        if let Ok(dev) = fs.mkdir(ROOT, b"dev", 0o755, now) {
            let _ = fs.mknod_char(dev, b"console", 0o620, makedev(5, 1), now);
            let _ = fs.mknod_char(dev, b"null", 0o666, makedev(1, 3), now);
            let _ = fs.mknod_char(dev, b"tty", 0o666, makedev(5, 0), now);
        }
        let _ = fs.mkdir(ROOT, b"tmp", 0o1777, now);
        fs
    }

    /// Unpacks a cpio archive (newc) into the tree: see `cpio.rs`. Returns
    /// how many entries were made.
    pub fn unpack_cpio(&mut self, archive: &[u8], now: Time) -> Result<usize> {
        super::cpio::unpack(self, archive, now).map(|unpacked| unpacked.made)
    }

    fn node(&self, ino: Ino) -> Result<&Inode> {
        self.inodes.get(ino).and_then(Option::as_ref).ok_or(EBADF)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Inode> {
        self.inodes.get_mut(ino).and_then(Option::as_mut).ok_or(EBADF)
    }

    fn dir(&self, ino: Ino) -> Result<&Directory> {
        match &self.node(ino)?.body {
            Body::Directory(dir) => Ok(dir),
            _ => Err(ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut Directory> {
        match &mut self.node_mut(ino)?.body {
            Body::Directory(dir) => Ok(dir),
            _ => Err(ENOTDIR),
        }
    }

    /// A directory that can take new entries: it exists and has not been
    /// removed while something still held it.
    fn live_dir(&self, ino: Ino) -> Result<&Directory> {
        let dir = self.dir(ino)?;
        if self.node(ino)?.nlink == 0 {
            return Err(ENOENT);
        }
        Ok(dir)
    }

    /// A version of a regular file's bytes: it changes with every write
    /// and truncation, and no other file, even one that takes this one's
    /// inode number later, ever has it. Whoever keeps a copy of a file's
    /// bytes (the program pages the Linux layer shares between processes)
    /// knows by it whether the copy is still the file.
    pub fn content_version(&self, ino: Ino) -> Result<u64> {
        self.file(ino)?;
        Ok(self.node(ino)?.version)
    }

    fn next_version(&mut self) -> u64 {
        self.versions += 1;
        self.versions
    }

    fn file(&self, ino: Ino) -> Result<&FileData> {
        match &self.node(ino)?.body {
            Body::Regular(file) => Ok(file),
            Body::Directory(_) => Err(EISDIR),
            _ => Err(EINVAL),
        }
    }

    fn is_dir(&self, ino: Ino) -> bool {
        self.dir(ino).is_ok()
    }

    fn touch_dir(&mut self, dir: Ino, now: Time) {
        if let Ok(node) = self.node_mut(dir) {
            node.mtime = now;
            node.ctime = now;
        }
    }

    /// Puts an inode in a free slot of the table.
    fn alloc_inode(&mut self, inode: Inode) -> Result<Ino> {
        if let Some(ino) = self.free.pop()
            && let Some(slot) = self.inodes.get_mut(ino)
        {
            *slot = Some(inode);
            return Ok(ino);
        }
        self.inodes.try_reserve(1).map_err(|_| ENOSPC)?;
        // Room for every inode on the free list, so freeing never allocates.
        let more = (self.inodes.len() + 1).saturating_sub(self.free.len());
        self.free.try_reserve(more).map_err(|_| ENOSPC)?;
        self.inodes.push(Some(inode));
        Ok(self.inodes.len() - 1)
    }

    /// Frees an inode nothing names or holds any more.
    fn free_if_unused(&mut self, ino: Ino) {
        if ino == ROOT {
            return;
        }
        let unused = matches!(self.node(ino), Ok(node) if node.nlink == 0 && node.open_refs == 0);
        if unused && let Some(slot) = self.inodes.get_mut(ino) {
            *slot = None;
            self.free.push(ino);
        }
    }

    /// Makes a new inode named `name` in `dir`.
    fn make(&mut self, dir: Ino, name: &[u8], permissions: u32, body: Body, now: Time) -> Result<Ino> {
        check_new_name(name)?;
        let parent = self.live_dir(dir)?;
        if parent.get(name).is_some() {
            return Err(EEXIST);
        }
        let is_dir = matches!(body, Body::Directory(_));
        if is_dir && self.node(dir)?.nlink >= LINK_MAX {
            return Err(EMLINK);
        }
        let names = (copy_name(name)?, copy_name(name)?);
        let version = self.next_version();
        let inode = Inode {
            permissions: permissions & PERMISSIONS,
            nlink: if is_dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            atime: now,
            mtime: now,
            ctime: now,
            open_refs: 0,
            version,
            body,
        };
        let ino = self.alloc_inode(inode)?;
        self.dir_mut(dir)?.insert(names, ino);
        let parent = self.node_mut(dir)?;
        if is_dir {
            parent.nlink += 1;
        }
        parent.mtime = now;
        parent.ctime = now;
        Ok(ino)
    }

    /// Follows `path` from `cwd` (or from the root if it starts with `/`):
    /// `.`, `..` (the root's is itself), symbolic links anywhere but the
    /// last name, and there too if `follow_last` or a trailing slash asks.
    /// A trailing slash also asks for a directory.
    pub fn resolve(&self, cwd: Ino, path: &[u8], follow_last: bool) -> Result<Ino> {
        if path.is_empty() {
            return Err(ENOENT);
        }
        if path.len() >= PATH_MAX {
            return Err(ENAMETOOLONG);
        }
        self.walk(cwd, path, follow_last)
    }

    /// The resolution proper. Following a symbolic link pushes its target
    /// on a small stack of paths still to walk, above what was left of
    /// the path that named it; a finished target pops back. No recursion:
    /// this runs on a kernel stack, and forty nested links must not
    /// overflow it.
    fn walk(&self, cwd: Ino, path: &[u8], follow_last: bool) -> Result<Ino> {
        let is_slash = |byte: &u8| *byte == b'/';
        let mut pending: [&[u8]; MAX_SYMLINKS as usize + 1] = [&[]; MAX_SYMLINKS as usize + 1];
        pending[0] = path;
        let mut depth = 0;
        let mut links_followed = 0;
        let mut at = if path.first() == Some(&b'/') { ROOT } else { cwd };
        loop {
            let rest = &pending[depth][pending[depth].iter().take_while(|byte| is_slash(byte)).count()..];
            if rest.is_empty() {
                if depth == 0 {
                    // "/" alone, or a walk that ended in slashes after a
                    // link: still has to be a directory.
                    self.dir(at)?;
                    return Ok(at);
                }
                depth -= 1;
                continue;
            }
            let end = rest.iter().position(is_slash).unwrap_or(rest.len());
            let (name, tail) = rest.split_at(end);
            pending[depth] = tail;
            let outer = &pending[..depth];
            let last = tail.iter().all(is_slash) && outer.iter().all(|path| path.iter().all(is_slash));
            let wants_dir = !tail.is_empty() || outer.iter().any(|path| !path.is_empty());
            // A link's target is followed to its end: only the path the
            // caller gave may stop at a link.
            let follow = follow_last || depth > 0;
            let next = self.lookup(at, name)?;
            if let Body::Symlink(target) = &self.node(next)?.body
                && (!last || follow || wants_dir)
            {
                if links_followed == MAX_SYMLINKS {
                    return Err(ELOOP);
                }
                links_followed += 1;
                if target.is_empty() {
                    return Err(ENOENT);
                }
                depth += 1;
                *pending.get_mut(depth).ok_or(ELOOP)? = target;
                if target.first() == Some(&b'/') {
                    at = ROOT;
                }
                continue;
            }
            if last {
                if wants_dir && !self.is_dir(next) {
                    return Err(ENOTDIR);
                }
                return Ok(next);
            }
            at = next;
        }
    }

    /// The directory that holds the last name of `path`, and that name
    /// (trailing slashes dropped). A path of slashes alone is the root,
    /// named ".".
    pub fn resolve_parent<'p>(&self, cwd: Ino, path: &'p [u8]) -> Result<(Ino, &'p [u8])> {
        if path.is_empty() {
            return Err(ENOENT);
        }
        if path.len() >= PATH_MAX {
            return Err(ENAMETOOLONG);
        }
        let end = path.iter().rposition(|&byte| byte != b'/').map_or(0, |last| last + 1);
        let trimmed = &path[..end];
        if trimmed.is_empty() {
            return Ok((ROOT, b"."));
        }
        let (dir, name) = match trimmed.iter().rposition(|&byte| byte == b'/') {
            Some(slash) => (self.resolve(cwd, &trimmed[..=slash], true)?, &trimmed[slash + 1..]),
            None => (cwd, trimmed),
        };
        self.dir(dir)?;
        if name.len() > NAME_MAX {
            return Err(ENAMETOOLONG);
        }
        Ok((dir, name))
    }

    /// What `stat` says. An inode that does not exist reads as all zeros.
    pub fn stat(&self, ino: Ino) -> Stat {
        let Ok(node) = self.node(ino) else {
            return Stat::default();
        };
        let (size, blocks, rdev) = match &node.body {
            Body::Directory(_) => (PAGE_SIZE as u64, 8, 0),
            Body::Regular(file) => (file.size, file.allocated_pages() * (PAGE_SIZE as u64 / 512), 0),
            Body::Symlink(target) => (target.len() as u64, 0, 0),
            Body::CharDevice(rdev) => (0, 0, *rdev),
        };
        Stat {
            ino,
            mode: node.body.kind().type_bits() | node.permissions,
            nlink: node.nlink,
            uid: node.uid,
            gid: node.gid,
            rdev,
            size,
            blocks,
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
        }
    }

    /// What the inode is. An inode that does not exist says `Regular`; use
    /// `exists` to tell.
    pub fn kind(&self, ino: Ino) -> Kind {
        self.node(ino).map_or(Kind::Regular, |node| node.body.kind())
    }

    /// How much the filesystem holds, for `statfs`.
    pub fn usage(&self) -> Usage {
        let mut usage = Usage::default();
        for node in self.inodes.iter().flatten() {
            usage.inodes += 1;
            if let Body::Regular(file) = &node.body {
                usage.pages += file.allocated_pages();
            }
        }
        usage
    }

    /// Whether `ino` names a live inode.
    pub fn exists(&self, ino: Ino) -> bool {
        self.node(ino).is_ok()
    }

    /// A new, empty regular file.
    pub fn create(&mut self, dir: Ino, name: &[u8], mode: u32, now: Time) -> Result<Ino> {
        let body = Body::Regular(FileData { size: 0, pages: Vec::new() });
        self.make(dir, name, mode, body, now)
    }

    /// A new, empty directory.
    pub fn mkdir(&mut self, dir: Ino, name: &[u8], mode: u32, now: Time) -> Result<Ino> {
        self.make(dir, name, mode, Body::Directory(Directory::new(dir)), now)
    }

    /// A new character device node; `rdev` in `makedev`'s encoding.
    pub fn mknod_char(&mut self, dir: Ino, name: &[u8], mode: u32, rdev: u64, now: Time) -> Result<Ino> {
        self.make(dir, name, mode, Body::CharDevice(rdev), now)
    }

    /// A new symbolic link to `target` (which need not exist).
    pub fn symlink(&mut self, dir: Ino, name: &[u8], target: &[u8], now: Time) -> Result<Ino> {
        if target.is_empty() {
            return Err(ENOENT);
        }
        if target.len() >= PATH_MAX {
            return Err(ENAMETOOLONG);
        }
        let target = copy_name(target)?;
        self.make(dir, name, 0o777, Body::Symlink(target), now)
    }

    /// Another name for `ino`. Directories cannot have one.
    pub fn link(&mut self, dir: Ino, name: &[u8], ino: Ino, now: Time) -> Result<()> {
        let node = self.node(ino)?;
        if matches!(node.body, Body::Directory(_)) {
            return Err(EPERM);
        }
        if node.nlink == 0 {
            return Err(ENOENT);
        }
        if node.nlink >= LINK_MAX {
            return Err(EMLINK);
        }
        check_new_name(name)?;
        if self.live_dir(dir)?.get(name).is_some() {
            return Err(EEXIST);
        }
        let names = (copy_name(name)?, copy_name(name)?);
        self.dir_mut(dir)?.insert(names, ino);
        let node = self.node_mut(ino)?;
        node.nlink += 1;
        node.ctime = now;
        self.touch_dir(dir, now);
        Ok(())
    }

    /// Removes a name that is not a directory's.
    pub fn unlink(&mut self, dir: Ino, name: &[u8], now: Time) -> Result<()> {
        let ino = self.lookup(dir, name)?;
        if is_dot_or_dotdot(name) || self.is_dir(ino) {
            return Err(EISDIR);
        }
        self.dir_mut(dir)?.remove(name);
        self.touch_dir(dir, now);
        let node = self.node_mut(ino)?;
        node.nlink = node.nlink.saturating_sub(1);
        node.ctime = now;
        self.free_if_unused(ino);
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&mut self, dir: Ino, name: &[u8], now: Time) -> Result<()> {
        if name == b"." {
            return Err(EINVAL);
        }
        let ino = self.lookup(dir, name)?;
        if ino == ROOT {
            return Err(EBUSY);
        }
        if name == b".." || !self.dir(ino)?.is_empty() {
            return Err(ENOTEMPTY);
        }
        self.dir_mut(dir)?.remove(name);
        let parent = self.node_mut(dir)?;
        parent.nlink = parent.nlink.saturating_sub(1);
        self.touch_dir(dir, now);
        let node = self.node_mut(ino)?;
        node.nlink = 0;
        node.ctime = now;
        self.free_if_unused(ino);
        Ok(())
    }

    /// Moves `from` in `from_dir` to `to` in `to_dir`, as POSIX `rename`:
    /// a file replaces a file, a directory replaces an empty directory, a
    /// directory cannot move into itself, and two names of one inode are
    /// left alone.
    pub fn rename(&mut self, from_dir: Ino, from: &[u8], to_dir: Ino, to: &[u8], now: Time) -> Result<()> {
        if is_dot_or_dotdot(from) || is_dot_or_dotdot(to) {
            return Err(EBUSY);
        }
        let moved = self.lookup(from_dir, from)?;
        self.live_dir(to_dir)?;
        check_new_name(to)?;
        let moved_is_dir = self.is_dir(moved);
        let replaced = match self.lookup(to_dir, to) {
            Ok(ino) => Some(ino),
            Err(ENOENT) => None,
            Err(error) => return Err(error),
        };
        if moved_is_dir {
            // The target's directory must not be the moved one or below it.
            let mut at = to_dir;
            for _ in 0..self.inodes.len() {
                if at == moved {
                    return Err(EINVAL);
                }
                if at == ROOT {
                    break;
                }
                at = self.dir(at)?.parent;
            }
        }
        match replaced {
            Some(replaced) if replaced == moved => return Ok(()),
            Some(replaced) => match (moved_is_dir, self.is_dir(replaced)) {
                (true, false) => return Err(ENOTDIR),
                (false, true) => return Err(EISDIR),
                (true, true) if !self.dir(replaced)?.is_empty() => return Err(ENOTEMPTY),
                _ => {}
            },
            None => {
                if moved_is_dir && from_dir != to_dir && self.node(to_dir)?.nlink >= LINK_MAX {
                    return Err(EMLINK);
                }
            }
        }
        // Everything that can fail has been done: from here the move is
        // whole.
        let names = match replaced {
            None => Some((copy_name(to)?, copy_name(to)?)),
            Some(_) => None,
        };
        self.dir_mut(from_dir)?.remove(from);
        match (replaced, names) {
            (Some(replaced), _) => {
                self.dir_mut(to_dir)?.replace(to, moved);
                let replaced_is_dir = self.is_dir(replaced);
                let node = self.node_mut(replaced)?;
                node.nlink = if replaced_is_dir { 0 } else { node.nlink.saturating_sub(1) };
                node.ctime = now;
                if replaced_is_dir {
                    let parent = self.node_mut(to_dir)?;
                    parent.nlink = parent.nlink.saturating_sub(1);
                }
                self.free_if_unused(replaced);
            }
            (None, Some(names)) => self.dir_mut(to_dir)?.insert(names, moved),
            (None, None) => {}
        }
        if moved_is_dir {
            self.dir_mut(moved)?.parent = to_dir;
            let old_parent = self.node_mut(from_dir)?;
            old_parent.nlink = old_parent.nlink.saturating_sub(1);
            self.node_mut(to_dir)?.nlink += 1;
        }
        self.node_mut(moved)?.ctime = now;
        self.touch_dir(from_dir, now);
        self.touch_dir(to_dir, now);
        Ok(())
    }

    /// One name in a directory, `.` and `..` included.
    pub fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Ino> {
        let directory = self.dir(dir)?;
        if name.len() > NAME_MAX {
            return Err(ENAMETOOLONG);
        }
        if name == b"." {
            return Ok(dir);
        }
        // A removed directory is empty, and its parent may be gone.
        if self.node(dir)?.nlink == 0 {
            return Err(ENOENT);
        }
        if name == b".." {
            return Ok(directory.parent);
        }
        directory.get(name).ok_or(ENOENT)
    }

    /// Reads from `offset`: as much as fits in `buf` and the file has.
    /// Holes read as zeros. A character device reads as empty (the Linux
    /// layer serves devices itself).
    pub fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let file = match &self.node(ino)?.body {
            Body::Regular(file) => file,
            Body::Directory(_) => return Err(EISDIR),
            Body::CharDevice(_) => return Ok(0),
            Body::Symlink(_) => return Err(EINVAL),
        };
        if offset >= file.size {
            return Ok(0);
        }
        let available = usize::try_from(file.size - offset).unwrap_or(usize::MAX);
        let total = buf.len().min(available);
        let mut done = 0;
        while done < total {
            let at = offset + done as u64;
            let within = (at % PAGE_SIZE as u64) as usize;
            let chunk = (PAGE_SIZE - within).min(total - done);
            let out = &mut buf[done..done + chunk];
            match file.page(at / PAGE_SIZE as u64) {
                Some(page) => out.copy_from_slice(&page[within..within + chunk]),
                None => out.fill(0),
            }
            done += chunk;
        }
        Ok(total)
    }

    /// Writes at `offset`, growing the file (the gap, if any, is a hole).
    /// A write that reaches past `MAX_FILE_SIZE` or runs out of memory is
    /// cut short; if nothing at all could be written, that is `EFBIG` or
    /// `ENOSPC`. A character device takes everything.
    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8], now: Time) -> Result<usize> {
        let version = self.next_version();
        let node = self.node_mut(ino)?;
        let file = match &mut node.body {
            Body::Regular(file) => file,
            Body::Directory(_) => return Err(EISDIR),
            Body::CharDevice(_) => return Ok(data.len()),
            Body::Symlink(_) => return Err(EINVAL),
        };
        if data.is_empty() {
            return Ok(0);
        }
        if offset >= MAX_FILE_SIZE {
            return Err(EFBIG);
        }
        let room = usize::try_from(MAX_FILE_SIZE - offset).unwrap_or(usize::MAX);
        let total = data.len().min(room);
        let mut done = 0;
        let mut failure = None;
        while done < total {
            let at = offset + done as u64;
            let within = (at % PAGE_SIZE as u64) as usize;
            let chunk = (PAGE_SIZE - within).min(total - done);
            let Ok(index) = usize::try_from(at / PAGE_SIZE as u64) else {
                failure = Some(EFBIG);
                break;
            };
            match file.page_mut(index) {
                Ok(page) => page[within..within + chunk].copy_from_slice(&data[done..done + chunk]),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
            done += chunk;
        }
        if done == 0 {
            return Err(failure.unwrap_or(ENOSPC));
        }
        file.size = file.size.max(offset + done as u64);
        node.version = version;
        node.mtime = now;
        node.ctime = now;
        Ok(done)
    }

    /// Sets a regular file's size: shrinking frees its pages past the end,
    /// growing adds a hole.
    pub fn truncate(&mut self, ino: Ino, size: u64, now: Time) -> Result<()> {
        self.file(ino)?;
        if size > MAX_FILE_SIZE {
            return Err(EFBIG);
        }
        let version = self.next_version();
        let node = self.node_mut(ino)?;
        if let Body::Regular(file) = &mut node.body {
            file.set_size(size);
            node.version = version;
        }
        node.mtime = now;
        node.ctime = now;
        Ok(())
    }

    /// A symbolic link's target.
    pub fn readlink(&self, ino: Ino) -> Result<&[u8]> {
        match &self.node(ino)?.body {
            Body::Symlink(target) => Ok(target),
            _ => Err(EINVAL),
        }
    }

    /// Sets the permission bits (the type bits of `mode` are ignored).
    pub fn chmod(&mut self, ino: Ino, mode: u32, now: Time) -> Result<()> {
        let node = self.node_mut(ino)?;
        node.permissions = mode & PERMISSIONS;
        node.ctime = now;
        Ok(())
    }

    /// Sets the owner and group; `None` leaves one as it is.
    pub fn chown(&mut self, ino: Ino, uid: Option<u32>, gid: Option<u32>, now: Time) -> Result<()> {
        let node = self.node_mut(ino)?;
        if let Some(uid) = uid {
            node.uid = uid;
        }
        if let Some(gid) = gid {
            node.gid = gid;
        }
        node.ctime = now;
        Ok(())
    }

    /// Sets the access and modification times; `None` leaves one as it is.
    pub fn set_times(&mut self, ino: Ino, atime: Option<Time>, mtime: Option<Time>, now: Time) -> Result<()> {
        let node = self.node_mut(ino)?;
        if let Some(atime) = atime {
            node.atime = atime;
        }
        if let Some(mtime) = mtime {
            node.mtime = mtime;
        }
        node.ctime = now;
        Ok(())
    }

    /// A directory's entries from cookie `start` on, each with the cookie
    /// to resume after it: `.` and `..` first, then the names in the order
    /// they were made. Nothing for what is not a directory, or for a
    /// directory that has been removed.
    pub fn entries(&self, dir: Ino, start: usize) -> impl Iterator<Item = (usize, DirEntry<'_>)> {
        let directory = self.live_dir(dir).ok();
        let parent = directory.map_or(dir, |directory| directory.parent);
        let dots: [&[u8]; 2] = [b".", b".."];
        let dots = dots
            .into_iter()
            .zip([dir, parent])
            .enumerate()
            .filter(move |(cookie, _)| directory.is_some() && *cookie >= start)
            .map(|(cookie, (name, ino))| (cookie + 1, DirEntry { name, ino, kind: Kind::Directory }));
        let names = directory
            .into_iter()
            .flat_map(move |directory| directory.by_cookie.range(start.max(FIRST_COOKIE)..))
            .map(|(&cookie, (name, ino))| {
                (cookie.saturating_add(1), DirEntry { name, ino: *ino, kind: self.kind(*ino) })
            });
        dots.chain(names)
    }

    /// The absolute path of a directory, for `getcwd`.
    pub fn path_of(&self, dir: Ino) -> Result<Vec<u8>> {
        self.live_dir(dir)?;
        let mut names: Vec<&[u8]> = Vec::new();
        let mut at = dir;
        while at != ROOT {
            if names.len() > self.inodes.len() {
                return Err(EIO);
            }
            let parent = self.dir(at)?.parent;
            let name = self.dir(parent)?.name_of(at).ok_or(ENOENT)?;
            names.try_reserve(1).map_err(|_| ENOMEM)?;
            names.push(name);
            at = parent;
        }
        if names.is_empty() {
            return copy_name(b"/").map_err(|_| ENOMEM);
        }
        let length = names.iter().map(|name| name.len() + 1).sum();
        let mut path = Vec::new();
        path.try_reserve_exact(length).map_err(|_| ENOMEM)?;
        for name in names.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(name);
        }
        Ok(path)
    }

    /// Holds an inode alive while it is open, even with no name left.
    pub fn open_ref(&mut self, ino: Ino) {
        if let Ok(node) = self.node_mut(ino) {
            node.open_refs = node.open_refs.saturating_add(1);
        }
    }

    /// Lets go of what `open_ref` held; frees the inode if that was the last
    /// thing keeping it.
    pub fn close_ref(&mut self, ino: Ino) {
        if let Ok(node) = self.node_mut(ino) {
            node.open_refs = node.open_refs.saturating_sub(1);
        }
        self.free_if_unused(ino);
    }

    /// A regular file's page `index` (bytes `index * 4096..`), `None` for
    /// a hole, past the end, or for what is not a regular file. Bytes past
    /// the file's end in its last page are zero.
    pub fn page(&self, ino: Ino, index: u64) -> Option<&[u8; PAGE_SIZE]> {
        let file = self.file(ino).ok()?;
        if index >= file.size.div_ceil(PAGE_SIZE as u64) {
            return None;
        }
        file.page(index)
    }
}
