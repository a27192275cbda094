//! # ulib: what every user program links with
//!
//! The whole runtime of a user program: the entry point, the system calls,
//! a line printer and a panic handler. A program is one file that says
//! `mod ulib;` and defines `fn main(arg: u64) -> u64`; the kernel starts
//! it at `_start` with `arg` in `rdi` and a fresh stack, and `main`'s
//! result becomes the exit status.
//!
//! System calls are `int 0x80`: the number in `rax`, arguments in `rdi`,
//! `rsi`, `rdx`, the result in `rax`; every other register is preserved.
//! The numbers are the kernel's (`src/kernel/syscall_numbers.rs`); a negative result
//! (as i64) is an error.
#![allow(dead_code)]

use core::fmt::{self, Write};

include!("../src/kernel/syscall_numbers.rs");

// The entry: align the stack as a call would, then main's result is the
// status for exit. `ud2` is never reached.
core::arch::global_asm!(
    r#"
    .section .text.start, "ax"
    .global _start
_start:
    and $-16, %rsp
    call ulib_start
    ud2
    "#,
    options(att_syntax)
);

#[unsafe(no_mangle)]
extern "C" fn ulib_start(arg: u64) -> ! {
    let status = crate::main(arg);
    exit(status)
}

/// One system call.
pub fn syscall(number: u64, a0: u64, a1: u64, a2: u64) -> u64 {
    let result;
    // SAFETY: `int 0x80` enters the kernel, which preserves every register
    // but rax and may read or write the memory the arguments name.
    unsafe {
        core::arch::asm!("int 0x80", inlateout("rax") number => result, in("rdi") a0, in("rsi") a1,
            in("rdx") a2, options(nostack));
    }
    result
}

pub fn exit(status: u64) -> ! {
    syscall(SYS_EXIT, status, 0, 0);
    loop {
        core::hint::spin_loop();
    }
}

pub fn write(bytes: &[u8]) -> u64 {
    syscall(SYS_WRITE, bytes.as_ptr() as u64, bytes.len() as u64, 0)
}

/// 0 in the child, the child's pid in the parent.
pub fn fork() -> u64 {
    syscall(SYS_FORK, 0, 0, 0)
}

/// Waits for any child to end: `Some((pid, status))`, or `None` without
/// children.
pub fn wait() -> Option<(u64, u64)> {
    let mut status = 0u64;
    let pid = syscall(SYS_WAIT, &raw mut status as u64, 0, 0);
    ((pid as i64) > 0).then_some((pid, status))
}

pub fn yield_now() {
    syscall(SYS_YIELD, 0, 0, 0);
}

pub fn getpid() -> u64 {
    syscall(SYS_GETPID, 0, 0, 0)
}

/// Moves the break by `delta` bytes; the old break, or `None`.
pub fn sbrk(delta: i64) -> Option<u64> {
    let old = syscall(SYS_SBRK, delta as u64, 0, 0);
    ((old as i64) >= 0).then_some(old)
}

pub fn clock_ns() -> u64 {
    syscall(SYS_CLOCK, 0, 0, 0)
}

/// How often the kernel has exited to its hypervisor so far (0 natively).
pub fn hypervisor_exits() -> u64 {
    syscall(SYS_EXITS, 0, 0, 0)
}

/// A line being built; `println!` sends it with one write, so lines of
/// different processes never mix.
pub struct Line {
    buffer: [u8; 200],
    len: usize,
}

impl Line {
    pub const fn new() -> Line {
        Line { buffer: [0; 200], len: 0 }
    }

    pub fn send(&mut self) {
        write(&self.buffer[..self.len]);
        self.len = 0;
    }
}

impl Write for Line {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for &byte in text.as_bytes() {
            if self.len == self.buffer.len() - 1 {
                self.buffer[self.len] = b'\n';
                self.len += 1;
                self.send();
            }
            self.buffer[self.len] = byte;
            self.len += 1;
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut line = $crate::ulib::Line::new();
        let _ = writeln!(line, $($arg)*);
        line.send();
    }};
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("panic: {}", info.message());
    exit(101)
}
