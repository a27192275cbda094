//! Building ELF notes, for the tests that hand the loader images with
//! notes in them: the loader's own unit tests (`src/elf.rs` includes this
//! file by path) and its fuzzer (`tests/elf_fuzz.rs`). The loader only
//! reads notes; nothing in Umbra writes one, so the one writer lives here.

extern crate std;

use std::vec::Vec;

/// An ELF note: the name's and the payload's sizes, the type, then the
/// name and the payload, each padded to 4 bytes, as the format lays it out.
pub fn note(name: &[u8], kind: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&kind.to_le_bytes());
    for part in [name, payload] {
        bytes.extend_from_slice(part);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
    }
    bytes
}
