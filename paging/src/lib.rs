//! # paging: Umbra's shadow MMU
//!
//! The guest writes its own page tables, but the CPU never walks them: it
//! walks *shadow* tables that this crate builds from the guest's, checking
//! every entry on the way. The guest's tables speak of guest-physical
//! memory and are not to be trusted; the shadow tables speak of host-physical
//! memory and are ours. Between the two sits this crate.
//!
//! The idea is lguest's: fill the shadow lazily, one page per fault, keep a
//! few shadow roots cached so a context switch is cheap, let the guest tell
//! us when it changes an entry, and keep the top of every address space for
//! the switcher. lguest did this for two-level 32-bit tables; this crate
//! does it for four-level x86_64 tables and adds large guest pages, LRU root
//! eviction, survival under memory pressure and a translate service.
//!
//! The tour, in the order things happen to a guest:
//!
//! * [`address`] and [`entry`]: the shape of an x86_64 address and of a
//!   page-table entry, the switcher region, what is reserved.
//! * [`memory`]: the two small traits through which the crate touches the
//!   world, guest memory and a pool of shadow frames.
//! * [`outcome`]: what an access asks for and what an operation answers,
//!   including every reason to kill a guest.
//! * `walk`: reading the guest's tables the way the CPU would.
//! * `shadow`: the [`ShadowMmu`] itself, its cache of roots, and the helpers
//!   that build and tear down shadow tables.
//! * `fill`: the demand fault, linear mode and pinning.
//! * `switch`: changing page tables and mapping the switcher.
//! * `update`: the updates the guest announces, and flushes.
//! * `translate`: guest-virtual to guest-physical for the hypervisor.
//! * [`counters`]: what the hypervisor prints and the benchmarks read.
//!
//! Nothing here panics on anything the guest controls: every bad value ends
//! in [`FaultOutcome::Kill`] or `Err(KillReason)`, with a reason that says
//! precisely what the guest did.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod counters;
pub mod entry;
pub mod memory;
pub mod outcome;

mod fill;
mod shadow;
mod switch;
mod translate;
mod update;
mod walk;

pub use address::{KERNEL_HALF_START, Level, SWITCHER_BASE, is_canonical};
pub use counters::Counters;
pub use fill::PREFETCH_PAGES;
pub use memory::{FramePool, GuestMemory};
pub use outcome::{Access, FaultOutcome, KillReason, Rights, SetupError, TranslateError};
pub use shadow::{MAX_PINNED_PAGES, MIN_POOL_FRAMES, ROOT_CACHE_SIZE, RootInfo, ShadowMmu};
pub use switch::SwitcherEntries;
