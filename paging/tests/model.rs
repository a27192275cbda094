//! The shadow MMU against a model.
//!
//! The model is a reference walker of x86_64 4-level paging, written apart
//! from the crate's own walker, plus a ledger of what the guest's tables
//! have allowed. Proptest builds random guest page-table states and random
//! sequences of operations (guest writes with and without announcing them,
//! PTE updates, invalidations, switches, flushes, faults, pins, translations,
//! a shrinking pool), runs them on the MMU, and after every step checks:
//!
//! * every present shadow leaf maps a frame inside guest memory;
//! * no shadow leaf grants write, user or execute that the guest's tables
//!   deny, as of the last announcement covering it (the ledger below);
//! * after a fill returns "fixed", the shadow agrees with the model's walk
//!   for that access, and guest memory holds exactly the accessed and dirty
//!   bits the model's walk set;
//! * the switcher slots hold only the switcher;
//! * frame accounting balances, and after the final release the pool is
//!   back where it started.
//!
//! The ledger: a shadow entry is a cache, and a guest that changes its
//! tables without saying so may find the cache stale, as with a real TLB.
//! So for each address the model collects every mapping (page and rights)
//! the guest's tables have granted since the last announcement that covered
//! that address; a shadow leaf must be one of them. An announcement wipes
//! the collection and starts it afresh. Kernel-half addresses share one
//! collection for all roots, as they share their shadow entries.
//!
//! `PROPTEST_CASES` sets the number of sequences (default 128).

mod common;

use common::*;
use paging::entry::{
    ACCESSED, ADDRESS_MASK, CACHE_DISABLE, DIRTY, GLOBAL, HUGE, NO_EXECUTE, PRESENT, USER, WRITABLE,
    WRITE_THROUGH,
};
use paging::{
    Access, Counters, FaultOutcome, FramePool, KillReason, Level, MIN_POOL_FRAMES, PREFETCH_PAGES,
    SwitcherEntries, TranslateError,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::Config;
use std::collections::{HashMap, HashSet};

// ---- the guest's world ----------------------------------------------------

/// Guest page-table pages the generator writes into.
/// The first `GOOD_CR3S` of them serve as top-level tables; paths take
/// their lower tables from the rest, and only now and then from anywhere.
const TABLE_PAGES: usize = 160;
fn table_page(i: usize) -> u64 {
    0x10_0000 + (i % TABLE_PAGES) as u64 * 0x1000
}

/// Guest CR3 values: eleven good ones (more than the root cache holds) and
/// two bad ones.
const GOOD_CR3S: usize = 11;
fn cr3_choice(i: usize) -> u64 {
    match i % (GOOD_CR3S + 2) {
        i if i < GOOD_CR3S => table_page(i),
        i if i == GOOD_CR3S => table_page(0) + 8,
        _ => LIMIT,
    }
}

/// The addresses the sequences touch. Runs of three pages let pins span
/// pages; the last few can only kill.
const ADDRESSES: &[u64] = &[
    0x0000_0000_0040_0000,
    0x0000_0000_0040_1000,
    0x0000_0000_0040_2000,
    0x0000_0000_0060_0000,
    0x0000_0000_0020_1000,
    0x0000_0000_0000_0000,
    0x0000_7FFF_FFFF_F000,
    0x0000_0040_0000_0000,
    0x0000_0000_4000_0000,
    0x0000_0000_4020_3000,
    0xFFFF_8000_0000_0000,
    0xFFFF_8000_0000_1000,
    0xFFFF_8000_0000_2000,
    0xFFFF_8000_0020_0000,
    0xFFFF_C000_0000_0000,
    0xFFFF_FFFF_8000_0000,
    0xFFFF_FFFF_C000_0000,
    0xFFFF_FFFF_FFBF_F000,
    // Killers: the switcher and non-canonical addresses.
    0xFFFF_FFFF_FFC0_0000,
    0xFFFF_FFFF_FFE0_1000,
    0xFFFF_FFFF_FFFF_F000,
    0x0000_8000_0000_0000,
    0xFFFF_0000_0000_0000,
];
const MAPPABLE: usize = 18;

/// Every address the ledger follows: the mappable ones and the aligned
/// block of `PREFETCH_PAGES` around each, which a fill there may map
/// ahead.
fn tracked() -> &'static [u64] {
    static TRACKED: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    TRACKED.get_or_init(|| {
        let mut all: Vec<u64> = ADDRESSES[..MAPPABLE]
            .iter()
            .flat_map(|&va| {
                let block = va & !(PREFETCH_PAGES as u64 * 0x1000 - 1);
                (0..PREFETCH_PAGES as u64).map(move |i| block + i * 0x1000)
            })
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    })
}

fn address(i: usize) -> u64 {
    ADDRESSES[i % ADDRESSES.len()]
}

/// Every table index the addresses use, at any level: writes aimed there
/// build walks that go somewhere.
fn interesting_indices() -> Vec<usize> {
    let mut set: Vec<usize> =
        ADDRESSES.iter().flat_map(|&va| Level::WALK_ORDER.map(|l| l.index(va))).collect();
    set.sort();
    set.dedup();
    set
}

/// Builds an entry value from generator choices: a table pointer most of
/// the time, else a data page, a large-page base, an edge of guest memory or
/// raw bits; with flags drawn from `flags` and the odd reserved bit.
fn entry_value(kind: u8, pick: u8, flags: u16, extra: u8) -> u64 {
    let pick = pick as usize;
    let target = match kind {
        0..=9 => table_page(pick),
        10..=15 => 0x30_0000 + (pick % 8) as u64 * 0x1000,
        16 | 17 => [0, 0x20_0000, 0x4060_0000, 0x4000_0000, LIMIT][pick % 5],
        18 => [LIMIT - 0x1000, LIMIT, 0x1000, 0x20_0000 | 0x2000][pick % 4],
        _ => {
            let raw = (flags as u64) << 48 | (pick as u64) << 30 | (extra as u64) << 12;
            return raw | flags as u64;
        }
    };
    let f = flags as u64;
    let mut v = target;
    if f & 0b11 != 0 {
        v |= PRESENT;
    }
    for (bit, flag) in [
        (2, WRITABLE),
        (3, USER),
        (4, ACCESSED),
        (5, DIRTY),
        (6, GLOBAL),
        (7, WRITE_THROUGH),
        (8, CACHE_DISABLE),
    ] {
        if f & (1 << bit) != 0 {
            v |= flag;
        }
    }
    if f & (0b1111 << 9) == 0 {
        v |= HUGE;
    }
    if f & (0b11 << 12) == 0 {
        v |= NO_EXECUTE;
    }
    match extra {
        0 => v | 1 << 50,
        1 => v | 0x1F << 52,
        _ => v,
    }
}

fn switcher_for(cpu: u32) -> SwitcherEntries {
    let base = 0x7000_0000 + cpu as u64 * 0x2000;
    SwitcherEntries([base | PRESENT | WRITABLE, (base + 0x1000) | PRESENT | WRITABLE])
}

// ---- the reference walker ---------------------------------------------------

/// What the architecture says a walk finds.
#[derive(Clone, Debug, PartialEq)]
enum RefWalk {
    Mapped { page: u64, offset: u64, write: bool, user: bool, exec: bool, dirty: bool, entries: Vec<u64> },
    NotPresent,
    Broken(KillReason),
}

const LEVELS: [Level; 4] = [Level::Pml4, Level::Pdpt, Level::Pd, Level::Pt];
const RESERVED_ABOVE_46: u64 = 0x000F_C000_0000_0000;

/// Written from the architecture manual's tables, not from the crate.
fn reference_walk(mem: &SimMemory, cr3: u64, va: u64) -> RefWalk {
    let mut table = cr3;
    let (mut write, mut user, mut exec) = (true, true, true);
    let mut entries = Vec::new();
    for (depth, level) in LEVELS.into_iter().enumerate() {
        let shift = 39 - 9 * depth as u64;
        let slot = table + ((va >> shift) & 0x1FF) * 8;
        let e = mem.get(slot);
        entries.push(slot);
        if e & 1 == 0 {
            return RefWalk::NotPresent;
        }
        let big = e & (1 << 7) != 0;
        let reserved = match depth {
            0 => RESERVED_ABOVE_46 | 1 << 7,
            1 if big => RESERVED_ABOVE_46 | 0x3FFF_E000,
            2 if big => RESERVED_ABOVE_46 | 0x001F_E000,
            _ => RESERVED_ABOVE_46,
        };
        if e & reserved != 0 {
            return RefWalk::Broken(KillReason::ReservedBits(level));
        }
        write = write && e & 2 != 0;
        user = user && e & 4 != 0;
        exec = exec && (e >> 63) == 0;
        if depth == 3 || (big && depth > 0) {
            let size = 1u64 << shift;
            let base = e & 0x000F_FFFF_FFFF_F000 & !(size - 1);
            if base + size > LIMIT {
                return RefWalk::Broken(KillReason::FrameBeyondMemory(level));
            }
            return RefWalk::Mapped {
                page: base + (va & (size - 1) & !0xFFF),
                offset: va & 0xFFF,
                write,
                user,
                exec,
                dirty: e & (1 << 6) != 0,
                entries,
            };
        }
        table = e & 0x000F_FFFF_FFFF_F000;
        if table >= LIMIT {
            return RefWalk::Broken(KillReason::TableBeyondMemory(level));
        }
    }
    unreachable!("a PTE is always a leaf")
}

fn admits(w: &RefWalk, access: Access) -> bool {
    match w {
        RefWalk::Mapped { write, user, exec, .. } => {
            (!access.write || *write) && (!access.user || *user) && (!access.fetch || *exec)
        }
        _ => false,
    }
}

/// Sets accessed at every level and dirty in the leaf, as the CPU does for
/// an access it lets through.
fn set_accessed_dirty(mem: &mut SimMemory, w: &RefWalk, write: bool) {
    if let RefWalk::Mapped { entries, .. } = w {
        for (i, &slot) in entries.iter().enumerate() {
            let mut bits = ACCESSED;
            if write && i + 1 == entries.len() {
                bits |= DIRTY;
            }
            let v = mem.get(slot);
            mem.set(slot, v | bits);
        }
    }
}

fn canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == 0x1_FFFF
}

fn in_switcher(va: u64) -> bool {
    va >= 0xFFFF_FFFF_FFC0_0000
}

// ---- the ledger -------------------------------------------------------------

/// A mapping the guest's tables granted at some moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Grant {
    page: u64,
    write: bool,
    user: bool,
    exec: bool,
}

struct Model {
    mem: SimMemory,
    linear: bool,
    cr3: Option<u64>,
    kernel_boundary: u64,
    user_grants: HashMap<(u64, u64), HashSet<Grant>>,
    kernel_grants: HashMap<u64, HashSet<Grant>>,
}

impl Model {
    fn is_kernel(&self, va: u64) -> bool {
        va >= self.kernel_boundary
    }

    /// Wipes the ledger for `va` as seen through `cr3` (or through every
    /// root, for the kernel half).
    fn announce(&mut self, cr3: u64, va: u64) {
        if self.is_kernel(va) {
            self.kernel_grants.remove(&va);
        } else {
            self.user_grants.remove(&(cr3, va));
        }
    }

    /// Records what the guest's tables grant right now, for every cached
    /// root.
    fn collect_grants(&mut self, cached: &[u64]) {
        if self.linear {
            return;
        }
        for &cr3 in cached {
            for &va in tracked() {
                if let RefWalk::Mapped { page, write, user, exec, dirty, .. } =
                    reference_walk(&self.mem, cr3, va)
                {
                    // Writable in the shadow only once the guest's dirty bit
                    // is honestly set.
                    let grant = Grant { page, write: write && dirty, user, exec };
                    if self.is_kernel(va) {
                        self.kernel_grants.entry(va).or_default().insert(grant);
                    } else {
                        self.user_grants.entry((cr3, va)).or_default().insert(grant);
                    }
                }
            }
        }
    }
}

// ---- operations -------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    /// The guest writes a table entry and says nothing.
    Write {
        table: usize,
        index: usize,
        value: u64,
    },
    /// The guest builds a whole path for an address, then maybe announces
    /// the PTE.
    MapPath {
        cr3: usize,
        va: usize,
        tables: [usize; 3],
        upper: [u16; 3],
        leaf: u64,
        announce: bool,
    },
    /// The guest maps the 2 MiB around an address with a large page
    /// (its upper tables as MapPath builds them), then maybe announces
    /// the page-directory entry.
    MapLarge {
        cr3: usize,
        va: usize,
        tables: [usize; 2],
        upper: [u16; 2],
        leaf: u64,
        announce: bool,
    },
    /// The guest rewrites the PTE for an address (if its tables reach one)
    /// and announces it.
    WriteAndAnnounce {
        cr3: usize,
        va: usize,
        pte: u64,
    },
    /// The guest gives another address space the current one's kernel
    /// half, as a kernel does when it creates a process.
    ShareKernelHalf {
        cr3: usize,
    },
    /// The guest announces a PTE without writing it.
    Announce {
        cr3: usize,
        va: usize,
        pte: u64,
    },
    Invalidate {
        cr3: usize,
        va: usize,
        level: usize,
    },
    InvalidatePml4 {
        cr3: usize,
        index: u64,
    },
    NewPagetable {
        cr3: usize,
    },
    Fault {
        va: usize,
        offset: u16,
        code: u8,
    },
    /// A burst of faults: every trackable address, in order.
    FaultEverywhere {
        code: u8,
    },
    Translate {
        va: usize,
        offset: u16,
        code: u8,
    },
    Pin {
        va: usize,
        pages: u64,
        writable: bool,
    },
    FlushUser,
    FlushAll,
    Squeeze {
        cap: usize,
    },
    Switcher {
        cpu: u32,
    },
    KernelBoundary {
        high: bool,
    },
}

fn value() -> impl Strategy<Value = u64> {
    (0u8..20, any::<u8>(), any::<u16>(), 0u8..32).prop_map(|(k, p, f, e)| entry_value(k, p, f, e))
}

/// A leaf that usually makes a walk succeed: a data page, present, with
/// random rights and accessed/dirty bits.
fn good_leaf() -> impl Strategy<Value = u64> {
    (0u64..8, any::<u8>()).prop_map(|(page, f)| {
        let f = f as u64;
        let mut v = (0x30_0000 + page * 0x1000) | PRESENT;
        if f & 0b11 != 0 {
            v |= WRITABLE;
        }
        if f & 0b1100 != 0 {
            v |= USER;
        }
        for (bit, flag) in [(4, ACCESSED), (5, DIRTY), (6, GLOBAL)] {
            if f & (1 << bit) != 0 {
                v |= flag;
            }
        }
        if f & (0b1 << 7) == 0 && f & 0b1 == 0 {
            v |= NO_EXECUTE;
        }
        v
    })
}

fn leaf() -> impl Strategy<Value = u64> {
    prop_oneof![1 => value(), 4 => good_leaf()]
}

/// Which CR3 an update names: usually the current one (`CURRENT`), else
/// any good one.
const CURRENT: usize = usize::MAX;
fn cr3_sel() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(CURRENT), 1 => 0..GOOD_CR3S]
}

/// Mostly addresses that can be mapped; now and then one that kills.
fn va_choice() -> impl Strategy<Value = usize> {
    prop_oneof![40 => 0..MAPPABLE, 1 => MAPPABLE..ADDRESSES.len()]
}

fn lower_table() -> impl Strategy<Value = usize> {
    prop_oneof![7 => GOOD_CR3S..TABLE_PAGES, 1 => 0..TABLE_PAGES]
}

/// A 2 MiB page: a good leaf's rights over one of a few 2 MiB-aligned
/// bases, the last at the very end of guest memory.
fn map_large() -> impl Strategy<Value = Op> {
    (
        cr3_sel(),
        0..MAPPABLE,
        [lower_table(), lower_table()],
        any::<[u16; 2]>(),
        good_leaf(),
        0..4u64,
        any::<bool>(),
    )
        .prop_map(|(cr3, va, tables, upper, leaf, base, announce)| {
            let base = [0x20_0000, 0x40_0000, 0x60_0000, LIMIT - 0x20_0000][base as usize];
            let leaf = (leaf & !ADDRESS_MASK) | base | HUGE;
            Op::MapLarge { cr3, va, tables, upper, leaf, announce }
        })
}

fn map_path() -> impl Strategy<Value = Op> {
    (
        cr3_sel(),
        0..MAPPABLE,
        [lower_table(), lower_table(), lower_table()],
        any::<[u16; 3]>(),
        leaf(),
        any::<bool>(),
    )
        .prop_map(|(cr3, va, tables, upper, leaf, announce)| Op::MapPath {
            cr3,
            va,
            tables,
            upper,
            leaf,
            announce,
        })
}

/// A page-fault error code: mostly the plain kinds of access, sometimes any
/// combination.
fn error_code() -> impl Strategy<Value = u8> {
    prop_oneof![
        6 => prop_oneof![Just(0u8), Just(2)],
        3 => prop_oneof![Just(4u8), Just(6)],
        1 => prop_oneof![Just(0x10u8), Just(0x14)],
        1 => 0u8..32,
    ]
}

/// The guest's first address spaces: in each of the first three CR3s,
/// every trackable address gets a path, with random upper rights and a
/// (mostly sane) leaf.
fn first_address_spaces() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        ([lower_table(), lower_table(), lower_table()], any::<[u16; 3]>(), leaf()),
        3 * MAPPABLE,
    )
    .prop_map(|paths| {
        paths
            .into_iter()
            .enumerate()
            .map(|(i, (tables, upper, leaf))| Op::MapPath {
                cr3: i / MAPPABLE,
                va: i % MAPPABLE,
                tables,
                upper,
                leaf,
                announce: false,
            })
            .collect()
    })
}

/// A sequence: a few faults in linear mode, the first switch, the first
/// address space built, then anything at all.
fn sequence() -> impl Strategy<Value = Vec<Op>> {
    (
        prop::collection::vec((0..MAPPABLE, any::<u16>(), error_code()), 0..4),
        0..3usize,
        first_address_spaces(),
        prop::collection::vec(op(), 1..80),
    )
        .prop_map(|(linear, cr3, paths, rest)| {
            let mut ops: Vec<Op> =
                linear.into_iter().map(|(va, offset, code)| Op::Fault { va, offset, code }).collect();
            ops.push(Op::NewPagetable { cr3 });
            ops.extend(paths);
            ops.extend(rest);
            ops
        })
}

fn op() -> impl Strategy<Value = Op> {
    let n = interesting_indices().len();
    prop_oneof![
        2 => (0..TABLE_PAGES, 0..n, value()).prop_map(|(table, index, value)| Op::Write { table, index, value }),
        6 => map_path(),
        3 => map_large(),
        3 => (cr3_sel(), va_choice(), leaf()).prop_map(|(cr3, va, pte)| Op::WriteAndAnnounce { cr3, va, pte }),
        1 => (cr3_sel(), va_choice(), leaf()).prop_map(|(cr3, va, pte)| Op::Announce { cr3, va, pte }),
        2 => (cr3_sel(), va_choice(), 0..4usize).prop_map(|(cr3, va, level)| Op::Invalidate { cr3, va, level }),
        1 => (cr3_sel(), prop_oneof![10 => 0..512u64, 1 => 510..514u64]).prop_map(|(cr3, index)| Op::InvalidatePml4 { cr3, index }),
        5 => prop_oneof![40 => 0..3usize, 10 => 0..GOOD_CR3S, 1 => GOOD_CR3S..GOOD_CR3S + 2].prop_map(|cr3| Op::NewPagetable { cr3 }),
        2 => (0..GOOD_CR3S).prop_map(|cr3| Op::ShareKernelHalf { cr3 }),
        16 => (va_choice(), any::<u16>(), error_code()).prop_map(|(va, offset, code)| Op::Fault { va, offset, code }),
        1 => error_code().prop_map(|code| Op::FaultEverywhere { code }),
        2 => (va_choice(), any::<u16>(), error_code()).prop_map(|(va, offset, code)| Op::Translate { va, offset, code }),
        1 => (va_choice(), 1..4u64, any::<bool>()).prop_map(|(va, pages, writable)| Op::Pin { va, pages, writable }),
        1 => Just(Op::FlushUser),
        1 => Just(Op::FlushAll),
        2 => prop_oneof![3 => MIN_POOL_FRAMES..MIN_POOL_FRAMES + 4, 1 => MIN_POOL_FRAMES + 4..MIN_POOL_FRAMES + 16, 1 => Just(1000usize)].prop_map(|cap| Op::Squeeze { cap }),
        1 => (0u32..3).prop_map(|cpu| Op::Switcher { cpu }),
        1 => any::<bool>().prop_map(|high| Op::KernelBoundary { high }),
    ]
}

// ---- running a sequence -----------------------------------------------------

struct Run {
    mmu: Mmu,
    model: Model,
    indices: Vec<usize>,
}

/// What a step ended in: keep going, or the guest is dead.
enum Step {
    Alive,
    Killed,
}

impl Run {
    /// `large`: the host backs guest memory with 2 MiB pages, so the MMU
    /// may shadow guest large pages with 2 MiB leaves.
    fn new(large: bool) -> Self {
        Run {
            mmu: if large { mmu_large(LIMIT, 1000) } else { mmu_with(LIMIT, 1000) },
            model: Model {
                mem: SimMemory::new(LIMIT),
                linear: true,
                cr3: None,
                kernel_boundary: 0xFFFF_8000_0000_0000,
                user_grants: HashMap::new(),
                kernel_grants: HashMap::new(),
            },
            indices: interesting_indices(),
        }
    }

    fn write(&mut self, gpa: u64, value: u64) {
        self.model.mem.set(gpa, value);
        self.mmu.memory_mut().set(gpa, value);
    }

    /// Resolves a CR3 selector: `CURRENT` is the guest's current CR3.
    fn cr3(&self, sel: usize) -> u64 {
        match (sel, self.model.cr3) {
            (CURRENT, Some(cr3)) => cr3,
            (CURRENT, None) => table_page(0),
            (sel, _) => cr3_choice(sel),
        }
    }

    /// MapPath's way of building the tables above a leaf, for the first
    /// `tables.len()` levels: usually extending what is there, as a kernel
    /// would; now and then overwriting it. Returns the table it reached.
    fn upper_path(&mut self, cr3: u64, va: u64, tables: &[usize], upper: &[u16]) -> u64 {
        let mut table = cr3;
        for depth in 0..tables.len() {
            table = self.path_step(table, va, depth, tables[depth], upper[depth]);
        }
        table
    }

    /// One level of MapPath's walk down: the entry for `va` at `depth` in
    /// `table`, kept or rewritten to point at `tables`' page.
    fn path_step(&mut self, table: u64, va: u64, depth: usize, next_table: usize, u: u16) -> u64 {
        let u = u as u64;
        let mut flags = PRESENT;
        if u & 0b111 != 0 {
            flags |= WRITABLE;
        }
        if u & 0b111_000 != 0 {
            flags |= USER;
        }
        if u & 0b11_1100_0000 == 0 {
            flags |= NO_EXECUTE;
        }
        if u & (0b11 << 10) == 0 {
            flags |= ACCESSED;
        }
        let slot = table + ((va >> (39 - 9 * depth)) & 0x1FF) * 8;
        let existing = self.model.mem.get(slot);
        let usable = existing & PRESENT != 0
            && (depth == 0 || existing & HUGE == 0)
            && existing & ADDRESS_MASK < LIMIT;
        // Usually extend what is there, as a kernel would; now and then
        // overwrite it.
        if usable && u & (0b1111 << 12) != 0 {
            return existing & ADDRESS_MASK;
        }
        let next = table_page(next_table);
        self.write(slot, next | flags);
        next
    }

    fn cached_cr3s(&self) -> Vec<u64> {
        self.mmu.roots().filter_map(|r| r.guest_cr3).collect()
    }

    /// The guest-physical slot of the PTE for `va`, if the tables at `cr3`
    /// reach one through 4 KiB-table entries.
    fn pte_slot(&self, cr3: u64, va: u64) -> Option<u64> {
        let mut table = cr3;
        for depth in 0..3 {
            let slot = table + ((va >> (39 - 9 * depth)) & 0x1FF) * 8;
            let e = self.model.mem.get(slot);
            if e & PRESENT == 0 || (depth > 0 && e & HUGE != 0) {
                return None;
            }
            table = e & 0x000F_FFFF_FFFF_F000;
            if table >= LIMIT {
                return None;
            }
        }
        Some(table + ((va >> 12) & 0x1FF) * 8)
    }

    fn expect_kill(
        &self,
        expected: Option<KillReason>,
        got: Result<(), KillReason>,
        what: &str,
    ) -> Result<Step, TestCaseError> {
        match expected {
            Some(reason) => {
                prop_assert_eq!(got, Err(reason), "{}", what);
                Ok(Step::Killed)
            }
            None => {
                prop_assert_eq!(got, Ok(()), "{}", what);
                Ok(Step::Alive)
            }
        }
    }

    fn apply(&mut self, op: &Op) -> Result<Step, TestCaseError> {
        match *op {
            Op::Write { table, index, value } => {
                let slot = table_page(table) + 8 * self.indices[index] as u64;
                self.write(slot, value);
                Ok(Step::Alive)
            }
            Op::MapLarge { cr3, va, tables, upper, leaf, announce } => {
                let (cr3, va) = (self.cr3(cr3), address(va));
                let table = self.upper_path(cr3, va, &tables, &upper);
                self.write(table + ((va >> 21) & 0x1FF) * 8, leaf);
                if !announce {
                    return Ok(Step::Alive);
                }
                let got = self.mmu.invalidate_entry(cr3, va, Level::Pd);
                let expected = in_switcher(va & !0x1F_FFFF).then_some(KillReason::SwitcherInvalidation);
                if expected.is_none() {
                    self.announce_range(cr3, va & !0x1F_FFFF, 0x20_0000);
                }
                self.expect_kill(expected, got, "map-large announce")
            }
            Op::MapPath { cr3, va, tables, upper, leaf, announce } => {
                let (cr3, va) = (self.cr3(cr3), address(va));
                let table = self.upper_path(cr3, va, &tables, &upper);
                self.write(table + ((va >> 12) & 0x1FF) * 8, leaf);
                if announce { self.set_pte(cr3, va, leaf, "map-path announce") } else { Ok(Step::Alive) }
            }
            Op::ShareKernelHalf { cr3 } => {
                let (from, to) = (self.cr3(CURRENT), cr3_choice(cr3));
                for index in self.indices.clone() {
                    if index >= 256 {
                        let entry = self.model.mem.get(from + 8 * index as u64);
                        self.write(to + 8 * index as u64, entry);
                    }
                }
                Ok(Step::Alive)
            }
            Op::WriteAndAnnounce { cr3, va, pte } => {
                let (cr3, va) = (self.cr3(cr3), address(va));
                if canonical(va)
                    && let Some(slot) = self.pte_slot(cr3, va)
                {
                    self.write(slot, pte);
                }
                self.set_pte(cr3, va, pte, "write and announce")
            }
            Op::Announce { cr3, va, pte } => {
                let (cr3, va) = (self.cr3(cr3), address(va));
                self.set_pte(cr3, va, pte, "bare announce")
            }
            Op::Invalidate { cr3, va, level } => {
                let (cr3, va, level) = (self.cr3(cr3), address(va), LEVELS[level]);
                let expected = if !canonical(va) {
                    Some(KillReason::NonCanonicalAddress)
                } else if in_switcher(va & !(level.span() - 1)) {
                    Some(KillReason::SwitcherInvalidation)
                } else {
                    None
                };
                let got = self.mmu.invalidate_entry(cr3, va, level);
                if expected.is_none() {
                    self.announce_range(cr3, va & !(level.span() - 1), level.span());
                }
                self.expect_kill(expected, got, "invalidate")
            }
            Op::InvalidatePml4 { cr3, index } => {
                let cr3 = self.cr3(cr3);
                let got = self.mmu.invalidate_pml4_index(cr3, index);
                if index >= 512 {
                    return self.expect_kill(Some(KillReason::Pml4IndexOutOfRange), got, "pml4 index");
                }
                let base = index << 39;
                let va = if index >= 256 { base | 0xFFFF_0000_0000_0000 } else { base };
                self.announce_range(cr3, va, 1 << 39);
                self.expect_kill(None, got, "pml4 index")
            }
            Op::NewPagetable { cr3 } => {
                let cr3 = cr3_choice(cr3);
                let expected = if !cr3.is_multiple_of(4096) {
                    Some(KillReason::Cr3NotAligned)
                } else if cr3 >= LIMIT {
                    Some(KillReason::Cr3BeyondMemory)
                } else {
                    None
                };
                let got = self.mmu.new_pagetable(cr3);
                if expected.is_none() {
                    if self.model.linear {
                        self.model.linear = false;
                        self.model.user_grants.clear();
                        self.model.kernel_grants.clear();
                    }
                    self.model.cr3 = Some(cr3);
                }
                self.expect_kill(expected, got, "new_pagetable")
            }
            Op::FaultEverywhere { code } => {
                for &va in &ADDRESSES[..MAPPABLE] {
                    if let Step::Killed = self.fault(va, Access::from_error_code(code as u64))? {
                        return Ok(Step::Killed);
                    }
                }
                Ok(Step::Alive)
            }
            Op::Fault { va, offset, code } => {
                self.fault(address(va) | (offset as u64 & 0xFFF), Access::from_error_code(code as u64))
            }
            Op::Translate { va, offset, code } => {
                let va = address(va) | (offset as u64 & 0xFFF);
                let access = Access::from_error_code(code as u64);
                let expected = self.predict_translate(va, access);
                let got = self.mmu.translate(va, access);
                prop_assert_eq!(got, expected, "translate {:#x} {:?}", va, access);
                Ok(match got {
                    Err(TranslateError::Kill(_)) => Step::Killed,
                    _ => Step::Alive,
                })
            }
            Op::Pin { va, pages, writable } => self.pin(address(va), pages, writable),
            Op::FlushUser => {
                let got = self.mmu.flush_user_half();
                if let Some(cr3) = self.model.cr3 {
                    for &va in tracked() {
                        if !self.model.is_kernel(va) {
                            self.model.user_grants.remove(&(cr3, va));
                        }
                    }
                }
                self.expect_kill(None, got, "flush user")
            }
            Op::FlushAll => {
                let got = self.mmu.flush_all();
                self.model.user_grants.clear();
                self.model.kernel_grants.clear();
                self.expect_kill(None, got, "flush all")
            }
            Op::Squeeze { cap } => {
                self.mmu.pool_mut().cap = cap;
                Ok(Step::Alive)
            }
            Op::Switcher { cpu } => {
                let before = self.mmu.roots().find(|r| r.current).and_then(|r| r.prepared_cpu);
                let wrote = self.mmu.prepare_switcher(cpu, switcher_for(cpu));
                prop_assert_eq!(wrote, before != Some(cpu));
                prop_assert_eq!(self.mmu.switcher_slots(), Some(switcher_for(cpu).0));
                Ok(Step::Alive)
            }
            Op::KernelBoundary { high } => {
                let boundary = if high { 0xFFFF_C000_0000_0000 } else { 0xFFFF_8000_0000_0000 };
                let got = self.mmu.set_kernel_boundary(boundary);
                if boundary != self.model.kernel_boundary {
                    // Moving the boundary flushes everything.
                    self.model.kernel_boundary = boundary;
                    self.model.user_grants.clear();
                    self.model.kernel_grants.clear();
                }
                self.expect_kill(None, got, "kernel boundary")
            }
        }
    }

    fn set_pte(&mut self, cr3: u64, va: u64, pte: u64, what: &str) -> Result<Step, TestCaseError> {
        let expected = if !canonical(va) {
            Some(KillReason::NonCanonicalAddress)
        } else if in_switcher(va) {
            Some(KillReason::SwitcherPteUpdate)
        } else if pte & PRESENT != 0 && pte & RESERVED_ABOVE_46 != 0 {
            Some(KillReason::ReservedBits(Level::Pt))
        } else if pte & PRESENT != 0 && pte & ADDRESS_MASK >= LIMIT {
            Some(KillReason::FrameBeyondMemory(Level::Pt))
        } else {
            None
        };
        let got = self.mmu.set_pte(cr3, va, pte);
        if expected.is_none() {
            self.model.announce(cr3, va);
        }
        self.expect_kill(expected, got, what)
    }

    /// Wipes the ledger for every tracked address in `start..start + len`.
    fn announce_range(&mut self, cr3: u64, start: u64, len: u64) {
        for &va in tracked() {
            if va >= start && va - start < len {
                self.model.announce(cr3, va);
            }
        }
    }

    /// What a fault should come to, applying the model's accessed/dirty
    /// bits when it is fixed.
    fn predict_fault(&mut self, va: u64, access: Access) -> (FaultOutcome, Option<RefWalk>) {
        if !canonical(va) {
            return (FaultOutcome::Kill(KillReason::NonCanonicalAddress), None);
        }
        if in_switcher(va) {
            return (FaultOutcome::Kill(KillReason::SwitcherFault), None);
        }
        let Some(cr3) = self.model.cr3.filter(|_| !self.model.linear) else {
            let ok = !access.user && va < LIMIT;
            return (if ok { FaultOutcome::Fixed } else { FaultOutcome::Reflect }, None);
        };
        let walk = reference_walk(&self.model.mem, cr3, va);
        match walk {
            RefWalk::NotPresent => (FaultOutcome::Reflect, None),
            RefWalk::Broken(reason) => (FaultOutcome::Kill(reason), None),
            RefWalk::Mapped { .. } if !admits(&walk, access) => (FaultOutcome::Reflect, None),
            RefWalk::Mapped { .. } => {
                set_accessed_dirty(&mut self.model.mem, &walk, access.write);
                (FaultOutcome::Fixed, Some(walk))
            }
        }
    }

    fn fault(&mut self, va: u64, access: Access) -> Result<Step, TestCaseError> {
        let (expected, walk) = self.predict_fault(va, access);
        let got = self.mmu.demand_fill(va, access);
        prop_assert_eq!(got, expected, "fault at {:#x} {:?}", va, access);
        match got {
            FaultOutcome::Kill(_) => return Ok(Step::Killed),
            FaultOutcome::Reflect => return Ok(Step::Alive),
            FaultOutcome::Fixed => {}
        }
        // The shadow now agrees with the model for this access.
        let leaf = self.mmu.shadow_entry(va);
        prop_assert!(leaf.is_some(), "fixed but not mapped: {:#x}", va);
        let leaf = leaf.unwrap_or(0);
        let (page, write, user, exec, was_dirty) = match walk {
            Some(RefWalk::Mapped { page, write, user, exec, dirty, .. }) => (page, write, user, exec, dirty),
            _ => (va & !0xFFF, true, false, true, true),
        };
        prop_assert_eq!(leaf & ADDRESS_MASK, page + HOST_OFFSET);
        prop_assert_eq!(
            leaf & WRITABLE != 0,
            write && (access.write || was_dirty),
            "read faults map read-only"
        );
        prop_assert_eq!(leaf & USER != 0, user);
        prop_assert_eq!(leaf & NO_EXECUTE == 0, exec);
        Ok(Step::Alive)
    }

    fn predict_translate(&self, va: u64, access: Access) -> Result<u64, TranslateError> {
        if !canonical(va) {
            return Err(TranslateError::Kill(KillReason::NonCanonicalAddress));
        }
        if in_switcher(va) {
            return Err(TranslateError::Kill(KillReason::SwitcherTranslate));
        }
        let Some(cr3) = self.model.cr3.filter(|_| !self.model.linear) else {
            return if !access.user && va < LIMIT {
                Ok(va)
            } else {
                Err(TranslateError::PageFault { error_code: access.error_code(va < LIMIT) })
            };
        };
        let walk = reference_walk(&self.model.mem, cr3, va);
        match walk {
            RefWalk::Broken(reason) => Err(TranslateError::Kill(reason)),
            RefWalk::NotPresent => Err(TranslateError::PageFault { error_code: access.error_code(false) }),
            RefWalk::Mapped { page, offset, .. } if admits(&walk, access) => Ok(page + offset),
            RefWalk::Mapped { .. } => Err(TranslateError::PageFault { error_code: access.error_code(true) }),
        }
    }

    /// Pins: pages the shadow already maps as needed are skipped, the rest
    /// must walk as a guest-kernel access. If the pool ran dry mid-pin the
    /// MMU starts over on a cleared root, so then nothing is skipped; both
    /// predictions are tried. Accessed and dirty bits are checked loosely
    /// (only those bits may change), since a skipped page writes none.
    fn pin(&mut self, va: u64, pages: u64, writable: bool) -> Result<Step, TestCaseError> {
        let pages = (0..pages)
            .take_while(|&i| i == 0 || ADDRESSES[..MAPPABLE].contains(&va.wrapping_add(i * 0x1000)))
            .count() as u64;
        let access = if writable { Access::KERNEL_WRITE } else { Access::KERNEL_READ };
        let mapped: Vec<bool> = (0..pages)
            .map(|i| {
                canonical(va)
                    && self
                        .mmu
                        .shadow_entry(va.wrapping_add(i * 0x1000))
                        .is_some_and(|e| !writable || e & WRITABLE != 0)
            })
            .collect();
        let predict = |run: &mut Run, skip: bool| -> Option<KillReason> {
            if !canonical(va) {
                return Some(KillReason::NonCanonicalAddress);
            }
            if in_switcher(va) {
                return Some(KillReason::SwitcherPin);
            }
            let mut scratch = run.model.mem.clone();
            for i in 0..pages {
                let page = va.wrapping_add(i * 0x1000);
                if skip && mapped[i as usize] {
                    continue;
                }
                let Some(cr3) = run.model.cr3.filter(|_| !run.model.linear) else {
                    if page >= LIMIT {
                        return Some(KillReason::PinNotMapped);
                    }
                    continue;
                };
                let walk = reference_walk(&scratch, cr3, page);
                match walk {
                    RefWalk::Broken(reason) => return Some(reason),
                    RefWalk::NotPresent => return Some(KillReason::PinNotMapped),
                    _ if !admits(&walk, access) => return Some(KillReason::PinNotMapped),
                    _ => set_accessed_dirty(&mut scratch, &walk, writable),
                }
            }
            None
        };
        let with_skips = predict(self, true);
        let without_skips = predict(self, false);
        let clears_before = self.mmu.counters().pressure_clears;
        let got = self.mmu.pin_range(va, pages * 0x1000, writable);
        let cleared = self.mmu.counters().pressure_clears != clears_before;
        let as_expected =
            got == with_skips.map_or(Ok(()), Err) || (cleared && got == without_skips.map_or(Ok(()), Err));
        prop_assert!(as_expected, "pin {:#x}+{} got {:?}, expected {:?}", va, pages, got, with_skips);

        // Only accessed and dirty bits may have appeared.
        let actual = &self.mmu.memory().words;
        for (&gpa, &v) in actual {
            let before = self.model.mem.get(gpa);
            prop_assert_eq!(v & !(ACCESSED | DIRTY), before & !(ACCESSED | DIRTY));
            prop_assert_eq!(v & before, before, "a pin cleared bits");
        }
        for (&gpa, &v) in &self.model.mem.words {
            prop_assert_eq!(actual.get(&gpa).copied().unwrap_or(0) & v, v);
        }
        self.model.mem.words = actual.clone();
        Ok(if got.is_ok() { Step::Alive } else { Step::Killed })
    }

    /// The shadow leaves under `root` as 4 KiB pieces the ledger can
    /// judge: a 4 KiB leaf as it is; a 2 MiB leaf checked whole for its
    /// alignment and its place in guest memory, then as the pieces that
    /// hold an address the sequences use (the others are the same leaf).
    fn leaf_pieces(&self, root: u64) -> Vec<(u64, u64)> {
        let mut pieces = Vec::new();
        for (va, e) in shadow_leaves(self.mmu.pool(), root) {
            if e & HUGE == 0 {
                pieces.push((va, e));
                continue;
            }
            let host = e & ADDRESS_MASK;
            // Linear mode's pretend map is 1:1, large leaves included.
            if self.model.linear {
                assert_eq!(
                    host.wrapping_sub(HOST_OFFSET),
                    va,
                    "linear 2 MiB leaf {va:#x} -> {host:#x} is not 1:1"
                );
            }
            assert_eq!(va % 0x20_0000, 0, "a 2 MiB leaf at {va:#x}");
            assert_eq!(host % 0x20_0000, 0, "2 MiB leaf {va:#x} -> {host:#x} misaligned");
            assert!(
                host >= HOST_OFFSET && host - HOST_OFFSET + 0x20_0000 <= LIMIT,
                "2 MiB leaf {va:#x} -> {host:#x} runs outside guest memory"
            );
            for &address in tracked() {
                if (va..va + 0x20_0000).contains(&address) {
                    pieces.push((address, (e & !HUGE) + (address - va)));
                }
            }
        }
        pieces
    }

    /// The invariants, after every step.
    fn check(&mut self) -> Result<(), TestCaseError> {
        prop_assert_eq!(&self.mmu.memory().words, &self.model.mem.words, "guest memory");
        prop_assert_eq!(self.mmu.is_linear(), self.model.linear);
        prop_assert_eq!(self.mmu.current_cr3(), self.model.cr3.filter(|_| !self.model.linear));

        let cached = self.cached_cr3s();
        self.model.collect_grants(&cached);

        let roots: Vec<_> = self.mmu.roots().collect();
        prop_assert!(roots.len() <= paging::ROOT_CACHE_SIZE);
        prop_assert_eq!(roots.iter().filter(|r| r.current).count(), 1);
        let tags: HashSet<_> = roots.iter().map(|r| r.guest_cr3).collect();
        prop_assert_eq!(tags.len(), roots.len(), "one root per CR3");

        for root in &roots {
            for (va, e) in self.leaf_pieces(root.root) {
                let host = e & ADDRESS_MASK;
                prop_assert!(
                    host >= HOST_OFFSET && host - HOST_OFFSET < LIMIT,
                    "leaf {:#x} -> {:#x} outside guest memory",
                    va,
                    host
                );
                let page = host - HOST_OFFSET;
                prop_assert_eq!(e & (GLOBAL | WRITE_THROUGH | CACHE_DISABLE), 0);
                let (write, user, exec) = (e & WRITABLE != 0, e & USER != 0, e & NO_EXECUTE == 0);
                if self.model.linear {
                    prop_assert_eq!(page, va, "linear mode is 1:1");
                    prop_assert!(!user);
                    continue;
                }
                let Some(cr3) = root.guest_cr3 else {
                    prop_assert!(false, "untagged root after linear mode");
                    continue;
                };
                let grants = if self.model.is_kernel(va) {
                    self.model.kernel_grants.get(&va)
                } else {
                    self.model.user_grants.get(&(cr3, va))
                };
                let allowed = grants.is_some_and(|set| {
                    set.iter().any(|g| {
                        g.page == page && (!write || g.write) && (!user || g.user) && (!exec || g.exec)
                    })
                });
                prop_assert!(
                    allowed,
                    "root {:#x}: leaf {:#x} = {:#x} not granted; grants {:?}",
                    cr3,
                    va,
                    e,
                    grants
                );
            }
            // The switcher slots hold the switcher of the CPU the root was
            // prepared for, or nothing.
            let pml4e = self.mmu.pool().read_entry(root.root, 511);
            let pdpte = self.mmu.pool().read_entry(pml4e & ADDRESS_MASK, 511);
            let slots = [510, 511].map(|i| self.mmu.pool().read_entry(pdpte & ADDRESS_MASK, i));
            let expected = root.prepared_cpu.map_or([0, 0], |cpu| switcher_for(cpu).0);
            prop_assert_eq!(slots, expected, "switcher slots");
        }

        let reachable = reachable_frames(&self.mmu) as u64;
        prop_assert_eq!(reachable, self.mmu.counters().frames_in_use, "reachable frames");
        prop_assert_eq!(self.mmu.pool().in_use() as u64, reachable, "pool accounting");
        Ok(())
    }
}

/// Runs one sequence, checking after every step; returns the MMU's
/// counters and whether the guest was killed.
fn run_sequence(ops: &[Op], large: bool) -> Result<(Counters, bool), TestCaseError> {
    let mut run = Run::new(large);
    let mut killed = false;
    for op in ops {
        let step = run.apply(op)?;
        run.check()?;
        if let Step::Killed = step {
            killed = true;
            break;
        }
    }
    let counters = run.mmu.counters();
    let (_, pool) = run.mmu.into_parts();
    prop_assert_eq!(pool.in_use(), 0, "frames left after the final release");
    Ok((counters, killed))
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128)
}

proptest! {
    #![proptest_config(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn shadow_mmu_matches_the_model(ops in sequence()) {
        run_sequence(&ops, false)?;
    }

    #[test]
    fn shadow_mmu_with_2_mib_leaves_matches_the_model(ops in sequence()) {
        run_sequence(&ops, true)?;
    }
}

/// The generator is only as good as the paths it reaches: over a few
/// hundred sequences, every kind of event must happen many times.
#[test]
fn the_generator_reaches_every_path() {
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut total = Counters::default();
    let (mut sequences, mut kills) = (0, 0);
    for _ in 0..300 {
        let ops = sequence().new_tree(&mut runner).expect("generate").current();
        let (c, killed) = run_sequence(&ops, false).expect("sequence holds");
        sequences += 1;
        kills += killed as u32;
        total.fills += c.fills;
        total.linear_fills += c.linear_fills;
        total.reflects += c.reflects;
        total.prefills += c.prefills;
        total.prefetches += c.prefetches;
        total.evictions += c.evictions;
        total.root_hits += c.root_hits;
        total.root_misses += c.root_misses;
        total.pressure_events += c.pressure_events;
        total.pressure_clears += c.pressure_clears;
        total.pins += c.pins;
    }
    println!("{sequences} sequences, {kills} killed: {total:?}");
    assert!(total.fills > 1000, "{total:?}");
    assert!(total.linear_fills > 50, "{total:?}");
    assert!(total.reflects > 500, "{total:?}");
    assert!(total.prefills > 20, "{total:?}");
    assert!(total.prefetches > 20, "{total:?}");
    assert!(total.evictions > 30, "{total:?}");
    assert!(total.root_hits > 150, "{total:?}");
    assert!(total.pressure_events > 30, "{total:?}");
    assert!(total.pressure_clears > 5, "{total:?}");
    assert!(total.pins > 30, "{total:?}");
    assert!(kills > 20 && kills < sequences * 9 / 10, "{kills} of {sequences} killed");
}

/// With 2 MiB leaves allowed, the sequences must reach them too.
#[test]
fn the_generator_reaches_2_mib_leaves() {
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut large, mut fills) = (0, 0);
    for _ in 0..300 {
        let ops = sequence().new_tree(&mut runner).expect("generate").current();
        let (c, _) = run_sequence(&ops, true).expect("sequence holds");
        large += c.large_fills;
        fills += c.fills;
    }
    println!("{fills} fills, {large} of them 2 MiB");
    assert!(large > 40, "{large} 2 MiB fills of {fills}");
}

/// A fixed sequence through the same harness, so the model itself is known
/// to see deep walks, fills and kills.
#[test]
fn the_model_harness_exercises_deep_walks() {
    let leaf = 0x30_0000 | PRESENT | WRITABLE | USER;
    let ops = [
        Op::Fault { va: 0, offset: 0, code: 2 },
        Op::NewPagetable { cr3: 0 },
        Op::MapPath { cr3: 0, va: 0, tables: [1, 2, 3], upper: [0xFFFF; 3], leaf, announce: false },
        Op::Fault { va: 0, offset: 8, code: 4 },
        Op::Fault { va: 0, offset: 8, code: 6 },
        Op::MapPath {
            cr3: 0,
            va: 10,
            tables: [4, 5, 6],
            upper: [0xFFFF; 3],
            leaf: leaf | ACCESSED,
            announce: true,
        },
        Op::Pin { va: 10, pages: 1, writable: true },
        Op::Squeeze { cap: MIN_POOL_FRAMES },
        Op::NewPagetable { cr3: 1 },
        Op::Fault { va: 18, offset: 0, code: 0 },
    ];
    let mut run = Run::new(false);
    let mut outcomes = Vec::new();
    for op in &ops {
        let step = run.apply(op).expect("step");
        run.check().expect("invariants");
        outcomes.push(matches!(step, Step::Alive));
    }
    assert!(run.mmu.counters().fills >= 2);
    assert!(outcomes[..outcomes.len() - 1].iter().all(|&alive| alive));
    assert_eq!(outcomes.last(), Some(&false), "the switcher fault kills");
}
