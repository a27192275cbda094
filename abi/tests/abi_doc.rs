//! `docs/abi.md` is the contract guest authors read, and this crate is the
//! one the compiler reads. Where a guest author needs byte offsets, the
//! page gives them, and this test holds the page to the structs: every
//! field of `SharedPage` and `BootInfo` must stand in its table at the
//! offset the compiler gives it, and no field may be missing.

use std::mem::{offset_of, size_of};

use umbra_abi::{BootInfo, SharedPage};

const DOC: &str = include_str!("../../docs/abi.md");

/// The size of the field `_field` reads, known from its type alone.
fn size_of_field<S, T>(_field: fn(&S) -> &T) -> usize {
    size_of::<T>()
}

/// `(name, offset, size)` for the named fields of a struct, in the order
/// given: each one's offset and size come from the compiler.
macro_rules! fields {
    ($struct:ty: $($field:ident),+) => {
        [$((stringify!($field), offset_of!($struct, $field), size_of_field(|s: &$struct| &s.$field))),+]
    };
}

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
    let fields = fields!(SharedPage: abi_version, irq_enabled, irq_pending, cr2, time_ns, tsc_khz,
        kernel_boundary, noirq_iret, async_completed, async_ring, exits);
    check_table("SharedPage", &fields, size_of::<SharedPage>());
}

#[test]
fn the_boot_info_table_gives_every_offset() {
    let fields = fields!(BootInfo: magic, abi_version, reserved, memory_size, cmdline_addr, cmdline_len,
        rootfs_addr, rootfs_len);
    check_table("BootInfo", &fields, size_of::<BootInfo>());
}
