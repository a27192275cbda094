//! # How much memory each guest gets
//!
//! `guest_mem=` says it outright. Without it a guest gets 64 MiB, or less
//! when the machine cannot spare that much: a VM of 64 MiB has room for
//! Umbra and a guest of about 56, and refusing to run there would make
//! the default the first thing a new user has to change. With
//! `guests=N`, the guests that run at once share what there is, each
//! getting the same, down to a floor; below the floor fewer run at once,
//! and the rest wait their turn.
//!
//! Guest memory is one run of frames aligned to 2 MiB, so what decides is
//! not the free total alone but how many such runs fit in the free
//! blocks of 2 MiB ([`FreeMemory`]). Besides the guests' own memory, each
//! guest at once keeps [`SHADOW_RESERVE`] free for its shadow page
//! tables, which are taken as it runs, and Umbra keeps [`HOST_RESERVE`].
//!
//! [`plan`] decides; its [`Display`](core::fmt::Display) is the one line
//! the boot prints, which says where the size came from.

use core::fmt;

use crate::cmdline::MIN_GUEST_MEM;

const MIB: u64 = 1 << 20;
/// Sizes chosen here are whole 2 MiB blocks: guest memory is aligned to
/// 2 MiB, and the guest kernel maps it with 2 MiB pages.
pub const BLOCK: u64 = 2 * MIB;
/// The least a guest gets when guests share the memory: the smallest
/// `guest_mem=`, which still runs the default guest's showcase.
pub const SHARED_FLOOR: u64 = MIN_GUEST_MEM;
/// Kept free for each guest at once, for its shadow page tables (the
/// showcase's peak is under half a MiB).
pub const SHADOW_RESERVE: u64 = 2 * MIB;
/// Kept free for Umbra itself.
pub const HOST_RESERVE: u64 = 2 * MIB;

/// The frame pool, as far as placing guests goes.
#[derive(Clone, Copy, Debug)]
pub struct FreeMemory<'a> {
    /// Free bytes in all.
    pub bytes: u64,
    /// The runs of wholly free 2 MiB blocks, as their lengths in blocks.
    pub block_runs: &'a [u64],
}

impl FreeMemory<'_> {
    /// Can `count` guests of `size` bytes (a whole number of blocks) each
    /// have their memory at once, with the reserves left over?
    fn fits(&self, size: u64, count: usize) -> bool {
        let blocks = (size / BLOCK).max(1);
        let places: u64 = self.block_runs.iter().map(|run| run / blocks).sum();
        let needed =
            (count as u64).saturating_mul(size.saturating_add(SHADOW_RESERVE)).saturating_add(HOST_RESERVE);
        places >= count as u64 && self.bytes >= needed
    }
}

/// Where a guest's memory size came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `guest_mem=`.
    Given,
    /// The default fits.
    Default,
    /// One guest, and less than the default is all the machine can spare.
    Spare,
    /// Several guests at once, sharing what there is.
    Shared,
    /// Several guests, and not even the floor each for all of them at
    /// once: `at_once` of the `wanted` run together.
    Floor { wanted: usize },
}

/// Each guest's memory, and how many guests run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestMemPlan {
    pub size: u64,
    pub at_once: usize,
    /// The default size, the most a guest gets without `guest_mem=`.
    pub default: u64,
    pub source: Source,
}

/// Each guest's memory: `given` (from `guest_mem=`) as it is, otherwise
/// the largest size up to `default` that lets `at_once` guests run
/// together in `free`, down to [`SHARED_FLOOR`]; below it, the floor and
/// fewer guests at once. `None` when not even one guest of the floor fits.
pub fn plan(given: Option<u64>, default: u64, at_once: usize, free: &FreeMemory) -> Option<GuestMemPlan> {
    let at_once = at_once.max(1);
    if let Some(size) = given {
        return Some(GuestMemPlan { size, at_once, default, source: Source::Given });
    }
    let largest = (default / BLOCK * BLOCK).max(SHARED_FLOOR);
    let sizes = (SHARED_FLOOR / BLOCK..=largest / BLOCK).rev().map(|blocks| blocks * BLOCK);
    for size in sizes {
        if free.fits(size, at_once) {
            let source = match (size == largest, at_once) {
                (true, _) => Source::Default,
                (false, 1) => Source::Spare,
                (false, _) => Source::Shared,
            };
            return Some(GuestMemPlan { size, at_once, default, source });
        }
    }
    let fewer = (1..at_once).rev().find(|&count| free.fits(SHARED_FLOOR, count))?;
    Some(GuestMemPlan {
        size: SHARED_FLOOR,
        at_once: fewer,
        default,
        source: Source::Floor { wanted: at_once },
    })
}

impl GuestMemPlan {
    /// Is the line worth a warning? Only when guests must wait for room.
    pub fn is_warning(&self) -> bool {
        matches!(self.source, Source::Floor { .. })
    }

    /// Where the size came from, for an error about it: `guest_mem=64M`
    /// when it was given.
    pub fn origin(&self) -> Origin {
        Origin(*self)
    }
}

/// A size as `guest_mem=` takes it: `64M`, `1G`, `4100K`.
#[derive(Clone, Copy, Debug)]
pub struct SizeWord(pub u64);

impl fmt::Display for SizeWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
            if self.0 != 0 && self.0.trailing_zeros() >= shift {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A size for people: `64 MiB`, or KiB when it is not whole MiB.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(MIB) {
            write!(f, "{} MiB", self.0 / MIB)
        } else {
            write!(f, "{} KiB", self.0 >> 10)
        }
    }
}

/// See [`GuestMemPlan::origin`].
pub struct Origin(GuestMemPlan);

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.source {
            Source::Given => write!(f, "guest_mem={}", SizeWord(self.0.size)),
            _ => write!(f, "no guest_mem=: the size this machine seemed to have room for"),
        }
    }
}

impl fmt::Display for GuestMemPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (size, default, at_once) = (Size(self.size), Size(self.default), self.at_once);
        let each = if at_once > 1 { " each" } else { "" };
        match self.source {
            Source::Given => write!(f, "guest memory: {size}{each} (guest_mem={})", SizeWord(self.size)),
            Source::Default if at_once > 1 => {
                write!(f, "guest memory: {size} each, the default, for {at_once} guests at once")
            }
            Source::Default => write!(f, "guest memory: {size}, the default"),
            Source::Spare => {
                write!(
                    f,
                    "guest memory: {size}, what this machine can spare (less than the default {default})"
                )
            }
            Source::Shared => write!(
                f,
                "guest memory: {size} each, so that {at_once} guests fit at once (less than the default {default})"
            ),
            Source::Floor { wanted } => write!(
                f,
                "guest memory: {size} each, the least; this machine has room for {at_once} guests at once, \
                 not {wanted}: the others wait their turn"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;

    use super::*;

    const DEFAULT: u64 = 64 * MIB;

    /// A pool with one run of `blocks` free blocks and nothing else free.
    fn one_run(blocks: &[u64]) -> (u64, &[u64]) {
        (blocks.iter().sum::<u64>() * BLOCK, blocks)
    }

    fn planned(given: Option<u64>, at_once: usize, runs: &[u64]) -> Option<GuestMemPlan> {
        let (bytes, block_runs) = one_run(runs);
        plan(given, DEFAULT, at_once, &FreeMemory { bytes, block_runs })
    }

    #[test]
    fn the_default_when_it_fits() {
        // 64 MiB and the two reserves: 34 blocks.
        let plan = planned(None, 1, &[34]).unwrap();
        assert_eq!((plan.size, plan.at_once, plan.source), (DEFAULT, 1, Source::Default));
        assert_eq!(format!("{plan}"), "guest memory: 64 MiB, the default");
        let plan = planned(None, 3, &[200]).unwrap();
        assert_eq!((plan.size, plan.source), (DEFAULT, Source::Default));
        assert_eq!(format!("{plan}"), "guest memory: 64 MiB each, the default, for 3 guests at once");
    }

    #[test]
    fn what_a_small_machine_can_spare() {
        // A 64 MiB VM: about 60 MiB free in 2 MiB blocks.
        let plan = planned(None, 1, &[30]).unwrap();
        assert_eq!((plan.size, plan.source), (56 * MIB, Source::Spare));
        assert_eq!(
            format!("{plan}"),
            "guest memory: 56 MiB, what this machine can spare (less than the default 64 MiB)"
        );
        // A 32 MiB one.
        assert_eq!(planned(None, 1, &[14]).unwrap().size, 24 * MIB);
    }

    #[test]
    fn several_guests_share() {
        // 4 guests in 100 MiB: 2 for Umbra, 4 x (22 + 2).
        let plan = planned(None, 4, &[50]).unwrap();
        assert_eq!((plan.size, plan.at_once, plan.source), (22 * MIB, 4, Source::Shared));
        assert_eq!(
            format!("{plan}"),
            "guest memory: 22 MiB each, so that 4 guests fit at once (less than the default 64 MiB)"
        );
    }

    #[test]
    fn runs_not_totals_decide() {
        // Plenty free in all, but in runs of three blocks: 6 MiB each.
        let plan = planned(None, 2, &[3, 3, 3, 3, 3, 3, 3, 3]).unwrap();
        assert_eq!((plan.size, plan.source), (6 * MIB, Source::Shared));
        // One guest, one long run among short ones.
        assert_eq!(planned(None, 1, &[3, 20, 3]).unwrap().size, 40 * MIB);
    }

    #[test]
    fn under_the_floor_fewer_run_at_once() {
        // 8 guests want 8 x (4 + 2) + 2 = 50 MiB; 32 MiB has room for 5.
        let plan = planned(None, 8, &[16]).unwrap();
        assert_eq!((plan.size, plan.at_once, plan.source), (SHARED_FLOOR, 5, Source::Floor { wanted: 8 }));
        assert!(plan.is_warning());
        let line = format!("{plan}");
        assert_eq!(
            line,
            "guest memory: 4 MiB each, the least; this machine has room for 5 guests at once, not 8: \
             the others wait their turn"
        );
        assert!(!line.contains('\n'));
        // Not even one.
        assert_eq!(planned(None, 1, &[3]), None);
        assert_eq!(planned(None, 4, &[]), None);
    }

    #[test]
    fn given_is_taken_as_it_is() {
        let plan = planned(Some(16 * MIB), 2, &[1]).unwrap();
        assert_eq!((plan.size, plan.at_once, plan.source), (16 * MIB, 2, Source::Given));
        assert_eq!(format!("{plan}"), "guest memory: 16 MiB each (guest_mem=16M)");
        assert_eq!(format!("{}", plan.origin()), "guest_mem=16M");
        let odd = planned(Some(65 * MIB), 1, &[100]).unwrap();
        assert_eq!(format!("{odd}"), "guest memory: 65 MiB (guest_mem=65M)");
        assert!(!odd.is_warning());
    }

    #[test]
    fn size_words() {
        assert_eq!(format!("{}", SizeWord(64 * MIB)), "64M");
        assert_eq!(format!("{}", SizeWord(2 << 30)), "2G");
        assert_eq!(format!("{}", SizeWord(4100 << 10)), "4100K");
        assert_eq!(format!("{}", SizeWord(4096)), "4K");
        assert_eq!(format!("{}", SizeWord(0)), "0");
    }
}
