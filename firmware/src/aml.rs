//! # Finding `\_S5_` in the DSDT
//!
//! To switch a legacy ACPI machine off, the OS writes the S5 sleep type
//! into PM1a control; that number lives in the DSDT's `\_S5_` package.
//! The search is pure logic that the guest kernel's native backend needs
//! too, so it lives in `umbra-abi` (feature `acpi`), with its tests; this
//! is where the firmware takes it from.

pub use umbra_abi::acpi::{SleepTypes, find_s5};
