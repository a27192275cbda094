//! # Linux programs: the boot's hand-off (a stub)
//!
//! When the guest finds a root filesystem (a cpio archive the VMM passed
//! as a module) and its command line has no `test=` word, both boot paths
//! come here with what they found. The Linux layer that runs the
//! archive's programs replaces this file; until then the guest says what
//! it was given and that it cannot run it, and stops with status 97, a
//! run it cannot do.

use crate::platform;

/// What a boot path found, for the Linux layer.
pub struct Boot<'a> {
    /// The guest's command line (under Umbra, the words after its `--`).
    pub cmdline: &'a [u8],
    /// Bytes of memory, from 0.
    pub memory_size: u64,
    /// The free memory `[free_start, free_end)`, past the image and the
    /// root filesystem.
    pub free_start: u64,
    pub free_end: u64,
    /// Where the root filesystem's cpio archive lies, physical.
    pub rootfs_pa: u64,
    pub rootfs_len: u64,
}

pub fn run(boot: Boot) -> ! {
    let _ = (boot.cmdline, boot.memory_size, boot.free_start, boot.free_end, boot.rootfs_pa);
    say!(
        "linux: a root filesystem of {} bytes, but this guest kernel cannot run Linux programs yet",
        boot.rootfs_len
    );
    platform::shutdown(97, "no Linux layer")
}
