//! # Switching off the ACPI way: the part that is only logic
//!
//! Both kernels in this project switch the machine off themselves: Umbra
//! when its run ends, and the guest kernel when it runs natively, with
//! nobody beneath it. ACPI says how, in two tables. The FADT either
//! describes a hardware-reduced platform (Cloud Hypervisor, QEMU's
//! microvm), which has a sleep-control register, or a legacy one (QEMU's
//! pc and q35), which wants the S5 sleep type from the DSDT's `\_S5_`
//! object written into its PM1a (and PM1b) control register. Either way
//! the write is `SLP_TYP | SLP_EN`.
//!
//! Everything here is arithmetic on bytes the caller read: finding
//! `\_S5_` in the AML (without an AML interpreter: the object is a
//! literal, so its byte pattern is enough), the FADT's fields, the choice
//! of method, and the values to write. The I/O stays with each kernel:
//! Umbra finds its tables with the `acpi` crate and writes through it;
//! the guest, which may depend on this crate alone, walks RSDP, RSDT or
//! XSDT and FADT with the few readers below. Every read is bounded, and
//! bytes that do not match give `None`, never a panic.

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

/// Find `\_S5_` in an AML byte stream (the DSDT, with or without its
/// header).
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

/// Where an ACPI register is: a Generic Address Structure, the parts of it
/// a power-off needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Register {
    pub space: Space,
    pub bit_width: u8,
    pub address: u64,
}

/// A register's address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Memory,
    Io,
    /// Any other (PCI configuration, embedded controller, ...): no kernel
    /// here writes those.
    Other(u8),
}

impl Space {
    pub fn from_id(id: u8) -> Space {
        match id {
            0 => Space::Memory,
            1 => Space::Io,
            other => Space::Other(other),
        }
    }
}

/// What the FADT says about switching off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FadtPower {
    /// The HW_REDUCED_ACPI flag.
    pub hw_reduced: bool,
    pub sleep_control: Option<Register>,
    pub pm1a_control: Option<Register>,
    pub pm1b_control: Option<Register>,
}

/// How this machine powers off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerOff {
    /// Hardware-reduced ACPI: SLP_TYP | SLP_EN to the sleep-control register.
    SleepControl { register: Register, sleep_type: u8 },
    /// Legacy ACPI: SLP_TYP | SLP_EN to PM1a (and PM1b) control.
    Pm1Control { a: Register, b: Option<Register>, types: SleepTypes },
}

/// The method the FADT and `\_S5_` (if found) give, or None when they do
/// not give one.
pub fn power_off_method(fadt: &FadtPower, s5: Option<SleepTypes>) -> Option<PowerOff> {
    if fadt.hw_reduced {
        // Without \_S5_, 5 is the conventional S5 type on these platforms.
        let sleep_type = s5.map_or(5, |types| types.a);
        Some(PowerOff::SleepControl { register: fadt.sleep_control?, sleep_type })
    } else {
        Some(PowerOff::Pm1Control { a: fadt.pm1a_control?, b: fadt.pm1b_control, types: s5? })
    }
}

const SLP_EN_PM1: u32 = 1 << 13;
const SLP_EN_SLEEP_CONTROL: u32 = 1 << 5;

impl PowerOff {
    /// The writes that switch off, in order: a register and its value.
    pub fn writes(&self) -> [Option<(Register, u32)>; 2] {
        match *self {
            PowerOff::SleepControl { register, sleep_type } => {
                [Some((register, u32::from(sleep_type & 7) << 2 | SLP_EN_SLEEP_CONTROL)), None]
            }
            PowerOff::Pm1Control { a, b, types } => [
                Some((a, u32::from(types.a & 7) << 10 | SLP_EN_PM1)),
                b.map(|b| (b, u32::from(types.b & 7) << 10 | SLP_EN_PM1)),
            ],
        }
    }
}

// The readers, for a kernel without an ACPI crate.

/// Bytes of a table header: signature, length, revision, checksum, OEM.
pub const HEADER_LEN: usize = 36;

/// Do `bytes` sum to 0 modulo 256, as every ACPI table must?
pub fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)) == 0
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// A table's length, from its header.
pub fn table_len(header: &[u8]) -> Option<usize> {
    u32_at(header, 4).map(|len| len as usize).filter(|&len| len >= HEADER_LEN)
}

/// The root table an RSDP (its first 36 bytes, or 20 for revision 0)
/// names: `(address, entry size)`, the XSDT's with 8-byte entries where
/// there is one, else the RSDT's with 4-byte ones. None for a bad
/// signature or checksum.
pub fn rsdp_root(rsdp: &[u8]) -> Option<(u64, usize)> {
    if rsdp.get(..8)? != b"RSD PTR " || !checksum_ok(rsdp.get(..20)?) {
        return None;
    }
    let revision = *rsdp.get(15)?;
    let extended = revision >= 2 && rsdp.len() >= 36 && checksum_ok(&rsdp[..36]);
    match u64_at(rsdp, 24).filter(|&xsdt| extended && xsdt != 0) {
        Some(xsdt) => Some((xsdt, 8)),
        None => Some((u64::from(u32_at(rsdp, 16)?), 4)),
    }
}

/// The addresses a root table (RSDT or XSDT, whole, header included)
/// lists, entry by entry.
pub fn root_entries(root: &[u8], entry_size: usize) -> impl Iterator<Item = u64> + '_ {
    let body = root.get(HEADER_LEN..).unwrap_or(&[]);
    body.chunks_exact(entry_size.clamp(4, 8)).map(move |entry| match entry_size {
        8 => u64_at(entry, 0).unwrap_or(0),
        _ => u64::from(u32_at(entry, 0).unwrap_or(0)),
    })
}

/// A Generic Address Structure at `at` in `table`; None when absent
/// (address 0) or cut off.
fn gas_at(table: &[u8], at: usize) -> Option<Register> {
    let bytes = table.get(at..at + 12)?;
    let address = u64_at(bytes, 4)?;
    (address != 0).then_some(Register { space: Space::from_id(bytes[0]), bit_width: bytes[1], address })
}

/// The FADT's power-off fields (the whole table, header included):
/// the flags, the sleep-control register, and PM1a and PM1b control,
/// the 64-bit GAS where the table has it and is set, else the old port.
pub fn fadt_power(fadt: &[u8]) -> Option<FadtPower> {
    const FLAGS: usize = 112;
    const HW_REDUCED_ACPI: u32 = 1 << 20;
    const PM1A_CNT_BLK: usize = 64;
    const PM1B_CNT_BLK: usize = 68;
    const PM1_CNT_LEN: usize = 89;
    const X_PM1A_CNT_BLK: usize = 172;
    const X_PM1B_CNT_BLK: usize = 184;
    const SLEEP_CONTROL_REG: usize = 244;
    if fadt.get(..4)? != b"FACP" {
        return None;
    }
    let flags = u32_at(fadt, FLAGS).unwrap_or(0);
    let width = fadt.get(PM1_CNT_LEN).map_or(16, |&len| len.saturating_mul(8));
    let port = |at: usize| {
        u32_at(fadt, at).filter(|&port| port != 0).map(|port| Register {
            space: Space::Io,
            bit_width: width,
            address: u64::from(port),
        })
    };
    Some(FadtPower {
        hw_reduced: flags & HW_REDUCED_ACPI != 0,
        sleep_control: gas_at(fadt, SLEEP_CONTROL_REG),
        pm1a_control: gas_at(fadt, X_PM1A_CNT_BLK).or_else(|| port(PM1A_CNT_BLK)),
        pm1b_control: gas_at(fadt, X_PM1B_CNT_BLK).or_else(|| port(PM1B_CNT_BLK)),
    })
}

/// The DSDT's address, from the FADT: X_DSDT where set, else DSDT.
pub fn fadt_dsdt(fadt: &[u8]) -> Option<u64> {
    const DSDT: usize = 40;
    const X_DSDT: usize = 140;
    u64_at(fadt, X_DSDT).filter(|&x| x != 0).or_else(|| u32_at(fadt, DSDT).map(u64::from)).filter(|&x| x != 0)
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

    fn io(address: u64, bit_width: u8) -> Register {
        Register { space: Space::Io, bit_width, address }
    }

    /// A FADT of `len` bytes with these fields set.
    fn fadt(len: usize, fields: &[(usize, &[u8])]) -> [u8; 276] {
        let mut table = [0u8; 276];
        table[..4].copy_from_slice(b"FACP");
        table[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        for (at, bytes) in fields {
            table[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        table
    }

    #[test]
    fn cloud_hypervisor_is_hardware_reduced_with_a_sleep_control_port() {
        // Cloud Hypervisor: HW_REDUCED_ACPI, sleep control at port 0x600.
        let table = fadt(276, &[(112, &(1u32 << 20).to_le_bytes()), (244, &[1, 8, 0, 1]), (248, &[0, 6])]);
        let power = fadt_power(&table).unwrap();
        assert!(power.hw_reduced);
        assert_eq!(power.sleep_control, Some(io(0x600, 8)));
        let method = power_off_method(&power, None).unwrap();
        // No \_S5_: sleep type 5, so 5 << 2 | SLP_EN = 0x34.
        assert_eq!(method.writes(), [Some((io(0x600, 8), 0x34)), None]);
    }

    #[test]
    fn a_legacy_machine_writes_pm1a_with_the_s5_type() {
        // QEMU's pc: PM1a control at port 0x604, 2 bytes long, no X_ field.
        let table = fadt(244, &[(64, &0x604u32.to_le_bytes()), (89, &[2])]);
        let power = fadt_power(&table).unwrap();
        assert!(!power.hw_reduced);
        assert_eq!(power.pm1a_control, Some(io(0x604, 16)));
        assert_eq!(power.pm1b_control, None);
        assert_eq!(power_off_method(&power, None), None, "no \\_S5_, no method");
        let method = power_off_method(&power, Some(SleepTypes { a: 0, b: 0 })).unwrap();
        assert_eq!(method.writes(), [Some((io(0x604, 16), 0x2000)), None]);
        let method = power_off_method(&power, Some(SleepTypes { a: 5, b: 7 })).unwrap();
        assert_eq!(method.writes(), [Some((io(0x604, 16), 0x3400)), None]);
    }

    #[test]
    fn the_64_bit_fields_win_where_set() {
        let gas = [1u8, 16, 0, 2, 0x08, 0x0b, 0, 0, 0, 0, 0, 0];
        let table = fadt(276, &[(64, &0x604u32.to_le_bytes()), (172, &gas), (140, &0x1234u64.to_le_bytes())]);
        assert_eq!(fadt_power(&table).unwrap().pm1a_control, Some(io(0xb08, 16)));
        assert_eq!(fadt_dsdt(&table), Some(0x1234));
    }

    #[test]
    fn junk_is_no_fadt() {
        assert_eq!(fadt_power(b"FACS and then some"), None);
        assert_eq!(fadt_power(b""), None);
        // A FADT cut short has no fields past its end.
        assert_eq!(fadt_power(b"FACP").map(|p| p.pm1a_control), Some(None));
    }

    #[test]
    fn an_rsdp_names_the_xsdt_or_the_rsdt() {
        let mut rsdp = [0u8; 36];
        rsdp[..8].copy_from_slice(b"RSD PTR ");
        rsdp[16..20].copy_from_slice(&0x1000u32.to_le_bytes());
        let fix = |rsdp: &mut [u8; 36], at: usize, len: usize| {
            rsdp[at] = 0;
            let sum = rsdp[..len].iter().fold(0u8, |s, &b| s.wrapping_add(b));
            rsdp[at] = 0u8.wrapping_sub(sum);
        };
        fix(&mut rsdp, 8, 20);
        assert_eq!(rsdp_root(&rsdp[..20]), Some((0x1000, 4)));
        rsdp[15] = 2;
        rsdp[24..32].copy_from_slice(&0x2000u64.to_le_bytes());
        fix(&mut rsdp, 8, 20);
        fix(&mut rsdp, 32, 36);
        assert_eq!(rsdp_root(&rsdp), Some((0x2000, 8)));
        rsdp[9] ^= 1;
        assert_eq!(rsdp_root(&rsdp), None, "a bad checksum");
        let mut root = [0u8; 36 + 12];
        root[36..40].copy_from_slice(&0xaaaa_u32.to_le_bytes());
        root[40..44].copy_from_slice(&0xbbbb_u32.to_le_bytes());
        assert_eq!(root_entries(&root, 4).collect::<std::vec::Vec<_>>(), [0xaaaa, 0xbbbb, 0]);
        assert_eq!(root_entries(&root, 8).collect::<std::vec::Vec<_>>(), [0xbbbb_0000_aaaa]);
    }
}
