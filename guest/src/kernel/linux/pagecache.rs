//! # Program pages, kept between processes
//!
//! Busybox is one file that nearly every command runs. A shell loop that
//! starts a thousand processes has each of them fault in the same sixty or
//! so pages of busybox's code, and each fault used to copy its page from
//! the filesystem afresh. So the read-only pages of files (program code
//! and constants) are kept once copied: the next process that maps the
//! same bytes of the same file maps the kept frame, and a fault also maps
//! the kept neighbours of its page (Linux's fault-around), so a run of a
//! program takes a few faults where it took one per page.
//!
//! A kept page is the file's bytes as they were when it was copied. Each
//! one records the file's content version (`Fs::content_version`), which
//! every write and truncation changes, and a page whose file has changed
//! since is never used. The cache holds a reference to each frame it
//! keeps, so a process that makes a kept page writable (`mprotect`) and
//! writes to it gets a copy (copy-on-write), never the cache's page.
//!
//! The cache is a fixed table, one slot per (file, offset) by hash; a
//! newcomer evicts whoever had its slot. When the frame allocator runs
//! dry, it empties the cache ([`reclaim`]) before it gives up.

use core::cell::UnsafeCell;

use super::super::fs::Ino;
use super::super::mem::{Frames, PAGE};

/// At most this many pages (2 MiB) are kept.
const SLOTS: usize = 512;

/// One kept page: `valid` bytes of file `ino` from `offset`, zeros after,
/// as they were at content version `version`. `frame` 0 is an empty slot.
#[derive(Clone, Copy)]
struct Kept {
    ino: Ino,
    offset: u64,
    valid: u64,
    version: u64,
    frame: u64,
}

const EMPTY: Kept = Kept { ino: 0, offset: 0, valid: 0, version: 0, frame: 0 };

struct Cache(UnsafeCell<[Kept; SLOTS]>);

// SAFETY: one CPU, and the kernel runs with interrupts off.
unsafe impl Sync for Cache {}

static CACHE: Cache = Cache(UnsafeCell::new([EMPTY; SLOTS]));

fn slots() -> &'static mut [Kept; SLOTS] {
    // SAFETY: see `Cache`; no caller holds a slot across another call.
    unsafe { &mut *CACHE.0.get() }
}

/// A page's slot. Consecutive pages of one file take consecutive slots,
/// so a program's pages do not evict one another.
fn slot_index(ino: Ino, offset: u64) -> usize {
    let spread = (ino as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
    (spread.wrapping_add(offset / PAGE) % SLOTS as u64) as usize
}

/// The frame kept for these bytes, if it is still the file's.
pub fn find(ino: Ino, offset: u64, valid: u64, version: u64) -> Option<u64> {
    let kept = slots()[slot_index(ino, offset)];
    let same =
        kept.frame != 0 && (kept.ino, kept.offset, kept.valid, kept.version) == (ino, offset, valid, version);
    same.then_some(kept.frame)
}

/// Keeps `frame`, which holds these bytes (the cache takes a reference of
/// its own), in place of whatever had the slot.
pub fn keep(frames: &mut Frames, ino: Ino, offset: u64, valid: u64, version: u64, frame: u64) {
    frames.get(frame);
    let slot = &mut slots()[slot_index(ino, offset)];
    let old = core::mem::replace(slot, Kept { ino, offset, valid, version, frame });
    if old.frame != 0 {
        frames.put(old.frame);
    }
}

/// Lets go of every kept page: the frame allocator's last resort.
pub fn reclaim(frames: &mut Frames) {
    for slot in slots().iter_mut() {
        let old = core::mem::replace(slot, EMPTY);
        if old.frame != 0 {
            frames.put(old.frame);
        }
    }
}
