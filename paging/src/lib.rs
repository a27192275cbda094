//! # paging: Umbra's shadow MMU
//!
//! The guest writes its own page tables, but the CPU never walks them: it
//! walks *shadow* tables that this crate builds from the guest's, checking
//! every entry on the way. (Filled in by the shadow-MMU work.)
#![no_std]
#![forbid(unsafe_code)]
