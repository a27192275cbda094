//! # User memory of a Linux process: faults, checked copies, mappings
//!
//! A Linux process's memory is its list of mappings (`Vma`s): the
//! program's segments (pages of the file, copied in on first touch), the
//! heap behind `brk`, anonymous and private file mappings from `mmap`,
//! and the stack. Nothing is mapped until touched: a page fault inside a
//! mapping gets a frame (zeros, or the file's bytes), a write to a page
//! shared since fork gets its own copy, and anything else is SIGSEGV.
//!
//! The kernel itself never dereferences a user address. Every copy to or
//! from user memory walks the process's tables in software, resolves a
//! missing or copy-on-write page exactly as the fault handler would, and
//! goes through the direct map. A bad pointer is therefore EFAULT and
//! nothing worse, whatever the platform's ring and write-protect rules.

use alloc::vec::Vec;

use super::super::mem::{self, ADDRESS, COW, Fault, PAGE, PRESENT, USER, WRITABLE};
use super::super::proc::k;
use super::task::{Backing, PROT_READ, PROT_WRITE, Task, Vma};
use super::{EFAULT, ENOMEM, fs, pagecache};
use crate::platform;

/// Resolves a fault at `va` in the space `root` with mappings `vmas`.
/// Returns whether the access may now go ahead.
pub fn resolve(root: u64, vmas: &[Vma], va: u64, write: bool) -> Result<(), Fault> {
    let Some(vma) = vmas.iter().find(|v| v.start <= va && va < v.end) else { return Err(Fault::Bad) };
    if (write && vma.prot & PROT_WRITE == 0) || vma.prot == 0 {
        return Err(Fault::Bad);
    }
    let frames = &mut k().frames;
    let page = va & !(PAGE - 1);
    let entry = mem::leaf(frames, root, page);
    let pte = entry.map(|e| {
        // SAFETY: a slot of our own tables.
        unsafe { e.read_volatile() }
    });
    match (entry, pte) {
        (Some(entry), Some(pte)) if pte & PRESENT != 0 => {
            if !write || pte & WRITABLE != 0 {
                return Ok(());
            }
            // Before the fault's own announcement, which makes Umbra take
            // these queued ones at the same time.
            if pte & COW != 0 {
                release_copy_on_write_neighbours(root, vma, page, entry);
            }
            match mem::handle_fault(frames, root, va, true, false) {
                Fault::CopyOnWrite => Ok(()),
                other => Err(other),
            }
        }
        _ if vma.prot & PROT_WRITE == 0 && matches!(vma.backing, Backing::File { .. }) => {
            map_program_pages(root, vma, page)
        }
        _ => {
            let frame = private_page(frames, vma, page).ok_or(Fault::OutOfMemory)?;
            let flags = if vma.prot & PROT_WRITE != 0 { WRITABLE } else { 0 };
            let Some(entry) = mem::map_user(frames, root, page, frame, flags) else {
                frames.put(frame);
                return Err(Fault::OutOfMemory);
            };
            if flags != 0 && matches!(vma.backing, Backing::File { .. }) {
                copy_data_pages_ahead(vma, page, entry);
            }
            Ok(())
        }
    }
}

/// Pages mapped around a fault in a read-only file mapping, when the
/// cache has them: the aligned block of this many pages around it, the
/// block Umbra looks at for pages mapped ahead. Linux's default is 16;
/// 64 takes a busybox process from about 125 exits to about 90, for
/// the same instructions natively (measured with `scripts/bench-linux.sh`).
const FAULT_AROUND_PAGES: u64 = umbra_abi::MAP_AHEAD_BLOCK_PAGES as u64;

/// A write fault on a copy-on-write page of a writable mapping: the other
/// copy-on-write pages of its aligned block of pages that are no longer
/// shared (their last sharer exited or ran another program, as the child
/// of a shell does) become writable now, as their own first writes would
/// make them. After every fork a shell would otherwise take one fault
/// per page of its stack and data it writes again.
fn release_copy_on_write_neighbours(root: u64, vma: &Vma, page: u64, entry: *mut u64) {
    let frames = &mut k().frames;
    for (neighbour, entry) in block_around(entry, page, vma) {
        // SAFETY: a slot of our own tables.
        let pte = unsafe { entry.read_volatile() };
        if pte & (PRESENT | COW) != PRESENT | COW || frames.refs(pte & ADDRESS) != 1 {
            continue;
        }
        let released = (pte & !COW) | WRITABLE;
        // SAFETY: as above.
        unsafe { entry.write_volatile(released) };
        platform::set_pte(root, neighbour, released, false);
    }
}

/// A fresh frame holding what the page at `page` of `vma` starts as: the
/// file's bytes, zeros past them.
fn private_page(frames: &mut mem::Frames, vma: &Vma, page: u64) -> Option<u64> {
    let frame = frames.alloc()?;
    if let Some((ino, offset, valid)) = file_bytes(vma, page)
        && valid > 0
    {
        // SAFETY: a fresh frame of ours, through the direct map.
        let dst = unsafe { core::slice::from_raw_parts_mut(mem::ptr::<u8>(frame), valid as usize) };
        let _ = fs().read(ino, offset, dst);
    }
    Some(frame)
}

/// Frames a fault leaves free at least before it copies pages ahead.
const COPY_AHEAD_RESERVE: u64 = 1024;

/// A fault in a writable private file mapping (a program's data): the
/// other pages of its block that hold file bytes are copied in too, as
/// a program touches most of its data as it starts (busybox: nine of its
/// ten), and each would be a fault of its own. Pages of zeros past the
/// file's part (.bss) are left to their faults, as is everything once
/// memory runs low. They are mapped writable, marked accessed and dirty
/// (they are private copies), so Umbra maps them ahead writable too.
fn copy_data_pages_ahead(vma: &Vma, page: u64, entry: *mut u64) {
    let frames = &mut k().frames;
    for (neighbour, entry) in missing_around(entry, page, vma) {
        if file_bytes(vma, neighbour).is_none_or(|(_, _, valid)| valid == 0) {
            continue;
        }
        if frames.available() < COPY_AHEAD_RESERVE {
            return;
        }
        let Some(frame) = private_page(frames, vma, neighbour) else { return };
        // SAFETY: as above; a missing page becoming present needs no
        // announcement.
        unsafe { entry.write_volatile(frame | PRESENT | USER | WRITABLE | mem::ACCESSED | mem::DIRTY) };
    }
}

/// The other pages of the aligned block of [`FAULT_AROUND_PAGES`] around
/// `page` that lie in `vma`, each with its leaf entry, found from
/// `entry`, `page`'s own: the block lies in one page table, since it
/// divides the table's 512 entries.
fn block_around(entry: *mut u64, page: u64, vma: &Vma) -> impl Iterator<Item = (u64, *mut u64)> {
    let block = page & !(FAULT_AROUND_PAGES * PAGE - 1);
    let around = block.max(vma.start)..(block + FAULT_AROUND_PAGES * PAGE).min(vma.end);
    around.step_by(PAGE as usize).filter(move |&n| n != page).map(move |n| {
        let distance = (n.wrapping_sub(page) as i64) / PAGE as i64;
        (n, entry.wrapping_offset(distance as isize))
    })
}

/// Those of [`block_around`] that are not mapped.
fn missing_around(entry: *mut u64, page: u64, vma: &Vma) -> impl Iterator<Item = (u64, *mut u64)> {
    block_around(entry, page, vma).filter(|&(_, entry)| {
        // SAFETY: a slot of our own tables.
        let pte = unsafe { entry.read_volatile() };
        pte & PRESENT == 0
    })
}

/// Where a page of a file mapping comes from: `valid` bytes of file
/// `ino` from `offset`, zeros after. None for an anonymous mapping.
fn file_bytes(vma: &Vma, page: u64) -> Option<(super::super::fs::Ino, u64, u64)> {
    let Backing::File { ino, offset, zero_from } = vma.backing else { return None };
    Some((ino, offset + (page - vma.start), zero_from.saturating_sub(page).min(PAGE)))
}

/// A fault on a missing page of a read-only file mapping (program code):
/// maps the kept copy of the page, or copies it in and keeps it
/// (`pagecache`), then maps whichever neighbours the cache holds too.
/// Those are marked accessed, which lets the platform map them ahead of
/// the program's first touch as well.
fn map_program_pages(root: u64, vma: &Vma, page: u64) -> Result<(), Fault> {
    let frames = &mut k().frames;
    let (ino, offset, valid) = file_bytes(vma, page).ok_or(Fault::Bad)?;
    let version = fs().content_version(ino).map_err(|_| Fault::Bad)?;
    let frame = match pagecache::find(ino, offset, valid, version) {
        Some(kept) => {
            frames.get(kept);
            kept
        }
        None => {
            let frame = private_page(frames, vma, page).ok_or(Fault::OutOfMemory)?;
            pagecache::keep(frames, ino, offset, valid, version, frame);
            frame
        }
    };
    let Some(entry) = mem::map_user(frames, root, page, frame, mem::ACCESSED) else {
        frames.put(frame);
        return Err(Fault::OutOfMemory);
    };
    for (neighbour, entry) in missing_around(entry, page, vma) {
        let Some((ino, offset, valid)) = file_bytes(vma, neighbour) else { continue };
        if let Some(kept) = pagecache::find(ino, offset, valid, version) {
            frames.get(kept);
            // SAFETY: as above; a missing page becoming present needs no
            // announcement.
            unsafe { entry.write_volatile(kept | PRESENT | USER | mem::ACCESSED) };
        }
    }
    Ok(())
}

/// The guest-physical address of user byte `va`, ready for a read (or a
/// write), or EFAULT.
fn user_pa(root: u64, vmas: &[Vma], va: u64, write: bool) -> Result<u64, i64> {
    // Outside the user range the walk would reach the kernel's own
    // tables (large pages among them), never a program's memory.
    if !(mem::LINUX_USER_BASE..mem::LINUX_USER_TOP).contains(&va) {
        return Err(EFAULT);
    }
    for _ in 0..2 {
        let entry = mem::leaf(&mut k().frames, root, va & !(PAGE - 1)).map(|e| {
            // SAFETY: a slot of our own tables.
            unsafe { e.read_volatile() }
        });
        if let Some(pte) = entry
            && pte & (PRESENT | USER) == PRESENT | USER
            && (!write || pte & WRITABLE != 0)
        {
            return Ok((pte & ADDRESS) + (va & (PAGE - 1)));
        }
        resolve(root, vmas, va, write).map_err(|_| EFAULT)?;
    }
    Err(EFAULT)
}

/// Copies `bytes` to user address `va` of the space `(root, vmas)`.
pub fn copy_out_to(root: u64, vmas: &[Vma], va: u64, bytes: &[u8]) -> Result<(), i64> {
    let mut done = 0usize;
    while done < bytes.len() {
        let at = va.checked_add(done as u64).ok_or(EFAULT)?;
        let chunk = ((PAGE - (at & (PAGE - 1))) as usize).min(bytes.len() - done);
        let pa = user_pa(root, vmas, at, true)?;
        // SAFETY: `chunk` bytes of one user frame, through the direct map.
        unsafe { core::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), mem::ptr::<u8>(pa), chunk) };
        done += chunk;
    }
    Ok(())
}

/// Copies user memory at `va` of the space `(root, vmas)` into `buf`.
pub fn copy_in_from(root: u64, vmas: &[Vma], va: u64, buf: &mut [u8]) -> Result<(), i64> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = va.checked_add(done as u64).ok_or(EFAULT)?;
        let chunk = ((PAGE - (at & (PAGE - 1))) as usize).min(buf.len() - done);
        let pa = user_pa(root, vmas, at, false)?;
        // SAFETY: as above.
        unsafe { core::ptr::copy_nonoverlapping(mem::ptr::<u8>(pa), buf[done..].as_mut_ptr(), chunk) };
        done += chunk;
    }
    Ok(())
}

fn current() -> (u64, &'static Task) {
    let kernel = k();
    let me = kernel.current;
    (kernel.procs[me].root, super::task::task(me))
}

/// Copies `bytes` out to the current process at `va`.
pub fn put(va: u64, bytes: &[u8]) -> Result<(), i64> {
    let (root, task) = current();
    copy_out_to(root, &task.vmas, va, bytes)
}

/// Copies the current process's memory at `va` into `buf`.
pub fn get(va: u64, buf: &mut [u8]) -> Result<(), i64> {
    let (root, task) = current();
    copy_in_from(root, &task.vmas, va, buf)
}

pub fn get_u64(va: u64) -> Result<u64, i64> {
    let mut bytes = [0u8; 8];
    get(va, &mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

pub fn put_u64(va: u64, value: u64) -> Result<(), i64> {
    put(va, &value.to_le_bytes())
}

pub fn put_u32(va: u64, value: u32) -> Result<(), i64> {
    put(va, &value.to_le_bytes())
}

/// A value of plain-data type `T` (all bit patterns valid) from user `va`.
pub fn get_struct<T: Copy + Default>(va: u64) -> Result<T, i64> {
    let mut value = T::default();
    // SAFETY: T is plain data (callers use integer arrays and repr(C)
    // structs of integers), so any bytes make a valid T.
    let bytes = unsafe { core::slice::from_raw_parts_mut(&mut value as *mut T as *mut u8, size_of::<T>()) };
    get(va, bytes)?;
    Ok(value)
}

/// A NUL-terminated string from user `va`, at most `max` bytes.
pub fn get_cstring(va: u64, max: usize) -> Result<Vec<u8>, i64> {
    let mut out = Vec::new();
    let mut at = va;
    loop {
        let mut chunk = [0u8; 256];
        let room = (PAGE - (at & (PAGE - 1))).min(256) as usize;
        get(at, &mut chunk[..room])?;
        if let Some(end) = chunk[..room].iter().position(|&b| b == 0) {
            out.try_reserve(end).map_err(|_| ENOMEM)?;
            out.extend_from_slice(&chunk[..end]);
            return Ok(out);
        }
        out.try_reserve(room).map_err(|_| ENOMEM)?;
        out.extend_from_slice(&chunk[..room]);
        if out.len() > max {
            return Err(super::ENAMETOOLONG);
        }
        at += room as u64;
    }
}

/// Removes `[start, end)` (page-aligned) from the current process's map:
/// its pages are freed and the mappings cut.
pub fn unmap_range(root: u64, task: &mut Task, start: u64, end: u64) {
    let frames = &mut k().frames;
    let mut index = 0;
    while index < task.vmas.len() {
        let (vs, ve) = (task.vmas[index].start, task.vmas[index].end);
        if ve <= start || vs >= end {
            index += 1;
            continue;
        }
        let (from, to) = (vs.max(start), ve.min(end));
        for page in (from..to).step_by(PAGE as usize) {
            mem::unmap_user(frames, root, page);
        }
        if vs < start && ve > end {
            let tail = task.vmas[index].tail(end);
            task.vmas[index].end = start;
            task.vmas.insert(index + 1, tail);
            index += 2;
        } else if vs < start {
            task.vmas[index].end = start;
            index += 1;
        } else if ve > end {
            let tail = task.vmas[index].tail(end);
            task.vmas[index] = tail;
            index += 1;
        } else {
            task.vmas.remove(index);
        }
    }
    platform::sync();
}

/// Changes the protection of `[start, end)`; ENOMEM if part of it is not
/// mapped.
pub fn protect_range(root: u64, task: &mut Task, start: u64, end: u64, prot: u32) -> Result<(), i64> {
    // Every page must be mapped.
    let mut at = start;
    while at < end {
        let vma = task.vma_at(at).ok_or(ENOMEM)?;
        at = vma.end;
    }
    // Split at the edges, then change the ones inside.
    let mut index = 0;
    while index < task.vmas.len() {
        let (vs, ve) = (task.vmas[index].start, task.vmas[index].end);
        if vs < start && start < ve {
            let tail = task.vmas[index].tail(start);
            task.vmas[index].end = start;
            task.vmas.insert(index + 1, tail);
        } else if vs < end && end < ve {
            let tail = task.vmas[index].tail(end);
            task.vmas[index].end = end;
            task.vmas.insert(index + 1, tail);
        }
        index += 1;
    }
    let frames = &mut k().frames;
    for vma in task.vmas.iter_mut().filter(|v| v.start >= start && v.end <= end) {
        vma.prot = prot;
        for page in (vma.start..vma.end).step_by(PAGE as usize) {
            let Some(entry) = mem::leaf(frames, root, page) else { continue };
            // SAFETY: a slot of our own tables.
            let pte = unsafe { entry.read_volatile() };
            if pte & PRESENT == 0 {
                continue;
            }
            // Writable pages become copy-on-write (which hands the page
            // back writable to its only user); read-only ones lose the bit.
            let new = if prot & PROT_WRITE != 0 {
                if pte & WRITABLE != 0 { pte } else { pte | COW }
            } else {
                (pte & !WRITABLE) | if pte & (WRITABLE | COW) != 0 { COW } else { 0 }
            };
            let new = if prot & PROT_READ == 0 && prot & PROT_WRITE == 0 { new & !WRITABLE } else { new };
            if new != pte {
                // SAFETY: as above.
                unsafe { entry.write_volatile(new) };
                platform::set_pte(root, page, new, false);
            }
        }
    }
    platform::sync();
    Ok(())
}

/// A free range of `len` bytes for mmap, from the top of the mmap area
/// down.
pub fn find_free(task: &Task, len: u64, below: u64) -> Option<u64> {
    let mut top = below;
    loop {
        let start = top.checked_sub(len)?;
        if start < task.brk.max(mem::LINUX_USER_BASE) + (64 << 20) {
            return None;
        }
        match task.vmas.iter().filter(|v| v.start < top && v.end > start).map(|v| v.start).min() {
            None => return Some(start),
            Some(blocker) => top = blocker,
        }
    }
}

/// Adds a mapping, keeping the list sorted by address.
pub fn insert(task: &mut Task, vma: Vma) -> Result<(), i64> {
    task.vmas.try_reserve(1).map_err(|_| ENOMEM)?;
    let at = task.vmas.iter().position(|v| v.start > vma.start).unwrap_or(task.vmas.len());
    task.vmas.insert(at, vma);
    Ok(())
}
