//! # guest: the paravirtual kernel Umbra runs
//!
//! A small kernel that runs at ring 1 under Umbra, asking for privileged
//! work through hypercalls. Later it also boots natively, so the two runs
//! can be compared.
#![no_std]
