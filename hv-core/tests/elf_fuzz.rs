//! A fuzzer for the guest ELF loader, on the host.
//!
//! Each run builds a valid guest image (an ELF64 header, a few PT_LOAD
//! segments that fit guest memory without overlapping, an entry point in
//! an executable one), then breaks it the ways a hostile or broken file
//! would: header fields and program-header fields set to edge values
//! (0, all-ones, the memory size and its neighbours, the image length,
//! another segment's address), segments duplicated so they overlap, the
//! file cut short, garbage appended, random bytes flipped. Then it loads
//! the result into a guest memory of a random size, itself sometimes an
//! edge (0, one byte, 2^64 - 1), and checks:
//! - nothing panics, and no input runs for seconds (as a loop that never
//!   ended would);
//! - a refusal is one non-empty line, and nothing at all was written;
//! - an accepted image wrote only inside guest memory, each segment's file
//!   bytes then zeros exactly where the program headers say, no two
//!   segments on the same bytes, and the entry point lies in a loaded,
//!   executable segment;
//! - an accepted image, cut down by `elf::strip` as the firmware's build
//!   cuts its default guest, loads exactly the same.
//!
//! `UMBRA_FUZZ_RUNS` sets the number of runs (default 20,000, a few
//! seconds), `UMBRA_FUZZ_SEED` the first seed; a failure names its seed.

#[path = "common/elf_note.rs"]
mod elf_note;

use elf_note::note;
use hv_core::elf::{self, LoadTarget, LoadedImage};
use umbra_abi::rng::{self, Rng};

const EHDR: usize = 64;
const PHDR: usize = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
/// Guest memories up to this size are real buffers whose bytes are
/// checked; larger ones only record where the loader wrote.
const REAL_MEMORY_MAX: u64 = 1 << 18;

/// A guest memory that remembers every write.
struct Target {
    size: u64,
    bytes: Option<Vec<u8>>,
    writes: Vec<(u64, u64)>,
}

impl LoadTarget for Target {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, gpa: u64, data: &[u8]) {
        self.record(gpa, data.len() as u64);
        if let Some(bytes) = &mut self.bytes {
            bytes[gpa as usize..gpa as usize + data.len()].copy_from_slice(data);
        }
    }

    fn zero(&mut self, gpa: u64, len: u64) {
        self.record(gpa, len);
        if let Some(bytes) = &mut self.bytes {
            bytes[gpa as usize..(gpa + len) as usize].fill(0);
        }
    }
}

impl Target {
    fn record(&mut self, gpa: u64, len: u64) {
        let end = gpa.checked_add(len).expect("a write that wraps");
        assert!(end <= self.size, "a write at {gpa:#x}+{len:#x} past guest memory ({:#x})", self.size);
        self.writes.push((gpa, len));
    }
}

/// A program header as the test reads it back, independently of the loader.
#[derive(Clone, Copy, Debug)]
struct Phdr {
    p_type: u32,
    flags: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

// Writers that leave the image alone where it has been cut short: the
// mutations below run on images that earlier mutations may have broken.
fn put(image: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(place) = image.get_mut(at..at + bytes.len()) {
        place.copy_from_slice(bytes);
    }
}
fn put_u8(image: &mut [u8], at: usize, value: u8) {
    put(image, at, &[value]);
}
fn put_u16(image: &mut [u8], at: usize, value: u16) {
    put(image, at, &value.to_le_bytes());
}
fn put_u32(image: &mut [u8], at: usize, value: u32) {
    put(image, at, &value.to_le_bytes());
}
fn put_u64(image: &mut [u8], at: usize, value: u64) {
    put(image, at, &value.to_le_bytes());
}
fn get_u64(image: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(image.get(at..at + 8)?.try_into().ok()?))
}
fn get_u32(image: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?))
}
fn get_u16(image: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(image.get(at..at + 2)?.try_into().ok()?))
}

fn write_phdr(image: &mut [u8], at: usize, p: &Phdr) {
    put_u32(image, at, p.p_type);
    put_u32(image, at + 4, p.flags);
    put_u64(image, at + 8, p.offset);
    put_u64(image, at + 16, p.paddr); // p_vaddr, which the loader ignores
    put_u64(image, at + 24, p.paddr);
    put_u64(image, at + 32, p.filesz);
    put_u64(image, at + 40, p.memsz);
    put_u64(image, at + 48, 0x1000);
}

/// A valid image for a memory of `memory` bytes (at least 64 KiB).
fn valid_image(rng: &mut Rng, memory: u64) -> Vec<u8> {
    let count = 1 + rng.below(4) as usize;
    let room = memory.min(1 << 40);
    // Non-overlapping slices of memory: segment i in the i-th quarter.
    let quarter = room / 4;
    let mut phdrs = Vec::new();
    // Half the images also name their entry in Umbra's note (as the real
    // guest does), after another loader's note or alone; the payload is
    // sometimes the wrong size, which must be refused.
    let with_note = rng.below(2) == 0;
    let headers = count + usize::from(with_note);
    let mut data_at = (EHDR + PHDR * headers) as u64;
    for i in 0..count as u64 {
        let memsz = 1 + rng.below(0x3000.min(quarter));
        let filesz = if rng.below(3) == 0 { 0 } else { rng.below(memsz + 1) };
        let paddr = i * quarter + rng.below(quarter - memsz + 1);
        let offset = data_at + rng.below(64);
        data_at = offset + filesz;
        let flags = if i == 0 { PF_X | 4 } else { rng.below(8) as u32 };
        phdrs.push(Phdr { p_type: PT_LOAD, flags, offset, paddr, filesz, memsz });
    }
    let mut notes = Vec::new();
    if with_note {
        let note_entry = phdrs[0].paddr + rng.below(phdrs[0].memsz);
        if rng.below(2) == 0 {
            notes.extend(note(b"Xen\0", 18, &(note_entry as u32).to_le_bytes()));
        }
        let payload: Vec<u8> = match rng.below(8) {
            0 => note_entry.to_le_bytes()[..rng.pick(&[0usize, 4, 7])].to_vec(),
            1 => [note_entry.to_le_bytes(), [0; 8]].concat(),
            _ => note_entry.to_le_bytes().to_vec(),
        };
        notes.extend(note(umbra_abi::PV_ENTRY_NOTE_NAME, umbra_abi::PV_ENTRY_NOTE_TYPE, &payload));
        let (offset, filesz) = (data_at, notes.len() as u64);
        data_at += filesz;
        phdrs.push(Phdr { p_type: PT_NOTE, flags: 4, offset, paddr: 0, filesz, memsz: 0 });
    }
    let mut image = vec![0u8; data_at as usize];
    for byte in image.iter_mut().skip(EHDR + PHDR * headers) {
        *byte = rng.next_u64() as u8;
    }
    if let Some(p) = phdrs.iter().find(|p| p.p_type == PT_NOTE) {
        image[p.offset as usize..(p.offset + p.filesz) as usize].copy_from_slice(&notes);
    }
    image[..4].copy_from_slice(b"\x7fELF");
    image[4] = 2; // ELFCLASS64
    image[5] = 1; // little-endian
    image[6] = 1;
    put_u16(&mut image, 16, 2); // ET_EXEC
    put_u16(&mut image, 18, 62); // EM_X86_64
    put_u32(&mut image, 20, 1);
    let entry = phdrs[0].paddr + rng.below(phdrs[0].memsz);
    put_u64(&mut image, 24, entry);
    put_u64(&mut image, 32, EHDR as u64);
    put_u16(&mut image, 52, EHDR as u16);
    put_u16(&mut image, 54, PHDR as u16);
    put_u16(&mut image, 56, headers as u16);
    for (i, p) in phdrs.iter().enumerate() {
        write_phdr(&mut image, EHDR + PHDR * i, p);
    }
    image
}

/// A value biased to the edges that break loaders.
fn edgy(rng: &mut Rng, memory: u64, image_len: u64, other: u64) -> u64 {
    let edges = [
        0,
        1,
        u64::MAX,
        u64::MAX - 1,
        1 << 63,
        (1 << 63) - 1,
        u32::MAX as u64,
        memory,
        memory.wrapping_sub(1),
        memory.wrapping_add(1),
        image_len,
        image_len.wrapping_sub(1),
        image_len.wrapping_add(1),
        other,
        other.wrapping_add(1),
        other.wrapping_sub(1),
        0x1000,
    ];
    match rng.below(3) {
        0 => rng.pick(&edges),
        1 => rng.pick(&edges).wrapping_add(rng.below(16)).wrapping_sub(8),
        _ => rng.next_u64() >> rng.below(64),
    }
}

fn mutate(rng: &mut Rng, image: &mut Vec<u8>, memory: u64) {
    let len = image.len() as u64;
    // The headers the valid image put at EHDR, as many as are still whole.
    let phoff = EHDR;
    let phnum = (get_u16(image, 56).unwrap_or(0) as usize).min(image.len().saturating_sub(EHDR) / PHDR);
    match rng.below(10) {
        // A header field.
        0 => {
            let other = get_u64(image, phoff + 24).unwrap_or(0);
            let value = edgy(rng, memory, len, other);
            match rng.below(8) {
                0 => put_u8(image, 4, value as u8),
                1 => put_u8(image, 5, value as u8),
                2 => put_u16(image, 16, value as u16),
                3 => put_u16(image, 18, value as u16),
                4 => put_u64(image, 24, value),
                5 => put_u64(image, 32, value),
                6 => put_u16(image, 54, rng.pick(&[0, 1, 55, 57, 64, u16::MAX])),
                _ => put_u16(image, 56, rng.pick(&[0, 1, 15, 16, 17, u16::MAX, value as u16])),
            }
        }
        // A program-header field, to an edge or to another segment's value.
        1..=4 if phnum > 0 => {
            let at = phoff + PHDR * rng.below(phnum as u64) as usize;
            let other_at = phoff + PHDR * rng.below(phnum as u64) as usize;
            let field = rng.pick(&[8usize, 24, 32, 40]);
            let other = get_u64(image, other_at + field).unwrap_or(0);
            let value = edgy(rng, memory, len, other);
            match rng.below(6) {
                0 => put_u32(image, at, rng.pick(&[0, 1, 2, 4, 6, 0x6474_e551, u32::MAX])),
                1 => put_u32(image, at + 4, rng.next_u64() as u32 & 7),
                _ => put_u64(image, at + field, value),
            }
        }
        // A segment copied over another: same memory, or the entry moved.
        5 if phnum > 1 => {
            let from = phoff + PHDR * rng.below(phnum as u64) as usize;
            let to = phoff + PHDR * rng.below(phnum as u64) as usize;
            let entry: [u8; PHDR] = image[from..from + PHDR].try_into().unwrap();
            image[to..to + PHDR].copy_from_slice(&entry);
            if rng.below(2) == 0 {
                let paddr = get_u64(image, to + 24).unwrap_or(0);
                put_u64(image, to + 24, paddr.wrapping_add(rng.below(0x2000)).wrapping_sub(0x1000));
            }
        }
        // Cut short, anywhere, or just inside a table or a segment.
        6 => {
            let cut = match rng.below(3) {
                0 => rng.below(len + 1),
                1 => rng.pick(&[0, 3, 4, 63, 64, 65, 119, 120, 121]),
                _ => len.saturating_sub(1 + rng.below(8)),
            };
            image.truncate(cut.min(len) as usize);
        }
        // Garbage at the end.
        7 => {
            for _ in 0..rng.below(256) {
                image.push(rng.next_u64() as u8);
            }
        }
        // The entry point moved, to an edge or into another segment.
        8 => {
            let at = phoff + PHDR * rng.below(phnum.max(1) as u64) as usize;
            let base = get_u64(image, at + 24).unwrap_or(0);
            let size = get_u64(image, at + 40).unwrap_or(0);
            let entry = rng.pick(&[base, base.wrapping_add(size), base.wrapping_add(size).wrapping_sub(1)]);
            put_u64(image, 24, if rng.below(4) == 0 { edgy(rng, memory, len, base) } else { entry });
        }
        // Random bytes flipped.
        _ => {
            for _ in 0..1 + rng.below(8) {
                if !image.is_empty() {
                    let at = rng.below(image.len() as u64) as usize;
                    image[at] ^= 1 << rng.below(8);
                }
            }
        }
    }
}

/// The program headers, read back by the test itself.
fn phdrs(image: &[u8]) -> Vec<Phdr> {
    let (Some(phoff), Some(phnum)) = (get_u64(image, 32), get_u16(image, 56)) else { return vec![] };
    (0..phnum as usize)
        .filter_map(|i| {
            let at = usize::try_from(phoff).ok()?.checked_add(PHDR * i)?;
            Some(Phdr {
                p_type: get_u32(image, at)?,
                flags: get_u32(image, at + 4)?,
                offset: get_u64(image, at + 8)?,
                paddr: get_u64(image, at + 24)?,
                filesz: get_u64(image, at + 32)?,
                memsz: get_u64(image, at + 40)?,
            })
        })
        .collect()
}

/// What an accepted image must satisfy, checked against the headers.
fn check_accepted(seed: u64, image: &[u8], target: &Target, loaded: LoadedImage) {
    let loads: Vec<Phdr> = phdrs(image).into_iter().filter(|p| p.p_type == PT_LOAD && p.memsz > 0).collect();
    assert_eq!(loaded.segments, loads.len(), "seed {seed}: segment count");
    let home = loads.iter().find(|p| p.paddr <= loaded.entry && loaded.entry - p.paddr < p.memsz);
    let home = home.unwrap_or_else(|| panic!("seed {seed}: entry {:#x} in no segment", loaded.entry));
    assert_ne!(home.flags & PF_X, 0, "seed {seed}: entry in a segment that is not executable");
    for (i, a) in loads.iter().enumerate() {
        let end = a.paddr.checked_add(a.memsz).expect("accepted a wrapping segment");
        assert!(end <= target.size, "seed {seed}: accepted a segment past memory");
        assert!(a.filesz <= a.memsz, "seed {seed}: accepted filesz > memsz");
        assert!(a.paddr >= loaded.lowest && end <= loaded.highest, "seed {seed}: lowest/highest");
        for b in &loads[i + 1..] {
            assert!(
                end <= b.paddr || b.paddr + b.memsz <= a.paddr,
                "seed {seed}: accepted overlapping segments"
            );
        }
        if let Some(bytes) = &target.bytes {
            let file = &image[a.offset as usize..(a.offset + a.filesz) as usize];
            let placed = &bytes[a.paddr as usize..end as usize];
            assert_eq!(&placed[..file.len()], file, "seed {seed}: segment bytes");
            assert!(placed[file.len()..].iter().all(|&b| b == 0), "seed {seed}: bss not zeroed");
        }
    }
    let mut writes = target.writes.clone();
    writes.sort_unstable();
    for pair in writes.windows(2) {
        assert!(pair[0].0 + pair[0].1 <= pair[1].0, "seed {seed}: two writes on the same bytes");
    }
}

/// An accepted image, cut down by `elf::strip`, loads exactly the same.
fn check_stripped(seed: u64, image: &[u8], whole: &Target, loaded: LoadedImage) {
    let mut cut = image.to_vec();
    let keep =
        elf::strip(&mut cut).unwrap_or_else(|e| panic!("seed {seed}: strip refused an accepted image: {e}"));
    assert!(keep <= image.len(), "seed {seed}: strip kept {keep} of {} bytes", image.len());
    cut.truncate(keep);
    let mut target =
        Target { size: whole.size, bytes: whole.bytes.as_ref().map(|b| vec![0xa5; b.len()]), writes: vec![] };
    let again = elf::load(&cut, &mut target);
    assert_eq!(again, Ok(loaded), "seed {seed}: the stripped image loads differently");
    assert_eq!(target.bytes, whole.bytes, "seed {seed}: the stripped image wrote other bytes");
    assert_eq!(target.writes, whole.writes, "seed {seed}: the stripped image wrote elsewhere");
}

/// One run: the image accepted, or the loader's one line refusing it.
fn run_once(seed: u64) -> Result<(), String> {
    let mut rng = Rng::seeded(seed);
    let planned = rng.pick(&[0x10000, 0x40000, 1 << 20, 1 << 40, u64::MAX]);
    let mut image = valid_image(&mut rng, planned);
    let mutations = rng.pick(&[0, 1, 1, 2, 2, 3, 5]);
    for _ in 0..mutations {
        mutate(&mut rng, &mut image, planned);
    }
    let memory = match rng.below(8) {
        0 => rng.pick(&[0, 1, 4096, planned / 2, planned.wrapping_add(1), u64::MAX]),
        _ => planned,
    };
    let real = memory <= REAL_MEMORY_MAX;
    let mut target =
        Target { size: memory, bytes: real.then(|| vec![0xa5; memory as usize]), writes: vec![] };
    match elf::load(&image, &mut target) {
        Ok(loaded) => {
            check_accepted(seed, &image, &target, loaded);
            check_stripped(seed, &image, &target, loaded);
            Ok(())
        }
        Err(error) => {
            let line = error.to_string();
            assert!(target.writes.is_empty(), "seed {seed}: a refused image wrote to guest memory ({line})");
            Err(line)
        }
    }
}

#[test]
fn random_images_never_break_the_loader() {
    rng::accepted_or_refused("elf fuzz", "images", run_once);
}
