//! memtest: the memory scenarios, picked by `arg`.
//! - 0, demand zero: pages from sbrk and a deep stack read as zero the
//!   first time and keep what is written.
//! - 1, copy-on-write: children forked from a filled heap see the parent's
//!   data, write their own, and the parent's stays intact.
//! - 2, sbrk growth: tens of MiB, every page written and checked, shrunk
//!   and grown again (and zero again).
//! - 3, churn: rounds of fork, grow, touch, fork again, exit and shrink,
//!   so page tables are built and torn down over and over.
//!
//! Each prints what it checked and exits 0, or says what failed and exits
//! with a nonzero status.
#![no_std]
#![no_main]

mod ulib;

const PAGE: u64 = 4096;

fn word(addr: u64) -> u64 {
    // SAFETY: callers pass addresses inside our heap.
    unsafe { (addr as *const u64).read_volatile() }
}

fn set(addr: u64, value: u64) {
    // SAFETY: as above.
    unsafe { (addr as *mut u64).write_volatile(value) }
}

fn grow(bytes: u64) -> u64 {
    match ulib::sbrk(bytes as i64) {
        Some(old) => old,
        None => {
            println!("sbrk({bytes}) refused");
            ulib::exit(2)
        }
    }
}

fn main(arg: u64) -> u64 {
    match arg {
        0 => demand_zero(),
        1 => copy_on_write(),
        2 => big_sbrk(24 << 20),
        _ => churn(),
    }
}

/// Fills `pages` pages from `base` with a pattern keyed by `salt`.
fn fill(base: u64, pages: u64, salt: u64) {
    for page in 0..pages {
        set(base + page * PAGE, salt ^ page);
        set(base + page * PAGE + PAGE - 8, !(salt ^ page));
    }
}

/// Whether `fill` with `salt` is what the pages hold.
fn check(base: u64, pages: u64, salt: u64) -> bool {
    (0..pages).all(|page| {
        word(base + page * PAGE) == salt ^ page && word(base + page * PAGE + PAGE - 8) == !(salt ^ page)
    })
}

/// Uses about `depth` KiB of stack, writing each frame.
#[inline(never)]
fn deep(depth: u64) -> u64 {
    let mut frame = [0u8; 1024];
    frame[0] = depth as u8;
    let frame = core::hint::black_box(&mut frame);
    if depth == 0 { frame[0] as u64 } else { deep(depth - 1) + frame[0] as u64 + frame[1023] as u64 }
}

fn demand_zero() -> u64 {
    const PAGES: u64 = 64;
    let base = grow(PAGES * PAGE);
    let zero = (0..PAGES).all(|page| word(base + page * PAGE + 8 * page % PAGE) == 0);
    fill(base, PAGES, 0x1234);
    let kept = check(base, PAGES, 0x1234);
    let stack = deep(128);
    println!("demand zero: {PAGES} heap pages zero at first touch: {zero}; kept: {kept}");
    println!("demand zero: 128 KiB of stack grown on demand, sum {stack}");
    if zero && kept && stack == 128 * 129 / 2 { 0 } else { 3 }
}

fn copy_on_write() -> u64 {
    const PAGES: u64 = 16;
    const CHILDREN: u64 = 3;
    let base = grow(PAGES * PAGE);
    fill(base, PAGES, 0xAAAA);
    for child in 1..=CHILDREN {
        if ulib::fork() == 0 {
            let inherited = check(base, PAGES, 0xAAAA);
            fill(base, PAGES, child);
            let own = check(base, PAGES, child);
            println!("cow child {child}: inherited the parent's pages: {inherited}; own copy: {own}");
            ulib::exit(if inherited && own { 0 } else { 4 });
        }
    }
    let mut failed = 0;
    for _ in 0..CHILDREN {
        match ulib::wait() {
            Some((_, 0)) => {}
            _ => failed += 1,
        }
    }
    let intact = check(base, PAGES, 0xAAAA);
    println!("cow parent: {CHILDREN} children done, {failed} failed; parent's pages intact: {intact}");
    if intact && failed == 0 { 0 } else { 5 }
}

fn big_sbrk(bytes: u64) -> u64 {
    const STEP: u64 = 1 << 20;
    let base = grow(0);
    for _ in 0..bytes / STEP {
        grow(STEP);
    }
    let pages = bytes / PAGE;
    fill(base, pages, 0x5b5b);
    let kept = check(base, pages, 0x5b5b);
    println!("sbrk: grew by {} MiB, {pages} pages written and checked: {kept}", bytes >> 20);
    ulib::sbrk(-(bytes as i64));
    let back = grow(0) == base;
    grow(bytes);
    let zero = (0..pages).step_by(64).all(|page| word(base + page * PAGE) == 0);
    println!("sbrk: shrunk back to the start: {back}; grown again, zero again: {zero}");
    if kept && back && zero { 0 } else { 6 }
}

fn churn() -> u64 {
    const ROUNDS: u64 = 12;
    const PAGES: u64 = 64;
    let mut failed = 0;
    for round in 0..ROUNDS {
        if ulib::fork() == 0 {
            let base = grow(PAGES * PAGE);
            fill(base, PAGES, round);
            if ulib::fork() == 0 {
                let ok = check(base, PAGES, round);
                fill(base, PAGES / 2, !round);
                ulib::exit(if ok && check(base, PAGES / 2, !round) { 0 } else { 7 });
            }
            let child_ok = matches!(ulib::wait(), Some((_, 0)));
            let ok = check(base, PAGES, round);
            ulib::sbrk(-((PAGES * PAGE) as i64));
            ulib::exit(if ok && child_ok { 0 } else { 8 });
        }
        if !matches!(ulib::wait(), Some((_, 0))) {
            failed += 1;
        }
        let base = grow(PAGES * PAGE);
        fill(base, PAGES, round << 8);
        if !check(base, PAGES, round << 8) {
            failed += 1;
        }
        ulib::sbrk(-((PAGES * PAGE) as i64));
    }
    println!("churn: {ROUNDS} rounds of fork, grow, fork, exit and shrink; {failed} failed");
    if failed == 0 { 0 } else { 9 }
}
