//! # The kernel heap: `alloc` for the Linux personality
//!
//! The filesystem, the file-descriptor tables and the process lists need
//! `Vec`, `BTreeMap` and `Box`. The heap is one range of guest memory set
//! aside at boot (reached through the direct map) and handed out by a
//! small allocator with two halves:
//!
//! - blocks of up to one page come in power-of-two size classes, each
//!   with its own free list threaded through the free blocks; a class
//!   with an empty list takes a fresh page and cuts it up;
//! - anything larger is a run of whole pages, found first-fit in a list
//!   of free runs kept sorted by address and merged with its neighbours
//!   when given back.
//!
//! Page-sized blocks (what the filesystem stores file data in) are the
//! commonest request, and come off a free list in a few instructions.
//! Exhaustion returns null, never a panic: callers whose sizes depend on
//! user input use the fallible APIs (`try_reserve`, `Box::try_new`...).
//!
//! One CPU and a kernel that runs with interrupts off: no locking.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::null_mut;

const PAGE: usize = 4096;
/// Size classes 16, 32, ... 4096 bytes.
const CLASSES: usize = 9;
const MIN_CLASS_SHIFT: u32 = 4;

struct State {
    /// Free blocks of each class, linked through their first word.
    free: [usize; CLASSES],
    /// Free runs of pages: a `Run` at the start of each, sorted by address.
    runs: usize,
    /// Pages never handed out yet.
    bump: usize,
    end: usize,
    /// Bytes handed out, for the shutdown report.
    in_use: usize,
}

#[repr(C)]
struct Run {
    next: usize,
    pages: usize,
}

pub struct Heap(UnsafeCell<State>);

// SAFETY: one CPU, and the kernel runs with interrupts off.
unsafe impl Sync for Heap {}

#[global_allocator]
pub static HEAP: Heap =
    Heap(UnsafeCell::new(State { free: [0; CLASSES], runs: 0, bump: 0, end: 0, in_use: 0 }));

impl Heap {
    /// Gives the heap `[start, end)`, a kernel-half range of whole pages.
    pub fn init(&self, start: usize, end: usize) {
        // SAFETY: called once at boot, before any allocation.
        let state = unsafe { &mut *self.0.get() };
        state.bump = start.next_multiple_of(PAGE);
        state.end = end & !(PAGE - 1);
    }

    /// Bytes in use and bytes the heap has in all.
    pub fn usage(&self) -> (usize, usize) {
        // SAFETY: reading counters; see `Sync`.
        let state = unsafe { &*self.0.get() };
        (state.in_use, state.end.saturating_sub(state.bump))
    }
}

fn class_of(layout: &Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_CLASS_SHIFT);
    if size > PAGE {
        return None;
    }
    Some((size.next_power_of_two().trailing_zeros() - MIN_CLASS_SHIFT) as usize)
}

impl State {
    fn pages(&mut self, count: usize) -> *mut u8 {
        // First fit in the free runs.
        let mut link: *mut usize = &mut self.runs;
        // SAFETY: every run on the list is free heap memory we own, holding
        // a `Run` at its start.
        unsafe {
            while *link != 0 {
                let run = *link as *mut Run;
                if (*run).pages == count {
                    *link = (*run).next;
                    return run as *mut u8;
                }
                if (*run).pages > count {
                    let rest = (run as usize + count * PAGE) as *mut Run;
                    rest.write(Run { next: (*run).next, pages: (*run).pages - count });
                    *link = rest as usize;
                    return run as *mut u8;
                }
                link = &mut (*run).next;
            }
        }
        let bytes = count * PAGE;
        if self.end - self.bump < bytes {
            return null_mut();
        }
        self.bump += bytes;
        (self.bump - bytes) as *mut u8
    }

    fn free_pages(&mut self, at: usize, count: usize) {
        // SAFETY: as in `pages`; the run given back is ours again.
        unsafe {
            let mut link: *mut usize = &mut self.runs;
            while *link != 0 && *link < at {
                link = &mut (*(*link as *mut Run)).next;
            }
            let next = *link;
            let run = at as *mut Run;
            run.write(Run { next, pages: count });
            if next != 0 && at + count * PAGE == next {
                (*run).pages += (*(next as *mut Run)).pages;
                (*run).next = (*(next as *mut Run)).next;
            }
            *link = at;
            // Merge with the run before, if it ends where this one starts.
            let mut prev = self.runs;
            while prev != 0 && prev != at {
                let p = prev as *mut Run;
                if (*p).next == at {
                    if prev + (*p).pages * PAGE == at {
                        (*p).pages += (*run).pages;
                        (*p).next = (*run).next;
                    }
                    break;
                }
                prev = (*p).next;
            }
        }
    }
}

// SAFETY: blocks never overlap: each is on exactly one free list or
// handed out exactly once, and class blocks are aligned to their size.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see `Sync`.
        let state = unsafe { &mut *self.0.get() };
        match class_of(&layout) {
            Some(class) => {
                let size = 1usize << (class as u32 + MIN_CLASS_SHIFT);
                if state.free[class] == 0 {
                    let page = state.pages(1);
                    if page.is_null() {
                        return null_mut();
                    }
                    for offset in (0..PAGE).step_by(size).rev() {
                        let block = page as usize + offset;
                        // SAFETY: a block of the fresh page.
                        unsafe { (block as *mut usize).write(state.free[class]) };
                        state.free[class] = block;
                    }
                }
                let block = state.free[class];
                // SAFETY: a free block holds the address of the next one.
                state.free[class] = unsafe { (block as *const usize).read() };
                state.in_use += size;
                block as *mut u8
            }
            None if layout.align() <= PAGE => {
                let count = layout.size().div_ceil(PAGE);
                let block = state.pages(count);
                if !block.is_null() {
                    state.in_use += count * PAGE;
                }
                block
            }
            None => null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: see `Sync`.
        let state = unsafe { &mut *self.0.get() };
        match class_of(&layout) {
            Some(class) => {
                // SAFETY: the block was ours and is free again.
                unsafe { (ptr as *mut usize).write(state.free[class]) };
                state.free[class] = ptr as usize;
                state.in_use -= 1 << (class as u32 + MIN_CLASS_SHIFT);
            }
            None => {
                let count = layout.size().div_ceil(PAGE);
                state.in_use -= count * PAGE;
                state.free_pages(ptr as usize, count);
            }
        }
    }
}
