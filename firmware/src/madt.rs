//! # Which CPUs exist: walking the MADT
//!
//! The `acpi` crate finds the MADT and checks its checksum; we walk its
//! entries ourselves, because an entry that claims a length of zero or
//! one that runs past the table must end the walk with an error rather
//! than loop or read beyond the table.

use core::fmt;

use heapless::Vec;

/// The most CPUs Umbra keeps track of.
pub const MAX_CPUS: usize = 64;

/// The enabled processors the MADT lists, by local APIC ID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cpus {
    pub apic_ids: Vec<u32, MAX_CPUS>,
    /// Processors listed but neither enabled nor online-capable.
    pub disabled: usize,
    /// Enabled processors beyond [`MAX_CPUS`].
    pub ignored: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MadtError {
    TooShort { length: usize },
    BadEntry { offset: usize, length: u8 },
}

impl fmt::Display for MadtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooShort { length } => {
                write!(f, "MADT is {length} bytes, shorter than its header")
            }
            Self::BadEntry { offset, length } => {
                write!(f, "MADT entry at offset {offset} claims length {length}, which does not fit")
            }
        }
    }
}

/// The MADT's fixed part: the SDT header, the local APIC address, flags.
const ENTRIES_OFFSET: usize = 44;
const LOCAL_APIC: u8 = 0;
const LOCAL_X2APIC: u8 = 9;
const ENABLED: u32 = 1 << 0;
const ONLINE_CAPABLE: u32 = 1 << 1;

/// Walk the whole table (`table` includes the 36-byte SDT header).
pub fn parse(table: &[u8]) -> Result<Cpus, MadtError> {
    if table.len() < ENTRIES_OFFSET {
        return Err(MadtError::TooShort { length: table.len() });
    }
    let mut cpus = Cpus::default();
    let mut offset = ENTRIES_OFFSET;
    while offset < table.len() {
        let rest = &table[offset..];
        let length = rest.get(1).copied().unwrap_or(0);
        let entry = rest
            .get(..length as usize)
            .filter(|e| e.len() >= 2)
            .ok_or(MadtError::BadEntry { offset, length })?;
        let id_and_flags = match (entry[0], entry.len()) {
            (LOCAL_APIC, 8..) => Some((u32::from(entry[3]), le32(&entry[4..8]))),
            (LOCAL_X2APIC, 16..) => Some((le32(&entry[4..8]), le32(&entry[8..12]))),
            _ => None,
        };
        if let Some((apic_id, flags)) = id_and_flags {
            if flags & (ENABLED | ONLINE_CAPABLE) == 0 {
                cpus.disabled += 1;
            } else if cpus.apic_ids.push(apic_id).is_err() {
                cpus.ignored += 1;
            }
        }
        offset += length as usize;
    }
    Ok(cpus)
}

fn le32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec as StdVec;

    use super::*;

    fn table(entries: &[&[u8]]) -> StdVec<u8> {
        let mut t = std::vec![0u8; ENTRIES_OFFSET];
        for e in entries {
            t.extend_from_slice(e);
        }
        t
    }

    #[test]
    fn counts_enabled_local_apics_and_x2apics() {
        let t = table(&[
            &[0, 8, 0, 0, 1, 0, 0, 0],
            &[0, 8, 1, 1, 1, 0, 0, 0],
            &[0, 8, 2, 2, 0, 0, 0, 0],
            &[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0],
            &[9, 16, 0, 0, 0x10, 0x01, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0],
        ]);
        let cpus = parse(&t).unwrap();
        assert_eq!(cpus.apic_ids.as_slice(), &[0, 1, 0x110]);
        assert_eq!(cpus.disabled, 1);
    }

    #[test]
    fn zero_length_entry_is_an_error_not_a_loop() {
        let t = table(&[&[0, 0, 0, 0]]);
        assert_eq!(parse(&t), Err(MadtError::BadEntry { offset: 44, length: 0 }));
    }

    #[test]
    fn entry_past_the_end_is_an_error() {
        let t = table(&[&[0, 8, 0, 0]]);
        assert_eq!(parse(&t), Err(MadtError::BadEntry { offset: 44, length: 8 }));
        assert_eq!(parse(&[0; 10]), Err(MadtError::TooShort { length: 10 }));
    }

    #[test]
    fn short_known_entries_are_skipped() {
        let t = table(&[&[0, 4, 0, 0]]);
        assert!(parse(&t).unwrap().apic_ids.is_empty());
    }
}
