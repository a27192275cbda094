//! # hv-core: the hypervisor's logic
//!
//! Everything Umbra decides about a guest lives here: what a hypercall
//! means, which trap goes back to the guest and which one kills it, when a
//! virtual interrupt is delivered. It is safe Rust behind small traits
//! (guest memory, frame pool, CPU) so it can be tested on the host; the
//! firmware supplies the real hardware behind those traits.
//!
//! - [`abi`]: the hypercall ABI, shared word for word with the guest;
//! - [`elf`]: loading a guest's ELF image into its memory;
//! - [`vcpu`]: what each exit from the guest means: shadow fills,
//!   hypercalls, kills;
//! - [`traps`]: the guest's own handlers: reflected exceptions, direct and
//!   emulated system calls, virtual interrupts and the clock.
#![no_std]
#![forbid(unsafe_code)]

pub mod abi;
pub mod elf;
pub mod rng;
pub mod traps;
pub mod vcpu;
