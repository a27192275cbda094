// The system-call numbers, the one list both sides use: the kernel
// (`kernel/trap.rs`) and every user program (`user/ulib.rs`) `include!`
// this file, since user programs are built alone, without crates.

pub const SYS_EXIT: u64 = 0;
pub const SYS_WRITE: u64 = 1;
pub const SYS_FORK: u64 = 2;
pub const SYS_WAIT: u64 = 3;
pub const SYS_YIELD: u64 = 4;
pub const SYS_GETPID: u64 = 5;
pub const SYS_SBRK: u64 = 6;
pub const SYS_CLOCK: u64 = 7;
pub const SYS_EXITS: u64 = 8;
