//! # execve: a program file into a fresh address space
//!
//! The loader reads the ELF headers from the filesystem, checks every
//! field, and turns each `PT_LOAD` segment into a mapping of the file
//! (pages are copied in on first touch: a shell that runs `echo` never
//! reads most of busybox). Static executables (`ET_EXEC`) load where they
//! are linked; static PIE (`ET_DYN` without an interpreter) at
//! `PIE_BASE`. A file starting with `#!` runs its interpreter instead,
//! with the optional argument and the script's path in front of argv.
//!
//! Then the stack Linux builds for a new program, from the top down: the
//! strings (argv, envp, the program's path for AT_EXECFN), 16 random
//! bytes (AT_RANDOM), and, 16-byte aligned at the stack pointer, argc,
//! argv's pointers, NULL, envp's pointers, NULL, and the auxiliary vector.
//!
//! The new space is built beside the old one, which stays intact until
//! everything has worked: a failed execve returns its error to a process
//! that still has all it had.

use alloc::vec::Vec;

use super::super::fs::{Ino, Kind};
use super::super::mem::{self, LINUX_USER_BASE, LINUX_USER_TOP, PAGE};
use super::super::proc::k;
use super::mm;
use super::task::{Backing, PROT_EXEC, PROT_READ, PROT_WRITE, Vma};
use super::{E2BIG, EACCES, EFAULT, EISDIR, ELOOP, ENOEXEC, ENOMEM, fs};

/// Where a static PIE is loaded.
const PIE_BASE: u64 = 0x5555_5555_4000;
/// The stack mapping: 8 MiB below the top of user space.
pub const STACK_SIZE: u64 = 8 << 20;
pub const STACK_TOP: u64 = LINUX_USER_TOP;
/// argv and envp together, as Linux's ARG_MAX-ish limit.
const ARGS_MAX: usize = 256 * 1024;

/// A program ready to run.
pub struct Image {
    pub root: u64,
    pub vmas: Vec<Vma>,
    pub entry: u64,
    pub stack: u64,
    pub brk: u64,
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]) as u64)
}
fn u32_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap_or_default()) as u64)
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
}

/// Reads `len` bytes of file `ino` at `offset`.
fn read_exact(ino: Ino, offset: u64, len: usize) -> Result<Vec<u8>, i64> {
    let mut buf = crate::kernel::fs::zeroed(len).ok_or(ENOMEM)?;
    let got = fs().read(ino, offset, &mut buf).map_err(|e| e.abs())?;
    if got != len {
        return Err(ENOEXEC);
    }
    Ok(buf)
}

/// Resolves `path` (from `cwd`) to an executable regular file.
fn executable(cwd: Ino, path: &[u8]) -> Result<Ino, i64> {
    let ino = fs().resolve(cwd, path, true).map_err(|e| e.abs())?;
    match fs().kind(ino) {
        Kind::Directory => Err(EISDIR),
        Kind::Regular if fs().stat(ino).mode & 0o111 != 0 => Ok(ino),
        _ => Err(EACCES),
    }
}

/// Builds the image of `path` with `argv` and `envp`. `path` may be
/// rewritten by `#!` (the interpreter's path goes into argv).
pub fn load(
    cwd: Ino,
    path: &[u8],
    mut argv: Vec<Vec<u8>>,
    envp: Vec<Vec<u8>>,
) -> Result<(Image, Vec<u8>), i64> {
    let mut path = Vec::from(path);
    let mut ino = executable(cwd, &path)?;
    for depth in 0.. {
        let head = {
            let mut head = [0u8; 256];
            let got = fs().read(ino, 0, &mut head).map_err(|e| e.abs())?;
            let mut v = Vec::new();
            v.extend_from_slice(&head[..got]);
            v
        };
        if !head.starts_with(b"#!") {
            break;
        }
        if depth >= 4 {
            return Err(ELOOP);
        }
        let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
        let line = &head[2..line_end];
        let mut words = line.split(|&b| b == b' ' || b == b'\t').filter(|w| !w.is_empty());
        let interpreter = Vec::from(words.next().ok_or(ENOEXEC)?);
        // Linux keeps the rest of the line as one argument.
        let rest_at = line.windows(interpreter.len()).position(|w| w == interpreter.as_slice()).unwrap_or(0)
            + interpreter.len();
        let rest: Vec<u8> = {
            let r = &line[rest_at.min(line.len())..];
            let start = r.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(r.len());
            let end = r.iter().rposition(|&b| b != b' ' && b != b'\t' && b != b'\r').map_or(start, |e| e + 1);
            Vec::from(&r[start..end.max(start)])
        };
        let mut new_argv = Vec::new();
        new_argv.push(interpreter.clone());
        if !rest.is_empty() {
            new_argv.push(rest);
        }
        new_argv.push(path.clone());
        new_argv.extend(argv.drain(..).skip(1));
        argv = new_argv;
        ino = executable(cwd, &interpreter)?;
        path = interpreter;
    }
    let image = load_elf(ino, &path, &argv, &envp)?;
    Ok((image, path))
}

fn load_elf(ino: Ino, path: &[u8], argv: &[Vec<u8>], envp: &[Vec<u8>]) -> Result<Image, i64> {
    let header = read_exact(ino, 0, 64)?;
    if !header.starts_with(b"\x7fELF\x02\x01") || u16_at(&header, 18) != 0x3e {
        return Err(ENOEXEC);
    }
    let kind = u16_at(&header, 16);
    let base = match kind {
        2 => 0,
        3 => PIE_BASE,
        _ => return Err(ENOEXEC),
    };
    let (phoff, phentsize, phnum) = (u64_at(&header, 32), u16_at(&header, 54), u16_at(&header, 56));
    if phentsize != 56 || phnum == 0 || phnum > 64 {
        return Err(ENOEXEC);
    }
    let phdrs = read_exact(ino, phoff, (phnum * 56) as usize)?;
    let kernel = k();
    let root = mem::new_linux_space(&mut kernel.frames, kernel.kernel_root).ok_or(ENOMEM)?;
    let mut image = Image { root, vmas: Vec::new(), entry: base + u64_at(&header, 24), stack: 0, brk: 0 };
    match fill(&mut image, ino, base, phoff, &phdrs, path, argv, envp) {
        Ok(()) => Ok(image),
        Err(e) => {
            discard(image);
            Err(e)
        }
    }
}

/// Frees an image that will not run.
pub fn discard(image: Image) {
    let frames = &mut k().frames;
    mem::free_space(frames, image.root);
    mem::free_root(frames, image.root);
}

#[allow(clippy::too_many_arguments)]
fn fill(
    image: &mut Image,
    ino: Ino,
    base: u64,
    phoff: u64,
    phdrs: &[u8],
    path: &[u8],
    argv: &[Vec<u8>],
    envp: &[Vec<u8>],
) -> Result<(), i64> {
    let mut end = 0u64;
    let mut phdr_addr = 0u64;
    let mut first_segment = None;
    for header in phdrs.chunks(56) {
        match u32_at(header, 0) {
            1 => {}
            3 => return Err(ENOEXEC), // PT_INTERP: no dynamic loader here
            6 => {
                phdr_addr = base + u64_at(header, 16);
                continue;
            }
            _ => continue,
        }
        let flags = u32_at(header, 4) as u32;
        let (offset, vaddr) = (u64_at(header, 8), base + u64_at(header, 16));
        let (filesz, memsz) = (u64_at(header, 32), u64_at(header, 40));
        let seg_end = vaddr.checked_add(memsz).ok_or(ENOEXEC)?;
        if filesz > memsz
            || vaddr < LINUX_USER_BASE
            || seg_end > STACK_TOP - STACK_SIZE
            || offset % PAGE != vaddr % PAGE
            || offset.checked_add(filesz).is_none_or(|e| e > fs().stat(ino).size)
        {
            return Err(ENOEXEC);
        }
        if first_segment.is_none() {
            first_segment = Some((vaddr, offset));
        }
        let prot = (if flags & 4 != 0 { PROT_READ } else { 0 })
            | (if flags & 2 != 0 { PROT_WRITE } else { 0 })
            | (if flags & 1 != 0 { PROT_EXEC } else { 0 });
        let mut start = vaddr & !(PAGE - 1);
        let stop = seg_end.next_multiple_of(PAGE);
        // A page shared with the segment before (their ends meet inside
        // it) is filled now, from both, and stays with the first mapping.
        if start < end {
            let shared = start;
            let mut bytes = [0u8; 512];
            let from = vaddr;
            let to = (shared + PAGE).min(vaddr + filesz);
            let mut at = from;
            while at < to {
                let n = ((to - at) as usize).min(bytes.len());
                fs().read(ino, offset + (at - vaddr), &mut bytes[..n]).map_err(|e| e.abs())?;
                mm::copy_out_to(image.root, &image.vmas, at, &bytes[..n])?;
                at += n as u64;
            }
            if prot & PROT_WRITE != 0
                && let Some(last) = image.vmas.last_mut()
            {
                last.prot |= PROT_WRITE;
            }
            start = shared + PAGE;
        }
        if start < stop {
            fs().open_ref(ino);
            let file_offset = offset - (vaddr - start).min(offset);
            let vma = Vma {
                start,
                end: stop,
                prot,
                backing: Backing::File { ino, offset: file_offset, zero_from: vaddr + filesz },
            };
            image.vmas.try_reserve(1).map_err(|_| ENOMEM)?;
            image.vmas.push(vma);
        }
        end = end.max(stop);
    }
    if end == 0 || !(LINUX_USER_BASE..end).contains(&image.entry) {
        return Err(ENOEXEC);
    }
    if phdr_addr == 0
        && let Some((vaddr, offset)) = first_segment
        && phoff >= offset
    {
        phdr_addr = vaddr + (phoff - offset);
    }
    image.vmas.sort_by_key(|v| v.start);
    // The heap starts after the program, with a mapping `brk` resizes.
    image.brk = end;
    image.vmas.push(Vma { start: end, end, prot: PROT_READ | PROT_WRITE, backing: Backing::Anonymous });
    image.vmas.push(Vma {
        start: STACK_TOP - STACK_SIZE,
        end: STACK_TOP,
        prot: PROT_READ | PROT_WRITE,
        backing: Backing::Anonymous,
    });
    image.vmas.sort_by_key(|v| v.start);
    build_stack(image, path, argv, envp, phdr_addr, (phdrs.len() / 56) as u64)
}

const AT_NULL: u64 = 0;
const AT_PHDR: u64 = 3;
const AT_PHENT: u64 = 4;
const AT_PHNUM: u64 = 5;
const AT_PAGESZ: u64 = 6;
const AT_BASE: u64 = 7;
const AT_FLAGS: u64 = 8;
const AT_ENTRY: u64 = 9;
const AT_UID: u64 = 11;
const AT_EUID: u64 = 12;
const AT_GID: u64 = 13;
const AT_EGID: u64 = 14;
const AT_PLATFORM: u64 = 15;
const AT_HWCAP: u64 = 16;
const AT_CLKTCK: u64 = 17;
const AT_SECURE: u64 = 23;
const AT_RANDOM: u64 = 25;
const AT_EXECFN: u64 = 31;

fn build_stack(
    image: &mut Image,
    path: &[u8],
    argv: &[Vec<u8>],
    envp: &[Vec<u8>],
    phdr: u64,
    phnum: u64,
) -> Result<(), i64> {
    let total: usize = argv.iter().chain(envp).map(|s| s.len() + 1).sum::<usize>() + path.len() + 1;
    if total > ARGS_MAX {
        return Err(E2BIG);
    }
    // The strings, from the top down.
    let mut strings: Vec<u8> = Vec::new();
    strings.try_reserve(total + 32).map_err(|_| ENOMEM)?;
    let mut offsets = Vec::new();
    for s in argv.iter().chain(envp).chain(core::iter::once(&Vec::from(path))) {
        offsets.push(strings.len() as u64);
        strings.extend_from_slice(s);
        strings.push(0);
    }
    let platform_at = strings.len() as u64;
    strings.extend_from_slice(b"x86_64\0");
    let strings_at = (STACK_TOP - 16 - strings.len() as u64) & !15;
    let random_at = strings_at - 16;
    let mut random = [0u8; 16];
    super::random_bytes(&mut random);
    let hwcap = {
        let r = core::arch::x86_64::__cpuid(1);
        u64::from(r.edx)
    };
    let auxv = [
        (AT_PHDR, phdr),
        (AT_PHENT, 56),
        (AT_PHNUM, phnum),
        (AT_PAGESZ, PAGE),
        (AT_BASE, 0),
        (AT_FLAGS, 0),
        (AT_ENTRY, image.entry),
        (AT_UID, 0),
        (AT_EUID, 0),
        (AT_GID, 0),
        (AT_EGID, 0),
        (AT_HWCAP, hwcap),
        (AT_CLKTCK, 100),
        (AT_SECURE, 0),
        (AT_RANDOM, random_at),
        (AT_PLATFORM, strings_at + platform_at),
        (AT_EXECFN, strings_at + offsets[argv.len() + envp.len()]),
        (AT_NULL, 0),
    ];
    let mut words: Vec<u64> = Vec::new();
    words.try_reserve(argv.len() + envp.len() + 3 + 2 * auxv.len()).map_err(|_| ENOMEM)?;
    words.push(argv.len() as u64);
    words.extend(offsets[..argv.len()].iter().map(|o| strings_at + o));
    words.push(0);
    words.extend(offsets[argv.len()..argv.len() + envp.len()].iter().map(|o| strings_at + o));
    words.push(0);
    for (key, value) in auxv {
        words.push(key);
        words.push(value);
    }
    let sp = (random_at - 8 * words.len() as u64) & !15;
    let mut bytes = Vec::new();
    bytes.try_reserve(words.len() * 8).map_err(|_| ENOMEM)?;
    for w in &words {
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    if sp < STACK_TOP - STACK_SIZE {
        return Err(E2BIG);
    }
    mm::copy_out_to(image.root, &image.vmas, strings_at, &strings).map_err(|_| EFAULT)?;
    mm::copy_out_to(image.root, &image.vmas, random_at, &random)?;
    mm::copy_out_to(image.root, &image.vmas, sp, &bytes)?;
    image.stack = sp;
    Ok(())
}
