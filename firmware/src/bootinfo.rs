//! # Reading `hvm_start_info`
//!
//! A PVH boot hands us one physical address, in `ebx`, and promises a
//! `hvm_start_info` block there. From it hang a memory map, a command line
//! and a list of modules. None of it is ours and none of it is trusted: a
//! VMM may be buggy, or a test may be hostile. So each field is read
//! through [`PhysMemory`], which says "no" to bytes it cannot reach; each
//! count is bounded; each pointer must land inside memory the memory map
//! itself describes (RAM or not: qboot keeps the cmdline in ACPI NVS and
//! start_info in reserved memory). What is fatal becomes a [`BootInfoError`]; what we
//! can live with becomes a [`Notice`] that the firmware prints and moves
//! past.

use core::fmt;

use heapless::Vec;

use crate::PhysRange;

/// Read-only access to physical memory, as the boot code sees it.
pub trait PhysMemory {
    /// Fill `buf` from physical address `addr`, or return `false` (and
    /// leave `buf` unspecified) if any byte is out of reach.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
}

/// A crafted physical address space for testing the parser end to end:
/// the bytes of a module, where "physical address" p means byte p of the
/// module. With `start_info_test` on the cmdline the firmware parses a
/// start_info at address 0 of module 0 through this, reports what it
/// found in one line, and stops; nothing crafted is used to boot.
pub struct ModuleMemory<'a>(pub &'a [u8]);

impl PhysMemory for ModuleMemory<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Ok(start) = usize::try_from(addr) else { return false };
        match start.checked_add(buf.len()).and_then(|end| self.0.get(start..end)) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
}

fn read_u32(mem: &dyn PhysMemory, addr: u64) -> Option<u32> {
    let mut bytes = [0; 4];
    mem.read(addr, &mut bytes).then(|| u32::from_le_bytes(bytes))
}

fn read_u64(mem: &dyn PhysMemory, addr: u64) -> Option<u64> {
    let mut bytes = [0; 8];
    mem.read(addr, &mut bytes).then(|| u64::from_le_bytes(bytes))
}

/// The magic number that opens every `hvm_start_info`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Version 1 added the memory map, which Umbra needs.
pub const START_INFO_VERSION_WITH_MEMMAP: u32 = 1;
/// Bytes of `hvm_start_info` version 1.
pub const START_INFO_SIZE: u64 = 56;
/// Bytes per memory-map entry, and per module-list entry.
const MEMMAP_ENTRY_SIZE: u64 = 24;
const MODLIST_ENTRY_SIZE: u64 = 32;

/// More memory-map entries than any VMM writes: beyond this the count is
/// garbage, not a big machine.
pub const MAX_MEMMAP_ENTRIES: usize = 128;
/// Modules Umbra will look at; each may become a guest.
pub const MAX_MODULES: usize = 16;
/// The longest command line Umbra keeps. A longer one is ignored whole
/// rather than cut at an arbitrary word.
pub const MAX_CMDLINE: usize = 8192;
/// A module's own command line is kept shorter.
pub const MAX_MODULE_CMDLINE: usize = 256;

/// What a memory-map entry says its range is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    Ram,
    Reserved,
    AcpiReclaimable,
    AcpiNvs,
    Unusable,
    Disabled,
    Persistent,
}

impl RegionKind {
    /// Types from the PVH spec (E820 numbering). Unknown types are
    /// treated as reserved: never handed out, never written.
    fn from_raw(raw: u32) -> Option<RegionKind> {
        Some(match raw {
            1 => RegionKind::Ram,
            2 => RegionKind::Reserved,
            3 => RegionKind::AcpiReclaimable,
            4 => RegionKind::AcpiNvs,
            5 => RegionKind::Unusable,
            6 => RegionKind::Disabled,
            7 => RegionKind::Persistent,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRegion {
    pub range: PhysRange,
    pub kind: RegionKind,
}

/// A PVH module: a blob the VMM loaded for us (QEMU's `-initrd`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub range: PhysRange,
    pub cmdline: Vec<u8, MAX_MODULE_CMDLINE>,
}

/// Everything Umbra keeps from `hvm_start_info`, copied out so nothing
/// later reads the VMM's memory again.
#[derive(Debug)]
pub struct BootInfo {
    pub start_info_addr: u64,
    pub version: u32,
    /// Entries in address order; zero-sized ones are gone.
    pub memory_map: Vec<MemRegion, MAX_MEMMAP_ENTRIES>,
    pub modules: Vec<Module, MAX_MODULES>,
    /// The command line's bytes, without the terminating NUL. Empty when
    /// there is none or when it had to be ignored (a [`Notice`] says why).
    pub cmdline: Vec<u8, MAX_CMDLINE>,
    /// The RSDP, when the VMM told us where it is (microvm does not).
    pub rsdp_addr: Option<u64>,
    /// The physical ranges the boot structures themselves occupy, so the
    /// frame allocator never hands them out.
    pub occupied: Vec<PhysRange, { 4 + MAX_MODULES * 2 }>,
}

impl BootInfo {
    /// Bytes of RAM the memory map describes (before Umbra takes any).
    /// Overlapping entries are counted twice, so a hostile map can claim
    /// more than 2^64 bytes: the sum stops at u64::MAX rather than wrap
    /// (or panic, with overflow checks on).
    pub fn ram_bytes(&self) -> u64 {
        self.memory_map
            .iter()
            .filter(|r| r.kind == RegionKind::Ram)
            .fold(0u64, |sum, r| sum.saturating_add(r.range.len()))
    }

    /// Does memory the map describes cover every byte of `range`?
    pub fn map_covers(&self, range: PhysRange) -> bool {
        map_covers(&self.memory_map, range)
    }
}

/// Is `range` inside regions the VMM describes as memory: RAM, reserved,
/// ACPI or NVS, but not "unusable" or "disabled"? Entries are sorted, so
/// adjacent entries chain.
fn map_covers(map: &[MemRegion], range: PhysRange) -> bool {
    if range.is_empty() {
        return false;
    }
    let describes_memory = |r: &&MemRegion| !matches!(r.kind, RegionKind::Unusable | RegionKind::Disabled);
    let mut covered_up_to = range.start;
    for region in map.iter().filter(describes_memory) {
        if region.range.start <= covered_up_to && region.range.end > covered_up_to {
            covered_up_to = region.range.end;
            if covered_up_to >= range.end {
                return true;
            }
        }
    }
    false
}

/// A problem bad enough that the firmware cannot go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    StartInfoUnreadable { addr: u64 },
    BadMagic { found: u32 },
    NoMemoryMapInVersion { version: u32 },
    NoMemoryMap,
    TooManyMemmapEntries { count: u32 },
    MemoryMapUnreadable { addr: u64 },
    NoRam,
    TooManyModules { count: u32 },
    ModuleListOutsideMemory { addr: u64 },
    ModuleOutsideMemory { index: usize, addr: u64, size: u64 },
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::StartInfoUnreadable { addr } => {
                write!(f, "start_info at {addr:#x} is outside readable memory")
            }
            Self::BadMagic { found } => write!(
                f,
                "start_info magic is {found:#010x}, expected {START_INFO_MAGIC:#010x}: not a PVH boot"
            ),
            Self::NoMemoryMapInVersion { version } => {
                write!(f, "start_info version {version} has no memory map; Umbra needs version 1 or later")
            }
            Self::NoMemoryMap => write!(f, "start_info has no memory map (address 0 or 0 entries)"),
            Self::TooManyMemmapEntries { count } => write!(
                f,
                "start_info memory map claims {count} entries; more than {MAX_MEMMAP_ENTRIES} is not believable"
            ),
            Self::MemoryMapUnreadable { addr } => {
                write!(f, "start_info memory map at {addr:#x} is outside readable memory")
            }
            Self::NoRam => write!(f, "start_info memory map describes no RAM"),
            Self::TooManyModules { count } => {
                write!(f, "start_info claims {count} modules; Umbra accepts at most {MAX_MODULES}")
            }
            Self::ModuleListOutsideMemory { addr } => {
                write!(f, "start_info module list at {addr:#x} is outside the memory map")
            }
            Self::ModuleOutsideMemory { index, addr, size } => {
                write!(f, "module {index} ({size} bytes at {addr:#x}) is outside the memory map")
            }
        }
    }
}

/// Something odd that the firmware can live with, printed as a warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    ZeroSizedEntries {
        count: usize,
    },
    UnknownRegionTypes {
        count: usize,
        first: u32,
    },
    OverlappingRegions {
        first_at: u64,
    },
    /// A range that wraps past the top of the address space.
    WrappingEntries {
        count: usize,
    },
    CmdlineOutsideMemory {
        addr: u64,
    },
    CmdlineTooLong,
    ZeroSizedModule {
        index: usize,
    },
    ModuleCmdlineIgnored {
        index: usize,
    },
}

impl Notice {
    /// Worth a line, but not a warning: qboot (QEMU's microvm) always ends
    /// its memory map with an all-zero entry.
    pub fn is_benign(&self) -> bool {
        matches!(self, Notice::ZeroSizedEntries { .. })
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ZeroSizedEntries { count } => {
                write!(f, "memory map: ignored {count} zero-sized entries")
            }
            Self::UnknownRegionTypes { count, first } => {
                write!(f, "memory map: {count} entries of unknown type (first: {first}) treated as reserved")
            }
            Self::OverlappingRegions { first_at } => {
                write!(f, "memory map: entries overlap at {first_at:#x}; reserved wins over RAM")
            }
            Self::WrappingEntries { count } => {
                write!(f, "memory map: ignored {count} entries that run past the end of the address space")
            }
            Self::CmdlineOutsideMemory { addr } => {
                write!(f, "cmdline at {addr:#x} is outside the memory map; ignored")
            }
            Self::CmdlineTooLong => {
                write!(f, "cmdline is longer than {} bytes or unterminated; ignored", MAX_CMDLINE - 1)
            }
            Self::ZeroSizedModule { index } => {
                write!(f, "module {index} is zero-sized; ignored")
            }
            Self::ModuleCmdlineIgnored { index } => write!(
                f,
                "module {index}: cmdline outside the memory map or longer than {} bytes; ignored",
                MAX_MODULE_CMDLINE - 1
            ),
        }
    }
}

/// Notices found while parsing; more than fit are simply not recorded.
pub type Notices = Vec<Notice, 16>;

/// Validate the `hvm_start_info` at `addr` and copy out what it says.
pub fn parse(mem: &dyn PhysMemory, addr: u64, notices: &mut Notices) -> Result<BootInfo, BootInfoError> {
    let field32 = |offset: u64| read_u32(mem, addr.wrapping_add(offset));
    let field64 = |offset: u64| read_u64(mem, addr.wrapping_add(offset));
    let unreadable = BootInfoError::StartInfoUnreadable { addr };

    let magic = field32(0).ok_or(unreadable)?;
    if magic != START_INFO_MAGIC {
        return Err(BootInfoError::BadMagic { found: magic });
    }
    let version = field32(4).ok_or(unreadable)?;
    if version < START_INFO_VERSION_WITH_MEMMAP {
        return Err(BootInfoError::NoMemoryMapInVersion { version });
    }
    let nr_modules = field32(12).ok_or(unreadable)?;
    let modlist_addr = field64(16).ok_or(unreadable)?;
    let cmdline_addr = field64(24).ok_or(unreadable)?;
    let rsdp_addr = field64(32).ok_or(unreadable)?;
    let memmap_addr = field64(40).ok_or(unreadable)?;
    let memmap_entries = field32(48).ok_or(unreadable)?;

    let memory_map = read_memory_map(mem, memmap_addr, memmap_entries, notices)?;
    let mut info = BootInfo {
        start_info_addr: addr,
        version,
        memory_map,
        modules: Vec::new(),
        cmdline: Vec::new(),
        rsdp_addr: (rsdp_addr != 0).then_some(rsdp_addr),
        occupied: Vec::new(),
    };
    // The fixed-size part and the memory map were readable; whether they
    // sit in mapped memory matters only for keeping them out of the frame pool.
    let _ = info.occupied.push(PhysRange { start: addr, end: addr.saturating_add(START_INFO_SIZE) });
    let memmap_bytes = u64::from(memmap_entries) * MEMMAP_ENTRY_SIZE;
    let _ =
        info.occupied.push(PhysRange { start: memmap_addr, end: memmap_addr.saturating_add(memmap_bytes) });

    if cmdline_addr != 0 {
        match read_c_string(mem, &info.memory_map, cmdline_addr, &mut info.cmdline) {
            Ok(len) => {
                let _ = info.occupied.push(PhysRange { start: cmdline_addr, end: cmdline_addr + len + 1 });
            }
            Err(StringProblem::OutsideMemory) => {
                let _ = notices.push(Notice::CmdlineOutsideMemory { addr: cmdline_addr });
            }
            Err(StringProblem::TooLong) => {
                info.cmdline.clear();
                let _ = notices.push(Notice::CmdlineTooLong);
            }
        }
    }

    read_modules(mem, &mut info, modlist_addr, nr_modules, notices)?;
    Ok(info)
}

fn read_memory_map(
    mem: &dyn PhysMemory,
    table_addr: u64,
    count: u32,
    notices: &mut Notices,
) -> Result<Vec<MemRegion, MAX_MEMMAP_ENTRIES>, BootInfoError> {
    if table_addr == 0 || count == 0 {
        return Err(BootInfoError::NoMemoryMap);
    }
    if count as usize > MAX_MEMMAP_ENTRIES {
        return Err(BootInfoError::TooManyMemmapEntries { count });
    }
    let mut map: Vec<MemRegion, MAX_MEMMAP_ENTRIES> = Vec::new();
    let (mut zero_sized, mut wrapping, mut unknown, mut first_unknown) = (0, 0, 0, 0);
    for index in 0..u64::from(count) {
        let entry = table_addr.wrapping_add(index * MEMMAP_ENTRY_SIZE);
        let mut raw = [0u8; MEMMAP_ENTRY_SIZE as usize];
        if !mem.read(entry, &mut raw) {
            return Err(BootInfoError::MemoryMapUnreadable { addr: table_addr });
        }
        let start = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let size = u64::from_le_bytes(raw[8..16].try_into().unwrap_or_default());
        let raw_type = u32::from_le_bytes(raw[16..20].try_into().unwrap_or_default());
        if size == 0 {
            zero_sized += 1;
            continue;
        }
        let Some(range) = PhysRange::from_len(start, size) else {
            wrapping += 1;
            continue;
        };
        let kind = RegionKind::from_raw(raw_type).unwrap_or_else(|| {
            if unknown == 0 {
                first_unknown = raw_type;
            }
            unknown += 1;
            RegionKind::Reserved
        });
        // Capacity equals the bound checked above, so this cannot fail.
        let _ = map.push(MemRegion { range, kind });
    }
    map.sort_unstable_by_key(|r| (r.range.start, r.range.end));

    if zero_sized > 0 {
        let _ = notices.push(Notice::ZeroSizedEntries { count: zero_sized });
    }
    if wrapping > 0 {
        let _ = notices.push(Notice::WrappingEntries { count: wrapping });
    }
    if unknown > 0 {
        let _ = notices.push(Notice::UnknownRegionTypes { count: unknown, first: first_unknown });
    }
    if let Some(pair) = map.windows(2).find(|w| w[0].range.overlaps(&w[1].range)) {
        let _ = notices.push(Notice::OverlappingRegions { first_at: pair[1].range.start });
    }
    if !map.iter().any(|r| r.kind == RegionKind::Ram) {
        return Err(BootInfoError::NoRam);
    }
    Ok(map)
}

enum StringProblem {
    OutsideMemory,
    TooLong,
}

/// Copy a NUL-terminated string that must lie in mapped memory into `out`,
/// returning its length without the NUL. On any problem `out` is left
/// empty: the bytes read before it must not pass for the string.
fn read_c_string<const N: usize>(
    mem: &dyn PhysMemory,
    map: &[MemRegion],
    addr: u64,
    out: &mut Vec<u8, N>,
) -> Result<u64, StringProblem> {
    out.clear();
    let result = copy_c_string(mem, map, addr, out);
    if result.is_err() {
        out.clear();
    }
    result
}

fn copy_c_string<const N: usize>(
    mem: &dyn PhysMemory,
    map: &[MemRegion],
    addr: u64,
    out: &mut Vec<u8, N>,
) -> Result<u64, StringProblem> {
    for offset in 0..N as u64 {
        let byte_addr = addr.checked_add(offset).ok_or(StringProblem::OutsideMemory)?;
        // The last byte of the address space has no end to its range.
        let byte = PhysRange::from_len(byte_addr, 1).ok_or(StringProblem::OutsideMemory)?;
        if !map_covers(map, byte) {
            return Err(StringProblem::OutsideMemory);
        }
        let mut byte = [0u8];
        if !mem.read(byte_addr, &mut byte) {
            return Err(StringProblem::OutsideMemory);
        }
        if byte[0] == 0 {
            return Ok(offset);
        }
        out.push(byte[0]).map_err(|_| StringProblem::TooLong)?;
    }
    Err(StringProblem::TooLong)
}

fn read_modules(
    mem: &dyn PhysMemory,
    info: &mut BootInfo,
    list_addr: u64,
    count: u32,
    notices: &mut Notices,
) -> Result<(), BootInfoError> {
    if count == 0 {
        return Ok(());
    }
    if count as usize > MAX_MODULES {
        return Err(BootInfoError::TooManyModules { count });
    }
    let list = PhysRange::from_len(list_addr, u64::from(count) * MODLIST_ENTRY_SIZE)
        .filter(|range| info.map_covers(*range))
        .ok_or(BootInfoError::ModuleListOutsideMemory { addr: list_addr })?;
    let _ = info.occupied.push(list);

    for index in 0..count as usize {
        let entry = list.start + index as u64 * MODLIST_ENTRY_SIZE;
        let outside = BootInfoError::ModuleListOutsideMemory { addr: list_addr };
        let addr = read_u64(mem, entry).ok_or(outside)?;
        let size = read_u64(mem, entry + 8).ok_or(outside)?;
        let cmdline_addr = read_u64(mem, entry + 16).ok_or(outside)?;
        if size == 0 {
            let _ = notices.push(Notice::ZeroSizedModule { index });
            continue;
        }
        let range = PhysRange::from_len(addr, size)
            .filter(|range| info.map_covers(*range))
            .ok_or(BootInfoError::ModuleOutsideMemory { index, addr, size })?;
        let mut module = Module { range, cmdline: Vec::new() };
        if cmdline_addr != 0 {
            match read_c_string(mem, &info.memory_map, cmdline_addr, &mut module.cmdline) {
                Ok(len) => {
                    let _ =
                        info.occupied.push(PhysRange { start: cmdline_addr, end: cmdline_addr + len + 1 });
                }
                Err(_) => {
                    module.cmdline.clear();
                    let _ = notices.push(Notice::ModuleCmdlineIgnored { index });
                }
            }
        }
        let _ = info.occupied.push(range);
        let _ = info.modules.push(module);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec as StdVec;

    use super::*;

    /// A sparse physical memory: a few byte blobs at given addresses.
    #[derive(Default)]
    struct FakeMemory {
        blobs: StdVec<(u64, StdVec<u8>)>,
    }

    impl FakeMemory {
        fn put(&mut self, addr: u64, bytes: &[u8]) {
            self.blobs.push((addr, bytes.to_vec()));
        }
    }

    impl PhysMemory for FakeMemory {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            for (base, blob) in &self.blobs {
                let Some(offset) = addr.checked_sub(*base) else {
                    continue;
                };
                let offset = offset as usize;
                if offset + buf.len() <= blob.len() {
                    buf.copy_from_slice(&blob[offset..offset + buf.len()]);
                    return true;
                }
            }
            false
        }
    }

    const SI: u64 = 0x6000;
    const MODLIST: u64 = 0x6040;
    const MEMMAP: u64 = 0x7000;
    const CMDLINE: u64 = 0x20000;

    fn start_info(version: u32, modules: u32, cmdline: u64, memmap_entries: u32) -> StdVec<u8> {
        let mut b = vec![0u8; 56];
        b[0..4].copy_from_slice(&START_INFO_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&version.to_le_bytes());
        b[12..16].copy_from_slice(&modules.to_le_bytes());
        b[16..24].copy_from_slice(&MODLIST.to_le_bytes());
        b[24..32].copy_from_slice(&cmdline.to_le_bytes());
        b[32..40].copy_from_slice(&0xa0000u64.to_le_bytes());
        b[40..48].copy_from_slice(&MEMMAP.to_le_bytes());
        b[48..52].copy_from_slice(&memmap_entries.to_le_bytes());
        b
    }

    fn memmap(entries: &[(u64, u64, u32)]) -> StdVec<u8> {
        let mut b = StdVec::new();
        for &(addr, size, kind) in entries {
            b.extend_from_slice(&addr.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&kind.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
        }
        b
    }

    const NORMAL_MAP: &[(u64, u64, u32)] =
        &[(0, 0x9fc00, 1), (0xf0000, 0x10000, 2), (0x100000, 0xff00000, 1)];

    fn machine(cmdline: &[u8], map: &[(u64, u64, u32)]) -> FakeMemory {
        let mut mem = FakeMemory::default();
        mem.put(SI, &start_info(1, 0, CMDLINE, map.len() as u32));
        mem.put(MEMMAP, &memmap(map));
        mem.put(CMDLINE, cmdline);
        mem
    }

    fn parse_ok(mem: &FakeMemory) -> (BootInfo, Notices) {
        let mut notices = Notices::new();
        let info = parse(mem, SI, &mut notices).expect("parses");
        (info, notices)
    }

    fn parse_err(mem: &FakeMemory) -> BootInfoError {
        parse(mem, SI, &mut Notices::new()).expect_err("rejected")
    }

    #[test]
    fn a_normal_boot_parses() {
        let (info, notices) = parse_ok(&machine(b"log=debug\0", NORMAL_MAP));
        assert!(notices.is_empty(), "{notices:?}");
        assert_eq!(info.cmdline.as_slice(), b"log=debug");
        assert_eq!(info.memory_map.len(), 3);
        assert_eq!(info.ram_bytes(), 0x9fc00 + 0xff00000);
        assert_eq!(info.rsdp_addr, Some(0xa0000));
    }

    #[test]
    fn bad_magic_and_old_version_are_fatal() {
        let mut mem = machine(b"\0", NORMAL_MAP);
        mem.blobs[0].1[0] ^= 0xff;
        assert!(matches!(parse_err(&mem), BootInfoError::BadMagic { .. }));

        let mut mem = machine(b"\0", NORMAL_MAP);
        mem.blobs[0].1[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(parse_err(&mem), BootInfoError::NoMemoryMapInVersion { version: 0 });
    }

    #[test]
    fn unreadable_start_info_is_fatal() {
        let mem = FakeMemory::default();
        assert_eq!(parse_err(&mem), BootInfoError::StartInfoUnreadable { addr: SI });
    }

    #[test]
    fn missing_or_absurd_memory_maps_are_fatal() {
        assert_eq!(parse_err(&machine(b"\0", &[])), BootInfoError::NoMemoryMap);

        let mut mem = machine(b"\0", NORMAL_MAP);
        mem.blobs[0].1[48..52].copy_from_slice(&100_000u32.to_le_bytes());
        assert_eq!(parse_err(&mem), BootInfoError::TooManyMemmapEntries { count: 100_000 });

        let mut mem = machine(b"\0", NORMAL_MAP);
        mem.blobs[0].1[48..52].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(parse_err(&mem), BootInfoError::MemoryMapUnreadable { addr: MEMMAP });

        assert_eq!(parse_err(&machine(b"\0", &[(0, 0x1000_0000, 2)])), BootInfoError::NoRam);
    }

    #[test]
    fn odd_entries_become_notices() {
        let map = [(0x100000, 0x1000000, 1), (0, 0, 0), (0x5000_0000, 0x1000, 99), (u64::MAX - 5, 100, 1)];
        let (info, notices) = parse_ok(&machine(b"\0", &map));
        assert_eq!(info.memory_map.len(), 2);
        assert!(notices.contains(&Notice::ZeroSizedEntries { count: 1 }));
        assert!(notices.contains(&Notice::WrappingEntries { count: 1 }));
        assert!(notices.contains(&Notice::UnknownRegionTypes { count: 1, first: 99 }));
        assert_eq!(info.memory_map[1].kind, RegionKind::Reserved);
    }

    #[test]
    fn overlaps_are_reported() {
        let map = [(0x100000, 0x1000000, 1), (0x200000, 0x1000, 2)];
        let (_, notices) = parse_ok(&machine(b"\0", &map));
        assert!(notices.contains(&Notice::OverlappingRegions { first_at: 0x200000 }));
    }

    #[test]
    fn cmdline_problems_are_notices_not_errors() {
        let long = vec![b'x'; MAX_CMDLINE + 10];
        let (info, notices) = parse_ok(&machine(&long, NORMAL_MAP));
        assert!(info.cmdline.is_empty());
        assert_eq!(notices.as_slice(), &[Notice::CmdlineTooLong]);

        let mut mem = machine(b"\0", NORMAL_MAP);
        mem.blobs[0].1[24..32].copy_from_slice(&0xfff0_0000u64.to_le_bytes());
        let (info, notices) = parse_ok(&mem);
        assert!(info.cmdline.is_empty());
        assert_eq!(notices.as_slice(), &[Notice::CmdlineOutsideMemory { addr: 0xfff0_0000 }]);
    }

    #[test]
    fn a_cmdline_cut_short_leaves_nothing_behind() {
        // Unterminated where the memory map ends (low RAM stops at 0x9fc00).
        let mut mem = machine(b"\0", NORMAL_MAP);
        mem.blobs[0].1[24..32].copy_from_slice(&0x9fbfdu64.to_le_bytes());
        mem.put(0x9fbfd, b"abc");
        let (info, notices) = parse_ok(&mem);
        assert!(info.cmdline.is_empty(), "{:?}", info.cmdline);
        assert_eq!(notices.as_slice(), &[Notice::CmdlineOutsideMemory { addr: 0x9fbfd }]);

        // Mapped, but unreadable after three bytes.
        let (info, notices) = parse_ok(&machine(b"abc", NORMAL_MAP));
        assert!(info.cmdline.is_empty(), "{:?}", info.cmdline);
        assert_eq!(notices.as_slice(), &[Notice::CmdlineOutsideMemory { addr: CMDLINE }]);

        // A module's cmdline, the same way.
        let mut mem = with_modules(&[(0x800000, 0x1000, 0x9fbfd)]);
        mem.put(0x9fbfd, b"abc");
        let (info, notices) = parse_ok(&mem);
        assert!(info.modules[0].cmdline.is_empty());
        assert_eq!(notices.as_slice(), &[Notice::ModuleCmdlineIgnored { index: 0 }]);
    }

    #[test]
    fn a_cmdline_at_the_last_address_is_outside() {
        let map = [(0, 0x9fc00, 1), (0x100000, u64::MAX - 0x100000, 1)];
        let mut mem = machine(b"\0", &map);
        mem.blobs[0].1[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        let (info, notices) = parse_ok(&mem);
        assert!(info.cmdline.is_empty());
        assert_eq!(notices.as_slice(), &[Notice::CmdlineOutsideMemory { addr: u64::MAX }]);
    }

    fn with_modules(entries: &[(u64, u64, u64)]) -> FakeMemory {
        let mut mem = machine(b"\0", NORMAL_MAP);
        mem.blobs[0].1[12..16].copy_from_slice(&(entries.len() as u32).to_le_bytes());
        let mut list = StdVec::new();
        for &(addr, size, cmdline) in entries {
            for v in [addr, size, cmdline, 0] {
                list.extend_from_slice(&v.to_le_bytes());
            }
        }
        mem.put(MODLIST, &list);
        mem.put(0x30000, b"guest=one\0");
        mem
    }

    #[test]
    fn modules_are_read_and_occupied() {
        let (info, notices) = parse_ok(&with_modules(&[(0x800000, 0x4000, 0x30000), (0x900000, 0, 0)]));
        assert_eq!(info.modules.len(), 1);
        assert_eq!(info.modules[0].range, PhysRange { start: 0x800000, end: 0x804000 });
        assert_eq!(info.modules[0].cmdline.as_slice(), b"guest=one");
        assert!(notices.contains(&Notice::ZeroSizedModule { index: 1 }));
        assert!(info.occupied.contains(&PhysRange { start: 0x800000, end: 0x804000 }));
    }

    #[test]
    fn modules_outside_ram_are_fatal() {
        let err = parse_err(&with_modules(&[(0xfff0_0000, 0x1000, 0)]));
        assert_eq!(err, BootInfoError::ModuleOutsideMemory { index: 0, addr: 0xfff0_0000, size: 0x1000 });
        let err = parse_err(&with_modules(&[(u64::MAX - 1, 0x1000, 0)]));
        assert!(matches!(err, BootInfoError::ModuleOutsideMemory { .. }));
        // Straddling the hole after low RAM, which the map does not describe.
        let err = parse_err(&with_modules(&[(0x9f000, 0x2000, 0)]));
        assert!(matches!(err, BootInfoError::ModuleOutsideMemory { .. }));

        let mut mem = with_modules(&[(0x800000, 0x1000, 0)]);
        mem.blobs[0].1[12..16].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(parse_err(&mem), BootInfoError::TooManyModules { count: 1000 });
    }

    #[test]
    fn adjacent_ram_entries_chain() {
        let map = [(0x100000, 0x100000, 1), (0x200000, 0x100000, 1)];
        let (info, _) = parse_ok(&machine(b"\0", &map));
        assert!(info.map_covers(PhysRange { start: 0x1ff000, end: 0x201000 }));
        assert!(!info.map_covers(PhysRange { start: 0x2ff000, end: 0x301000 }));
    }

    #[test]
    fn reserved_and_nvs_count_but_unusable_does_not() {
        let map = [(0, 0x9fc00, 1), (0xd0000, 0x20000, 4), (0xf0000, 0x10000, 2), (0x100000, 0x1000000, 5)];
        let (info, _) = parse_ok(&machine(b"\0", &map));
        assert!(info.map_covers(PhysRange { start: 0xefc70, end: 0xf0100 }));
        assert!(!info.map_covers(PhysRange { start: 0x100000, end: 0x101000 }));
    }

    /// Found by the start_info fuzzer: two huge overlapping RAM entries
    /// made the RAM total overflow.
    #[test]
    fn a_ram_total_past_2_to_the_64_saturates() {
        let huge = u64::MAX - 0x10_0000;
        let (info, _) = parse_ok(&machine(b"\0", &[(0x10_0000, huge, 1), (0x20_0000, huge - 0x10_0000, 1)]));
        assert_eq!(info.ram_bytes(), u64::MAX);
    }

    #[test]
    fn errors_read_as_one_line() {
        let err = BootInfoError::ModuleOutsideMemory { index: 2, addr: 0x10, size: 5 };
        let text = std::format!("{err}");
        assert!(!text.contains('\n') && text.contains("module 2"));
    }
}
