//! crash: misbehaves on purpose, so the kernel must kill it and carry on.
//! `arg` picks how: 0 divides by zero (#DE), 1 reads an address nothing
//! maps (#PF), 2 writes into its own text (#PF, protection), 3 runs a
//! privileged instruction (#GP), 4 an invalid opcode (#UD).
#![no_std]
#![no_main]

mod ulib;

fn main(arg: u64) -> u64 {
    println!("about to crash, way {arg}");
    // SAFETY: none of these is safe; each is meant to get us killed.
    unsafe {
        match arg {
            0 => core::arch::asm!("div {0}", in(reg) 0u64, inout("rax") 1u64 => _, inout("rdx") 0u64 => _),
            1 => {
                let _ = (0x0000_4000_dead_0000 as *const u64).read_volatile();
            }
            2 => (main as *const () as *mut u8).write_volatile(0xcc),
            3 => core::arch::asm!("cli"),
            _ => core::arch::asm!("ud2"),
        }
    }
    println!("survived the crash: the kernel did not kill us");
    1
}
