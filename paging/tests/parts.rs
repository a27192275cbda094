//! The ten parts of the shadow MMU, one module each, plus every kill reason
//! and the cases the lguest history taught us to check.

mod common;

use common::*;
use paging::entry::{
    ACCESSED, CACHE_DISABLE, DIRTY, GLOBAL, HUGE, NO_EXECUTE, PRESENT, USER, WRITABLE, WRITE_THROUGH,
};
use paging::{
    Access, FaultOutcome, FramePool, KillReason, Level, MIN_POOL_FRAMES, PREFETCH_PAGES, ROOT_CACHE_SIZE,
    SetupError, ShadowMmu, SwitcherEntries, TranslateError,
};

const CR3: u64 = 0x8000;
const CR3_B: u64 = 0x9000;
const USER_VA: u64 = 0x0000_0000_0040_0000;
const KERNEL_VA: u64 = 0xFFFF_8000_0010_0000;
const DATA: u64 = 0x0030_0000;

const READ: Access = Access { write: false, user: false, fetch: false };
const WRITE: Access = Access { write: true, user: false, fetch: false };
const USER_READ: Access = Access { write: false, user: true, fetch: false };
const USER_WRITE: Access = Access { write: true, user: true, fetch: false };
const FETCH: Access = Access { write: false, user: false, fetch: true };

/// An MMU past linear mode, on `CR3`, with a builder for its tables.
fn paged() -> (Mmu, Builder) {
    let mut mmu = mmu();
    mmu.new_pagetable(CR3).unwrap();
    (mmu, Builder::new())
}

fn map(mmu: &mut Mmu, b: &mut Builder, cr3: u64, va: u64, gpa: u64, flags: u64) -> u64 {
    b.map(mmu.memory_mut(), cr3, va, gpa, flags)
}

fn entry_in(mmu: &Mmu, cr3: u64, va: u64) -> Option<u64> {
    let root = mmu.roots().find(|r| r.guest_cr3 == Some(cr3))?.root;
    shadow_leaves(mmu.pool(), root).into_iter().find(|&(v, _)| v == va & !0xFFF).map(|(_, e)| e)
}

fn switcher() -> SwitcherEntries {
    SwitcherEntries([0x7000_0000 | PRESENT | WRITABLE, 0x7000_1000 | PRESENT | WRITABLE])
}

mod demand_fill {
    use super::*;

    #[test]
    fn read_fault_maps_read_only_and_sets_accessed_at_every_level() {
        let (mut mmu, mut b) = paged();
        let pte = map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | WRITABLE | USER);
        assert_eq!(mmu.demand_fill(USER_VA + 0x123, USER_READ), FaultOutcome::Fixed);

        let leaf = mmu.shadow_entry(USER_VA).unwrap();
        assert_eq!(leaf & 0x000F_FFFF_FFFF_F000, DATA + HOST_OFFSET);
        assert_eq!(leaf & (WRITABLE | USER | PRESENT), USER | PRESENT);
        assert_eq!(leaf & NO_EXECUTE, 0);

        // Accessed everywhere, dirty nowhere.
        let mut table = CR3;
        for level in Level::WALK_ORDER {
            let e = mmu.memory().get(table + 8 * level.index(USER_VA) as u64);
            assert_ne!(e & ACCESSED, 0, "{level} not accessed");
            assert_eq!(e & DIRTY, 0, "{level} dirty");
            table = e & 0x000F_FFFF_FFFF_F000;
        }
        assert_eq!(mmu.memory().get(pte), DATA | PRESENT | WRITABLE | USER | ACCESSED);
    }

    #[test]
    fn first_write_faults_again_and_sets_dirty_in_the_leaf_only() {
        let (mut mmu, mut b) = paged();
        let pte = map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | WRITABLE | USER);
        mmu.demand_fill(USER_VA, USER_READ);
        assert_eq!(mmu.demand_fill(USER_VA, USER_WRITE), FaultOutcome::Fixed);
        assert_ne!(mmu.shadow_entry(USER_VA).unwrap() & WRITABLE, 0);
        assert_ne!(mmu.memory().get(pte) & DIRTY, 0);
        let pml4e = mmu.memory().get(CR3 + 8 * Level::Pml4.index(USER_VA) as u64);
        assert_eq!(pml4e & DIRTY, 0);
    }

    #[test]
    fn read_of_an_already_dirty_page_maps_it_writable() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | WRITABLE | DIRTY);
        assert_eq!(mmu.demand_fill(USER_VA, READ), FaultOutcome::Fixed);
        assert_ne!(mmu.shadow_entry(USER_VA).unwrap() & WRITABLE, 0);
    }

    #[test]
    fn permissions_combine_across_levels() {
        let (mut mmu, mut b) = paged();
        // Supervisor-only leaf: ring 3 is refused, the ring-1 kernel is not.
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | WRITABLE);
        assert_eq!(mmu.demand_fill(USER_VA, USER_READ), FaultOutcome::Reflect);
        assert_eq!(mmu.demand_fill(USER_VA, WRITE), FaultOutcome::Fixed);
        assert_eq!(mmu.shadow_entry(USER_VA).unwrap() & USER, 0);

        // Read-only at the PDPT level makes the whole range read-only.
        let va = 0x0000_0000_8000_0000;
        map(&mut mmu, &mut b, CR3, va, DATA, PRESENT | WRITABLE | USER);
        let pdpte = b.entry_addr(mmu.memory_mut(), CR3, va, Level::Pdpt, TABLE);
        let v = mmu.memory().get(pdpte);
        mmu.memory_mut().set(pdpte, v & !WRITABLE);
        assert_eq!(mmu.demand_fill(va, USER_WRITE), FaultOutcome::Reflect);
        assert_eq!(mmu.demand_fill(va, USER_READ), FaultOutcome::Fixed);
        assert_eq!(mmu.demand_fill(va, WRITE), FaultOutcome::Reflect);

        // NX at the PML4 level forbids fetches below it.
        let nx_va = 0x0000_0100_0000_0000;
        map(&mut mmu, &mut b, CR3, nx_va, DATA, PRESENT | WRITABLE | USER);
        let pml4e = CR3 + 8 * Level::Pml4.index(nx_va) as u64;
        let v = mmu.memory().get(pml4e);
        mmu.memory_mut().set(pml4e, v | NO_EXECUTE);
        assert_eq!(mmu.demand_fill(nx_va, FETCH), FaultOutcome::Reflect);
        assert_eq!(mmu.demand_fill(nx_va, READ), FaultOutcome::Fixed);
        assert_ne!(mmu.shadow_entry(nx_va).unwrap() & NO_EXECUTE, 0);
    }

    /// A guest kernel that maps a program's pages ahead of use marks them
    /// accessed; a fill of one such page maps the others of its aligned
    /// block (`PREFETCH_PAGES`) ahead too, each as a fault there would have, and
    /// nothing the guest has not marked.
    #[test]
    fn a_fill_of_a_page_mapped_ahead_maps_its_marked_neighbours_ahead() {
        let (mut mmu, mut b) = paged();
        let page = |i: u64| USER_VA + i * 0x1000;
        let frame = |i: u64| DATA + i * 0x1000;
        let marked = PRESENT | USER | ACCESSED;
        map(&mut mmu, &mut b, CR3, page(0), frame(0), marked);
        map(&mut mmu, &mut b, CR3, page(1), frame(1), marked | WRITABLE);
        map(&mut mmu, &mut b, CR3, page(2), frame(2), marked | WRITABLE | DIRTY);
        map(&mut mmu, &mut b, CR3, page(3), frame(3), PRESENT | USER);
        map(&mut mmu, &mut b, CR3, page(4), frame(4), marked | NO_EXECUTE);
        let next_block = PREFETCH_PAGES as u64;
        map(&mut mmu, &mut b, CR3, page(next_block), frame(next_block), marked);
        let before = mmu.memory().words.clone();

        assert_eq!(mmu.demand_fill(page(0), USER_READ), FaultOutcome::Fixed);
        assert_eq!(mmu.counters().prefetches, 3);
        let leaf = |mmu: &Mmu, i: u64| mmu.shadow_entry(page(i));
        assert_eq!(
            leaf(&mmu, 1).unwrap() & !NO_EXECUTE,
            (frame(1) + HOST_OFFSET) | PRESENT | USER | ACCESSED
        );
        assert_eq!(leaf(&mmu, 1).unwrap() & WRITABLE, 0, "writable only once dirty");
        assert_ne!(leaf(&mmu, 2).unwrap() & WRITABLE, 0);
        assert_ne!(leaf(&mmu, 4).unwrap() & NO_EXECUTE, 0);
        assert_eq!(leaf(&mmu, 3), None, "not marked: left to its own fault");
        assert_eq!(leaf(&mmu, next_block), None, "another block");
        // The guest's tables: only the fill's own accessed bits are new.
        for (gpa, value) in &mmu.memory().words {
            if before.get(gpa) != Some(value) {
                assert_eq!(before.get(gpa).copied().unwrap_or(0) | ACCESSED, *value, "at {gpa:#x}");
            }
        }
    }

    #[test]
    fn an_ordinary_fill_maps_nothing_ahead() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | USER);
        map(&mut mmu, &mut b, CR3, USER_VA + 0x1000, DATA + 0x1000, PRESENT | USER | ACCESSED);
        assert_eq!(mmu.demand_fill(USER_VA, USER_READ), FaultOutcome::Fixed);
        assert_eq!(mmu.shadow_entry(USER_VA + 0x1000), None);
        assert_eq!(mmu.counters().prefetches, 0);
    }

    /// What a neighbour may not be, it is not mapped ahead, and nobody is
    /// killed for it: its own fault, if it ever comes, judges it.
    #[test]
    fn a_neighbour_that_a_walk_would_refuse_is_not_mapped_ahead() {
        let (mut mmu, mut b) = paged();
        let marked = PRESENT | USER | ACCESSED;
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, marked);
        map(&mut mmu, &mut b, CR3, USER_VA + 0x1000, LIMIT, marked);
        map(&mut mmu, &mut b, CR3, USER_VA + 0x2000, DATA | 1 << 50, marked);
        map(&mut mmu, &mut b, CR3, USER_VA + 0x3000, DATA + 0x3000, USER | ACCESSED);
        assert_eq!(mmu.demand_fill(USER_VA, USER_READ), FaultOutcome::Fixed);
        for i in 1..4 {
            assert_eq!(mmu.shadow_entry(USER_VA + i * 0x1000), None, "page {i}");
        }
        assert_eq!(mmu.counters().prefetches, 0);
        assert_eq!(mmu.counters().kills, 0);
    }

    /// The rights above the page table hold for the neighbours too, and a
    /// leaf the shadow already has is left as it is.
    #[test]
    fn a_neighbour_mapped_ahead_has_the_rights_of_the_levels_above() {
        let (mut mmu, mut b) = paged();
        let marked = PRESENT | USER | ACCESSED | WRITABLE | DIRTY;
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, marked);
        map(&mut mmu, &mut b, CR3, USER_VA + 0x1000, DATA + 0x1000, marked);
        map(&mut mmu, &mut b, CR3, USER_VA + 0x2000, DATA + 0x2000, PRESENT | USER | WRITABLE | DIRTY);
        let pde = b.entry_addr(mmu.memory_mut(), CR3, USER_VA, Level::Pd, TABLE);
        let v = mmu.memory().get(pde);
        mmu.memory_mut().set(pde, v & !(USER | WRITABLE));

        // Not marked: an ordinary fill, read-only from the PDE down.
        assert_eq!(mmu.demand_fill(USER_VA + 0x2000, READ), FaultOutcome::Fixed);
        let kept = mmu.shadow_entry(USER_VA + 0x2000).unwrap();
        assert_eq!(mmu.counters().prefetches, 0);

        assert_eq!(mmu.demand_fill(USER_VA, READ), FaultOutcome::Fixed);
        assert_eq!(mmu.counters().prefetches, 1);
        let ahead = mmu.shadow_entry(USER_VA + 0x1000).unwrap();
        assert_eq!(ahead & (USER | WRITABLE), 0, "the PDE allows neither");
        assert_eq!(mmu.shadow_entry(USER_VA + 0x2000), Some(kept));
        assert_eq!(mmu.demand_fill(USER_VA + 0x1000, USER_READ), FaultOutcome::Reflect);
    }

    #[test]
    fn a_refused_access_writes_no_accessed_bits() {
        let (mut mmu, mut b) = paged();
        let pte = map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | USER);
        let before = mmu.memory().words.clone();
        assert_eq!(mmu.demand_fill(USER_VA, USER_WRITE), FaultOutcome::Reflect);
        assert_eq!(mmu.memory().words, before);
        assert_eq!(mmu.memory().get(pte) & ACCESSED, 0);
    }

    #[test]
    fn not_present_is_reflected() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, WRITABLE | USER);
        assert_eq!(mmu.demand_fill(USER_VA, USER_READ), FaultOutcome::Reflect);
        assert_eq!(mmu.demand_fill(0x7000_0000_0000, USER_READ), FaultOutcome::Reflect);
        assert_eq!(mmu.counters().reflects, 2);
    }

    #[test]
    fn global_and_caching_bits_are_dropped() {
        let (mut mmu, mut b) = paged();
        let flags = PRESENT | WRITABLE | GLOBAL | WRITE_THROUGH | CACHE_DISABLE | DIRTY;
        map(&mut mmu, &mut b, CR3, KERNEL_VA, DATA, flags);
        mmu.demand_fill(KERNEL_VA, READ);
        let leaf = mmu.shadow_entry(KERNEL_VA).unwrap();
        assert_eq!(leaf & (GLOBAL | WRITE_THROUGH | CACHE_DISABLE), 0);
    }

    #[test]
    fn two_mib_pages_are_shadowed_by_their_4k_pieces() {
        let (mut mmu, mut b) = paged();
        let va = 0x0000_0000_0060_0000;
        let pde = b.map_large(mmu.memory_mut(), CR3, va, Level::Pd, 0x20_0000, PRESENT | WRITABLE | USER);
        assert_eq!(mmu.demand_fill(va + 0x5_0123, USER_WRITE), FaultOutcome::Fixed);
        let leaf = mmu.shadow_entry(va + 0x5_0000).unwrap();
        assert_eq!(leaf & 0x000F_FFFF_FFFF_F000, HOST_OFFSET + 0x25_0000);
        assert_ne!(leaf & WRITABLE, 0);
        assert_eq!(mmu.memory().get(pde) & (ACCESSED | DIRTY), ACCESSED | DIRTY);
        // Only the piece touched is mapped.
        assert!(mmu.shadow_entry(va).is_none());
    }

    #[test]
    fn one_gib_pages_are_shadowed_too() {
        let (mut mmu, mut b) = paged();
        let va = 0x0000_0040_0000_0000;
        b.map_large(mmu.memory_mut(), CR3, va, Level::Pdpt, 0, PRESENT | USER);
        assert_eq!(mmu.demand_fill(va + 0x1234_5678, USER_READ), FaultOutcome::Fixed);
        let leaf = mmu.shadow_entry(va + 0x1234_5000).unwrap();
        assert_eq!(leaf & 0x000F_FFFF_FFFF_F000, HOST_OFFSET + 0x1234_5000);
        assert_eq!(mmu.demand_fill(va, USER_WRITE), FaultOutcome::Reflect);
    }

    #[test]
    fn the_page_attribute_bit_of_a_large_page_is_not_address() {
        let (mut mmu, mut b) = paged();
        let va = 0x0000_0000_0060_0000;
        // Bit 12 of a large-page entry is PAT, not an address bit.
        b.map_large(mmu.memory_mut(), CR3, va, Level::Pd, 0x20_0000 | 0x1000, PRESENT);
        assert_eq!(mmu.demand_fill(va, READ), FaultOutcome::Fixed);
        let leaf = mmu.shadow_entry(va).unwrap();
        assert_eq!(leaf & 0x000F_FFFF_FFFF_F000, HOST_OFFSET + 0x20_0000);
    }

    #[test]
    fn recursive_tables_walk_without_harm() {
        let (mut mmu, _) = paged();
        // PML4[0] points at the PML4 itself, and so on down: the walk ends
        // with CR3's page mapped as data.
        mmu.memory_mut().set(CR3, CR3 | PRESENT | WRITABLE);
        assert_eq!(mmu.demand_fill(0x10, WRITE), FaultOutcome::Fixed);
        let leaf = mmu.shadow_entry(0).unwrap();
        assert_eq!(leaf & 0x000F_FFFF_FFFF_F000, HOST_OFFSET + CR3);
        assert_eq!(mmu.memory().get(CR3), CR3 | PRESENT | WRITABLE | ACCESSED | DIRTY);
    }
}

mod linear_mode {
    use super::*;

    #[test]
    fn faults_get_a_one_to_one_kernel_map_until_the_first_switch() {
        let mut mmu = mmu();
        assert!(mmu.is_linear());
        assert_eq!(mmu.demand_fill(0x12_3456, READ), FaultOutcome::Fixed);
        let leaf = mmu.shadow_entry(0x12_3000).unwrap();
        assert_eq!(leaf & 0x000F_FFFF_FFFF_F000, HOST_OFFSET + 0x12_3000);
        assert_eq!(leaf & (WRITABLE | USER), WRITABLE);
        // Ring 3 gets nothing, nor does anything past guest memory.
        assert_eq!(mmu.demand_fill(0x12_3456, USER_READ), FaultOutcome::Reflect);
        assert_eq!(mmu.demand_fill(LIMIT, READ), FaultOutcome::Reflect);
        assert_eq!(mmu.demand_fill(KERNEL_VA, READ), FaultOutcome::Reflect);
        // No guest tables exist, so nothing is written to guest memory.
        assert!(mmu.memory().words.is_empty());
        assert_eq!(mmu.counters().linear_fills, 1);
        assert_eq!(mmu.translate(0x12_3456, WRITE), Ok(0x12_3456));
    }

    #[test]
    fn where_the_host_backs_2_mib_a_linear_fault_maps_all_of_it() {
        // 3 MiB of guest memory: the first 2 MiB may be one leaf, the
        // last MiB may not (a leaf would reach past guest memory).
        let mut mmu = mmu_large(0x30_0000, 256);
        assert_eq!(mmu.demand_fill(0x12_3456, WRITE), FaultOutcome::Fixed);
        for va in [0, 0x12_3000, 0x1F_F000] {
            let leaf = mmu.shadow_entry(va).unwrap();
            assert_eq!(leaf & 0x000F_FFFF_FFFF_F000, HOST_OFFSET + va);
            assert_eq!(leaf & (WRITABLE | USER), WRITABLE, "{leaf:#x}");
        }
        assert_eq!(mmu.counters().large_fills, 1);
        assert_eq!(mmu.shadow_entry(0x20_0000), None);
        assert_eq!(mmu.demand_fill(0x28_0000, READ), FaultOutcome::Fixed);
        assert!(mmu.shadow_entry(0x28_0000).is_some());
        assert_eq!(mmu.shadow_entry(0x29_0000), None);
        assert_eq!(mmu.counters().linear_fills, 2);
        assert_eq!(mmu.counters().large_fills, 1);
        // Ring 3 still gets nothing.
        assert_eq!(mmu.demand_fill(0x12_3456, USER_READ), FaultOutcome::Reflect);
    }

    #[test]
    fn the_first_switch_throws_the_fake_away() {
        let mut mmu = mmu();
        for page in 0..10 {
            mmu.demand_fill(page * 0x1000, WRITE);
        }
        assert!(mmu.counters().frames_in_use > 3);
        mmu.new_pagetable(CR3).unwrap();
        assert!(!mmu.is_linear());
        assert_eq!(mmu.counters().frames_in_use, 3);
        assert!(mmu.shadow_entry(0).is_none());
        // Now the guest's (empty) tables rule.
        assert_eq!(mmu.demand_fill(0, READ), FaultOutcome::Reflect);
        assert_eq!(mmu.pool().in_use(), 3);
    }

    #[test]
    fn the_pinned_stack_is_linear_too() {
        let mut mmu = mmu();
        mmu.set_kernel_stack(0x20_0000, 0x2000).unwrap();
        assert!(mmu.shadow_entry(0x20_1000).is_some());
    }
}

mod switching {
    use super::*;

    #[test]
    fn hits_and_misses_are_told_apart() {
        let (mut mmu, _) = paged();
        mmu.new_pagetable(CR3_B).unwrap();
        mmu.new_pagetable(CR3).unwrap();
        mmu.new_pagetable(CR3_B).unwrap();
        let c = mmu.counters();
        assert_eq!((c.root_misses, c.root_hits), (2, 2));
        assert_eq!(mmu.current_cr3(), Some(CR3_B));
        assert_eq!(mmu.roots().count(), 2);
    }

    #[test]
    fn at_least_eight_roots_are_cached() {
        let (mut mmu, _) = paged();
        for i in 1..ROOT_CACHE_SIZE as u64 {
            mmu.new_pagetable(CR3 + i * 0x1000).unwrap();
        }
        for i in 0..ROOT_CACHE_SIZE as u64 {
            mmu.new_pagetable(CR3 + i * 0x1000).unwrap();
        }
        const { assert!(ROOT_CACHE_SIZE >= 8) };
        assert_eq!(mmu.counters().root_hits, ROOT_CACHE_SIZE as u64);
        assert_eq!(mmu.counters().evictions, 0);
    }

    #[test]
    fn the_least_recently_used_root_is_the_one_evicted() {
        let (mut mmu, _) = paged();
        let cr3s: Vec<u64> = (0..ROOT_CACHE_SIZE as u64).map(|i| CR3 + i * 0x1000).collect();
        for &c in &cr3s {
            mmu.new_pagetable(c).unwrap();
        }
        // Use the first one again: the second is now the oldest.
        mmu.new_pagetable(cr3s[0]).unwrap();
        mmu.new_pagetable(0x40_0000).unwrap();
        let cached: Vec<u64> = mmu.roots().filter_map(|r| r.guest_cr3).collect();
        assert!(cached.contains(&cr3s[0]));
        assert!(!cached.contains(&cr3s[1]));
        assert_eq!(mmu.counters().evictions, 1);
    }

    #[test]
    fn a_reused_root_keeps_its_kernel_half_and_loses_its_user_half() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | WRITABLE | USER);
        map(&mut mmu, &mut b, CR3, KERNEL_VA, DATA, PRESENT | WRITABLE);
        mmu.demand_fill(USER_VA, USER_READ);
        mmu.demand_fill(KERNEL_VA, READ);
        let root = mmu.current_root();
        for i in 1..=ROOT_CACHE_SIZE as u64 {
            mmu.new_pagetable(0x40_0000 + i * 0x1000).unwrap();
        }
        // The last switch reused our first root.
        assert_eq!(mmu.current_root(), root);
        assert!(mmu.shadow_entry(KERNEL_VA).is_some());
        assert!(mmu.shadow_entry(USER_VA).is_none());
    }

    #[test]
    fn kernel_updates_reach_every_cached_root() {
        let (mut mmu, mut b) = paged();
        let pte = map(&mut mmu, &mut b, CR3, KERNEL_VA, DATA, PRESENT | WRITABLE);
        // CR3_B shares CR3's kernel half: same PML4 entry.
        let shared = mmu.memory().get(CR3 + 8 * 256);
        mmu.memory_mut().set(CR3_B + 8 * 256, shared);
        mmu.demand_fill(KERNEL_VA, READ);
        mmu.new_pagetable(CR3_B).unwrap();
        mmu.demand_fill(KERNEL_VA, READ);
        assert!(entry_in(&mmu, CR3, KERNEL_VA).is_some());
        assert!(entry_in(&mmu, CR3_B, KERNEL_VA).is_some());

        mmu.memory_mut().set(pte, 0);
        mmu.set_pte(CR3_B, KERNEL_VA, 0).unwrap();
        assert!(entry_in(&mmu, CR3, KERNEL_VA).is_none());
        assert!(entry_in(&mmu, CR3_B, KERNEL_VA).is_none());
    }

    #[test]
    fn the_kernel_boundary_can_move() {
        let (mut mmu, mut b) = paged();
        let va = 0xFFFF_C000_0000_0000;
        map(&mut mmu, &mut b, CR3, va, DATA, PRESENT);
        mmu.demand_fill(va, READ);
        mmu.set_kernel_boundary(va).unwrap();
        assert_eq!(mmu.kernel_boundary(), va);
        // Moving it flushed everything.
        assert!(mmu.shadow_entry(va).is_none());
        // 0xFFFF_8000_... is now user half: a switch drops it.
        map(&mut mmu, &mut b, CR3, KERNEL_VA, DATA, PRESENT);
        mmu.demand_fill(KERNEL_VA, READ);
        mmu.new_pagetable(CR3_B).unwrap();
        mmu.new_pagetable(CR3).unwrap();
        assert!(mmu.shadow_entry(KERNEL_VA).is_some(), "different roots: kept");
        mmu.flush_user_half().unwrap();
        assert!(mmu.shadow_entry(KERNEL_VA).is_none());
    }
}

mod updates {
    use super::*;

    #[test]
    fn a_user_update_concerns_only_its_own_root() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | USER);
        map(&mut mmu, &mut b, CR3_B, USER_VA, DATA, PRESENT | USER);
        mmu.demand_fill(USER_VA, USER_READ);
        mmu.new_pagetable(CR3_B).unwrap();
        mmu.demand_fill(USER_VA, USER_READ);
        mmu.set_pte(CR3, USER_VA, 0).unwrap();
        assert!(entry_in(&mmu, CR3, USER_VA).is_none());
        assert!(entry_in(&mmu, CR3_B, USER_VA).is_some());
    }

    #[test]
    fn accessed_or_dirty_ptes_are_prefilled() {
        let (mut mmu, mut b) = paged();
        // A neighbour's fault builds the shadow tables.
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | USER);
        mmu.demand_fill(USER_VA, USER_READ);

        let va = USER_VA + 0x1000;
        let accessed = DATA | PRESENT | WRITABLE | USER | ACCESSED;
        map(&mut mmu, &mut b, CR3, va, 0, accessed);
        mmu.set_pte(CR3, va, accessed).unwrap();
        let leaf = mmu.shadow_entry(va).unwrap();
        assert_eq!(leaf & (WRITABLE | USER), USER, "accessed only: read-only");

        let dirty = accessed | DIRTY;
        map(&mut mmu, &mut b, CR3, va, 0, dirty);
        mmu.set_pte(CR3, va, dirty).unwrap();
        assert_ne!(mmu.shadow_entry(va).unwrap() & WRITABLE, 0);

        let fresh = DATA | PRESENT | WRITABLE | USER;
        map(&mut mmu, &mut b, CR3, va, 0, fresh);
        mmu.set_pte(CR3, va, fresh).unwrap();
        assert!(mmu.shadow_entry(va).is_none());
        assert_eq!(mmu.counters().prefills, 2);
    }

    #[test]
    fn a_prefill_never_trusts_an_announcement_memory_disagrees_with() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | USER);
        mmu.demand_fill(USER_VA, USER_READ);
        // Memory says read-only supervisor; the announcement claims more.
        let claimed = DATA | PRESENT | WRITABLE | USER | ACCESSED | DIRTY;
        mmu.set_pte(CR3, USER_VA, claimed).unwrap();
        assert!(mmu.shadow_entry(USER_VA).is_none());
        assert_eq!(mmu.counters().prefills, 0);
    }

    #[test]
    fn a_prefill_combines_the_upper_levels() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | USER);
        mmu.demand_fill(USER_VA, USER_READ);
        let pde = b.entry_addr(mmu.memory_mut(), CR3, USER_VA, Level::Pd, TABLE);
        let v = mmu.memory().get(pde);
        mmu.memory_mut().set(pde, (v & !USER) | NO_EXECUTE);
        let pte = DATA | PRESENT | WRITABLE | USER | ACCESSED | DIRTY;
        map(&mut mmu, &mut b, CR3, USER_VA, 0, pte);
        mmu.set_pte(CR3, USER_VA, pte).unwrap();
        let leaf = mmu.shadow_entry(USER_VA).unwrap();
        assert_eq!(leaf & USER, 0);
        assert_ne!(leaf & NO_EXECUTE, 0);
    }

    #[test]
    fn an_unknown_cr3_is_a_no_op() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | USER);
        mmu.demand_fill(USER_VA, USER_READ);
        let before = mmu.counters();
        assert_eq!(mmu.set_pte(0x5_0000, USER_VA, 0), Ok(()));
        assert_eq!(mmu.invalidate_entry(0x5_0000, USER_VA, Level::Pd), Ok(()));
        assert_eq!(mmu.invalidate_pml4_index(0x5_0000, 0), Ok(()));
        assert!(mmu.shadow_entry(USER_VA).is_some());
        assert_eq!(mmu.counters(), before);
    }

    #[test]
    fn invalidating_an_upper_entry_frees_what_hangs_below() {
        for level in [Level::Pml4, Level::Pdpt, Level::Pd, Level::Pt] {
            let (mut mmu, mut b) = paged();
            map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | USER);
            map(&mut mmu, &mut b, CR3, KERNEL_VA, DATA, PRESENT);
            mmu.demand_fill(USER_VA, USER_READ);
            mmu.demand_fill(KERNEL_VA, READ);
            let frames = mmu.counters().frames_in_use;
            mmu.invalidate_entry(CR3, USER_VA, level).unwrap();
            assert!(mmu.shadow_entry(USER_VA).is_none(), "{level}");
            assert!(mmu.shadow_entry(KERNEL_VA).is_some(), "{level}");
            let freed = match level {
                Level::Pml4 => 3,
                Level::Pdpt => 2,
                Level::Pd => 1,
                Level::Pt => 0,
            };
            assert_eq!(mmu.counters().frames_in_use, frames - freed, "{level}");
            assert_eq!(mmu.pool().in_use() as u64, mmu.counters().frames_in_use);
            assert_eq!(reachable_frames(&mmu) as u64, mmu.counters().frames_in_use);
        }
    }

    #[test]
    fn flushes_drop_the_user_half_or_everything() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | USER);
        map(&mut mmu, &mut b, CR3, KERNEL_VA, DATA, PRESENT);
        mmu.demand_fill(USER_VA, USER_READ);
        mmu.demand_fill(KERNEL_VA, READ);
        mmu.flush_user_half().unwrap();
        assert!(mmu.shadow_entry(USER_VA).is_none());
        assert!(mmu.shadow_entry(KERNEL_VA).is_some());
        mmu.demand_fill(USER_VA, USER_READ);
        mmu.flush_all().unwrap();
        assert!(mmu.shadow_entry(USER_VA).is_none());
        assert!(mmu.shadow_entry(KERNEL_VA).is_none());
        assert_eq!(mmu.counters().frames_in_use, 3);
    }
}

mod switcher_region {
    use super::*;

    #[test]
    fn install_is_skipped_when_nothing_changed() {
        let (mut mmu, _) = paged();
        assert!(mmu.prepare_switcher(0, switcher()));
        assert_eq!(mmu.switcher_slots(), Some(switcher().0));
        assert!(!mmu.prepare_switcher(0, switcher()));
        let other = SwitcherEntries([0x7100_0000 | PRESENT, 0x7100_1000 | PRESENT]);
        assert!(mmu.prepare_switcher(1, other));
        assert_eq!(mmu.switcher_slots(), Some(other.0));
        let c = mmu.counters();
        assert_eq!((c.switcher_installs, c.switcher_skips), (2, 1));
        mmu.forget_switcher_preparations();
        assert!(mmu.prepare_switcher(1, other));
    }

    #[test]
    fn each_root_remembers_its_own_cpu() {
        let (mut mmu, _) = paged();
        mmu.prepare_switcher(0, switcher());
        mmu.new_pagetable(CR3_B).unwrap();
        assert_eq!(mmu.switcher_slots(), Some([0, 0]));
        assert!(mmu.prepare_switcher(0, switcher()));
        mmu.new_pagetable(CR3).unwrap();
        assert!(!mmu.prepare_switcher(0, switcher()));
    }

    #[test]
    fn seed_setting_a_pte_into_the_switcher_kills() {
        let (mut mmu, _) = paged();
        for va in [0xFFFF_FFFF_FFC0_0000, 0xFFFF_FFFF_FFE0_1000, u64::MAX] {
            assert_eq!(mmu.set_pte(CR3, va, 0), Err(KillReason::SwitcherPteUpdate));
        }
        // Just below it is the guest's.
        assert_eq!(mmu.set_pte(CR3, 0xFFFF_FFFF_FFBF_F000, 0), Ok(()));
    }

    #[test]
    fn seed_a_pml4_index_out_of_range_kills() {
        let (mut mmu, _) = paged();
        assert_eq!(mmu.invalidate_pml4_index(CR3, 512), Err(KillReason::Pml4IndexOutOfRange));
        assert_eq!(mmu.invalidate_pml4_index(CR3, u64::MAX), Err(KillReason::Pml4IndexOutOfRange));
        assert_eq!(mmu.invalidate_pml4_index(CR3, 511), Ok(()));
    }

    #[test]
    fn seed_the_switcher_survives_releases_and_is_remapped_after_a_root_is_rebuilt() {
        let (mut mmu, mut b) = paged();
        mmu.prepare_switcher(0, switcher());
        // Guest mappings right under the switcher, in the same PD.
        let va = 0xFFFF_FFFF_FFA0_0000;
        map(&mut mmu, &mut b, CR3, va, DATA, PRESENT);
        mmu.demand_fill(va, READ);
        assert!(mmu.shadow_entry(va).is_some());

        // Releasing the top PML4 entry (lguest's release that also took the
        // switcher away) leaves the switcher in place.
        mmu.invalidate_pml4_index(CR3, 511).unwrap();
        assert!(mmu.shadow_entry(va).is_none());
        assert_eq!(mmu.switcher_slots(), Some(switcher().0));
        mmu.invalidate_entry(CR3, 0xFFFF_FFFF_C000_0000, Level::Pdpt).unwrap();
        mmu.flush_all().unwrap();
        assert_eq!(mmu.switcher_slots(), Some(switcher().0));
        assert!(!mmu.prepare_switcher(0, switcher()), "still prepared");

        // A root freed under memory pressure and built again is blank: the
        // next prepare must map the switcher again.
        mmu.new_pagetable(CR3_B).unwrap();
        mmu.pool_mut().cap = mmu.pool().in_use();
        map(&mut mmu, &mut b, CR3_B, USER_VA, DATA, PRESENT);
        assert_eq!(mmu.demand_fill(USER_VA, READ), FaultOutcome::Fixed);
        assert!(mmu.roots().all(|r| r.guest_cr3 != Some(CR3)), "CR3's root was freed");
        mmu.pool_mut().cap = 256;
        mmu.new_pagetable(CR3).unwrap();
        assert_eq!(mmu.switcher_slots(), Some([0, 0]));
        assert!(mmu.prepare_switcher(0, switcher()));
        assert_eq!(mmu.switcher_slots(), Some(switcher().0));
    }

    #[test]
    fn the_switcher_is_never_read_as_a_guest_mapping() {
        let (mut mmu, _) = paged();
        mmu.prepare_switcher(0, switcher());
        // The slots point at host tables outside the pool: the MMU must not
        // follow them (the test pool would panic if it did).
        for va in [0xFFFF_FFFF_FFC0_0000, 0xFFFF_FFFF_FFE0_0000, 0xFFFF_FFFF_FFFF_F000] {
            assert_eq!(mmu.shadow_entry(va), None);
        }
        assert_eq!(mmu.shadow_entry(0x0000_8000_0000_0000), None);
    }

    #[test]
    fn faults_pins_and_invalidations_there_kill() {
        let (mut mmu, _) = paged();
        assert_eq!(
            mmu.demand_fill(0xFFFF_FFFF_FFC0_0000, READ),
            FaultOutcome::Kill(KillReason::SwitcherFault)
        );
        assert_eq!(
            mmu.invalidate_entry(CR3, 0xFFFF_FFFF_FFE0_0000, Level::Pd),
            Err(KillReason::SwitcherInvalidation)
        );
        assert_eq!(
            mmu.invalidate_entry(CR3, 0xFFFF_FFFF_FFFF_F000, Level::Pt),
            Err(KillReason::SwitcherInvalidation)
        );
        assert_eq!(mmu.pin_range(0xFFFF_FFFF_FFBF_F000, 0x2000, true), Err(KillReason::SwitcherPin));
        assert_eq!(mmu.pin_range(0xFFFF_FFFF_FFFF_F000, 0x3000, true), Err(KillReason::SwitcherPin));
        assert_eq!(mmu.pin_range(0x7FFF_FFFF_E000, 0x4000, true), Err(KillReason::NonCanonicalAddress));
        assert_eq!(
            mmu.translate(0xFFFF_FFFF_FFC0_0008, READ),
            Err(TranslateError::Kill(KillReason::SwitcherTranslate))
        );
    }

    /// A pin range is judged by its two ends; page by page, the first page
    /// that is wrong says why. The two must agree wherever a range ends.
    #[test]
    fn a_pin_range_is_refused_as_its_first_bad_page_would_be() {
        let page_by_page = |start: u64, len: u64| -> Option<KillReason> {
            let first = start & !0xFFF;
            let pages = ((start - first) + len).div_ceil(0x1000);
            for i in 0..pages {
                let va = first.wrapping_add(i * 0x1000);
                if !paging::address::is_canonical(va) || (i > 0 && va < first) {
                    return Some(KillReason::NonCanonicalAddress);
                }
                if va >= 0xFFFF_FFFF_FFC0_0000 {
                    return Some(KillReason::SwitcherPin);
                }
            }
            None
        };
        let edges: [u64; 6] = [
            0,
            0x7FFF_FFFF_F000,
            0x8000_0000_0000,
            0xFFFF_8000_0000_0000,
            0xFFFF_FFFF_FFC0_0000,
            0xFFFF_FFFF_FFFF_F000,
        ];
        for edge in edges {
            for back in 0..6u64 {
                for len in [1, 0x1000, 0x1001, 0x3000, 0x4000] {
                    let start = edge.wrapping_sub(back * 0x1000).wrapping_add(0x800 * (len & 1));
                    // Only the refusal matters here: a range that passes
                    // may still fail later for want of a mapping.
                    let got = mmu()
                        .pin_range(start, len, true)
                        .err()
                        .filter(|r| matches!(r, KillReason::NonCanonicalAddress | KillReason::SwitcherPin));
                    assert_eq!(got, page_by_page(start, len), "pin {start:#x}+{len:#x}");
                }
            }
        }
    }
}

mod kills {
    use super::*;

    fn fault_kill(setup: impl FnOnce(&mut Mmu, &mut Builder) -> u64, access: Access) -> KillReason {
        let (mut mmu, mut b) = paged();
        let va = setup(&mut mmu, &mut b);
        let before = mmu.memory().words.clone();
        match mmu.demand_fill(va, access) {
            FaultOutcome::Kill(reason) => {
                assert_eq!(mmu.memory().words, before, "a kill writes nothing");
                assert_eq!(mmu.counters().kills, 1);
                reason
            }
            other => panic!("expected a kill, got {other:?}"),
        }
    }

    /// Sets bits in the entry at `level` for `va` after mapping it.
    fn poke(level: Level, bits: u64) -> impl FnOnce(&mut Mmu, &mut Builder) -> u64 {
        move |mmu, b| {
            map(mmu, b, CR3, USER_VA, DATA, PRESENT | WRITABLE | USER);
            let addr = b.entry_addr(mmu.memory_mut(), CR3, USER_VA, level, TABLE);
            let v = mmu.memory().get(addr);
            mmu.memory_mut().set(addr, v | bits);
            USER_VA
        }
    }

    #[test]
    fn reserved_bits_at_every_level() {
        for level in Level::WALK_ORDER {
            assert_eq!(fault_kill(poke(level, 1 << 50), READ), KillReason::ReservedBits(level));
        }
        assert_eq!(fault_kill(poke(Level::Pml4, HUGE), READ), KillReason::ReservedBits(Level::Pml4));
        // A misaligned 2 MiB page.
        let misaligned = |mmu: &mut Mmu, b: &mut Builder| {
            b.map_large(mmu.memory_mut(), CR3, USER_VA, Level::Pd, 0x20_0000 | 0x2000, PRESENT);
            USER_VA
        };
        assert_eq!(fault_kill(misaligned, READ), KillReason::ReservedBits(Level::Pd));
        let misaligned_gib = |mmu: &mut Mmu, b: &mut Builder| {
            b.map_large(mmu.memory_mut(), CR3, USER_VA, Level::Pdpt, 0x20_0000, PRESENT);
            USER_VA
        };
        assert_eq!(fault_kill(misaligned_gib, READ), KillReason::ReservedBits(Level::Pdpt));
        // Bits 52..62 are ignored, not reserved.
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | (0x7FF << 52));
        assert_eq!(mmu.demand_fill(USER_VA, READ), FaultOutcome::Fixed);
        assert_eq!(mmu.shadow_entry(USER_VA).unwrap() & (0x7FF << 52), 0);
    }

    #[test]
    fn frames_beyond_guest_memory() {
        let pte_beyond = |mmu: &mut Mmu, b: &mut Builder| {
            map(mmu, b, CR3, USER_VA, LIMIT, PRESENT);
            USER_VA
        };
        assert_eq!(fault_kill(pte_beyond, READ), KillReason::FrameBeyondMemory(Level::Pt));
        let pde_beyond = |mmu: &mut Mmu, b: &mut Builder| {
            b.map_large(mmu.memory_mut(), CR3, USER_VA, Level::Pd, LIMIT, PRESENT);
            USER_VA
        };
        assert_eq!(fault_kill(pde_beyond, READ), KillReason::FrameBeyondMemory(Level::Pd));
        // A 2 MiB page whose start is inside guest memory but whose end is
        // not: only its first half is the guest's.
        let mut mmu = mmu_with(LIMIT - 0x10_0000, 256);
        mmu.new_pagetable(CR3).unwrap();
        let mut b = Builder::new();
        b.map_large(mmu.memory_mut(), CR3, USER_VA, Level::Pd, LIMIT - 0x20_0000, PRESENT);
        assert_eq!(
            mmu.demand_fill(USER_VA, READ),
            FaultOutcome::Kill(KillReason::FrameBeyondMemory(Level::Pd))
        );
        let pdpte_straddles = |mmu: &mut Mmu, b: &mut Builder| {
            b.map_large(mmu.memory_mut(), CR3, USER_VA, Level::Pdpt, 0x4000_0000, PRESENT);
            USER_VA
        };
        assert_eq!(fault_kill(pdpte_straddles, READ), KillReason::FrameBeyondMemory(Level::Pdpt));
        // The last page of memory, and a 2 MiB page ending exactly at the
        // limit, are fine.
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, LIMIT - 0x1000, PRESENT);
        assert_eq!(mmu.demand_fill(USER_VA, READ), FaultOutcome::Fixed);
        b.map_large(mmu.memory_mut(), CR3, 0x60_0000, Level::Pd, LIMIT - 0x20_0000, PRESENT);
        assert_eq!(mmu.demand_fill(0x7F_F000, READ), FaultOutcome::Fixed);
    }

    #[test]
    fn walks_that_leave_guest_memory() {
        for level in [Level::Pml4, Level::Pdpt, Level::Pd] {
            let setup = move |mmu: &mut Mmu, b: &mut Builder| {
                map(mmu, b, CR3, USER_VA, DATA, PRESENT);
                let addr = b.entry_addr(mmu.memory_mut(), CR3, USER_VA, level, TABLE);
                mmu.memory_mut().set(addr, LIMIT | TABLE);
                USER_VA
            };
            assert_eq!(fault_kill(setup, READ), KillReason::TableBeyondMemory(level));
        }
    }

    #[test]
    fn addresses_and_cr3s() {
        let (mut mmu, _) = paged();
        for va in [0x0000_8000_0000_0000, 0xFFFF_0000_0000_0000, 0x1234_0000_0000_0000] {
            assert_eq!(mmu.demand_fill(va, READ), FaultOutcome::Kill(KillReason::NonCanonicalAddress));
            assert_eq!(mmu.set_pte(CR3, va, 0), Err(KillReason::NonCanonicalAddress));
            assert_eq!(mmu.invalidate_entry(CR3, va, Level::Pd), Err(KillReason::NonCanonicalAddress));
            assert_eq!(mmu.translate(va, READ), Err(TranslateError::Kill(KillReason::NonCanonicalAddress)));
            assert_eq!(mmu.pin_range(va, 8, true), Err(KillReason::NonCanonicalAddress));
        }
        assert_eq!(
            mmu.pin_range(0x0000_7FFF_FFFF_F000, 0x2000, true),
            Err(KillReason::NonCanonicalAddress),
            "a range running off the lower half"
        );
        assert_eq!(mmu.new_pagetable(CR3 + 8), Err(KillReason::Cr3NotAligned));
        assert_eq!(mmu.new_pagetable(LIMIT), Err(KillReason::Cr3BeyondMemory));
        assert_eq!(mmu.new_pagetable(!0xFFF), Err(KillReason::Cr3BeyondMemory));
    }

    #[test]
    fn announced_ptes_are_checked() {
        let (mut mmu, _) = paged();
        assert_eq!(
            mmu.set_pte(CR3, USER_VA, DATA | PRESENT | 1 << 48),
            Err(KillReason::ReservedBits(Level::Pt))
        );
        assert_eq!(mmu.set_pte(CR3, USER_VA, LIMIT | PRESENT), Err(KillReason::FrameBeyondMemory(Level::Pt)));
        // A non-present PTE may hold anything (a kernel keeps swap entries
        // there).
        assert_eq!(mmu.set_pte(CR3, USER_VA, !PRESENT), Ok(()));
    }

    #[test]
    fn guest_memory_that_refuses() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT);
        mmu.memory_mut().refuse_writes = true;
        assert_eq!(mmu.demand_fill(USER_VA, READ), FaultOutcome::Kill(KillReason::GuestMemoryUnwritable));
        mmu.memory_mut().refuse_writes = false;
        mmu.memory_mut().refuse_reads = true;
        assert_eq!(mmu.demand_fill(USER_VA, READ), FaultOutcome::Kill(KillReason::GuestMemoryUnreadable));
    }

    #[test]
    fn pins_and_boundaries() {
        let (mut mmu, mut b) = paged();
        assert_eq!(mmu.pin_range(KERNEL_VA, 0x1000, true), Err(KillReason::PinNotMapped));
        map(&mut mmu, &mut b, CR3, KERNEL_VA, DATA, PRESENT);
        assert_eq!(mmu.pin_range(KERNEL_VA, 0x1000, true), Err(KillReason::PinNotMapped));
        assert_eq!(mmu.pin_range(KERNEL_VA, 0x1000, false), Ok(()));
        assert_eq!(mmu.pin_range(KERNEL_VA, 0x4001, true), Err(KillReason::PinRangeTooLarge));
        assert_eq!(mmu.pin_range(KERNEL_VA, u64::MAX, true), Err(KillReason::PinRangeTooLarge));
        assert_eq!(mmu.set_kernel_boundary(0x0000_8000_0000_0000), Err(KillReason::BadKernelBoundary));
        assert_eq!(mmu.set_kernel_boundary(0xFFFF_FFFF_FFC0_0000), Err(KillReason::BadKernelBoundary));
    }

    #[test]
    fn a_pool_the_host_shares_away() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT);
        // Only the skeleton fits: even clearing everything cannot make room.
        mmu.pool_mut().cap = 3;
        assert_eq!(mmu.demand_fill(USER_VA, READ), FaultOutcome::Kill(KillReason::ShadowPoolExhausted));
    }

    #[test]
    fn every_reason_has_its_own_words() {
        use KillReason::*;
        let mut all = vec![
            NonCanonicalAddress,
            SwitcherFault,
            SwitcherPteUpdate,
            SwitcherInvalidation,
            SwitcherPin,
            SwitcherTranslate,
            Pml4IndexOutOfRange,
            Cr3NotAligned,
            Cr3BeyondMemory,
            GuestMemoryUnreadable,
            GuestMemoryUnwritable,
            PinNotMapped,
            PinRangeTooLarge,
            BadKernelBoundary,
            ShadowPoolExhausted,
            FrameBeyondMemory(Level::Pt),
            FrameBeyondMemory(Level::Pd),
            FrameBeyondMemory(Level::Pdpt),
        ];
        for level in Level::WALK_ORDER {
            all.push(ReservedBits(level));
        }
        for level in [Level::Pml4, Level::Pdpt, Level::Pd] {
            all.push(TableBeyondMemory(level));
        }
        let words: std::collections::HashSet<String> = all.iter().map(|r| r.to_string()).collect();
        assert_eq!(words.len(), all.len());
        assert_eq!(ReservedBits(Level::Pml4).to_string(), "reserved bits set in guest PML4E");
    }
}

mod large_leaves {
    use super::*;

    /// An MMU past linear mode whose memory the host backs with 2 MiB
    /// pages.
    fn large() -> (Mmu, Builder) {
        let mut mmu = mmu_large(LIMIT, 256);
        mmu.new_pagetable(CR3).unwrap();
        (mmu, Builder::new())
    }

    const REGION: u64 = 0xFFFF_8000_0000_0000;
    const BASE: u64 = 0x40_0000;

    #[test]
    fn a_2_mib_guest_page_is_one_leaf() {
        let (mut mmu, mut b) = large();
        let pde = b.map_large(mmu.memory_mut(), CR3, REGION, Level::Pd, BASE, PRESENT | WRITABLE);
        assert_eq!(mmu.demand_fill(REGION + 0x5_0123, READ), FaultOutcome::Fixed);
        assert_eq!(mmu.counters().large_fills, 1);
        // Every piece is mapped by the one fill, read-only until written.
        for offset in [0, 0x5_0000, 0x1F_F000] {
            let leaf = mmu.shadow_entry(REGION + offset).unwrap();
            assert_eq!(leaf & 0x000F_FFFF_FFFF_F000, HOST_OFFSET + BASE + offset);
            assert_eq!(leaf & (WRITABLE | HUGE), 0, "{leaf:#x}");
        }
        assert_eq!(mmu.demand_fill(REGION + 0x1000, WRITE), FaultOutcome::Fixed);
        assert_ne!(mmu.shadow_entry(REGION + 0x1F_F000).unwrap() & WRITABLE, 0);
        assert_eq!(mmu.memory().get(pde) & (ACCESSED | DIRTY), ACCESSED | DIRTY);
        assert_eq!(mmu.counters().large_fills, 2);
        // The root's tables: PML4, its PDPT and PD, the switcher path's
        // two, and no page table.
        assert_eq!(reachable_frames(&mmu), 5);
    }

    #[test]
    fn one_gib_pages_are_shadowed_in_2_mib_pieces() {
        let (mut mmu, mut b) = large();
        let va = 0x0000_0040_0000_0000;
        b.map_large(mmu.memory_mut(), CR3, va, Level::Pdpt, 0, PRESENT | USER);
        assert_eq!(mmu.demand_fill(va + 0x1234_5678, USER_READ), FaultOutcome::Fixed);
        let leaf = mmu.shadow_entry(va + 0x1220_0000).unwrap();
        assert_eq!(leaf & 0x000F_FFFF_FFFF_F000, HOST_OFFSET + 0x1220_0000);
        assert!(mmu.shadow_entry(va + 0x1240_0000).is_none(), "one 2 MiB piece only");
        assert_eq!(mmu.counters().large_fills, 1);
    }

    #[test]
    fn memory_the_host_backs_with_4k_pages_keeps_4k_leaves() {
        let (mut mmu, mut b) = paged();
        b.map_large(mmu.memory_mut(), CR3, REGION, Level::Pd, BASE, PRESENT | WRITABLE);
        assert_eq!(mmu.demand_fill(REGION, READ), FaultOutcome::Fixed);
        assert_eq!(mmu.counters().large_fills, 0);
        assert!(mmu.shadow_entry(REGION + 0x1000).is_none());
    }

    #[test]
    fn an_update_under_it_drops_the_whole_leaf() {
        let (mut mmu, mut b) = large();
        b.map_large(mmu.memory_mut(), CR3, REGION, Level::Pd, BASE, PRESENT | WRITABLE);
        assert_eq!(mmu.demand_fill(REGION, READ), FaultOutcome::Fixed);
        mmu.set_pte(CR3, REGION + 0x3000, 0).unwrap();
        assert!(mmu.shadow_entry(REGION).is_none());
        assert_eq!(mmu.demand_fill(REGION, READ), FaultOutcome::Fixed);
        mmu.invalidate_entry(CR3, REGION + 0x10_0000, Level::Pt).unwrap();
        assert!(mmu.shadow_entry(REGION + 0x1F_F000).is_none(), "clipped, and still dropped whole");
        assert_eq!(reachable_frames(&mmu), 5);
    }

    #[test]
    fn a_table_in_the_slot_keeps_its_4k_leaves() {
        let (mut mmu, mut b) = large();
        map(&mut mmu, &mut b, CR3, REGION, DATA, PRESENT | WRITABLE);
        assert_eq!(mmu.demand_fill(REGION, READ), FaultOutcome::Fixed);
        // The guest puts a 2 MiB page there behind Umbra's back.
        let pde = b.entry_addr(mmu.memory_mut(), CR3, REGION, Level::Pd, TABLE);
        mmu.memory_mut().set(pde, BASE | PRESENT | WRITABLE | HUGE);
        assert_eq!(mmu.demand_fill(REGION + 0x2000, READ), FaultOutcome::Fixed);
        assert_eq!(mmu.counters().large_fills, 0);
        assert_eq!(
            mmu.shadow_entry(REGION + 0x2000).unwrap() & 0x000F_FFFF_FFFF_F000,
            HOST_OFFSET + BASE + 0x2000
        );
        assert!(mmu.shadow_entry(REGION).is_some(), "the old leaf stays, a stale TLB entry's worth");
    }

    #[test]
    fn a_4k_fill_takes_the_place_of_a_2m_leaf() {
        let (mut mmu, mut b) = large();
        b.map_large(mmu.memory_mut(), CR3, REGION, Level::Pd, BASE, PRESENT | WRITABLE);
        assert_eq!(mmu.demand_fill(REGION, READ), FaultOutcome::Fixed);
        // The guest breaks the page into 4 KiB pages behind Umbra's back,
        // then writes: the read-only 2 MiB leaf faults.
        let pde = b.entry_addr(mmu.memory_mut(), CR3, REGION, Level::Pd, TABLE);
        mmu.memory_mut().set(pde, 0);
        map(&mut mmu, &mut b, CR3, REGION + 0x1000, DATA, PRESENT | WRITABLE);
        assert_eq!(mmu.demand_fill(REGION + 0x1000, WRITE), FaultOutcome::Fixed);
        assert_eq!(mmu.shadow_entry(REGION + 0x1000).unwrap() & 0x000F_FFFF_FFFF_F000, HOST_OFFSET + DATA);
        assert!(mmu.shadow_entry(REGION).is_none(), "the rest of the 2 MiB leaf went with it");
        assert_eq!(reachable_frames(&mmu), 6);
    }

    #[test]
    fn no_leaf_straddles_the_kernel_boundary() {
        let mut mmu = mmu_large(LIMIT, 256);
        mmu.set_kernel_boundary(REGION + 0x10_0000).unwrap();
        mmu.new_pagetable(CR3).unwrap();
        let mut b = Builder::new();
        b.map_large(mmu.memory_mut(), CR3, REGION, Level::Pd, BASE, PRESENT | WRITABLE);
        assert_eq!(mmu.demand_fill(REGION, READ), FaultOutcome::Fixed);
        assert_eq!(mmu.counters().large_fills, 0);
    }

    #[test]
    fn the_pinned_stack_stays_when_the_leaf_around_it_goes() {
        let (mut mmu, mut b) = large();
        b.map_large(mmu.memory_mut(), CR3, REGION, Level::Pd, BASE, PRESENT | WRITABLE);
        mmu.set_kernel_stack(REGION + 0x8000, 0x2000).unwrap();
        assert_eq!(mmu.counters().large_fills, 1);
        // An update elsewhere in the 2 MiB drops the leaf; the stack is
        // pinned again at once.
        mmu.set_pte(CR3, REGION + 0x10_0000, 0).unwrap();
        for va in [REGION + 0x8000, REGION + 0x9000] {
            assert_ne!(mmu.shadow_entry(va).unwrap() & WRITABLE, 0);
        }
        mmu.invalidate_entry(CR3, REGION + 0x18_0000, Level::Pt).unwrap();
        assert!(mmu.shadow_entry(REGION + 0x8000).is_some());
    }
}

mod pinning {
    use super::*;

    #[test]
    fn pinning_faults_the_stack_in_as_a_kernel_write() {
        let (mut mmu, mut b) = paged();
        let pte0 = map(&mut mmu, &mut b, CR3, KERNEL_VA, DATA, PRESENT | WRITABLE);
        map(&mut mmu, &mut b, CR3, KERNEL_VA + 0x1000, DATA + 0x1000, PRESENT | WRITABLE);
        mmu.pin_range(KERNEL_VA + 0x800, 0x1000, true).unwrap();
        for va in [KERNEL_VA, KERNEL_VA + 0x1000] {
            assert_ne!(mmu.shadow_entry(va).unwrap() & WRITABLE, 0);
        }
        assert_ne!(mmu.memory().get(pte0) & DIRTY, 0);
        assert_eq!(mmu.counters().pins, 2);
        // Already pinned: nothing more to do.
        mmu.pin_range(KERNEL_VA, 0x2000, true).unwrap();
        assert_eq!(mmu.counters().pins, 2);
    }

    #[test]
    fn the_kernel_stack_stays_pinned_through_everything() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, KERNEL_VA, DATA, PRESENT | WRITABLE);
        let shared = mmu.memory().get(CR3 + 8 * 256);
        mmu.memory_mut().set(CR3_B + 8 * 256, shared);
        mmu.set_kernel_stack(KERNEL_VA, 0x1000).unwrap();
        assert_eq!(mmu.pinned_range(), Some((KERNEL_VA, 1)));
        assert!(mmu.shadow_entry(KERNEL_VA).is_some());

        mmu.flush_all().unwrap();
        assert!(mmu.shadow_entry(KERNEL_VA).is_some(), "after a full flush");
        mmu.new_pagetable(CR3_B).unwrap();
        assert!(mmu.shadow_entry(KERNEL_VA).is_some(), "in a new root");
        mmu.invalidate_entry(CR3_B, KERNEL_VA, Level::Pml4).unwrap();
        assert!(mmu.shadow_entry(KERNEL_VA).is_some(), "after an invalidation");
        mmu.set_pte(CR3_B, KERNEL_VA, DATA | PRESENT | WRITABLE).unwrap();
        assert!(mmu.shadow_entry(KERNEL_VA).is_some(), "after an update");

        // Unmapping the stack is fatal, as in lguest.
        let pte = b.entry_addr(mmu.memory_mut(), CR3, KERNEL_VA, Level::Pt, TABLE);
        mmu.memory_mut().set(pte, 0);
        assert_eq!(mmu.set_pte(CR3_B, KERNEL_VA, 0), Err(KillReason::PinNotMapped));
    }

    #[test]
    fn a_root_that_holds_the_stack_is_not_searched_again() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, KERNEL_VA, DATA, PRESENT | WRITABLE);
        let shared = mmu.memory().get(CR3 + 8 * 256);
        mmu.memory_mut().set(CR3_B + 8 * 256, shared);
        mmu.set_kernel_stack(KERNEL_VA, 0x1000).unwrap();
        mmu.new_pagetable(CR3_B).unwrap();
        mmu.new_pagetable(CR3).unwrap();
        let pins = mmu.counters().pins;
        // Back and forth: both roots hold the stack, and nothing changed.
        for _ in 0..3 {
            mmu.new_pagetable(CR3_B).unwrap();
            mmu.new_pagetable(CR3).unwrap();
        }
        assert_eq!(mmu.counters().pins, pins);
        // An update drops the stack from every root; each gets it back
        // when it is next current.
        mmu.set_pte(CR3, KERNEL_VA, DATA | PRESENT | WRITABLE).unwrap();
        assert!(mmu.shadow_entry(KERNEL_VA).is_some());
        mmu.new_pagetable(CR3_B).unwrap();
        assert!(mmu.shadow_entry(KERNEL_VA).is_some(), "re-pinned in the other root");
        assert!(mmu.counters().pins > pins);
    }

    #[test]
    fn a_fill_that_would_leave_the_stack_read_only_pins_it_again() {
        let (mut mmu, mut b) = paged();
        let pte = map(&mut mmu, &mut b, CR3, KERNEL_VA, DATA, PRESENT | WRITABLE);
        mmu.set_kernel_stack(KERNEL_VA, 0x1000).unwrap();
        assert_ne!(mmu.shadow_entry(KERNEL_VA).unwrap() & WRITABLE, 0);
        // Behind Umbra's back: user-accessible at every level, not dirty.
        for level in [Level::Pml4, Level::Pdpt, Level::Pd] {
            let entry = b.entry_addr(mmu.memory_mut(), CR3, KERNEL_VA, level, TABLE);
            let value = mmu.memory().get(entry);
            mmu.memory_mut().set(entry, value | USER);
        }
        let value = mmu.memory().get(pte);
        mmu.memory_mut().set(pte, (value | USER) & !DIRTY);
        // A user read faults on the supervisor leaf, and the fill alone
        // would map the page read-only.
        assert_eq!(mmu.demand_fill(KERNEL_VA, USER_READ), FaultOutcome::Fixed);
        assert_ne!(mmu.shadow_entry(KERNEL_VA).unwrap() & WRITABLE, 0, "the stack stays writable");
    }
}

mod translate {
    use super::*;

    #[test]
    fn translates_with_the_access_checked_and_writes_nothing() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | USER);
        let before = mmu.memory().words.clone();
        assert_eq!(mmu.translate(USER_VA + 0xABC, USER_READ), Ok(DATA + 0xABC));
        assert_eq!(mmu.translate(USER_VA + 0xABC, READ), Ok(DATA + 0xABC));
        assert_eq!(mmu.translate(USER_VA, USER_WRITE), Err(TranslateError::PageFault { error_code: 0b111 }));
        assert_eq!(
            mmu.translate(USER_VA + 0x1000, FETCH),
            Err(TranslateError::PageFault { error_code: 0b1_0000 })
        );
        assert_eq!(mmu.memory().words, before);
        assert!(mmu.shadow_entry(USER_VA).is_none(), "the shadow is not touched");
    }

    #[test]
    fn large_pages_translate_to_the_right_byte() {
        let (mut mmu, mut b) = paged();
        b.map_large(mmu.memory_mut(), CR3, 0x4000_0000, Level::Pdpt, 0, PRESENT);
        assert_eq!(mmu.translate(0x4000_0000 + 0x3456_789A, READ), Ok(0x3456_789A));
        b.map_large(mmu.memory_mut(), CR3, 0x60_0000, Level::Pd, 0x20_0000, PRESENT);
        assert_eq!(mmu.translate(0x61_2345, READ), Ok(0x21_2345));
    }

    #[test]
    fn error_codes_round_trip() {
        for code in 0..32u64 {
            let access = Access::from_error_code(code);
            assert_eq!(access.error_code(code & 1 != 0), code & !0b1000);
        }
    }
}

mod memory_pressure {
    use super::*;

    #[test]
    fn a_tiny_pool_slows_the_guest_but_never_kills_it() {
        let mut mmu = mmu_with(LIMIT, MIN_POOL_FRAMES);
        let mut b = Builder::new();
        mmu.new_pagetable(CR3).unwrap();
        let cr3s: Vec<u64> = (0..12).map(|i| 0x1000 * (i + 8)).collect();
        for &cr3 in &cr3s {
            // Every address space shares one kernel stack.
            map(&mut mmu, &mut b, cr3, KERNEL_VA, DATA, PRESENT | WRITABLE);
            map(&mut mmu, &mut b, cr3, KERNEL_VA + 0x1000, DATA, PRESENT | WRITABLE);
            for i in 0..20u64 {
                map(&mut mmu, &mut b, cr3, (i << 30) | 0x1000, DATA, PRESENT | USER);
            }
        }
        for round in 0..3 {
            for &cr3 in &cr3s {
                mmu.new_pagetable(cr3).unwrap();
                if round == 0 {
                    mmu.set_kernel_stack(KERNEL_VA, 0x2000).unwrap();
                }
                for i in 0..20u64 {
                    let va = (i << 30) | 0x1000;
                    assert_eq!(mmu.demand_fill(va, USER_READ), FaultOutcome::Fixed);
                    assert!(mmu.shadow_entry(va).is_some());
                    assert!(mmu.shadow_entry(KERNEL_VA + 0x1000).is_some(), "stack pinned");
                }
                assert!(mmu.pool().in_use() <= MIN_POOL_FRAMES);
                assert_eq!(reachable_frames(&mmu), mmu.pool().in_use());
            }
        }
        let c = mmu.counters();
        assert!(c.pressure_events > 0 && c.pressure_clears > 0 && c.evictions > 0, "{c:?}");
        assert_eq!(c.kills, 0);
        assert!(c.frames_peak <= MIN_POOL_FRAMES as u64);
        let (_, pool) = mmu.into_parts();
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn a_full_release_returns_to_the_baseline() {
        let mut pool = SimPool::new(512);
        let held: Vec<u64> = (0..5).map(|_| pool.alloc_zeroed().unwrap()).collect();
        let mut mem = SimMemory::new(LIMIT);
        let mut b = Builder::new();
        for i in 0..50 {
            b.map(&mut mem, CR3, i << 21, DATA, PRESENT | WRITABLE);
        }
        let mut mmu = ShadowMmu::new(mem, &mut pool).unwrap();
        mmu.new_pagetable(CR3).unwrap();
        for i in 0..50 {
            mmu.demand_fill(i << 21, WRITE);
        }
        mmu.new_pagetable(CR3_B).unwrap();
        assert!(mmu.counters().frames_in_use > 50);
        drop(mmu.into_parts());
        assert_eq!(pool.in_use(), held.len());
    }

    #[test]
    fn setup_refuses_what_cannot_work() {
        let setup = |limit, cap| ShadowMmu::new(SimMemory::new(limit), SimPool::new(cap)).err();
        assert_eq!(setup(LIMIT, MIN_POOL_FRAMES - 1), Some(SetupError::PoolTooSmall));
        assert_eq!(setup(LIMIT + 1, 64), Some(SetupError::LimitNotPageAligned));
        assert_eq!(setup(0, 64), Some(SetupError::LimitNotPageAligned));
        assert_eq!(setup(1 << 47, 64), Some(SetupError::LimitTooLarge));
        assert_eq!(setup(LIMIT, MIN_POOL_FRAMES), None);
    }
}

mod counters {
    use super::*;

    #[test]
    fn counters_count() {
        let (mut mmu, mut b) = paged();
        map(&mut mmu, &mut b, CR3, USER_VA, DATA, PRESENT | USER);
        mmu.demand_fill(USER_VA, USER_READ);
        mmu.demand_fill(USER_VA + 0x1000, USER_READ);
        mmu.demand_fill(0x0000_8000_0000_0000, READ);
        let pte = DATA | PRESENT | USER | ACCESSED;
        map(&mut mmu, &mut b, CR3, USER_VA, 0, pte);
        mmu.set_pte(CR3, USER_VA, pte).unwrap();
        mmu.new_pagetable(CR3_B).unwrap();
        mmu.new_pagetable(CR3).unwrap();
        mmu.flush_user_half().unwrap();
        mmu.flush_all().unwrap();
        let c = mmu.counters();
        assert_eq!((c.fills, c.reflects, c.kills, c.prefills), (1, 1, 1, 1));
        assert_eq!((c.root_hits, c.root_misses), (1, 2));
        assert_eq!((c.user_flushes, c.full_flushes), (1, 1));
        assert_eq!(c.frames_in_use, mmu.pool().in_use() as u64);
        assert!(c.frames_peak >= c.frames_in_use);
    }
}
