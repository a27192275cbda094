//! # Finding `\_S5_` in the DSDT
//!
//! To switch a legacy ACPI machine off, the OS writes the S5 sleep type
//! into PM1a control. That number lives in the DSDT as the package
//! `Name (_S5, Package () { typA, typB, ... })`. A full AML interpreter is
//! far more than this needs: the object is a literal, so we look for its
//! byte pattern and decode the first two integers. Every read is bounded;
//! a table that does not match simply yields `None`.

/// The two SLP_TYP values of the S5 (soft-off) state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SleepTypes {
    pub a: u8,
    pub b: u8,
}

const NAME_OP: u8 = 0x08;
const ROOT_PREFIX: u8 = b'\\';
const PACKAGE_OP: u8 = 0x12;
const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;

/// Find `\_S5_` in an AML byte stream (the DSDT without its header).
pub fn find_s5(aml: &[u8]) -> Option<SleepTypes> {
    let mut search_from = 0;
    while let Some(found) = find(&aml[search_from..], b"_S5_") {
        let at = search_from + found;
        search_from = at + 1;
        let named = at >= 1 && aml[at - 1] == NAME_OP
            || at >= 2 && aml[at - 1] == ROOT_PREFIX && aml[at - 2] == NAME_OP;
        if !named {
            continue;
        }
        if let Some(types) = decode_package(aml.get(at + 4..)?) {
            return Some(types);
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decode `PackageOp PkgLength NumElements typA typB ...`.
fn decode_package(bytes: &[u8]) -> Option<SleepTypes> {
    if *bytes.first()? != PACKAGE_OP {
        return None;
    }
    // PkgLength: the top two bits of its first byte count the bytes after it.
    let follow = (*bytes.get(1)? >> 6) as usize;
    let mut cursor = 2 + follow;
    let elements = *bytes.get(cursor)?;
    if elements < 2 {
        return None;
    }
    cursor += 1;
    let a = integer(bytes, &mut cursor)?;
    let b = integer(bytes, &mut cursor)?;
    Some(SleepTypes { a, b })
}

/// Decode one small integer; SLP_TYP is 3 bits, so wider values are cut.
fn integer(bytes: &[u8], cursor: &mut usize) -> Option<u8> {
    let op = *bytes.get(*cursor)?;
    let (value, width) = match op {
        ZERO_OP => (0, 0),
        ONE_OP => (1, 0),
        BYTE_PREFIX => (*bytes.get(*cursor + 1)?, 1),
        WORD_PREFIX => (*bytes.get(*cursor + 1)?, 2),
        DWORD_PREFIX => (*bytes.get(*cursor + 1)?, 4),
        _ => return None,
    };
    bytes.get(*cursor + width)?;
    *cursor += 1 + width;
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_style_s5() {
        // Name (_S5, Package (0x04) { Zero, Zero, Zero, Zero }) as QEMU's q35 writes it.
        let aml = [0x10, 0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(find_s5(&aml[1..]), Some(SleepTypes { a: 0, b: 0 }));
    }

    #[test]
    fn byte_prefixed_and_rooted() {
        let aml = [0xff, 0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x0a, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0, 0];
        assert_eq!(find_s5(&aml), Some(SleepTypes { a: 5, b: 5 }));
    }

    #[test]
    fn skips_references_that_are_not_the_name() {
        // A method that merely mentions _S5_ first, then the real object.
        let aml =
            [0x70, b'_', b'S', b'5', b'_', 0x08, b'_', b'S', b'5', b'_', 0x12, 0x05, 0x02, 0x01, 0x0a, 0x07];
        assert_eq!(find_s5(&aml), Some(SleepTypes { a: 1, b: 7 }));
    }

    #[test]
    fn truncated_or_absent_is_none() {
        assert_eq!(find_s5(&[]), None);
        assert_eq!(find_s5(b"\x08_S5_"), None);
        assert_eq!(find_s5(b"\x08_S5_\x12\x06\x04\x0a"), None);
        assert_eq!(find_s5(b"\x08_S5_\x12\xc0"), None);
        assert_eq!(find_s5(b"nothing here"), None);
    }
}
