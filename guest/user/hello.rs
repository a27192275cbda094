//! hello: the smallest user program. It greets, proves it is in ring 3
//! (its code segment's low bits), and exits with its argument.
#![no_std]
#![no_main]

mod ulib;

fn main(arg: u64) -> u64 {
    let cs: u64;
    // SAFETY: reading a segment register has no side effects.
    unsafe { core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack)) };
    println!("hello from user mode (ring {})", cs & 3);
    println!("goodbye, status {arg}");
    arg
}
