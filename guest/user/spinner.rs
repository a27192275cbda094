//! spinner: computes without a system call for a while, so only the
//! timer can take the CPU from it; then prints a checksum that does not
//! depend on how often it was preempted.
#![no_std]
#![no_main]

mod ulib;

fn main(arg: u64) -> u64 {
    println!("spinner {arg}: start");
    let mut x = arg.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for _ in 0..2_000_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Keep the loop a loop: the compiler may not fold it away.
        x = core::hint::black_box(x);
    }
    println!("spinner {arg}: checksum {:#018x}", x);
    0
}
