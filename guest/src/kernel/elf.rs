//! # The ELF loader: user programs into an address space
//!
//! User programs are static ELF64 executables (`ET_EXEC`, x86-64), linked
//! by `user/user.ld` into the user half. For each `PT_LOAD` segment we map
//! fresh frames over its pages, copy the file's bytes in and leave the
//! rest (bss) zero; a segment without `PF_W` is mapped read-only. Every
//! field is checked: a program is data, and a kernel must not trust data.

use super::mem::{self, Frames, PAGE, USER_BASE, USER_STACK_MAX, USER_STACK_TOP, WRITABLE};

/// What the loader leaves: where to start, and where the heap may begin.
pub struct Loaded {
    pub entry: u64,
    pub end: u64,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?) as u64)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as u64)
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Loads `image` into the user half of `root`.
pub fn load(frames: &mut Frames, root: u64, image: &[u8]) -> Result<Loaded, &'static str> {
    let bad = "malformed ELF";
    if image.get(..4) != Some(b"\x7fELF".as_slice()) || image.get(4..6) != Some([2u8, 1].as_slice()) {
        return Err("not an ELF64 little-endian file");
    }
    if u16_at(image, 16) != Some(2) || u16_at(image, 18) != Some(0x3e) {
        return Err("not an x86-64 ET_EXEC");
    }
    let entry = u64_at(image, 24).ok_or(bad)?;
    let phoff = u64_at(image, 32).ok_or(bad)? as usize;
    let phentsize = u16_at(image, 54).ok_or(bad)? as usize;
    let phnum = u16_at(image, 56).ok_or(bad)? as usize;
    let limit = USER_STACK_TOP - USER_STACK_MAX;
    let mut end = USER_BASE;
    for index in 0..phnum {
        let header = phoff.checked_add(index.checked_mul(phentsize).ok_or(bad)?).ok_or(bad)?;
        if u32_at(image, header) != Some(1) {
            continue;
        }
        let flags = u32_at(image, header + 4).ok_or(bad)?;
        let offset = u64_at(image, header + 8).ok_or(bad)?;
        let vaddr = u64_at(image, header + 16).ok_or(bad)?;
        let filesz = u64_at(image, header + 32).ok_or(bad)?;
        let memsz = u64_at(image, header + 40).ok_or(bad)?;
        let seg_end = vaddr.checked_add(memsz).ok_or(bad)?;
        if vaddr < USER_BASE || seg_end > limit || filesz > memsz {
            return Err("segment outside the user half");
        }
        let file = image.get(offset as usize..(offset + filesz) as usize).ok_or(bad)?;
        let pte_flags = if flags & 2 != 0 { WRITABLE } else { 0 };
        for page in (vaddr & !(PAGE - 1)..seg_end).step_by(PAGE as usize) {
            let frame = match mem::leaf(frames, root, page).map(|e| {
                // SAFETY: a slot of our own tables.
                unsafe { e.read_volatile() }
            }) {
                Some(pte) if pte & mem::PRESENT != 0 => pte & mem::ADDRESS,
                _ => {
                    let frame = frames.alloc().ok_or("out of memory")?;
                    mem::map_user(frames, root, page, frame, pte_flags).ok_or("out of memory")?;
                    frame
                }
            };
            // The part of the file's bytes that lands on this page.
            let from = page.max(vaddr);
            let to = (page + PAGE).min(vaddr + filesz);
            if from < to {
                let src = &file[(from - vaddr) as usize..(to - vaddr) as usize];
                let dst = mem::ptr::<u8>(frame + (from - page));
                // SAFETY: the destination is inside a frame we own.
                unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
            }
        }
        end = end.max(seg_end);
    }
    if !(USER_BASE..end).contains(&entry) {
        return Err("entry outside the program");
    }
    Ok(Loaded { entry, end })
}
