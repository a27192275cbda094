//! # A virtual CPU: what happens after every exit
//!
//! The switcher brings the CPU back to the host with the guest's whole
//! register set and the number of the trap that ended its run. This module
//! decides what that trap means, lguest's `run_guest` loop body:
//!
//! - a page fault is the shadow MMU's business: fill the shadow and resume,
//!   or, when the guest's own tables forbid the access, reflect it to the
//!   guest's handler (see [`crate::traps`]);
//! - an invalid-opcode trap from ring 1 at a `ud2` is a hypercall (see
//!   [`umbra_abi`]); any other invalid opcode is the guest's own fault,
//!   and so is a `syscall` from user mode that a nested KVM ran instead
//!   of raising #UD (delivered as that #UD: [`crate::traps`]);
//! - the guest's other exceptions go to its own handlers; an `int n` the
//!   CPU refused to run directly is delivered by hand;
//! - an interrupt that arrived while the guest ran is the host's;
//! - a trap the guest has no handler for, or one that no guest may cause
//!   (#DF, #MC, a bad TSS), kills it, with the trap's name.
//!
//! The guest's registers, its memory and the host's console are reached
//! through traits, so everything here runs, and is tested, on the host.

use core::cell::Cell;
use core::fmt;
use core::mem::offset_of;

use paging::{
    Access, Counters, FaultOutcome, FramePool, GuestMemory, KillReason, Level, ShadowMmu, SwitcherEntries,
    TranslateError,
};
use switcher_asm::layout::{self, GuestRegs, IDT_PAGE, PAGE_SIZE, STATE_PAGE, SWITCHER_BASE};
use umbra_abi::{self as abi, AsyncCall, SharedPage};

use crate::traps::{GuestGate, UserSyscall};

/// Guest memory as the hypervisor reaches it, with byte copies on top of
/// the shadow MMU's word access.
pub trait GuestRam: GuestMemory {
    /// Copy from guest-physical `gpa`; false if any byte is outside.
    fn read_bytes(&self, gpa: u64, buf: &mut [u8]) -> bool;
    /// Copy to guest-physical `gpa`; false if any byte is outside.
    fn write_bytes(&mut self, gpa: u64, bytes: &[u8]) -> bool;
}

/// What the host offers a guest besides memory.
pub trait Host {
    /// Print the guest's console output.
    fn console_write(&mut self, bytes: &[u8]);
    /// Nanoseconds since boot.
    fn now_ns(&self) -> u64;
    /// The TSC frequency.
    fn tsc_khz(&self) -> u64;
}

/// Why a guest was killed: each names the rule it broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kill {
    /// The shadow MMU refused something.
    Paging(KillReason),
    /// A write to the switcher's read-only state.
    WroteSwitcherState {
        addr: u64,
        rip: u64,
    },
    /// Any other access to the switcher region.
    TouchedSwitcher {
        addr: u64,
        rip: u64,
    },
    /// A page fault the guest's own tables cause (reflection comes later).
    UnhandledPageFault {
        addr: u64,
        error_code: u64,
        rip: u64,
    },
    /// An exception the host does not handle yet.
    UnhandledTrap {
        vector: u8,
        error_code: u64,
        rip: u64,
    },
    UnknownHypercall {
        number: u64,
    },
    FirstCallNotInit {
        number: u64,
    },
    InitTwice,
    /// INIT's shared page is not page-aligned, or not the guest's memory.
    BadSharedPage {
        addr: u64,
    },
    /// A pointer argument that the guest's own tables do not allow.
    BadPointer {
        call: u64,
        addr: u64,
        len: u64,
    },
    /// A length beyond the call's limit.
    TooLong {
        call: u64,
        len: u64,
        max: u64,
    },
    /// An async ring entry with a call that cannot be queued.
    BadAsyncCall {
        slot: usize,
        number: u64,
    },
    BadIdtEntry {
        vector: u64,
        handler: u64,
        why: &'static str,
    },
    BadStack {
        top: u64,
        len: u64,
        why: &'static str,
    },
    /// Delivering a trap faulted: the guest's stack is not writable.
    DoubleFault {
        vector: u8,
        stack: u64,
    },
    /// A trap for which the guest installed no handler.
    NoHandler {
        vector: u8,
        error_code: u64,
        rip: u64,
    },
    /// A trap from user mode before SET_STACK named a kernel stack.
    NoKernelStack {
        vector: u8,
    },
    /// SET_SYSCALL_ENTRY with a handler no guest kernel may have.
    BadSyscallEntry {
        handler: u64,
        why: &'static str,
    },
    /// `syscall` from user mode to a registered entry, before SET_STACK.
    SyscallBeforeStack,
    /// Delivering a `syscall` by hand faulted: the guest kernel's stack
    /// is not writable.
    SyscallStackFault {
        stack: u64,
    },
    /// HALT with nothing that could ever wake the guest.
    HaltForever,
    /// SET_FS_BASE with an address no CPU could use as a base.
    NonCanonicalFsBase {
        base: u64,
    },
    /// The shared page's console input ring says the guest read bytes
    /// Umbra never wrote.
    BadInputRing {
        written: u32,
        read: u32,
    },
}

fn trap_name(vector: u8) -> &'static str {
    match vector {
        0 => "divide error (#DE)",
        1 => "debug trap (#DB)",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "bound range (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack fault (#SS)",
        13 => "general protection fault (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 error (#MF)",
        17 => "alignment check (#AC)",
        18 => "machine check (#MC)",
        19 => "SIMD error (#XM)",
        32..=255 => "interrupt",
        _ => "exception",
    }
}

impl fmt::Display for Kill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Kill::Paging(reason) => write!(f, "{reason}"),
            Kill::WroteSwitcherState { addr, rip } => {
                write!(f, "wrote the switcher's read-only state at {addr:#x} (rip {rip:#x})")
            }
            Kill::TouchedSwitcher { addr, rip } => {
                write!(f, "touched the switcher region at {addr:#x} (rip {rip:#x})")
            }
            Kill::UnhandledPageFault { addr, error_code, rip } => {
                write!(f, "unhandled page fault at {addr:#x} (error code {error_code:#x}, rip {rip:#x})")
            }
            Kill::UnhandledTrap { vector, error_code, rip } => write!(
                f,
                "{} (vector {vector}, error code {error_code:#x}) at rip {rip:#x}",
                trap_name(vector)
            ),
            Kill::UnknownHypercall { number } => write!(f, "unknown hypercall {number:#x}"),
            Kill::FirstCallNotInit { number } => {
                write!(f, "first hypercall was {} ({number:#x}), not INIT", abi::call_name(number))
            }
            Kill::InitTwice => write!(f, "INIT called twice"),
            Kill::BadSharedPage { addr } => {
                write!(f, "INIT: shared page {addr:#x} is not a page-aligned page of guest memory")
            }
            Kill::BadPointer { call, addr, len } => {
                write!(f, "{}: buffer {addr:#x} (+{len}) is not the guest's memory", abi::call_name(call))
            }
            Kill::TooLong { call, len, max } => {
                write!(f, "{}: length {len} is over the limit of {max}", abi::call_name(call))
            }
            Kill::BadAsyncCall { slot, number } => {
                write!(f, "async ring slot {slot} holds call {number:#x}, which cannot be queued")
            }
            Kill::BadIdtEntry { vector, handler, why } => {
                write!(f, "LOAD_IDT_ENTRY: vector {vector}, handler {handler:#x}: {why}")
            }
            Kill::BadStack { top, len, why } => write!(f, "SET_STACK: {len} bytes below {top:#x}: {why}"),
            Kill::DoubleFault { vector, stack } => write!(
                f,
                "double fault while delivering {}: the guest stack at {stack:#x} is not writable",
                trap_name(vector)
            ),
            Kill::NoHandler { vector, error_code, rip } => write!(
                f,
                "{} (vector {vector}, error code {error_code:#x}) at rip {rip:#x}, and the guest has no handler",
                trap_name(vector)
            ),
            Kill::NoKernelStack { vector } => {
                write!(f, "{} from user mode before SET_STACK", trap_name(vector))
            }
            Kill::BadSyscallEntry { handler, why } => {
                write!(f, "SET_SYSCALL_ENTRY: handler {handler:#x}: {why}")
            }
            Kill::SyscallBeforeStack => write!(f, "syscall from user mode before SET_STACK"),
            Kill::SyscallStackFault { stack } => {
                write!(
                    f,
                    "double fault while delivering syscall: the guest stack at {stack:#x} is not writable"
                )
            }
            Kill::HaltForever => {
                write!(f, "HALT with virtual interrupts off or no clock armed: it would never wake")
            }
            Kill::NonCanonicalFsBase { base } => {
                write!(f, "SET_FS_BASE: {base:#x} is not a canonical address")
            }
            Kill::BadInputRing { written, read } => write!(
                f,
                "console input ring: input_read {read} is more than {} bytes behind input_written {written}, or ahead of it",
                abi::CONSOLE_INPUT_SIZE
            ),
        }
    }
}

/// What the run loop does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Enter the guest again.
    Resume,
    /// The guest asked to stop with this (raw) status.
    Shutdown { status: u64 },
    /// The guest broke a rule.
    Kill(Kill),
    /// The exit came from ring 0: the switcher itself faulted. A host bug.
    SwitcherFault,
    /// HALT: run on only when [`Vcpu::halt_state`] says so.
    Halt,
}

/// Counts the statistics block prints at exit.
#[derive(Clone, Debug)]
pub struct Stats {
    pub exits_by_vector: [u64; 256],
    /// The sum of `exits_by_vector`, kept as it grows for the shared page.
    pub exits: u64,
    pub hypercalls: [u64; abi::CALL_COUNT as usize + 1],
    pub async_calls: u64,
    /// Traps and interrupts delivered to the guest's handlers, by vector.
    pub delivered: [u64; 256],
    /// `int n` from user mode that the host delivered by hand.
    pub emulated_software_interrupts: u64,
    /// `syscall`s a nested KVM ran instead of raising #UD, delivered as
    /// the #UD.
    pub stray_syscalls: u64,
    /// `syscall`s from user mode to the guest's syscall entry that the
    /// host delivered itself, because they did not take the direct path:
    /// a KVM that does not run it, or a trap that interrupted it.
    pub syscalls_by_host: u64,
    /// Console input bytes put in the guest's input ring.
    pub console_input: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            exits_by_vector: [0; 256],
            exits: 0,
            hypercalls: [0; abi::CALL_COUNT as usize + 1],
            async_calls: 0,
            delivered: [0; 256],
            emulated_software_interrupts: 0,
            stray_syscalls: 0,
            syscalls_by_host: 0,
            console_input: 0,
        }
    }
}

/// The guest's registers as it should start: ring 1, linear mode,
/// interrupts on, `rdi` and `rsp` at the boot-info block.
pub fn initial_regs(entry: u64, boot_info: u64) -> GuestRegs {
    GuestRegs {
        rip: entry,
        cs: u64::from(abi::GUEST_KERNEL_CS),
        rflags: RFLAGS_FIXED,
        rsp: boot_info,
        ss: u64::from(abi::GUEST_KERNEL_SS),
        rdi: boot_info,
        ..GuestRegs::default()
    }
}

/// Bit 1 of RFLAGS is always set; IF is always on in the real flags (the
/// guest's own interrupt flag is virtual).
const RFLAGS_FIXED: u64 = 0x202;
/// Flags the guest may own: CF, PF, AF, ZF, SF, TF, DF, OF, AC, ID.
const RFLAGS_GUEST: u64 =
    0x0001 | 0x0004 | 0x0010 | 0x0040 | 0x0080 | 0x0100 | 0x0400 | 0x0800 | 0x4_0000 | 0x20_0000;

/// Make the registers safe to enter with, whatever the guest or an exit
/// left in them: ring 1 or 3 only, with matching stack segment, no I/O
/// privilege, interrupts on, no virtual-8086 or nested-task games.
pub fn sanitize(regs: &mut GuestRegs) {
    if regs.cs & 3 == 3 {
        regs.cs = u64::from(abi::GUEST_USER_CS);
        regs.ss = u64::from(abi::GUEST_USER_SS);
    } else {
        regs.cs = u64::from(abi::GUEST_KERNEL_CS);
        regs.ss = u64::from(abi::GUEST_KERNEL_SS);
    }
    regs.rflags = (regs.rflags & RFLAGS_GUEST) | RFLAGS_FIXED;
}

const ASYNC_RING_OFFSET: u64 = offset_of!(SharedPage, async_ring) as u64;
const ASYNC_CALL_SIZE: u64 = core::mem::size_of::<AsyncCall>() as u64;

/// The guest-physical address of async ring slot `slot`, in the shared
/// page at `page`.
fn async_slot(page: u64, slot: usize) -> u64 {
    page + ASYNC_RING_OFFSET + slot as u64 * ASYNC_CALL_SIZE
}

/// One guest's CPU: its shadow MMU and what it told us at INIT.
///
/// The shadow MMU is the vCPU's own: the run loop reaches it only through
/// the few methods below (the root to enter on, the counters, the memory
/// back at the end), so every change to the guest's shadow tables goes
/// through what an exit means.
pub struct Vcpu<M: GuestRam, P: FramePool> {
    pub(crate) mmu: ShadowMmu<M, P>,
    /// Guest-physical address of the shared page, once INIT named it.
    pub(crate) shared_page: Option<u64>,
    /// Our own position in the async ring; the guest's idea is not trusted.
    async_cursor: usize,
    pub stats: Stats,
    /// The guest's own IDT, from LOAD_IDT_ENTRY.
    pub(crate) idt: [GuestGate; 256],
    /// From SET_STACK: where traps from user mode land.
    pub(crate) kernel_stack_top: Option<u64>,
    /// From SET_SYSCALL_ENTRY: where `syscall` from user mode enters the
    /// guest kernel.
    pub(crate) syscall_entry: Option<u64>,
    /// Interrupts raised and not yet delivered, one bit per vector.
    pub(crate) pending: [u64; 4],
    /// What the shared page's `irq_pending` was last given.
    pub(crate) pending_mirrored: [u64; 4],
    /// SET_CLOCKEVENT's deadline, in the host's nanoseconds.
    pub(crate) clock_deadline_ns: Option<u64>,
    /// What of the switcher pages' guest state changed since the run loop
    /// last installed it.
    pub(crate) switcher_changed: SwitcherChanges,
    /// Console input bytes written into the shared page's ring since INIT
    /// (wrapping): Umbra's own count, never the guest's copy.
    input_written: u32,
    /// The guest's FS base: what SET_FS_BASE set, or what the CPU held
    /// when the guest last left it. The run loop puts it into the CPU.
    pub(crate) fs_base: u64,
    /// SET_FS_BASE changed `fs_base` since the run loop last applied it.
    pub(crate) fs_base_changed: bool,
    /// The last instruction fetch checked, kept for the next.
    fetch_cache: [Cell<Option<FetchCache>>; FETCH_CACHE_ENTRIES],
}

/// What must be rewritten in this CPU's switcher pages before the next
/// entry. They are apart because they cost apart: the kernel stack is
/// two words (TSS.RSP1, and the direct syscall path's stack) and changes
/// at every context switch of the guest's processes; the direct gates are
/// the real IDT's 224 upper gates, and change when the guest installs a
/// handler; the syscall entry is a word and EFER.SCE, once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitcherChanges {
    pub kernel_stack: bool,
    pub gates: bool,
    pub syscall: bool,
}

impl SwitcherChanges {
    pub fn any(self) -> bool {
        self.kernel_stack || self.gates || self.syscall
    }
}

/// How many answers the hypercall check keeps: one per shadow root slot,
/// so that a process switch (whose hypercall comes from the next
/// process's root) finds its answer too, at the first look.
const FETCH_CACHE_ENTRIES: usize = paging::ROOT_CACHE_SIZE;

/// An instruction fetch the host checked for the guest (see
/// `Vcpu::fetch_address`): the page, the ring, the shadow leaf that mapped
/// it then, and the guest-physical page the guest's tables named.
#[derive(Clone, Copy, Debug)]
struct FetchCache {
    page_va: u64,
    user: bool,
    leaf: u64,
    gpa_page: u64,
    /// The shadow root and leaf epoch the leaf was last seen under.
    root: u64,
    epoch: u64,
}

fn resume_or_kill(result: Result<(), Kill>) -> Next {
    match result {
        Ok(()) => Next::Resume,
        Err(kill) => Next::Kill(kill),
    }
}

/// A call's result, when it does not kill.
enum Done {
    Value(u64),
    Shutdown(u64),
    Halt,
}

impl<M: GuestRam, P: FramePool> Vcpu<M, P> {
    pub fn new(mmu: ShadowMmu<M, P>) -> Self {
        Vcpu {
            mmu,
            shared_page: None,
            async_cursor: 0,
            stats: Stats::default(),
            idt: [GuestGate::default(); 256],
            kernel_stack_top: None,
            syscall_entry: None,
            pending: [0; 4],
            pending_mirrored: [0; 4],
            clock_deadline_ns: None,
            switcher_changed: SwitcherChanges::default(),
            input_written: 0,
            fs_base: 0,
            fs_base_changed: false,
            fetch_cache: [const { Cell::new(None) }; FETCH_CACHE_ENTRIES],
        }
    }

    /// The guest's FS base, as of its last SET_FS_BASE or its last turn.
    pub fn fs_base(&self) -> u64 {
        self.fs_base
    }

    /// Give the current shadow root this CPU's switcher mapping (`cpu`'s
    /// guest view, `entries`); returns the root to enter on.
    pub fn prepare_switcher(&mut self, cpu: u32, entries: SwitcherEntries) -> u64 {
        self.mmu.prepare_switcher(cpu, entries);
        self.mmu.current_root()
    }

    /// What the shadow MMU has done so far, for the statistics.
    pub fn counters(&self) -> Counters {
        self.mmu.counters()
    }

    /// The guest's memory, as the host reaches it.
    pub fn memory(&self) -> &M {
        self.mmu.memory()
    }

    /// The guest's memory, to write, as the loader or a test does.
    pub fn memory_mut(&mut self) -> &mut M {
        self.mmu.memory_mut()
    }

    /// The shadow leaf for `va` in the current root, if one is present.
    pub fn shadow_entry(&self, va: u64) -> Option<u64> {
        self.mmu.shadow_entry(va)
    }

    /// Take the vCPU apart once its guest has finished: its memory and
    /// its shadow frames go back to the host, its counts to the
    /// statistics.
    pub fn into_parts(self) -> (M, P, Stats) {
        let (memory, pool) = self.mmu.into_parts();
        (memory, pool, self.stats)
    }

    /// Decide what a trap means. `cr2` matters only for page faults.
    pub fn handle_exit(&mut self, regs: &mut GuestRegs, cr2: u64, host: &mut impl Host) -> Next {
        let vector = (regs.vector & 0xff) as u8;
        self.stats.exits_by_vector[vector as usize] += 1;
        self.stats.exits += 1;
        // The commonest exit by far, so the first looked for: a hypercall,
        // `ud2` below ring 3.
        if vector == 6 && matches!(regs.cs & 3, 1 | 2) && self.is_hypercall_instruction(regs.rip) {
            return self.hypercall(regs, host);
        }
        if regs.cs & 3 == 0 {
            // A trap that interrupted the direct syscall path, at ring 0
            // on its way from user mode to the guest kernel (a debug trap
            // a `mov ss` left pending, a fault on the guest kernel's
            // stack): the call is made again, by hand. The machine has
            // put the user's stack pointer back in `rsp`; `rcx` and `r11`
            // are as `syscall` left them, since the path changes neither.
            if layout::in_syscall_path(regs.rip) {
                let user = UserSyscall { rip_after: regs.rcx, rflags: regs.r11, rsp: regs.rsp };
                return resume_or_kill(self.syscall_by_host(regs, user));
            }
            return Next::SwitcherFault;
        }
        let from_user = regs.cs & 3 == 3;
        let result = match vector {
            // A `syscall` this machine's nested KVM ran at ring 3 to where
            // LSTAR points: what the direct path would have done, or the
            // #UD it owed.
            14 if from_user && self.is_stray_syscall(regs, cr2) => self.deliver_stray_syscall(regs),
            // `syscall` exited as a #UD (the direct path was closed) while
            // the guest has a syscall entry: no kernel stack yet.
            6 if from_user && self.syscall_entry.is_some() && self.is_syscall_at(regs.rip) => {
                let user = UserSyscall { rip_after: regs.rip + 2, rflags: regs.rflags, rsp: regs.rsp };
                self.syscall_by_host(regs, user)
            }
            14 => return self.page_fault(regs, cr2),
            // `int n` the CPU would not run directly: as #GP where the gate
            // is the host's, as #UD from ring 3 on some nested KVMs.
            6 | 13 if from_user => match self.emulate_software_interrupt(regs) {
                Ok(true) => Ok(()),
                Ok(false) => self.deliver_exception(regs, vector),
                Err(kill) => Err(kill),
            },
            13 => self.deliver_kernel_general_protection(regs),
            // The guest's own business, for its own handlers.
            0 | 1 | 3..=7 | 16 | 17 | 19 => self.deliver_exception(regs, vector),
            // An interrupt (or NMI) that arrived while the guest ran is the
            // host's: its timer, which the run loop has acknowledged.
            2 | 32..=255 => Ok(()),
            // No guest may cause these: #DF, a bad TSS or segment, #MC.
            _ => Err(Kill::UnhandledTrap { vector, error_code: regs.error_code, rip: regs.rip }),
        };
        resume_or_kill(result)
    }

    /// Is the instruction at `rip` really `ud2`? Any other invalid opcode
    /// at ring 1 (an instruction this CPU lacks, say) is the guest's own
    /// fault, not a request.
    fn is_hypercall_instruction(&self, rip: u64) -> bool {
        self.instruction_bytes(rip, false) == Some(abi::HYPERCALL_INSTRUCTION)
    }

    /// The first two bytes of the instruction at `rip`, fetched through
    /// the guest's own tables as the CPU would at that ring; None where
    /// they do not allow it.
    pub(crate) fn instruction_bytes(&self, rip: u64, user: bool) -> Option<[u8; 2]> {
        let mut bytes = [0u8; 2];
        let first = self.fetch_address(rip, user)?;
        let second = rip.wrapping_add(1);
        if second & (PAGE_SIZE - 1) != 0 {
            // Both bytes on one page: one read.
            return self.mmu.memory().read_bytes(first, &mut bytes).then_some(bytes);
        }
        let second = self.fetch_address(second, user)?;
        for (gpa, byte) in [first, second].into_iter().zip(bytes.iter_mut()) {
            let mut one = [0u8];
            if !self.mmu.memory().read_bytes(gpa, &mut one) {
                return None;
            }
            *byte = one[0];
        }
        Some(bytes)
    }

    /// Where the guest's tables send an instruction fetch from `va`, at
    /// ring 3 (`user`) or ring 1. Every hypercall asks this for its own
    /// `ud2`, almost always on the page the last one was on, so the last
    /// answer per shadow root slot (a process switch alternates roots) is
    /// kept, with the shadow leaf the CPU ran through: while
    /// the current shadow still maps that page to the same frame with the
    /// same rights, the CPU fetched from that very frame, and the walk of
    /// the guest's tables (a few hundred instructions) is not repeated.
    /// A change the guest announces drops the leaf, so the next fetch
    /// walks again. While no leaf has gone anywhere since the answer was
    /// kept for this root (the MMU's leaf epoch), even the shadow is not
    /// looked at.
    fn fetch_address(&self, va: u64, user: bool) -> Option<u64> {
        let page_va = va & !(PAGE_SIZE - 1);
        let offset = va & (PAGE_SIZE - 1);
        let (root, epoch) = (self.mmu.current_root(), self.mmu.leaf_epoch());
        let entries = &self.fetch_cache;
        let same_page = |c: &FetchCache| c.page_va == page_va && c.user == user;
        // This root's answer, kept in its slot's entry, and no leaf removed
        // or replaced anywhere since: the leaf is the one looked up last
        // time, without looking again. (The slot's root is checked too: a
        // slot is reused for other roots, and a root freed and built again
        // clears its leaves, which moves the epoch on.)
        let slot = self.mmu.current_slot() % FETCH_CACHE_ENTRIES;
        if let Some(hit) = entries[slot].get()
            && hit.root == root
            && hit.epoch == epoch
            && same_page(&hit)
        {
            return Some(hit.gpa_page + offset);
        }
        let leaf = self.mmu.shadow_entry(va);
        if let Some(leaf) = leaf
            && let Some(same) = entries.iter().filter_map(Cell::get).find(|c| same_page(c) && c.leaf == leaf)
        {
            entries[slot].set(Some(FetchCache { root, epoch, ..same }));
            return Some(same.gpa_page + offset);
        }
        let gpa = self.mmu.translate(va, Access { write: false, user, fetch: true }).ok()?;
        if let Some(leaf) = leaf {
            entries[slot].set(Some(FetchCache { page_va, user, leaf, gpa_page: gpa - offset, root, epoch }));
        }
        Some(gpa)
    }

    fn deliver_exception(&mut self, regs: &mut GuestRegs, vector: u8) -> Result<(), Kill> {
        let error_code = layout::has_error_code(vector).then_some(regs.error_code);
        self.deliver(regs, vector, error_code, regs.rip)
    }

    fn page_fault(&mut self, regs: &mut GuestRegs, addr: u64) -> Next {
        if addr >= SWITCHER_BASE {
            let write = regs.error_code & 2 != 0;
            let read_only_state = (STATE_PAGE..IDT_PAGE + PAGE_SIZE).contains(&addr);
            return Next::Kill(if write && read_only_state {
                Kill::WroteSwitcherState { addr, rip: regs.rip }
            } else {
                Kill::TouchedSwitcher { addr, rip: regs.rip }
            });
        }
        match self.mmu.demand_fill(addr, Access::from_error_code(regs.error_code)) {
            FaultOutcome::Fixed => Next::Resume,
            FaultOutcome::Reflect if self.idt[14].present() => match self.reflect_page_fault(regs, addr) {
                Ok(()) => Next::Resume,
                Err(kill) => Next::Kill(kill),
            },
            FaultOutcome::Reflect => {
                Next::Kill(Kill::UnhandledPageFault { addr, error_code: regs.error_code, rip: regs.rip })
            }
            FaultOutcome::Kill(reason) => Next::Kill(Kill::Paging(reason)),
        }
    }

    fn hypercall(&mut self, regs: &mut GuestRegs, host: &mut impl Host) -> Next {
        let number = regs.rax;
        self.stats.hypercalls[number.min(abi::CALL_COUNT) as usize] += 1;
        let result = match self.shared_page {
            None => self.first_call(number, regs.rdi, host),
            Some(_) => self
                .drain_async_ring(host)
                .and_then(|()| self.call(number, [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8], host)),
        };
        match result {
            Ok(Done::Value(value)) => {
                regs.rax = value;
                regs.rip = regs.rip.wrapping_add(abi::HYPERCALL_INSTRUCTION.len() as u64);
                Next::Resume
            }
            Ok(Done::Shutdown(status)) => Next::Shutdown { status },
            Ok(Done::Halt) => {
                regs.rax = abi::RESULT_OK;
                regs.rip = regs.rip.wrapping_add(abi::HYPERCALL_INSTRUCTION.len() as u64);
                Next::Halt
            }
            Err(kill) => Next::Kill(kill),
        }
    }

    /// The guest's first call, which must be INIT; once per guest, so
    /// kept out of the way of the others.
    #[inline(never)]
    fn first_call(&mut self, number: u64, va: u64, host: &mut impl Host) -> Result<Done, Kill> {
        if number != abi::INIT {
            return Err(Kill::FirstCallNotInit { number });
        }
        self.init(va, host).map(Done::Value)
    }

    fn init(&mut self, va: u64, host: &mut impl Host) -> Result<u64, Kill> {
        let bad = Kill::BadSharedPage { addr: va };
        if !va.is_multiple_of(PAGE_SIZE) {
            return Err(bad);
        }
        let gpa = match self.mmu.translate(va, Access::KERNEL_WRITE) {
            Ok(gpa) if gpa.is_multiple_of(PAGE_SIZE) => gpa,
            Ok(_) | Err(TranslateError::PageFault { .. }) => return Err(bad),
            Err(TranslateError::Kill(reason)) => return Err(Kill::Paging(reason)),
        };
        let memory = self.mmu.memory_mut();
        let version = abi::ABI_VERSION.to_le_bytes();
        let written = memory.write_bytes(gpa + offset_of!(SharedPage, abi_version) as u64, &version)
            && memory.write_u64(gpa + offset_of!(SharedPage, tsc_khz) as u64, host.tsc_khz())
            && memory.write_u64(gpa + offset_of!(SharedPage, time_ns) as u64, host.now_ns());
        if !written {
            return Err(bad);
        }
        // Umbra's pending bits as they stand; from here on the page gets
        // them again whenever they change (`prepare_entry`).
        for (index, word) in self.pending.iter().enumerate() {
            let offset = offset_of!(SharedPage, irq_pending) + index * 8;
            memory.write_u64(gpa + offset as u64, *word);
        }
        self.pending_mirrored = self.pending;
        self.shared_page = Some(gpa);
        Ok(abi::RESULT_OK)
    }

    /// Move console input from `queue` into the guest's input ring, as
    /// much as the ring has room for, and raise [`abi::CONSOLE_IRQ`] if
    /// any byte went in. Nothing happens before INIT. The guest's
    /// `input_read` is read once and checked against Umbra's own count
    /// of what it wrote: the guest can only lose its own input.
    pub fn give_console_input<const N: usize>(
        &mut self,
        queue: &mut heapless::Deque<u8, N>,
    ) -> Result<(), Kill> {
        let Some(page) = self.shared_page else { return Ok(()) };
        if queue.is_empty() {
            return Ok(());
        }
        let size = abi::CONSOLE_INPUT_SIZE as u32;
        let written = self.input_written;
        let read_at = page + offset_of!(SharedPage, input_read) as u64;
        let mut word = [0u8; 4];
        if !self.mmu.memory().read_bytes(read_at, &mut word) {
            return Ok(());
        }
        let read = u32::from_le_bytes(word);
        let used = written.wrapping_sub(read);
        if used > size {
            return Err(Kill::BadInputRing { written, read });
        }
        let mut added = 0u32;
        let ring = page + offset_of!(SharedPage, input) as u64;
        while added < size - used {
            let Some(byte) = queue.pop_front() else { break };
            let at = ring + u64::from(written.wrapping_add(added) % size);
            self.mmu.memory_mut().write_bytes(at, &[byte]);
            added += 1;
        }
        if added > 0 {
            self.input_written = written.wrapping_add(added);
            let written_at = page + offset_of!(SharedPage, input_written) as u64;
            self.mmu.memory_mut().write_bytes(written_at, &self.input_written.to_le_bytes());
            self.stats.console_input += u64::from(added);
            self.raise_irq(abi::CONSOLE_IRQ);
        }
        Ok(())
    }

    /// Before each entry: the guest's clock, and its count of exits.
    #[inline]
    pub fn update_shared_time(&mut self, now_ns: u64) {
        if let Some(page) = self.shared_page {
            let exits = self.stats.exits;
            let memory = self.mmu.memory_mut();
            memory.write_u64(page + offset_of!(SharedPage, time_ns) as u64, now_ns);
            memory.write_u64(page + offset_of!(SharedPage, exits) as u64, exits);
        }
    }

    /// Run the queued calls in ring order, from our own cursor, until a
    /// slot that is not ready. Each slot is read once, so a guest that
    /// rewrites it meanwhile only changes what it asked for.
    fn drain_async_ring(&mut self, host: &mut impl Host) -> Result<(), Kill> {
        let Some(page) = self.shared_page else { return Ok(()) };
        // Almost every call finds the ring empty: one word says so.
        if self.mmu.memory().read_u64(async_slot(page, self.async_cursor)) != Some(1) {
            return Ok(());
        }
        let ran_before = self.stats.async_calls;
        for _ in 0..abi::ASYNC_SLOTS {
            let slot = self.async_cursor;
            let base = async_slot(page, slot);
            let word = |i: u64| self.mmu.memory().read_u64(base + i * 8).unwrap_or(0);
            if word(0) != 1 {
                break;
            }
            let number = word(1);
            let args = [word(2), word(3), word(4), word(5), word(6)];
            if !matches!(
                number,
                abi::SET_PTE
                    | abi::SET_PMD
                    | abi::SET_PUD
                    | abi::SET_PGD
                    | abi::FLUSH_TLB
                    | abi::CONSOLE_WRITE
                    | abi::LOAD_IDT_ENTRY
            ) {
                return Err(Kill::BadAsyncCall { slot, number });
            }
            self.call(number, args, host)?;
            self.mmu.memory_mut().write_u64(base, 0);
            self.stats.async_calls += 1;
            self.async_cursor = (slot + 1) % abi::ASYNC_SLOTS;
        }
        if self.stats.async_calls != ran_before {
            let completed = self.stats.async_calls;
            self.mmu.memory_mut().write_u64(page + offset_of!(SharedPage, async_completed) as u64, completed);
        }
        Ok(())
    }

    fn call(&mut self, number: u64, args: [u64; 5], host: &mut impl Host) -> Result<Done, Kill> {
        let paging = Kill::Paging;
        let value = match number {
            abi::INIT => return Err(Kill::InitTwice),
            abi::SHUTDOWN => {
                let (message, len) = (args[1], args[2]);
                if len > 0 {
                    let mut buffer = [0u8; abi::SHUTDOWN_MESSAGE_MAX as usize];
                    let text = self.read_guest(number, message, len, &mut buffer)?;
                    host.console_write(b"guest shutdown: ");
                    host.console_write(text);
                    host.console_write(b"\n");
                }
                return Ok(Done::Shutdown(args[0]));
            }
            abi::CONSOLE_WRITE => {
                let mut buffer = [0u8; abi::CONSOLE_WRITE_MAX as usize];
                let text = self.read_guest(number, args[0], args[1], &mut buffer)?;
                host.console_write(text);
                args[1]
            }
            abi::NEW_PGTABLE => {
                if self.mmu.is_linear() {
                    self.adopt_kernel_boundary()?;
                }
                self.mmu.new_pagetable(args[0]).map_err(paging)?;
                abi::RESULT_OK
            }
            abi::SET_PTE => {
                self.mmu.set_pte(args[0], args[1], args[2]).map_err(paging)?;
                abi::RESULT_OK
            }
            abi::SET_PMD | abi::SET_PUD | abi::SET_PGD => {
                let level = match number {
                    abi::SET_PMD => Level::Pd,
                    abi::SET_PUD => Level::Pdpt,
                    _ => Level::Pml4,
                };
                self.mmu.invalidate_entry(args[0], args[1], level).map_err(paging)?;
                abi::RESULT_OK
            }
            abi::FLUSH_TLB => {
                if args[0] == 0 { self.mmu.flush_user_half() } else { self.mmu.flush_all() }
                    .map_err(paging)?;
                abi::RESULT_OK
            }
            abi::FLUSH_ASYNC => abi::RESULT_OK,
            abi::LOAD_IDT_ENTRY => self.load_idt_entry(args[0], args[1], args[2])?,
            abi::SET_STACK => self.set_stack(args[0], args[1])?,
            abi::SWITCH_CONTEXT => self.switch_context(args[0], args[1], args[2])?,
            abi::SET_SYSCALL_ENTRY => self.set_syscall_entry(args[0])?,
            abi::SET_CLOCKEVENT => self.set_clock_event(args[0], host.now_ns()),
            // `sti; hlt`, as one step: a guest that checked for work with
            // its flag off loses no interrupt raised in between.
            abi::HALT => {
                self.set_virtual_interrupts(true);
                return Ok(Done::Halt);
            }
            // Delivery happens before every entry; this call is only a
            // chance for it.
            abi::SEND_INTERRUPTS => abi::RESULT_OK,
            abi::SET_FS_BASE => {
                let base = args[0];
                // IA32_FS_BASE refuses a non-canonical address with a
                // #GP, which would strike the host as it writes it.
                if !paging::is_canonical(base) {
                    return Err(Kill::NonCanonicalFsBase { base });
                }
                self.fs_base = base;
                self.fs_base_changed = true;
                abi::RESULT_OK
            }
            _ => return Err(Kill::UnknownHypercall { number }),
        };
        Ok(Done::Value(value))
    }

    /// The kernel boundary the guest wrote into its shared page, taken
    /// once, as the guest leaves linear mode.
    pub(crate) fn adopt_kernel_boundary(&mut self) -> Result<(), Kill> {
        let Some(page) = self.shared_page else { return Ok(()) };
        let boundary =
            self.mmu.memory().read_u64(page + offset_of!(SharedPage, kernel_boundary) as u64).unwrap_or(0);
        if boundary != 0 {
            self.mmu.set_kernel_boundary(boundary).map_err(Kill::Paging)?;
        }
        Ok(())
    }

    /// Copy `len` bytes at guest-virtual `va` into `buffer`, translating
    /// each page with a kernel-read check.
    fn read_guest<'b>(&self, call: u64, va: u64, len: u64, buffer: &'b mut [u8]) -> Result<&'b [u8], Kill> {
        let max = buffer.len() as u64;
        if len > max {
            return Err(Kill::TooLong { call, len, max });
        }
        let bad = Kill::BadPointer { call, addr: va, len };
        va.checked_add(len).ok_or(bad)?;
        let mut done = 0;
        while done < len {
            let at = va + done;
            let chunk = (PAGE_SIZE - at % PAGE_SIZE).min(len - done);
            let gpa = match self.mmu.translate(at, Access::KERNEL_READ) {
                Ok(gpa) => gpa,
                Err(TranslateError::Kill(reason)) => return Err(Kill::Paging(reason)),
                Err(TranslateError::PageFault { .. }) => return Err(bad),
            };
            let out = &mut buffer[done as usize..(done + chunk) as usize];
            if !self.mmu.memory().read_bytes(gpa, out) {
                return Err(bad);
            }
            done += chunk;
        }
        Ok(&buffer[..len as usize])
    }
}
