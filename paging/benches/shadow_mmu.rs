//! Host benchmarks of the shadow MMU's hot paths, over the same simulated
//! memory and pool as the tests (so they measure the MMU's own logic plus
//! map-backed memory, not real page-table hardware):
//!
//! * a demand fill of a 4 KiB page whose guest tables are already accessed;
//! * `new_pagetable` when the root is cached, and when it is not (reusing
//!   the least recently used root);
//! * `set_pte` for a kernel address (every one of eight roots) and for a
//!   user address (one root), both with prefill;
//! * a full flush of two roots holding 1024 mappings each.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use criterion::{Criterion, criterion_group, criterion_main};
use paging::entry::{ACCESSED, DIRTY, PRESENT, USER, WRITABLE};
use paging::{Access, ROOT_CACHE_SIZE};
use std::hint::black_box;
use std::time::{Duration, Instant};

const USER_READ: Access = Access { write: false, user: true, fetch: false };
const PAGES: u64 = 1024;
const USER_BASE: u64 = 0x0000_0000_4000_0000;
const KERNEL_VA: u64 = 0xFFFF_8000_0010_0000;

fn cr3(i: u64) -> u64 {
    0x8000 + i * 0x1000
}

/// An MMU with `spaces` address spaces, each mapping `PAGES` user pages and
/// sharing one kernel page, all already accessed and dirty.
fn world(spaces: u64) -> Mmu {
    let mut mmu = mmu_with(LIMIT, 8192);
    let mut b = Builder::new();
    let flags = PRESENT | WRITABLE | USER | ACCESSED | DIRTY;
    for s in 0..spaces {
        for p in 0..PAGES {
            b.map(mmu.memory_mut(), cr3(s), USER_BASE + p * 0x1000, 0x30_0000, flags);
        }
        b.map(mmu.memory_mut(), cr3(s), KERNEL_VA, 0x30_0000, flags);
    }
    mmu.new_pagetable(cr3(0)).unwrap();
    mmu
}

fn demand_fill(c: &mut Criterion) {
    let mut mmu = world(1);
    c.bench_function("demand_fill/4k_page", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                mmu.flush_user_half().unwrap();
                let batch = (iters - done).min(PAGES);
                let start = Instant::now();
                for p in 0..batch {
                    black_box(mmu.demand_fill(USER_BASE + p * 0x1000, USER_READ));
                }
                total += start.elapsed();
                done += batch;
            }
            total
        })
    });
}

fn new_pagetable(c: &mut Criterion) {
    let mut mmu = world(2);
    mmu.new_pagetable(cr3(1)).unwrap();
    let mut flip = false;
    c.bench_function("new_pagetable/hit", |b| {
        b.iter(|| {
            flip = !flip;
            mmu.new_pagetable(cr3(flip as u64)).unwrap()
        })
    });

    // Twice as many address spaces as roots: every switch misses.
    let spaces = 2 * ROOT_CACHE_SIZE as u64;
    let mut mmu = world(0);
    let mut next = 0;
    c.bench_function("new_pagetable/miss", |b| {
        b.iter(|| {
            next = (next + 1) % spaces;
            mmu.new_pagetable(cr3(next)).unwrap()
        })
    });
    assert!(mmu.counters().evictions > 0);
}

fn set_pte(c: &mut Criterion) {
    let mut mmu = world(ROOT_CACHE_SIZE as u64);
    for s in 0..ROOT_CACHE_SIZE as u64 {
        mmu.new_pagetable(cr3(s)).unwrap();
        mmu.demand_fill(KERNEL_VA, USER_READ);
        mmu.demand_fill(USER_BASE, USER_READ);
    }
    let pte = 0x30_0000 | PRESENT | WRITABLE | USER | ACCESSED | DIRTY;
    let prefills = mmu.counters().prefills;
    c.bench_function("set_pte/kernel_8_roots", |b| {
        b.iter(|| mmu.set_pte(cr3(0), black_box(KERNEL_VA), pte).unwrap())
    });
    c.bench_function("set_pte/user", |b| b.iter(|| mmu.set_pte(cr3(0), black_box(USER_BASE), pte).unwrap()));
    assert!(mmu.counters().prefills > prefills, "the benchmark prefills");
}

fn flush_all(c: &mut Criterion) {
    let mut mmu = world(2);
    c.bench_function("flush_all/2_roots_2048_pages", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for s in [1, 0] {
                    mmu.new_pagetable(cr3(s)).unwrap();
                    for p in 0..PAGES {
                        mmu.demand_fill(USER_BASE + p * 0x1000, USER_READ);
                    }
                }
                let start = Instant::now();
                mmu.flush_all().unwrap();
                total += start.elapsed();
            }
            total
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = demand_fill, new_pagetable, set_pte, flush_all
}
criterion_main!(benches);
