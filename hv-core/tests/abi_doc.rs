//! `docs/abi.md` is the contract guest authors read, and `abi.rs` is the
//! one the compiler reads. Where a guest author needs byte offsets, the
//! page gives them, and this test holds the page to the structs: every
//! field of `SharedPage` and `BootInfo` must stand in its table at the
//! offset the compiler gives it, and no field may be missing.

use std::mem::{offset_of, size_of};

use hv_core::abi::{BootInfo, SharedPage};

const DOC: &str = include_str!("../../docs/abi.md");

/// Every field with its offset and size, in order; the sizes add up to
/// the struct's, so a field added to the struct and not here fails.
fn check_table(name: &str, fields: &[(&str, usize, usize)], struct_size: usize) {
    let mut end = 0;
    for &(field, offset, size) in fields {
        assert!(offset >= end, "{name}.{field}: fields out of order");
        end = offset + size;
        let row = format!("| {offset} | `{field}` |");
        assert!(
            DOC.lines().any(|line| line.starts_with(&row)),
            "docs/abi.md has no row starting {row:?} for {name}.{field}"
        );
    }
    assert_eq!(end, struct_size, "{name}: the list above misses a field");
}

#[test]
fn the_shared_page_table_gives_every_offset() {
    check_table(
        "SharedPage",
        &[
            ("abi_version", offset_of!(SharedPage, abi_version), 4),
            ("irq_enabled", offset_of!(SharedPage, irq_enabled), 4),
            ("irq_pending", offset_of!(SharedPage, irq_pending), 32),
            ("cr2", offset_of!(SharedPage, cr2), 8),
            ("time_ns", offset_of!(SharedPage, time_ns), 8),
            ("tsc_khz", offset_of!(SharedPage, tsc_khz), 8),
            ("kernel_boundary", offset_of!(SharedPage, kernel_boundary), 8),
            ("noirq_iret", offset_of!(SharedPage, noirq_iret), 8),
            ("async_completed", offset_of!(SharedPage, async_completed), 8),
            ("async_ring", offset_of!(SharedPage, async_ring), size_of::<[hv_core::abi::AsyncCall; 64]>()),
            ("exits", offset_of!(SharedPage, exits), 8),
        ],
        size_of::<SharedPage>(),
    );
}

#[test]
fn the_boot_info_table_gives_every_offset() {
    check_table(
        "BootInfo",
        &[
            ("magic", offset_of!(BootInfo, magic), 8),
            ("abi_version", offset_of!(BootInfo, abi_version), 4),
            ("reserved", offset_of!(BootInfo, reserved), 4),
            ("memory_size", offset_of!(BootInfo, memory_size), 8),
            ("cmdline_addr", offset_of!(BootInfo, cmdline_addr), 8),
            ("cmdline_len", offset_of!(BootInfo, cmdline_len), 8),
        ],
        size_of::<BootInfo>(),
    );
}
