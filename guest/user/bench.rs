//! bench: one workload of the native-versus-nested benchmark, timed from
//! inside. `arg` is the workload in its top byte and the operation count
//! below; the kernel passes it from `test=bench:NAME=COUNT,...`.
//!
//! Each workload times itself with the kernel's clock and counts the
//! hypervisor exits it caused (always 0 natively), then prints one line:
//!
//!   bench NAME: OPS ops, NS ns, EXITS exits
//!
//! which `scripts/bench.sh` reads. The workloads:
//! - 0, compute: a register-only loop, no system call, no fault;
//! - 1, syscall: getpid, the cheapest round trip into the kernel;
//! - 2, yield: two processes yielding to each other (a context switch each);
//! - 3, touch: first touch of fresh heap pages (a demand-zero fault each);
//! - 4, fork: fork, exit in the child, wait in the parent;
//! - 5, mixed: rounds of fork, a child that grows its heap, touches it and
//!   makes a few calls, while the parent computes, then waits.
#![no_std]
#![no_main]

mod ulib;

const PAGE: u64 = 4096;
const NAMES: [&str; 6] = ["compute", "syscall", "yield", "touch", "fork", "mixed"];

fn compute(iterations: u64) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = core::hint::black_box(x);
    }
    x
}

/// Grows the heap by `pages` and writes one byte in each.
fn touch(pages: u64) -> bool {
    let Some(base) = ulib::sbrk((pages * PAGE) as i64) else { return false };
    for page in 0..pages {
        // SAFETY: the pages were just added to our heap.
        unsafe { ((base + page * PAGE) as *mut u8).write_volatile(1) };
    }
    true
}

/// Runs workload `which` for `count` operations; the operations done, or
/// None if something refused.
fn run(which: u64, count: u64) -> Option<u64> {
    match which {
        0 => {
            compute(count);
            Some(count)
        }
        1 => {
            for _ in 0..count {
                ulib::getpid();
            }
            Some(count)
        }
        2 => {
            let child = ulib::fork();
            for _ in 0..count {
                ulib::yield_now();
            }
            if child == 0 {
                ulib::exit(0);
            }
            ulib::wait()?;
            Some(2 * count)
        }
        3 => touch(count).then_some(count),
        4 => {
            for _ in 0..count {
                if ulib::fork() == 0 {
                    ulib::exit(0);
                }
                ulib::wait()?;
            }
            Some(count)
        }
        5 => {
            for _ in 0..count {
                if ulib::fork() == 0 {
                    let ok = touch(16);
                    for _ in 0..16 {
                        ulib::getpid();
                    }
                    ulib::exit(u64::from(!ok));
                }
                compute(10_000);
                let (_, status) = ulib::wait()?;
                if status != 0 {
                    return None;
                }
            }
            Some(count)
        }
        _ => None,
    }
}

fn main(arg: u64) -> u64 {
    let (which, count) = (arg >> 56, arg & ((1 << 56) - 1));
    let Some(&name) = NAMES.get(which as usize) else { return 2 };
    let (exits, start) = (ulib::hypervisor_exits(), ulib::clock_ns());
    let Some(ops) = run(which, count) else {
        println!("bench {name}: refused after starting");
        return 1;
    };
    let (ns, exits) = (ulib::clock_ns() - start, ulib::hypervisor_exits() - exits);
    println!("bench {name}: {ops} ops, {ns} ns, {exits} exits");
    0
}
