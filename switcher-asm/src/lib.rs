//! # switcher-asm: the world switch
//!
//! A single hand-written page of assembly, mapped at the top 4 MB of the
//! host's address space and of every guest's, moves a CPU from host to
//! guest and back. The layout of the per-CPU pages it uses is described
//! here as `#[repr(C)]` structs so that Rust and the assembly agree.
#![no_std]

/// The top 4 MB of every address space belong to the switcher.
pub const SWITCHER_BASE: u64 = 0xFFFF_FFFF_FFC0_0000;
