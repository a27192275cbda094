//! A fuzzer for the start_info parser, on the host.
//!
//! Each run lays out a plausible PVH boot in a sparse physical memory: a
//! `hvm_start_info`, a memory map, a command line, a module list with
//! modules and their command lines. Then it breaks it the ways a buggy VMM
//! or a hostile test would: counts at 0, at the limits and just past them,
//! at all-ones; pointers at 0, at the end of the address space, into the
//! middle of another structure, or just off the memory map; memory-map
//! entries that overlap, wrap, have size 0 or unknown types; strings
//! without a terminator; structures cut short; random bytes flipped. A
//! share of the runs reads the layout through `ModuleMemory`, as the
//! firmware's `start_info_test` does with a crafted module. It checks:
//! - nothing panics, and no input runs for seconds (as a loop that never
//!   ended would);
//! - a refusal, and every notice, is one non-empty line;
//! - an accepted start_info is sane: a memory map in order, of non-empty,
//!   non-wrapping regions, within the limit, with some RAM; modules within
//!   their limit, each non-empty and inside memory the map describes; the
//!   command lines exactly the bytes before a NUL that memory holds there,
//!   within their limits; occupied ranges that do not wrap.
//!
//! `UMBRA_FUZZ_RUNS` sets the number of runs (default 20,000, a few
//! seconds), `UMBRA_FUZZ_SEED` the first seed; a failure names its seed.

use umbra_abi::rng::{self, Rng};
use umbra_firmware::PhysRange;
use umbra_firmware::bootinfo::{
    self, BootInfo, MAX_CMDLINE, MAX_MEMMAP_ENTRIES, MAX_MODULE_CMDLINE, MAX_MODULES, ModuleMemory, Notices,
    PhysMemory, RegionKind, START_INFO_MAGIC,
};

/// A sparse physical memory: byte blobs at addresses. Where blobs overlap
/// the later one holds the byte, for every read alike, so the memory is
/// one consistent thing whichever way the parser reads it.
#[derive(Default)]
struct Sparse {
    blobs: Vec<(u64, Vec<u8>)>,
}

impl Sparse {
    fn byte(&self, addr: u64) -> Option<u8> {
        self.blobs.iter().rev().find_map(|(base, blob)| {
            let offset = usize::try_from(addr.checked_sub(*base)?).ok()?;
            blob.get(offset).copied()
        })
    }
}

impl PhysMemory for Sparse {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        for (i, byte) in buf.iter_mut().enumerate() {
            match addr.checked_add(i as u64).and_then(|at| self.byte(at)) {
                Some(value) => *byte = value,
                None => return false,
            }
        }
        true
    }
}

/// Where the structures go. In `ModuleMemory` runs, addresses are offsets
/// into one module, so the layout is packed low.
struct Layout {
    start_info: u64,
    memmap: u64,
    cmdline: u64,
    modlist: u64,
    modules: u64,
}

const SPREAD: Layout =
    Layout { start_info: 0x6000, memmap: 0x7000, cmdline: 0x2_0000, modlist: 0x6040, modules: 0x100_0000 };
const PACKED: Layout =
    Layout { start_info: 0, memmap: 0x100, cmdline: 0x1000, modlist: 0x80, modules: 0x3000 };

/// The pieces of a boot, as fields the mutations can reach.
struct Boot {
    version: u32,
    nr_modules: u32,
    modlist_addr: u64,
    cmdline_addr: u64,
    rsdp: u64,
    memmap_addr: u64,
    memmap_entries: u32,
    memmap: Vec<(u64, u64, u32)>,
    cmdline: Vec<u8>,
    /// (address, size, cmdline address) for each module.
    modules: Vec<(u64, u64, u64)>,
    module_cmdlines: Vec<Vec<u8>>,
    magic: u32,
}

fn plausible(rng: &mut Rng, layout: &Layout) -> Boot {
    let top = rng.pick(&[0x800_0000u64, 0x1000_0000, 0x1_0000_0000]);
    let mut memmap = vec![(0, 0x9fc00, 1), (0xf0000, 0x10000, 2), (0x10_0000, top - 0x10_0000, 1)];
    for _ in 0..rng.below(4) {
        memmap.push((rng.below(top) & !0xfff, 0x1000 * (1 + rng.below(64)), 1 + rng.below(7) as u32));
    }
    if rng.below(4) == 0 {
        memmap.push((0, 0, 0)); // qboot's closing all-zero entry
    }
    let words = ["log=debug", "guests=2", "--", "test=fuzz:1:2", "guest_mem=16M", "x"];
    let mut cmdline = Vec::new();
    for _ in 0..rng.below(6) {
        cmdline.extend_from_slice(rng.pick(&words).as_bytes());
        cmdline.push(b' ');
    }
    let count = rng.below(4) as usize;
    let modules = (0..count as u64)
        .map(|i| (layout.modules + i * 0x1_0000, 1 + rng.below(0x1_0000), layout.cmdline + 0x800 + i * 0x100))
        .collect();
    let module_cmdlines = (0..count).map(|i| format!("module {i}").into_bytes()).collect();
    Boot {
        version: 1,
        nr_modules: count as u32,
        modlist_addr: layout.modlist,
        cmdline_addr: if rng.below(8) == 0 { 0 } else { layout.cmdline },
        rsdp: rng.pick(&[0, 0xf_5000]),
        memmap_addr: layout.memmap,
        memmap_entries: memmap.len() as u32,
        memmap,
        cmdline,
        modules,
        module_cmdlines,
        magic: START_INFO_MAGIC,
    }
}

/// An address biased to the edges that break parsers.
fn edgy_address(rng: &mut Rng, layout: &Layout, boot: &Boot) -> u64 {
    let near = [
        0,
        1,
        u64::MAX,
        u64::MAX - 7,
        u64::MAX - 55,
        1 << 63,
        0x9fc00,
        0x9fbff,
        0xa0000,
        0xf_ffff,
        0x10_0000 - 1,
        layout.start_info,
        layout.start_info + 8,
        layout.memmap,
        layout.memmap + 24,
        layout.cmdline,
        layout.modlist,
        boot.memmap.last().map_or(0, |r| r.0.wrapping_add(r.1)),
        boot.memmap.last().map_or(0, |r| r.0.wrapping_add(r.1)).wrapping_sub(1),
    ];
    match rng.below(3) {
        0 => rng.pick(&near),
        1 => rng.pick(&near).wrapping_add(rng.below(64)).wrapping_sub(32),
        _ => rng.next_u64() >> rng.below(64),
    }
}

fn edgy_count(rng: &mut Rng, limit: usize) -> u32 {
    let limit = limit as u32;
    let any = rng.next_u64() as u32;
    rng.pick(&[0, 1, 2, limit - 1, limit, limit + 1, u32::MAX, u32::MAX / 24 + 1, any])
}

fn mutate(rng: &mut Rng, layout: &Layout, boot: &mut Boot) {
    match rng.below(12) {
        0 => {
            boot.magic = rng.pick(&[0, START_INFO_MAGIC ^ 1, START_INFO_MAGIC.swap_bytes(), u32::MAX]);
        }
        1 => boot.version = rng.pick(&[0, 2, u32::MAX]),
        2 => boot.memmap_entries = edgy_count(rng, MAX_MEMMAP_ENTRIES),
        3 => boot.nr_modules = edgy_count(rng, MAX_MODULES),
        4 => {
            let address = edgy_address(rng, layout, boot);
            match rng.below(4) {
                0 => boot.memmap_addr = address,
                1 => boot.cmdline_addr = address,
                2 => boot.modlist_addr = address,
                _ => boot.rsdp = address,
            }
        }
        // A memory-map entry: overlapping, wrapping, empty, odd type.
        5 | 6 => {
            let index = rng.below(boot.memmap.len() as u64) as usize;
            let other = boot.memmap[rng.below(boot.memmap.len() as u64) as usize];
            let entry = &mut boot.memmap[index];
            match rng.below(5) {
                0 => entry.0 = other.0.wrapping_add(rng.below(0x2000)),
                1 => {
                    entry.1 =
                        rng.pick(&[0, 1, u64::MAX, u64::MAX - entry.0, (u64::MAX - entry.0).wrapping_add(1)])
                }
                2 => entry.2 = rng.pick(&[0, 8, 12, u32::MAX]),
                3 => entry.2 = rng.pick(&[2, 5, 6]), // all RAM may go
                _ => entry.0 = rng.pick(&[0, 1 << 63, u64::MAX, other.0.wrapping_add(other.1)]),
            }
        }
        // A module: empty, huge, outside the map, or its cmdline anywhere.
        7 if !boot.modules.is_empty() => {
            let index = rng.below(boot.modules.len() as u64) as usize;
            let address = edgy_address(rng, layout, boot);
            let module = &mut boot.modules[index];
            match rng.below(3) {
                0 => module.0 = address,
                1 => module.1 = rng.pick(&[0, 1, u64::MAX, u64::MAX - module.0, address]),
                _ => module.2 = address,
            }
        }
        // Strings without their end, or as long as the limits and longer.
        8 => {
            let len = rng.pick(&[MAX_CMDLINE - 2, MAX_CMDLINE - 1, MAX_CMDLINE, MAX_CMDLINE + 1, 65536]);
            boot.cmdline = (0..len).map(|_| 1 + rng.below(255) as u8).collect();
        }
        9 if !boot.module_cmdlines.is_empty() => {
            let index = rng.below(boot.module_cmdlines.len() as u64) as usize;
            let len = rng.pick(&[MAX_MODULE_CMDLINE - 1, MAX_MODULE_CMDLINE, MAX_MODULE_CMDLINE + 1]);
            boot.module_cmdlines[index] = (0..len).map(|_| 1 + rng.below(255) as u8).collect();
        }
        // Bytes that are not text at all.
        10 => {
            for byte in boot.cmdline.iter_mut() {
                if rng.below(4) == 0 {
                    *byte = rng.next_u64() as u8;
                }
            }
        }
        _ => {
            let extra = rng.below(3);
            for _ in 0..extra {
                boot.memmap.push((
                    rng.next_u64() >> rng.below(64),
                    rng.next_u64() >> rng.below(64),
                    rng.next_u64() as u32 & 15,
                ));
            }
            boot.memmap_entries = boot.memmap.len() as u32;
        }
    }
}

/// The boot's blobs: (address, bytes). `cut` may shorten one of them.
fn blobs(rng: &mut Rng, layout: &Layout, boot: &Boot, cut: bool) -> Vec<(u64, Vec<u8>)> {
    let mut info = vec![0u8; 56];
    info[0..4].copy_from_slice(&boot.magic.to_le_bytes());
    info[4..8].copy_from_slice(&boot.version.to_le_bytes());
    info[12..16].copy_from_slice(&boot.nr_modules.to_le_bytes());
    info[16..24].copy_from_slice(&boot.modlist_addr.to_le_bytes());
    info[24..32].copy_from_slice(&boot.cmdline_addr.to_le_bytes());
    info[32..40].copy_from_slice(&boot.rsdp.to_le_bytes());
    info[40..48].copy_from_slice(&boot.memmap_addr.to_le_bytes());
    info[48..52].copy_from_slice(&boot.memmap_entries.to_le_bytes());
    let mut memmap = Vec::new();
    for &(start, size, kind) in &boot.memmap {
        memmap.extend_from_slice(&start.to_le_bytes());
        memmap.extend_from_slice(&size.to_le_bytes());
        memmap.extend_from_slice(&kind.to_le_bytes());
        memmap.extend_from_slice(&0u32.to_le_bytes());
    }
    let mut modlist = Vec::new();
    for &(addr, size, cmdline) in &boot.modules {
        modlist.extend_from_slice(&addr.to_le_bytes());
        modlist.extend_from_slice(&size.to_le_bytes());
        modlist.extend_from_slice(&cmdline.to_le_bytes());
        modlist.extend_from_slice(&0u64.to_le_bytes());
    }
    let mut cmdline = boot.cmdline.clone();
    cmdline.push(0);
    let mut all = vec![
        (layout.start_info, info),
        (layout.memmap, memmap),
        (layout.modlist, modlist),
        (layout.cmdline, cmdline),
    ];
    for (i, text) in boot.module_cmdlines.iter().enumerate() {
        let mut text = text.clone();
        text.push(0);
        all.push((layout.cmdline + 0x800 + i as u64 * 0x100, text));
    }
    if cut {
        let index = rng.below(all.len() as u64) as usize;
        let len = all[index].1.len() as u64;
        all[index].1.truncate(rng.below(len + 1) as usize);
    }
    if rng.below(8) == 0 {
        let index = rng.below(all.len() as u64) as usize;
        let blob = &mut all[index].1;
        for _ in 0..1 + rng.below(4) {
            if !blob.is_empty() {
                let at = rng.below(blob.len() as u64) as usize;
                blob[at] ^= 1 << rng.below(8);
            }
        }
    }
    all
}

/// Lay the blobs out in one module's bytes, as `start_info_test` reads them.
fn module_bytes(all: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let end = all.iter().map(|(at, blob)| *at as usize + blob.len()).max().unwrap_or(0);
    let mut bytes = vec![0u8; end];
    for (at, blob) in all {
        bytes[*at as usize..*at as usize + blob.len()].copy_from_slice(blob);
    }
    bytes
}

fn one_line(what: &str) -> bool {
    !what.is_empty() && !what.contains('\n')
}

/// The string at `addr` in `mem`, up to its NUL.
fn string_at(mem: &dyn PhysMemory, addr: u64, len: usize) -> Option<Vec<u8>> {
    let mut bytes = vec![0u8; len + 1];
    mem.read(addr, &mut bytes).then_some(bytes)
}

fn check_accepted(seed: u64, mem: &dyn PhysMemory, info: &BootInfo, cmdline_addr: u64) {
    let map = &info.memory_map;
    assert!(!map.is_empty() && map.len() <= MAX_MEMMAP_ENTRIES, "seed {seed}: map of {}", map.len());
    assert!(map.iter().any(|r| r.kind == RegionKind::Ram), "seed {seed}: accepted a map without RAM");
    for region in map {
        assert!(region.range.start < region.range.end, "seed {seed}: empty or wrapping region {region:?}");
    }
    for pair in map.windows(2) {
        assert!(pair[0].range.start <= pair[1].range.start, "seed {seed}: map out of order");
    }
    assert!(info.modules.len() <= MAX_MODULES, "seed {seed}: {} modules", info.modules.len());
    for module in &info.modules {
        assert!(!module.range.is_empty(), "seed {seed}: an empty module was kept");
        assert!(info.map_covers(module.range), "seed {seed}: module {:?} outside the map", module.range);
        assert!(module.cmdline.len() < MAX_MODULE_CMDLINE && !module.cmdline.contains(&0), "seed {seed}");
    }
    assert!(info.cmdline.len() < MAX_CMDLINE && !info.cmdline.contains(&0), "seed {seed}: cmdline");
    if !info.cmdline.is_empty() {
        let at = string_at(mem, cmdline_addr, info.cmdline.len()).expect("the cmdline came from somewhere");
        let differs = at.iter().zip(&info.cmdline).position(|(a, b)| a != b);
        assert!(
            differs.is_none(),
            "seed {seed}: cmdline of {} bytes differs at {differs:?}",
            info.cmdline.len()
        );
        assert_eq!(at[info.cmdline.len()], 0, "seed {seed}: the cmdline ends at a NUL");
        let range = PhysRange::from_len(cmdline_addr, info.cmdline.len() as u64 + 1);
        assert!(range.is_some_and(|r| info.map_covers(r)), "seed {seed}: cmdline outside the map");
    }
    for range in &info.occupied {
        assert!(range.start <= range.end, "seed {seed}: occupied range wraps: {range:?}");
    }
    let ram = info.ram_bytes();
    for region in map.iter().filter(|r| r.kind == RegionKind::Ram) {
        assert!(ram >= region.range.len(), "seed {seed}: RAM total {ram:#x} below one region's size");
    }
}

/// One run: the start_info accepted, or the parser's one line refusing it.
fn run_once(seed: u64) -> Result<(), String> {
    let mut rng = Rng::seeded(seed);
    let packed = rng.below(4) == 0;
    let layout = if packed { &PACKED } else { &SPREAD };
    let mut boot = plausible(&mut rng, layout);
    if packed {
        // Addresses are offsets into the module: the map must cover it.
        boot.modules.clear();
        boot.module_cmdlines.clear();
        boot.nr_modules = 0;
    }
    let mutations = rng.pick(&[0, 1, 1, 2, 2, 3, 6]);
    for _ in 0..mutations {
        mutate(&mut rng, layout, &mut boot);
    }
    let cut = rng.below(10) == 0;
    let all = blobs(&mut rng, layout, &boot, cut);
    let bytes;
    let sparse;
    let mem: &dyn PhysMemory = if packed {
        bytes = module_bytes(&all);
        &ModuleMemory(&bytes) as &dyn PhysMemory
    } else {
        sparse = Sparse { blobs: all };
        &sparse
    };
    let mut notices = Notices::new();
    let result = bootinfo::parse(mem, layout.start_info, &mut notices);
    for notice in &notices {
        assert!(one_line(&notice.to_string()), "seed {seed}: notice {notice:?}");
    }
    match result {
        Ok(info) => {
            // Read back, not taken from `boot`: a flipped bit may have
            // moved it.
            let mut field = [0u8; 8];
            assert!(
                mem.read(layout.start_info + 24, &mut field),
                "seed {seed}: accepted unreadable start_info"
            );
            check_accepted(seed, mem, &info, u64::from_le_bytes(field));
            Ok(())
        }
        Err(error) => Err(error.to_string()),
    }
}

#[test]
fn random_start_infos_never_break_the_parser() {
    rng::accepted_or_refused("start_info fuzz", "inputs", run_once);
}
