//! # Loading a guest kernel: from ELF file to guest memory
//!
//! A guest begins as an ELF64 executable, a file somebody else built. Before
//! its first instruction can run, the file's loadable segments have to be
//! copied into the guest's memory: the bytes the file holds, then zeros for
//! the rest of each segment (the `.bss`, which the file leaves out to stay
//! small). And we have to know where to start it.
//!
//! The guest wakes up in linear mode, where a virtual address *is* a
//! guest-physical one. So each segment goes at its physical address,
//! `p_paddr`, and the entry point has to land inside something we loaded, in
//! a segment the file marks executable; anywhere else the guest's very first
//! fetch would be garbage. The virtual addresses are the guest's own business
//! once it builds page tables of its own.
//!
//! We trust nothing in the image. It is only bytes: an offset may point past
//! the end of the file, an address plus a size may wrap around 2^64, two
//! segments may claim the same memory, the header may describe a program for
//! another machine. So every number read from the file is checked before it
//! is used, with checked arithmetic and `get()` rather than indexing, and a
//! broken or hostile image earns an error that says what is wrong: never a
//! panic in the hypervisor, never a write outside the guest.
//!
//! And we check everything first, then write. [`load`] works out the whole
//! plan without even seeing the target, which only gets touched once the
//! plan is known to be good, so a rejected image leaves guest memory exactly
//! as it was. Having no allocator, the plan lives in a fixed array; hence
//! the limit of [`MAX_PROGRAM_HEADERS`], far more than a kernel needs.
//!
//! One image may carry two entries: the kernel in `guest/` boots natively
//! through a PVH note (32-bit code, for a VMM) and under Umbra through a
//! note of ours, [`umbra_abi::PV_ENTRY_NOTE_NAME`], whose 8-byte payload
//! is the 64-bit paravirtual entry. When that note is there it wins over
//! `e_entry`; either way the entry is checked the same way. Notes are
//! hints for many loaders and we load none of them, so a note segment we
//! cannot read is skipped; but an Umbra note of the wrong size is refused.
//!
//! Segments are named in errors by their index in the program header table,
//! the same number `readelf -l` prints, so a message can be checked against
//! the file.
//!
//! Since the loader reads only the headers and the segments, [`strip`] can
//! cut the rest off an image (its symbols and debug info): the firmware
//! embeds its default guest that way, and a debugger reads the whole file.

use core::fmt;

/// The most program headers an image may have.
pub const MAX_PROGRAM_HEADERS: usize = 16;

const EHDR_SIZE: usize = 64;
/// Where the ELF header says where the section headers are, how many,
/// and which one names the others; [`strip`] clears them.
const E_SHOFF: usize = 40;
const E_SHNUM: usize = 60;
const E_SHSTRNDX: usize = 62;
const PHDR_SIZE: usize = 56;
const MAGIC: [u8; 4] = *b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;

/// Where the loaded guest starts, and what it occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedImage {
    /// The entry point, a guest-physical address inside an executable segment.
    pub entry: u64,
    /// The lowest guest-physical address written.
    pub lowest: u64,
    /// The exclusive end of the highest segment, guest-physical.
    pub highest: u64,
    /// How many segments were loaded (empty ones are not counted).
    pub segments: usize,
}

/// The sink: guest-physical memory of `size()` bytes starting at 0.
pub trait LoadTarget {
    fn size(&self) -> u64;
    /// Copy `bytes` to guest-physical `gpa`; the loader has already checked bounds.
    fn write(&mut self, gpa: u64, bytes: &[u8]);
    /// Zero `len` bytes at `gpa` (the .bss part of a segment); bounds checked already.
    fn zero(&mut self, gpa: u64, len: u64);
}

/// Why an image was refused. `segment` is a program header index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadError {
    /// The first four bytes are not `\x7fELF`.
    BadMagic,
    /// The image ends before its 64-byte ELF header does.
    HeaderTruncated { len: usize },
    /// `EI_CLASS` is not ELFCLASS64.
    Not64Bit { class: u8 },
    /// `EI_DATA` is not ELFDATA2LSB.
    NotLittleEndian { data: u8 },
    /// `e_type` is not ET_EXEC.
    NotExecutable { e_type: u16 },
    /// `e_machine` is not EM_X86_64.
    NotX86_64 { machine: u16 },
    /// `e_phentsize` is not 56.
    BadProgramHeaderSize { size: u16 },
    /// `e_phnum` is over [`MAX_PROGRAM_HEADERS`].
    TooManyProgramHeaders { count: u16 },
    /// `e_phoff + e_phnum * 56` is past the end of the image.
    ProgramHeadersOutsideImage,
    /// A PT_LOAD segment's `p_filesz` exceeds its `p_memsz`.
    MemSizeSmallerThanFileSize { segment: usize, filesz: u64, memsz: u64 },
    /// `p_offset + p_filesz` is past the end of the image.
    FileDataOutsideImage { segment: usize },
    /// `p_paddr + p_memsz` is past the end of guest memory, or wraps.
    SegmentOutsideMemory { segment: usize, paddr: u64, memsz: u64, memory: u64 },
    /// Two segments share guest-physical memory.
    Overlap { first: usize, second: usize },
    /// No PT_LOAD segment with a non-zero `p_memsz`.
    NoLoadableSegments,
    /// Umbra's entry note does not hold exactly one 8-byte address.
    BadEntryNote { segment: usize, size: u32 },
    /// The entry (`e_entry`, or Umbra's note) is in no loaded segment.
    EntryOutsideSegments { entry: u64 },
    /// `e_entry` is in a segment without PF_X.
    EntryNotExecutable { entry: u64, segment: usize },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadMagic => write!(f, "not an ELF file (bad magic)"),
            Self::HeaderTruncated { len } => {
                write!(f, "image is {len} bytes, too short for an ELF64 header ({EHDR_SIZE} bytes)")
            }
            Self::Not64Bit { class } => {
                write!(f, "not a 64-bit little-endian x86-64 executable (ELF class {class}, not 64-bit)")
            }
            Self::NotLittleEndian { data } => write!(
                f,
                "not a 64-bit little-endian x86-64 executable (data encoding {data}, not little-endian)"
            ),
            Self::NotExecutable { e_type } => {
                write!(f, "not a 64-bit little-endian x86-64 executable (e_type {e_type}, not ET_EXEC)")
            }
            Self::NotX86_64 { machine } => {
                write!(f, "not a 64-bit little-endian x86-64 executable (machine {machine}, not x86-64)")
            }
            Self::BadProgramHeaderSize { size } => {
                write!(f, "program header entries are {size} bytes, expected {PHDR_SIZE}")
            }
            Self::TooManyProgramHeaders { count } => {
                write!(f, "too many program headers ({count}, at most {MAX_PROGRAM_HEADERS})")
            }
            Self::ProgramHeadersOutsideImage => {
                write!(f, "program header table runs past the end of the image")
            }
            Self::MemSizeSmallerThanFileSize { segment, filesz, memsz } => {
                write!(f, "segment {segment} memory size {memsz:#x} smaller than file size {filesz:#x}")
            }
            Self::FileDataOutsideImage { segment } => {
                write!(f, "segment {segment} file data runs past the end of the image")
            }
            Self::SegmentOutsideMemory { segment, paddr, memsz, memory } => write!(
                f,
                "segment {segment} ({memsz:#x} bytes at {paddr:#x}) lies outside guest memory ({})",
                Size(memory)
            ),
            Self::Overlap { first, second } => write!(f, "segments {first} and {second} overlap"),
            Self::NoLoadableSegments => write!(f, "no loadable segments"),
            Self::BadEntryNote { segment, size } => {
                write!(f, "Umbra entry note in segment {segment} holds {size} bytes, expected 8")
            }
            Self::EntryOutsideSegments { entry } => {
                write!(f, "entry point {entry:#x} is outside the loaded segments")
            }
            Self::EntryNotExecutable { entry, segment } => {
                write!(f, "entry point {entry:#x} is in segment {segment}, which is not executable")
            }
        }
    }
}

/// A memory size the way people say it: "64 MiB" rather than 0x4000000.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 3] = [(30, "GiB"), (20, "MiB"), (10, "KiB")];
        for (shift, name) in UNITS {
            if self.0 != 0 && self.0.trailing_zeros() >= shift {
                return write!(f, "{} {name}", self.0 >> shift);
            }
        }
        write!(f, "{:#x} bytes", self.0)
    }
}

/// Put the ELF64 executable `image` into `target`, or say why not.
///
/// Nothing is written unless the whole image checks out.
pub fn load(image: &[u8], target: &mut impl LoadTarget) -> Result<LoadedImage, LoadError> {
    let plan = plan(image, target.size())?;
    for segment in plan.segments.iter().flatten() {
        if !segment.data.is_empty() {
            target.write(segment.start, segment.data);
        }
        if segment.bss_len != 0 {
            target.zero(segment.bss_start, segment.bss_len);
        }
    }
    Ok(plan.loaded)
}

/// Cuts `image` down to the bytes [`load`] reads, for embedding a guest
/// in the firmware without its debug info and symbols, which are only
/// for a debugger and can be most of the file. Returns how many leading
/// bytes to keep: the ELF header, the program header table and every
/// segment's file bytes. The header's fields that point at the section
/// header table, which linkers put after everything else, are cleared so
/// the cut file stays well-formed for other tools too.
///
/// Only an image `load` accepts (in a memory large enough) is cut, and the
/// cut image loads exactly as the whole one did: nothing it reads is
/// dropped.
pub fn strip(image: &mut [u8]) -> Result<usize, LoadError> {
    plan(image, u64::MAX)?;
    // `plan` checked the header and that the table lies inside the image.
    let header = image
        .get(..EHDR_SIZE)
        .and_then(Header::parse)
        .ok_or(LoadError::HeaderTruncated { len: image.len() })?;
    let table_start = usize::try_from(header.phoff).map_err(|_| LoadError::ProgramHeadersOutsideImage)?;
    let table_end = table_start
        .checked_add(usize::from(header.phnum) * PHDR_SIZE)
        .filter(|&end| end <= image.len())
        .ok_or(LoadError::ProgramHeadersOutsideImage)?;
    let mut keep = EHDR_SIZE.max(table_end);
    for raw in image[table_start..table_end].chunks_exact(PHDR_SIZE) {
        let header = ProgramHeader::parse(raw).ok_or(LoadError::ProgramHeadersOutsideImage)?;
        // Every segment's bytes are kept, notes included. A loaded segment
        // with no file bytes still needs its offset inside the file; a
        // note that runs past the end, which the loader skips, keeps up
        // to the end, so it is skipped still.
        if header.filesz != 0 || (header.p_type == PT_LOAD && header.memsz != 0) {
            let end = header.offset.saturating_add(header.filesz);
            keep = keep.max(usize::try_from(end).unwrap_or(usize::MAX).min(image.len()));
        }
    }
    for (at, width) in [(E_SHOFF, 8), (E_SHNUM, 2), (E_SHSTRNDX, 2)] {
        image[at..at + width].fill(0);
    }
    Ok(keep)
}

/// One segment, checked: every address here is inside guest memory.
#[derive(Clone, Copy)]
struct Segment<'a> {
    index: usize,
    start: u64,
    end: u64,
    data: &'a [u8],
    bss_start: u64,
    bss_len: u64,
    executable: bool,
}

/// Everything to write, and the summary to hand back. Slot `i` belongs to
/// program header `i`, so building it needs no fallible push.
struct Plan<'a> {
    segments: [Option<Segment<'a>>; MAX_PROGRAM_HEADERS],
    loaded: LoadedImage,
}

/// Check the whole image against a guest memory of `memory` bytes. It is
/// given only the size, not the target, so it cannot write too early.
fn plan(image: &[u8], memory: u64) -> Result<Plan<'_>, LoadError> {
    if image.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(LoadError::BadMagic);
    }
    let header = image
        .get(..EHDR_SIZE)
        .and_then(Header::parse)
        .ok_or(LoadError::HeaderTruncated { len: image.len() })?;
    header.check()?;

    let count = usize::from(header.phnum);
    let table = image
        .get(usize::try_from(header.phoff).unwrap_or(usize::MAX)..)
        .and_then(|rest| rest.get(..count.checked_mul(PHDR_SIZE)?))
        .ok_or(LoadError::ProgramHeadersOutsideImage)?;

    let mut segments = [None; MAX_PROGRAM_HEADERS];
    // `count` is at most MAX_PROGRAM_HEADERS (Header::check), and `table`
    // holds exactly `count` entries, so the zip visits every header.
    for ((index, slot), raw) in segments.iter_mut().enumerate().zip(table.chunks_exact(PHDR_SIZE)) {
        let header = ProgramHeader::parse(raw).ok_or(LoadError::ProgramHeadersOutsideImage)?;
        *slot = header.check(image, memory, index)?;
    }

    let mut loaded = segments.iter().flatten();
    for (position, a) in loaded.clone().enumerate() {
        for b in loaded.clone().skip(position + 1) {
            if a.start < b.end && b.start < a.end {
                return Err(LoadError::Overlap { first: a.index, second: b.index });
            }
        }
    }

    let first = loaded.next().ok_or(LoadError::NoLoadableSegments)?;
    let summary = loaded.fold(
        LoadedImage { entry: header.entry, lowest: first.start, highest: first.end, segments: 1 },
        |summary, segment| LoadedImage {
            lowest: summary.lowest.min(segment.start),
            highest: summary.highest.max(segment.end),
            segments: summary.segments.saturating_add(1),
            ..summary
        },
    );

    let entry = pv_entry_note(image, table)?.unwrap_or(header.entry);
    let summary = LoadedImage { entry, ..summary };
    let home = segments
        .iter()
        .flatten()
        .find(|segment| segment.start <= entry && entry < segment.end)
        .ok_or(LoadError::EntryOutsideSegments { entry })?;
    if !home.executable {
        return Err(LoadError::EntryNotExecutable { entry, segment: home.index });
    }

    Ok(Plan { segments, loaded: summary })
}

/// The paravirtual entry from Umbra's note, if some PT_NOTE segment of
/// the program header `table` has one. Other notes are skipped.
fn pv_entry_note(image: &[u8], table: &[u8]) -> Result<Option<u64>, LoadError> {
    for (index, raw) in table.chunks_exact(PHDR_SIZE).enumerate() {
        let header = ProgramHeader::parse(raw).ok_or(LoadError::ProgramHeadersOutsideImage)?;
        if header.p_type != PT_NOTE {
            continue;
        }
        let mut notes = file_bytes(image, header.offset, header.filesz).unwrap_or(&[]);
        while let Some(note) = Note::parse(notes) {
            if note.name == umbra_abi::PV_ENTRY_NOTE_NAME && note.kind == umbra_abi::PV_ENTRY_NOTE_TYPE {
                let size = note.payload.len() as u32;
                let entry = le_u64(note.payload, 0).filter(|_| size == 8);
                return entry.map(Some).ok_or(LoadError::BadEntryNote { segment: index, size });
            }
            notes = note.rest;
        }
    }
    Ok(None)
}

/// One ELF note: name size, payload size, type, then the name and the
/// payload, each padded to 4 bytes; `rest` is what follows it.
struct Note<'a> {
    name: &'a [u8],
    kind: u32,
    payload: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Note<'a> {
    /// The first note of `bytes`, unless they are too short to hold it.
    fn parse(bytes: &'a [u8]) -> Option<Note<'a>> {
        let name_len = usize::try_from(le_u32(bytes, 0)?).ok()?;
        let payload_len = usize::try_from(le_u32(bytes, 4)?).ok()?;
        let payload_at = 12usize.checked_add(name_len.checked_next_multiple_of(4)?)?;
        let next = payload_at.checked_add(payload_len.checked_next_multiple_of(4)?)?;
        Some(Note {
            name: bytes.get(12..12 + name_len)?,
            kind: le_u32(bytes, 8)?,
            payload: bytes.get(payload_at..payload_at + payload_len)?,
            rest: bytes.get(next..).unwrap_or(&[]),
        })
    }
}

/// The parts of the ELF header the loader cares about.
struct Header {
    class: u8,
    data: u8,
    e_type: u16,
    machine: u16,
    entry: u64,
    phoff: u64,
    phentsize: u16,
    phnum: u16,
}

impl Header {
    fn parse(bytes: &[u8]) -> Option<Self> {
        Some(Self {
            class: *bytes.get(4)?,
            data: *bytes.get(5)?,
            e_type: le_u16(bytes, 16)?,
            machine: le_u16(bytes, 18)?,
            entry: le_u64(bytes, 24)?,
            phoff: le_u64(bytes, 32)?,
            phentsize: le_u16(bytes, 54)?,
            phnum: le_u16(bytes, 56)?,
        })
    }

    fn check(&self) -> Result<(), LoadError> {
        if self.class != ELFCLASS64 {
            return Err(LoadError::Not64Bit { class: self.class });
        }
        if self.data != ELFDATA2LSB {
            return Err(LoadError::NotLittleEndian { data: self.data });
        }
        if self.e_type != ET_EXEC {
            return Err(LoadError::NotExecutable { e_type: self.e_type });
        }
        if self.machine != EM_X86_64 {
            return Err(LoadError::NotX86_64 { machine: self.machine });
        }
        if usize::from(self.phnum) > MAX_PROGRAM_HEADERS {
            return Err(LoadError::TooManyProgramHeaders { count: self.phnum });
        }
        // With no table there is nothing to mis-size; such an image still
        // fails, as having no loadable segments, which is the truer complaint.
        if self.phnum != 0 && usize::from(self.phentsize) != PHDR_SIZE {
            return Err(LoadError::BadProgramHeaderSize { size: self.phentsize });
        }
        Ok(())
    }
}

/// The parts of a program header the loader cares about. `p_vaddr` is not
/// among them: the guest starts with virtual equal to physical.
struct ProgramHeader {
    p_type: u32,
    flags: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

impl ProgramHeader {
    fn parse(bytes: &[u8]) -> Option<Self> {
        Some(Self {
            p_type: le_u32(bytes, 0)?,
            flags: le_u32(bytes, 4)?,
            offset: le_u64(bytes, 8)?,
            paddr: le_u64(bytes, 24)?,
            filesz: le_u64(bytes, 32)?,
            memsz: le_u64(bytes, 40)?,
        })
    }

    /// The segment to load for this header, if any.
    fn check<'a>(
        &self,
        image: &'a [u8],
        memory: u64,
        index: usize,
    ) -> Result<Option<Segment<'a>>, LoadError> {
        if self.p_type != PT_LOAD {
            return Ok(None);
        }
        // Checked even for an empty segment: a header claiming more file
        // than memory is malformed whatever its size.
        let bss_len = self.memsz.checked_sub(self.filesz).ok_or(LoadError::MemSizeSmallerThanFileSize {
            segment: index,
            filesz: self.filesz,
            memsz: self.memsz,
        })?;
        if self.memsz == 0 {
            return Ok(None);
        }
        let data = file_bytes(image, self.offset, self.filesz)
            .ok_or(LoadError::FileDataOutsideImage { segment: index })?;
        let outside =
            LoadError::SegmentOutsideMemory { segment: index, paddr: self.paddr, memsz: self.memsz, memory };
        let end = self.paddr.checked_add(self.memsz).filter(|&end| end <= memory).ok_or(outside)?;
        // Cannot fail once `end` did, as filesz <= memsz; checked anyway so
        // that no sum of file values is ever left to chance.
        let bss_start = self.paddr.checked_add(self.filesz).ok_or(outside)?;
        Ok(Some(Segment {
            index,
            start: self.paddr,
            end,
            data,
            bss_start,
            bss_len,
            executable: self.flags & PF_X != 0,
        }))
    }
}

/// `len` bytes of the image from `offset`, if the image has them.
fn file_bytes(image: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    image.get(start..end)
}

fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    bytes.get(at..)?.first_chunk().copied().map(u16::from_le_bytes)
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..)?.first_chunk().copied().map(u32::from_le_bytes)
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    bytes.get(at..)?.first_chunk().copied().map(u64::from_le_bytes)
}

// The ELF-note builder the tests share with the loader's fuzzer.
#[cfg(test)]
#[path = "../tests/common/elf_note.rs"]
mod elf_note;

#[cfg(test)]
mod tests {
    extern crate std;

    use super::elf_note::note;
    use super::*;
    use std::string::ToString;
    use std::vec;
    use std::vec::Vec;
    use umbra_abi::rng::Rng;

    const MEMORY: u64 = 0x10000;
    const PT_NOTE: u32 = 4;
    const PF_W: u32 = 2;
    const PF_R: u32 = 4;

    // Offsets of fields, for tests that break one on purpose.
    const E_IDENT_CLASS: usize = 4;
    const E_IDENT_DATA: usize = 5;
    const E_TYPE: usize = 16;
    const E_MACHINE: usize = 18;
    const E_ENTRY: usize = 24;
    const E_PHOFF: usize = 32;
    const E_PHENTSIZE: usize = 54;
    const E_PHNUM: usize = 56;
    const P_TYPE: usize = 0;
    const P_FLAGS: usize = 4;
    const P_OFFSET: usize = 8;
    const P_PADDR: usize = 24;
    const P_FILESZ: usize = 32;
    const P_MEMSZ: usize = 40;

    struct Seg {
        p_type: u32,
        flags: u32,
        paddr: u64,
        data: Vec<u8>,
        memsz: u64,
    }

    /// Assembles an ELF64 image: header, program headers right after it,
    /// then each segment's file bytes in order.
    struct Builder {
        entry: u64,
        segs: Vec<Seg>,
    }

    impl Builder {
        fn new(entry: u64) -> Self {
            Self { entry, segs: Vec::new() }
        }

        fn segment(mut self, p_type: u32, flags: u32, paddr: u64, data: &[u8], memsz: u64) -> Self {
            self.segs.push(Seg { p_type, flags, paddr, data: data.to_vec(), memsz });
            self
        }

        fn load(self, flags: u32, paddr: u64, data: &[u8], memsz: u64) -> Self {
            self.segment(PT_LOAD, flags, paddr, data, memsz)
        }

        fn build(&self) -> Vec<u8> {
            let count = self.segs.len();
            let mut image = vec![0u8; EHDR_SIZE + count * PHDR_SIZE];
            image[..4].copy_from_slice(&MAGIC);
            image[E_IDENT_CLASS] = ELFCLASS64;
            image[E_IDENT_DATA] = ELFDATA2LSB;
            image[6] = 1; // EI_VERSION
            put16(&mut image, E_TYPE, ET_EXEC);
            put16(&mut image, E_MACHINE, EM_X86_64);
            put32(&mut image, 20, 1); // e_version
            put64(&mut image, E_ENTRY, self.entry);
            put64(&mut image, E_PHOFF, EHDR_SIZE as u64);
            put16(&mut image, 52, EHDR_SIZE as u16); // e_ehsize
            put16(&mut image, E_PHENTSIZE, PHDR_SIZE as u16);
            put16(&mut image, E_PHNUM, count as u16);
            for (i, seg) in self.segs.iter().enumerate() {
                let offset = image.len() as u64;
                image.extend_from_slice(&seg.data);
                let ph = ph_at(i);
                put32(&mut image, ph + P_TYPE, seg.p_type);
                put32(&mut image, ph + P_FLAGS, seg.flags);
                put64(&mut image, ph + P_OFFSET, offset);
                put64(&mut image, ph + 16, seg.paddr); // p_vaddr
                put64(&mut image, ph + P_PADDR, seg.paddr);
                put64(&mut image, ph + P_FILESZ, seg.data.len() as u64);
                put64(&mut image, ph + P_MEMSZ, seg.memsz);
                put64(&mut image, ph + 48, 0x1000); // p_align
            }
            image
        }
    }

    fn ph_at(index: usize) -> usize {
        EHDR_SIZE + index * PHDR_SIZE
    }

    fn put16(image: &mut [u8], at: usize, value: u16) {
        image[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn put32(image: &mut [u8], at: usize, value: u32) {
        image[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn put64(image: &mut [u8], at: usize, value: u64) {
        image[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Op {
        Write { gpa: u64, len: u64 },
        Zero { gpa: u64, len: u64 },
    }

    /// Guest memory in a Vec, logging every call so tests can check where
    /// the loader wrote. Out-of-bounds calls are logged, not applied, so a
    /// loader bug shows up as a failed assertion rather than a panic here.
    struct VecTarget {
        memory: Vec<u8>,
        ops: Vec<Op>,
    }

    impl VecTarget {
        fn new(size: u64) -> Self {
            Self { memory: vec![0xAA; size as usize], ops: Vec::new() }
        }

        fn range(&mut self, gpa: u64, len: u64) -> Option<&mut [u8]> {
            let start = usize::try_from(gpa).ok()?;
            let end = start.checked_add(usize::try_from(len).ok()?)?;
            self.memory.get_mut(start..end)
        }

        fn in_bounds(&self, op: Op) -> bool {
            let (Op::Write { gpa, len } | Op::Zero { gpa, len }) = op;
            gpa.checked_add(len).is_some_and(|end| end <= self.size())
        }
    }

    impl LoadTarget for VecTarget {
        fn size(&self) -> u64 {
            self.memory.len() as u64
        }

        fn write(&mut self, gpa: u64, bytes: &[u8]) {
            let len = bytes.len() as u64;
            self.ops.push(Op::Write { gpa, len });
            if let Some(dest) = self.range(gpa, len) {
                dest.copy_from_slice(bytes);
            }
        }

        fn zero(&mut self, gpa: u64, len: u64) {
            self.ops.push(Op::Zero { gpa, len });
            if let Some(dest) = self.range(gpa, len) {
                dest.fill(0);
            }
        }
    }

    const TEXT: &[u8] = &[0x90, 0x90, 0x0f, 0x0b, 0xf4];
    const DATA: &[u8] = &[1, 2, 3, 4];

    /// Text (RX) at 0x1000, data (RW, with .bss) at 0x3000, plus a note.
    fn good() -> Builder {
        Builder::new(0x1002)
            .load(PF_R | PF_X, 0x1000, TEXT, TEXT.len() as u64)
            .segment(PT_NOTE, PF_R, 0, &[9; 8], 8)
            .load(PF_R | PF_W, 0x3000, DATA, 0x100)
    }

    /// Load, insisting that a refused image left the target untouched.
    fn try_load(image: &[u8]) -> Result<LoadedImage, LoadError> {
        let mut target = VecTarget::new(MEMORY);
        let result = load(image, &mut target);
        if result.is_err() {
            assert!(target.ops.is_empty(), "refused image wrote {:?}", target.ops);
            assert!(target.memory.iter().all(|&b| b == 0xAA));
        }
        result
    }

    fn error(image: &[u8]) -> LoadError {
        try_load(image).expect_err("image should be refused")
    }

    #[test]
    fn good_image_is_placed_and_bss_zeroed() {
        let mut target = VecTarget::new(MEMORY);
        let loaded = load(&good().build(), &mut target).unwrap();
        assert_eq!(loaded, LoadedImage { entry: 0x1002, lowest: 0x1000, highest: 0x3100, segments: 2 });
        assert_eq!(&target.memory[0x1000..0x1005], TEXT);
        assert_eq!(&target.memory[0x3000..0x3004], DATA);
        assert!(target.memory[0x3004..0x3100].iter().all(|&b| b == 0));
        // Untouched around the segments, including where the note "is".
        assert!(target.memory[..0x1000].iter().all(|&b| b == 0xAA));
        assert!(target.memory[0x1005..0x3000].iter().all(|&b| b == 0xAA));
        assert!(target.memory[0x3100..].iter().all(|&b| b == 0xAA));
        assert_eq!(
            target.ops,
            [
                Op::Write { gpa: 0x1000, len: 5 },
                Op::Write { gpa: 0x3000, len: 4 },
                Op::Zero { gpa: 0x3004, len: 0xfc },
            ]
        );
    }

    /// `p_vaddr` is the guest's own business: a kernel linked high and
    /// loaded low (as Linux's vmlinux is) is placed by `p_paddr` alone, and
    /// its entry is a guest-physical address, as linear mode needs.
    #[test]
    fn virtual_addresses_are_not_looked_at() {
        let mut image = good().build();
        for index in [0, 2] {
            put64(&mut image, ph_at(index) + 16, 0xffff_ffff_8000_0000 + index as u64 * 0x2000);
        }
        let mut target = VecTarget::new(MEMORY);
        let loaded = load(&image, &mut target).unwrap();
        assert_eq!(loaded, LoadedImage { entry: 0x1002, lowest: 0x1000, highest: 0x3100, segments: 2 });
        assert_eq!(&target.memory[0x1000..0x1005], TEXT);
        assert_eq!(&target.memory[0x3000..0x3004], DATA);
    }

    #[test]
    fn edges_that_are_fine() {
        // A segment ending exactly at the top of memory, a pure-.bss one
        // right against it, an empty PT_LOAD with absurd values, and a
        // non-PT_LOAD header pointing nowhere: all acceptable.
        let mut image = Builder::new(0xf000)
            .load(PF_X, 0xf000, TEXT, 0x1000)
            .load(PF_W, 0xe000, &[], 0x1000)
            .load(PF_X, u64::MAX, &[], 0)
            .segment(PT_NOTE, 0, 0, &[], 0)
            .build();
        put64(&mut image, ph_at(2) + P_OFFSET, u64::MAX);
        put64(&mut image, ph_at(3) + P_OFFSET, u64::MAX);
        put64(&mut image, ph_at(3) + P_FILESZ, u64::MAX);
        let mut target = VecTarget::new(MEMORY);
        let loaded = load(&image, &mut target).unwrap();
        assert_eq!((loaded.lowest, loaded.highest), (0xe000, MEMORY));
        assert_eq!(loaded.segments, 2);
        assert!(target.memory[0xe000..0xf000].iter().all(|&b| b == 0));
    }

    #[test]
    fn bad_magic() {
        let mut image = good().build();
        image[0] = 0x7e;
        assert_eq!(error(&image), LoadError::BadMagic);
        assert_eq!(error(&[]), LoadError::BadMagic);
        assert_eq!(error(b"\x7fEL"), LoadError::BadMagic);
    }

    #[test]
    fn header_truncated() {
        let image = good().build();
        assert_eq!(error(&image[..63]), LoadError::HeaderTruncated { len: 63 });
        assert_eq!(error(&image[..4]), LoadError::HeaderTruncated { len: 4 });
    }

    #[test]
    fn not_64_bit() {
        let mut image = good().build();
        image[E_IDENT_CLASS] = 1;
        assert_eq!(error(&image), LoadError::Not64Bit { class: 1 });
    }

    #[test]
    fn not_little_endian() {
        let mut image = good().build();
        image[E_IDENT_DATA] = 2;
        assert_eq!(error(&image), LoadError::NotLittleEndian { data: 2 });
    }

    #[test]
    fn not_executable() {
        let mut image = good().build();
        put16(&mut image, E_TYPE, 3); // ET_DYN
        assert_eq!(error(&image), LoadError::NotExecutable { e_type: 3 });
    }

    #[test]
    fn not_x86_64() {
        let mut image = good().build();
        put16(&mut image, E_MACHINE, 183); // EM_AARCH64
        assert_eq!(error(&image), LoadError::NotX86_64 { machine: 183 });
    }

    #[test]
    fn bad_program_header_size() {
        let mut image = good().build();
        put16(&mut image, E_PHENTSIZE, 64);
        assert_eq!(error(&image), LoadError::BadProgramHeaderSize { size: 64 });
    }

    #[test]
    fn too_many_program_headers() {
        let mut builder = Builder::new(0x1000).load(PF_X, 0x1000, TEXT, 0x10);
        for _ in 0..MAX_PROGRAM_HEADERS {
            builder = builder.segment(PT_NOTE, 0, 0, &[], 0);
        }
        assert_eq!(error(&builder.build()), LoadError::TooManyProgramHeaders { count: 17 });
        let mut image = good().build();
        put16(&mut image, E_PHNUM, u16::MAX);
        assert_eq!(error(&image), LoadError::TooManyProgramHeaders { count: u16::MAX });
    }

    #[test]
    fn exactly_max_program_headers_is_fine() {
        let mut builder = Builder::new(0x1000).load(PF_X, 0x1000, TEXT, 0x10);
        for _ in 1..MAX_PROGRAM_HEADERS {
            builder = builder.segment(PT_NOTE, 0, 0, &[], 0);
        }
        assert!(try_load(&builder.build()).is_ok());
    }

    #[test]
    fn program_headers_outside_image() {
        let image = good().build();
        let table_end = ph_at(3);
        assert_eq!(error(&image[..table_end - 1]), LoadError::ProgramHeadersOutsideImage);
        let mut image = good().build();
        put64(&mut image, E_PHOFF, u64::MAX - 10);
        assert_eq!(error(&image), LoadError::ProgramHeadersOutsideImage);
    }

    #[test]
    fn mem_size_smaller_than_file_size() {
        let mut image = good().build();
        put64(&mut image, ph_at(2) + P_MEMSZ, 3);
        assert_eq!(error(&image), LoadError::MemSizeSmallerThanFileSize { segment: 2, filesz: 4, memsz: 3 });
    }

    #[test]
    fn file_data_outside_image() {
        let image = good().build();
        assert_eq!(error(&image[..image.len() - 1]), LoadError::FileDataOutsideImage { segment: 2 });
        let mut image = good().build();
        put64(&mut image, ph_at(0) + P_OFFSET, u64::MAX - 1);
        assert_eq!(error(&image), LoadError::FileDataOutsideImage { segment: 0 });
    }

    #[test]
    fn segment_outside_memory() {
        let mut image = good().build();
        put64(&mut image, ph_at(2) + P_PADDR, MEMORY - 0xff);
        assert_eq!(
            error(&image),
            LoadError::SegmentOutsideMemory {
                segment: 2,
                paddr: MEMORY - 0xff,
                memsz: 0x100,
                memory: MEMORY
            }
        );
        // Wrapping around 2^64 is outside too, not a small address.
        put64(&mut image, ph_at(2) + P_PADDR, u64::MAX - 0x10);
        assert!(matches!(error(&image), LoadError::SegmentOutsideMemory { segment: 2, .. }));
    }

    #[test]
    fn overlap() {
        let image = Builder::new(0x1000)
            .load(PF_X, 0x1000, TEXT, 0x100)
            .load(PF_W, 0x2000, DATA, 0x100)
            .load(PF_W, 0x10ff, DATA, 0x10)
            .build();
        assert_eq!(error(&image), LoadError::Overlap { first: 0, second: 2 });
        // One inside another, and identical ranges.
        let image =
            Builder::new(0x1000).load(PF_X, 0x1000, TEXT, 0x1000).load(PF_W, 0x1800, DATA, 0x10).build();
        assert_eq!(error(&image), LoadError::Overlap { first: 0, second: 1 });
        // Touching is not overlapping.
        let image =
            Builder::new(0x1000).load(PF_X, 0x1000, TEXT, 0x1000).load(PF_W, 0x2000, DATA, 0x10).build();
        assert!(try_load(&image).is_ok());
    }

    #[test]
    fn no_loadable_segments() {
        let image = Builder::new(0x1000)
            .segment(PT_NOTE, PF_X, 0x1000, TEXT, 0x100)
            .load(PF_X, 0x1000, &[], 0)
            .build();
        assert_eq!(error(&image), LoadError::NoLoadableSegments);
        let mut image = good().build();
        put16(&mut image, E_PHNUM, 0);
        put16(&mut image, E_PHENTSIZE, 0);
        assert_eq!(error(&image), LoadError::NoLoadableSegments);
    }

    #[test]
    fn entry_outside_segments() {
        for entry in [0, 0xfff, 0x1005, 0x3100, u64::MAX] {
            let mut image = good().build();
            put64(&mut image, E_ENTRY, entry);
            assert_eq!(error(&image), LoadError::EntryOutsideSegments { entry });
        }
        // The entry is checked against physical addresses, not virtual ones.
        let mut image = good().build();
        put64(&mut image, ph_at(0) + 16, 0xffff_8000_0000_1000);
        put64(&mut image, E_ENTRY, 0xffff_8000_0000_1002);
        assert!(matches!(error(&image), LoadError::EntryOutsideSegments { .. }));
    }

    #[test]
    fn entry_not_executable() {
        let mut image = good().build();
        put64(&mut image, E_ENTRY, 0x3000);
        assert_eq!(error(&image), LoadError::EntryNotExecutable { entry: 0x3000, segment: 2 });
        // Even in the .bss part.
        put64(&mut image, E_ENTRY, 0x30ff);
        put32(&mut image, ph_at(2) + P_FLAGS, PF_R);
        assert!(matches!(error(&image), LoadError::EntryNotExecutable { segment: 2, .. }));
    }

    fn with_notes(notes: &[u8]) -> Vec<u8> {
        Builder::new(0x1000)
            .load(PF_R | PF_X, 0x1000, TEXT, TEXT.len() as u64)
            .segment(PT_NOTE, PF_R, 0, notes, 0)
            .build()
    }

    #[test]
    fn umbra_note_names_the_entry() {
        let xen = note(b"Xen\0", 18, &0x1000u32.to_le_bytes());
        let umbra = note(umbra_abi::PV_ENTRY_NOTE_NAME, 1, &0x1003u64.to_le_bytes());
        // Found after another loader's note, and preferred to e_entry.
        let loaded = try_load(&with_notes(&[xen.clone(), umbra.clone()].concat())).unwrap();
        assert_eq!(loaded.entry, 0x1003);
        // Without it, e_entry; a note of another type or name is not ours.
        assert_eq!(try_load(&with_notes(&xen)).unwrap().entry, 0x1000);
        let other = note(umbra_abi::PV_ENTRY_NOTE_NAME, 2, &0x1003u64.to_le_bytes());
        assert_eq!(try_load(&with_notes(&other)).unwrap().entry, 0x1000);
        // A truncated note chain is skipped, not trusted.
        assert_eq!(try_load(&with_notes(&umbra[..umbra.len() - 1])).unwrap().entry, 0x1000);
        // The note's entry is checked like e_entry.
        let outside = note(umbra_abi::PV_ENTRY_NOTE_NAME, 1, &0x9000u64.to_le_bytes());
        assert_eq!(error(&with_notes(&outside)), LoadError::EntryOutsideSegments { entry: 0x9000 });
        // A payload that is not one address is refused.
        let short = note(umbra_abi::PV_ENTRY_NOTE_NAME, 1, &0x1003u32.to_le_bytes());
        assert_eq!(error(&with_notes(&short)), LoadError::BadEntryNote { segment: 1, size: 4 });
    }

    #[test]
    fn messages() {
        let outside =
            LoadError::SegmentOutsideMemory { segment: 2, paddr: 0x4000000, memsz: 0x1000, memory: 64 << 20 };
        assert_eq!(
            outside.to_string(),
            "segment 2 (0x1000 bytes at 0x4000000) lies outside guest memory (64 MiB)"
        );
        assert_eq!(LoadError::Overlap { first: 1, second: 3 }.to_string(), "segments 1 and 3 overlap");
        assert_eq!(
            LoadError::EntryOutsideSegments { entry: 0x1234 }.to_string(),
            "entry point 0x1234 is outside the loaded segments"
        );
        assert_eq!(LoadError::BadMagic.to_string(), "not an ELF file (bad magic)");
        assert_eq!(Size(3 << 30).to_string(), "3 GiB");
        assert_eq!(Size(12 << 10).to_string(), "12 KiB");
        assert_eq!(Size(0x1234).to_string(), "0x1234 bytes");
        assert_eq!(Size(0).to_string(), "0x0 bytes");

        let all = [
            LoadError::BadMagic,
            LoadError::HeaderTruncated { len: 3 },
            LoadError::Not64Bit { class: 1 },
            LoadError::NotLittleEndian { data: 2 },
            LoadError::NotExecutable { e_type: 3 },
            LoadError::NotX86_64 { machine: 3 },
            LoadError::BadProgramHeaderSize { size: 32 },
            LoadError::TooManyProgramHeaders { count: 17 },
            LoadError::ProgramHeadersOutsideImage,
            LoadError::MemSizeSmallerThanFileSize { segment: 0, filesz: 2, memsz: 1 },
            LoadError::FileDataOutsideImage { segment: 0 },
            outside,
            LoadError::Overlap { first: 0, second: 1 },
            LoadError::NoLoadableSegments,
            LoadError::BadEntryNote { segment: 1, size: 4 },
            LoadError::EntryOutsideSegments { entry: 0 },
            LoadError::EntryNotExecutable { entry: 0, segment: 0 },
        ];
        for error in all {
            let message = error.to_string();
            assert!(!message.is_empty() && !message.contains('\n'), "{error:?}");
        }
    }

    /// The good image with what a linker adds after the segments: debug
    /// info, symbols and a section header table the header points at.
    fn with_symbols() -> (Vec<u8>, usize) {
        let mut image = good().build();
        let loadable = image.len();
        image.extend_from_slice(&[0xdb; 3000]);
        put64(&mut image, E_SHOFF, loadable as u64 + 1000);
        put16(&mut image, E_SHNUM, 17);
        put16(&mut image, E_SHSTRNDX, 15);
        (image, loadable)
    }

    #[test]
    fn strip_keeps_exactly_what_load_reads() {
        let (whole, loadable) = with_symbols();
        let mut cut = whole.clone();
        let keep = strip(&mut cut).unwrap();
        assert_eq!(keep, loadable);
        cut.truncate(keep);
        assert_eq!(&cut[E_SHOFF..E_SHOFF + 8], &[0; 8]);
        assert_eq!(&cut[E_SHNUM..E_SHSTRNDX + 2], &[0; 4]);
        let (mut before, mut after) = (VecTarget::new(MEMORY), VecTarget::new(MEMORY));
        assert_eq!(load(&whole, &mut before), load(&cut, &mut after));
        assert_eq!(before.memory, after.memory);
        // Cutting again changes nothing.
        let mut again = cut.clone();
        assert_eq!(strip(&mut again), Ok(keep));
        assert_eq!(again, cut);
    }

    #[test]
    fn strip_keeps_a_note_at_the_end() {
        let umbra = note(umbra_abi::PV_ENTRY_NOTE_NAME, 1, &0x1003u64.to_le_bytes());
        let mut image = with_notes(&umbra);
        let loadable = image.len();
        image.extend_from_slice(&[0xdb; 100]);
        assert_eq!(strip(&mut image), Ok(loadable));
        assert_eq!(try_load(&image[..loadable]).unwrap().entry, 0x1003);
    }

    #[test]
    fn strip_keeps_the_offset_of_a_segment_without_file_bytes() {
        // The loader wants even an empty slice of the file to start inside
        // it (the fuzzer found this one).
        let mut image =
            Builder::new(0x1000).load(PF_X, 0x1000, TEXT, 0x10).load(PF_W, 0x3000, &[], 0x10).build();
        let loadable = image.len();
        image.extend_from_slice(&[0xdb; 100]);
        put64(&mut image, ph_at(1) + P_OFFSET, loadable as u64 + 40);
        let keep = strip(&mut image).unwrap();
        assert_eq!(keep, loadable + 40);
        assert!(try_load(&image[..keep]).is_ok());
    }

    #[test]
    fn strip_refuses_what_load_refuses() {
        let (mut image, _) = with_symbols();
        put16(&mut image, E_MACHINE, 3);
        let unchanged = image.clone();
        assert_eq!(strip(&mut image), Err(LoadError::NotX86_64 { machine: 3 }));
        assert_eq!(image, unchanged);
        assert_eq!(strip(&mut []), Err(LoadError::BadMagic));
    }

    /// Random damage to a good image (flipped bits, random bytes, hostile
    /// values dropped on header fields, truncation) must never panic or
    /// write outside the target, and must write nothing when refused. Plain
    /// random bytes rarely get past the magic, so half the damage is aimed
    /// at the fields that steer the loader.
    #[test]
    fn mutations_never_panic_or_write_outside() {
        // (offset, width): header fields, then program header fields.
        const HEADER_FIELDS: [(usize, usize); 7] = [
            (E_IDENT_CLASS, 1),
            (E_IDENT_DATA, 1),
            (E_TYPE, 2),
            (E_ENTRY, 8),
            (E_PHOFF, 8),
            (E_PHENTSIZE, 2),
            (E_PHNUM, 2),
        ];
        const PH_FIELDS: [(usize, usize); 8] = [
            (P_TYPE, 4),
            (P_FLAGS, 4),
            (P_OFFSET, 8),
            (16, 8),
            (P_PADDR, 8),
            (P_FILESZ, 8),
            (P_MEMSZ, 8),
            (48, 8),
        ];
        const HOSTILE: [u64; 12] =
            [0, 1, 2, 56, 0x1000, 0x1002, 0x3000, MEMORY - 1, MEMORY, u64::MAX, u64::MAX - 0xfff, 1 << 63];
        let original = good().build();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut loaded, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut image = original.clone();
            for _ in 0..1 + rng.index(4) {
                match rng.index(5) {
                    0 => {
                        let at = rng.index(image.len());
                        image[at] ^= 1 << rng.index(8);
                    }
                    1 => {
                        let at = rng.index(image.len());
                        image[at] = rng.next_u64() as u8;
                    }
                    2 | 3 => {
                        let (at, width) = if rng.index(3) == 0 {
                            HEADER_FIELDS[rng.index(HEADER_FIELDS.len())]
                        } else {
                            let (field, width) = PH_FIELDS[rng.index(PH_FIELDS.len())];
                            (ph_at(rng.index(3)) + field, width)
                        };
                        if at >= image.len() {
                            continue;
                        }
                        let value = if rng.index(2) == 0 {
                            HOSTILE[rng.index(HOSTILE.len())]
                        } else {
                            rng.next_u64()
                        };
                        let end = (at + width).min(image.len());
                        let bytes = value.to_le_bytes();
                        image[at..end].copy_from_slice(&bytes[..end - at]);
                    }
                    _ => {
                        let len = rng.index(image.len() + 1);
                        image.truncate(len);
                    }
                }
                if image.is_empty() {
                    break;
                }
            }

            let mut target = VecTarget::new(MEMORY);
            match load(&image, &mut target) {
                Ok(summary) => {
                    loaded += 1;
                    assert!(summary.lowest < summary.highest && summary.highest <= MEMORY);
                    assert!(summary.lowest <= summary.entry && summary.entry < summary.highest);
                    for &op in &target.ops {
                        assert!(target.in_bounds(op), "{op:?} outside target");
                        let (Op::Write { gpa, len } | Op::Zero { gpa, len }) = op;
                        assert!(gpa >= summary.lowest && gpa + len <= summary.highest);
                    }
                }
                Err(_) => {
                    refused += 1;
                    assert!(target.ops.is_empty(), "refused image wrote {:?}", target.ops);
                }
            }
        }
        // Both paths were exercised, or the test proves little.
        assert!(loaded > 1_000 && refused > 1_000, "{loaded} loaded, {refused} refused");
    }
}
