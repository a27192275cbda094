//! # The firmware's pure logic
//!
//! Umbra's firmware starts life with nothing but what the VMM hands it: a
//! `hvm_start_info` block, a memory map, a command line and some ACPI
//! tables. Every byte of that comes from outside, so the code that reads
//! it is kept here, apart from the hardware, as plain safe Rust that the
//! host can test with crafted input. The image (`src/main.rs`) supplies
//! the physical memory these readers look at; nothing here touches a port,
//! a register or a raw pointer.
//!
//! The tour, in boot order:
//! - [`bootinfo`] validates `hvm_start_info` and copies out what it says;
//! - [`cmdline`] turns the command line into a [`cmdline::Config`];
//! - [`madt`] and [`aml`] read the two ACPI facts the firmware needs:
//!   which CPUs exist, and how to switch the machine off;
//! - [`frames`] turns the memory map into free page frames, keeping out
//!   everything that is already spoken for;
//! - [`guestmem`] decides how much of them each guest gets;
//! - [`modules`] tells a module that is a guest kernel from one that is a
//!   root filesystem.
//!
//! The exit statuses the firmware ends with are the ABI's
//! (`umbra_abi::status`).
#![no_std]
#![forbid(unsafe_code)]

pub mod aml;
pub mod bootinfo;
pub mod cmdline;
pub mod frames;
pub mod guestmem;
pub mod madt;
pub mod modules;

/// The version printed in the banner: `umbra <version>`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A half-open range of physical addresses, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

impl PhysRange {
    /// The range of `len` bytes at `start`, or `None` if it would wrap.
    pub fn from_len(start: u64, len: u64) -> Option<PhysRange> {
        Some(PhysRange { start, end: start.checked_add(len)? })
    }

    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    pub fn overlaps(&self, other: &PhysRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    pub fn contains_range(&self, other: &PhysRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}
