//! # What a PVH module is
//!
//! A VMM hands Umbra a list of modules (QEMU's `-initrd`, Cloud
//! Hypervisor's `--initramfs`) and says nothing about what they hold. Umbra
//! tells by their first bytes: an ELF file is a guest kernel to run in
//! place of the one built into the image; a cpio archive in the "newc"
//! format is a root filesystem, which every guest gets a copy of in its
//! memory. Anything else is refused before a guest starts, in one line,
//! rather than guessed at: a module nobody can use is a mistake in how the
//! machine was started.

use umbra_abi::{CPIO_NEWC_MAGIC, ELF_MAGIC};

/// What a module holds, by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleKind {
    /// An ELF file: a guest kernel. The loader judges the rest of it.
    GuestKernel,
    /// A cpio archive, newc format: a root filesystem.
    RootFilesystem,
    /// Neither.
    Unknown,
}

impl ModuleKind {
    pub fn of(bytes: &[u8]) -> ModuleKind {
        if bytes.starts_with(ELF_MAGIC) {
            ModuleKind::GuestKernel
        } else if bytes.starts_with(CPIO_NEWC_MAGIC) {
            ModuleKind::RootFilesystem
        } else {
            ModuleKind::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ModuleKind;

    #[test]
    fn modules_are_told_apart_by_their_first_bytes() {
        assert_eq!(ModuleKind::of(b"\x7fELF\x02\x01\x01"), ModuleKind::GuestKernel);
        // A broken ELF is still a guest kernel: the loader says what is wrong.
        assert_eq!(ModuleKind::of(b"\x7fELF"), ModuleKind::GuestKernel);
        assert_eq!(ModuleKind::of(b"07070100000001"), ModuleKind::RootFilesystem);
        // The old binary and "odc" cpio formats, and the CRC one, are not newc.
        assert_eq!(ModuleKind::of(b"070707"), ModuleKind::Unknown);
        assert_eq!(ModuleKind::of(b"070702"), ModuleKind::Unknown);
        assert_eq!(ModuleKind::of(b"\xc7\x71"), ModuleKind::Unknown);
        assert_eq!(ModuleKind::of(b"07070"), ModuleKind::Unknown);
        assert_eq!(ModuleKind::of(b""), ModuleKind::Unknown);
        assert_eq!(ModuleKind::of(&[0x5a; 12345]), ModuleKind::Unknown);
    }
}
