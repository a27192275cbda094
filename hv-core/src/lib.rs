//! # hv-core: the hypervisor's logic
//!
//! Everything Umbra decides about a guest lives here: what a hypercall
//! means, which trap goes back to the guest and which one kills it, when a
//! virtual interrupt is delivered, which guest runs next and when one has
//! run too long. It is safe Rust behind small traits (guest memory, frame
//! pool, the machine) so it can be tested on the host; the firmware
//! supplies the real hardware behind those traits.
//!
//! - the hypercall ABI it implements is the `umbra-abi` crate, which the
//!   guest uses too, so the two cannot drift apart;
//! - [`elf`]: loading a guest's ELF image into its memory;
//! - [`vcpu`]: what each exit from the guest means: shadow fills,
//!   hypercalls, kills;
//! - [`traps`]: the guest's own handlers: reflected exceptions, direct and
//!   emulated system calls, virtual interrupts and the clock;
//! - [`run`]: the run loop and the scheduler: places, turns, halts, the
//!   watchdog, behind the [`run::Machine`] trait the firmware implements;
//! - [`load`]: a guest's memory, its ELF image and its boot information;
//! - [`report`]: what the host prints about its guests, and the run's
//!   status (`umbra_abi::status`).
#![no_std]
#![forbid(unsafe_code)]

pub mod elf;
pub mod load;
pub mod report;
pub mod run;
pub mod traps;
pub mod vcpu;
