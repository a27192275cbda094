//! # Loading a guest: from image to first instruction
//!
//! Before a guest runs it needs three things: memory of its own, its
//! kernel in that memory, and a note of what it was given. This module
//! does all three for the run loop, one guest at a time:
//!
//! 1. take `guest_mem=` bytes from the machine, contiguous and scrubbed;
//! 2. load the ELF image into them ([`crate::elf`] checks the whole file
//!    before it writes a byte);
//! 3. copy the root filesystem, if the guest has one (a cpio archive the
//!    VMM passed as a module), page-aligned right after the image;
//! 4. write the boot-info block ([`BootInfo`]) into the top page, with the
//!    guest's command line right after it. A `{n}` in the command line
//!    becomes the guest's number, so a thousand guests that share one
//!    command line (a fuzzing campaign) still each get a seed of their own.
//!
//! The image must stop below that top page: a guest whose own bytes
//! covered its boot information would read garbage from its first
//! instruction. Then the shadow MMU is built over the memory and the
//! guest's first registers point at its entry, with the boot-info address
//! in `rdi` and below the stack.
//!
//! Whatever goes wrong is said in one line, the guest's closing line, and
//! becomes its status: a broken image is the guest's fault (killed, 100);
//! no memory for it, or for its root filesystem, is the host's (101).

use core::mem::{offset_of, size_of};

use paging::{GuestMemory, ShadowMmu};
use switcher_asm::layout::{GuestRegs, PAGE_SIZE};
use umbra_abi::{self as abi, BootInfo, status};

use crate::elf::{self, LoadTarget};
use crate::report::{GuestConsole, Numbered};
use crate::run::{GuestImage, Machine, MachineVcpu, RunConfig};
use crate::vcpu::{self, GuestRam, Vcpu};

/// In a guest's command line, this becomes the guest's number (1, 2, ...),
/// so guests that share one command line can still differ: the fuzzer
/// derives each guest's seed from it.
pub const GUEST_NUMBER_PLACEHOLDER: &[u8] = b"{n}";

/// Where the guest's boot-info block goes: its top page.
pub fn boot_info_gpa(memory_size: u64) -> u64 {
    memory_size - PAGE_SIZE
}

/// Load one guest: memory, ELF, boot info, shadow MMU, first registers.
/// On failure, the status it ends with (the reason is printed).
pub(crate) fn load<M: Machine>(
    machine: &mut M,
    guest: &GuestImage,
    config: &RunConfig,
    number: usize,
    console: &mut GuestConsole,
) -> Result<(MachineVcpu<M>, GuestRegs), u8> {
    let memory_size = config.memory_size;
    let Some(mut ram) = machine.take_memory(memory_size) else {
        return Err(console.finish(
            machine,
            status::FIRMWARE_ERROR,
            format_args!(
                "umbra: error: no {} MiB of contiguous memory for guest {number} ({})",
                memory_size >> 20,
                config.memory_origin
            ),
        ));
    };
    let loaded = match elf::load(guest.image, &mut ram) {
        Ok(loaded) => loaded,
        Err(error) => {
            machine.release_memory(ram);
            return Err(console.finish(
                machine,
                status::GUEST_KILLED,
                format_args!("guest killed: malformed guest ELF: {error}"),
            ));
        }
    };
    let boot_info = boot_info_gpa(memory_size);
    if loaded.highest > boot_info {
        machine.release_memory(ram);
        return Err(console.finish(
            machine,
            status::GUEST_KILLED,
            format_args!("guest killed: its image reaches the boot-info page at {boot_info:#x}"),
        ));
    }
    let rootfs = match place_rootfs(loaded.highest, guest.rootfs.len() as u64, boot_info) {
        Some(rootfs) => rootfs,
        None => {
            machine.release_memory(ram);
            return Err(console.finish(
                machine,
                status::FIRMWARE_ERROR,
                format_args!(
                    "umbra: error: guest {number}: no room for its root filesystem ({} bytes) after its \
                     image in {} MiB of memory ({})",
                    guest.rootfs.len(),
                    memory_size >> 20,
                    config.memory_origin
                ),
            ));
        }
    };
    if rootfs.len != 0 {
        ram.write(rootfs.addr, guest.rootfs);
    }
    write_boot_info(&mut ram, boot_info, guest.cmdline, number, rootfs);
    let host_base = ram.guest_to_host(0);
    machine.log(
        log::Level::Debug,
        format_args!("guest{}: memory at host {host_base:#x}, scrubbed", Numbered(console.prefix())),
    );
    machine.log(
        log::Level::Info,
        format_args!(
            "guest{}: {} segments at {:#x}-{:#x}, entry {:#x}, {} MiB",
            Numbered(console.prefix()),
            loaded.segments,
            loaded.lowest,
            loaded.highest,
            loaded.entry,
            memory_size >> 20
        ),
    );
    if rootfs.len != 0 {
        machine.log(
            log::Level::Info,
            format_args!(
                "guest{}: root filesystem, {} bytes at {:#x}",
                Numbered(console.prefix()),
                rootfs.len,
                rootfs.addr
            ),
        );
    }
    let pool = machine.shadow_pool();
    match ShadowMmu::new(ram, pool) {
        Ok(mmu) => Ok((Vcpu::new(mmu), vcpu::initial_regs(loaded.entry, boot_info))),
        Err(error) => Err(console.finish(
            machine,
            status::FIRMWARE_ERROR,
            format_args!("umbra: error: shadow MMU: {error}"),
        )),
    }
}

/// Where a guest's root filesystem lies in its memory: both 0 for none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RootfsPlace {
    pub addr: u64,
    pub len: u64,
}

/// Where a root filesystem of `len` bytes goes: page-aligned, right after
/// the image that ends at `image_end`, so that the guest's free memory is
/// one range after both. None when it would reach `limit` (the boot-info
/// page); no archive is the place (0, 0).
pub fn place_rootfs(image_end: u64, len: u64, limit: u64) -> Option<RootfsPlace> {
    if len == 0 {
        return Some(RootfsPlace::default());
    }
    let addr = image_end.checked_next_multiple_of(PAGE_SIZE)?;
    let end = addr.checked_add(len)?;
    (end <= limit).then_some(RootfsPlace { addr, len })
}

/// The boot-info block, with the command line after it in the same page;
/// a `{n}` in the command line becomes the guest's number.
pub fn write_boot_info<R: GuestRam>(
    ram: &mut R,
    at: u64,
    cmdline: &[u8],
    number: usize,
    rootfs: RootfsPlace,
) {
    const HEADER: usize = size_of::<BootInfo>();
    let header = HEADER as u64;
    let mut numbered = [0u8; PAGE_SIZE as usize - HEADER];
    let len = with_guest_number(cmdline, number, &mut numbered);
    let cmdline = &numbered[..len];
    let info = BootInfo {
        magic: abi::BOOT_INFO_MAGIC,
        abi_version: abi::ABI_VERSION,
        reserved: 0,
        memory_size: ram.limit(),
        cmdline_addr: at + header,
        cmdline_len: cmdline.len() as u64,
        rootfs_addr: rootfs.addr,
        rootfs_len: rootfs.len,
    };
    let fields = [
        info.magic,
        u64::from(info.abi_version),
        info.memory_size,
        info.cmdline_addr,
        info.cmdline_len,
        info.rootfs_addr,
        info.rootfs_len,
    ];
    let offsets = [
        offset_of!(BootInfo, magic),
        offset_of!(BootInfo, abi_version),
        offset_of!(BootInfo, memory_size),
        offset_of!(BootInfo, cmdline_addr),
        offset_of!(BootInfo, cmdline_len),
        offset_of!(BootInfo, rootfs_addr),
        offset_of!(BootInfo, rootfs_len),
    ];
    for (value, offset) in fields.into_iter().zip(offsets) {
        ram.write_u64(at + offset as u64, value);
    }
    ram.write_bytes(at + header, cmdline);
}

/// `cmdline` with every [`GUEST_NUMBER_PLACEHOLDER`] replaced by
/// `number`, written into `out`; returns how many bytes were written.
/// What does not fit is cut off, as a long command line is anyway.
pub fn with_guest_number(cmdline: &[u8], number: usize, out: &mut [u8]) -> usize {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = number;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let digits = &digits[start..];
    let mut written = 0;
    let mut at = 0;
    while at < cmdline.len() && written < out.len() {
        let piece = if cmdline[at..].starts_with(GUEST_NUMBER_PLACEHOLDER) {
            at += GUEST_NUMBER_PLACEHOLDER.len();
            digits
        } else {
            at += 1;
            &cmdline[at - 1..at]
        };
        let room = (out.len() - written).min(piece.len());
        out[written..written + room].copy_from_slice(&piece[..room]);
        written += room;
    }
    written
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use super::*;

    fn numbered(cmdline: &[u8], number: usize, room: usize) -> Vec<u8> {
        let mut out = std::vec![0u8; room];
        let len = with_guest_number(cmdline, number, &mut out);
        out.truncate(len);
        out
    }

    #[test]
    fn guest_numbers_fill_the_placeholder() {
        assert_eq!(numbered(b"test=fuzz:100+{n}:50", 7, 64), b"test=fuzz:100+7:50");
        assert_eq!(numbered(b"{n}{n} {n", 1_000_000, 64), b"10000001000000 {n");
        assert_eq!(numbered(b"a {n}", 0, 64), b"a 0");
        assert_eq!(numbered(b"no placeholder", 3, 64), b"no placeholder");
        // Cut off where the room ends, even inside a number.
        assert_eq!(numbered(b"x={n}", 12345, 4), b"x=12");
        assert_eq!(numbered(b"", 5, 4), b"");
        assert_eq!(numbered(b"abc", usize::MAX, 0), b"");
        assert_eq!(numbered(b"{n}", usize::MAX, 64), std::format!("{}", usize::MAX).as_bytes());
    }
}
