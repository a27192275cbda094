//! # Traps and interrupts, delivered to the guest
//!
//! A guest kernel handles its own faults, its own system calls and its own
//! timer, like any kernel; it just cannot install handlers in the real IDT.
//! So it tells Umbra about them (LOAD_IDT_ENTRY), and when one of its
//! traps reaches the host, Umbra *reflects* it: it builds the interrupt
//! frame on the guest kernel's stack exactly as the CPU would have (SS,
//! RSP, RFLAGS, CS, RIP and, for some exceptions, an error code, on a
//! 16-byte-aligned stack), and resumes the guest at its handler. This is
//! lguest's `interrupts_and_traps.c`, for long mode.
//!
//! Three twists, all because the guest's interrupt flag is virtual (the
//! real one stays on so the host always gets its timer):
//! - the RFLAGS pushed carries the *virtual* IF, so the guest's return
//!   path knows whether to re-enable;
//! - an interrupt gate clears the virtual flag; a trap gate does not;
//! - an interrupt is never delivered while the guest sits on its own
//!   `iretq` (`noirq_iret` in the shared page): that instruction is where
//!   it re-enables, and the window between must stay closed.
//!
//! System calls from guest user mode (`int n` on a vector the guest marked
//! [`abi::IDT_USER`]) go straight to the guest kernel through a *direct*
//! gate in the real IDT, with no exit, where the platform allows. Where it
//! does not (an `int n` that arrives as #GP, or as #UD on some nested
//! KVMs), Umbra decodes the instruction and delivers it itself: one exit
//! dearer, the same result.

use core::mem::offset_of;

use paging::{Access, TranslateError};
use switcher_asm::layout::{self, GuestRegs, PAGE_SIZE, SWITCHER_BASE};
use umbra_abi::{self as abi, SharedPage};

use crate::vcpu::{GuestRam, Kill, SwitcherChanges, Vcpu};
use paging::FramePool;

/// One entry of the guest's own IDT, as LOAD_IDT_ENTRY left it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestGate {
    pub handler: u64,
    pub flags: u64,
}

impl GuestGate {
    pub fn present(&self) -> bool {
        self.flags & abi::IDT_PRESENT != 0
    }

    fn user(&self) -> bool {
        self.flags & abi::IDT_USER != 0
    }

    fn trap_gate(&self) -> bool {
        self.flags & abi::IDT_TRAP_GATE != 0
    }
}

const RFLAGS_IF: u64 = 1 << 9;
/// Cleared by the CPU on every interrupt delivery: TF, NT, RF, VM.
const RFLAGS_CLEARED_ON_DELIVERY: u64 = (1 << 8) | (1 << 14) | (1 << 16) | (1 << 17);

/// Vectors guest user code may raise itself: `int3`, `into` (which 64-bit
/// mode no longer has; the entry is allowed and never used), and any
/// vector from 32 up.
fn user_may_raise(vector: u8) -> bool {
    matches!(vector, 3 | 4) || vector >= 32
}

/// The #GP error code for a software interrupt through a gate the caller
/// may not use: the gate's index, with the IDT bit set.
fn software_interrupt_error(vector: u8) -> u64 {
    u64::from(vector) << 3 | 2
}

/// `syscall`.
const SYSCALL_INSTRUCTION: [u8; 2] = [0x0f, 0x05];

/// A user-mode `syscall`, as the instruction left things: the address
/// after it (`rcx`), the user's flags (`r11`) and its stack pointer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UserSyscall {
    pub rip_after: u64,
    pub rflags: u64,
    pub rsp: u64,
}

fn is_canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == 0x1_ffff
}

impl<M: GuestRam, P: FramePool> Vcpu<M, P> {
    /// LOAD_IDT_ENTRY: check the entry, remember it, and mark the real IDT
    /// for an update when it is a direct gate.
    pub(crate) fn load_idt_entry(&mut self, vector: u64, handler: u64, flags: u64) -> Result<u64, Kill> {
        let bad = |why| Kill::BadIdtEntry { vector, handler, why };
        let index = u8::try_from(vector).map_err(|_| bad("no such vector"))?;
        if flags & !abi::IDT_FLAGS != 0 {
            return Err(bad("unknown type bits"));
        }
        let gate = GuestGate { handler, flags };
        if gate.present() {
            if let Some(why) = self.handler_problem(handler) {
                return Err(bad(why));
            }
            if gate.user() && !user_may_raise(index) {
                return Err(bad("user mode may not raise this vector"));
            }
            if gate.user() && abi::is_host_vector(index) {
                return Err(bad("the host owns this vector; it may not be a direct gate"));
            }
        }
        let was_direct = self.direct_gate(index).is_some();
        self.idt[index as usize] = gate;
        if was_direct || self.direct_gate(index).is_some() {
            self.switcher_changed.gates = true;
        }
        Ok(abi::RESULT_OK)
    }

    /// SET_STACK: the stack traps from user mode land on, `len` bytes (a
    /// page multiple) below a page-aligned `top`. Umbra keeps it mapped,
    /// so delivering a trap never faults on it.
    pub(crate) fn set_stack(&mut self, top: u64, len: u64) -> Result<u64, Kill> {
        let bottom = self.check_stack(top, len)?;
        self.mmu.set_kernel_stack(bottom, len).map_err(Kill::Paging)?;
        self.stack_installed(top);
        Ok(abi::RESULT_OK)
    }

    /// SWITCH_CONTEXT: NEW_PGTABLE(cr3), then SET_STACK(top, len), in one
    /// exit. The stack is checked as SET_STACK checks it, against the
    /// kernel boundary the switch may have just adopted, and pinned once,
    /// in the new address space: the old stack, which NEW_PGTABLE alone
    /// would pin there first, is of no more use.
    pub(crate) fn switch_context(&mut self, cr3: u64, top: u64, len: u64) -> Result<u64, Kill> {
        if self.mmu.is_linear() {
            self.adopt_kernel_boundary()?;
        }
        let bottom = self.check_stack(top, len)?;
        self.mmu.switch_context(cr3, bottom, len).map_err(Kill::Paging)?;
        self.stack_installed(top);
        Ok(abi::RESULT_OK)
    }

    /// The checks of SET_STACK; the stack's bottom.
    fn check_stack(&self, top: u64, len: u64) -> Result<u64, Kill> {
        let bad = |why| Kill::BadStack { top, len, why };
        // A page-aligned top keeps the stack to len / 4096 whole pages, the
        // ones Umbra pins; any other top would straddle one more.
        if len == 0 || len > abi::KERNEL_STACK_MAX || !len.is_multiple_of(4096) || !top.is_multiple_of(4096) {
            return Err(bad("length or alignment"));
        }
        let bottom = top.checked_sub(len).ok_or(bad("wraps"))?;
        if !is_canonical(bottom) || !is_canonical(top - 1) || top > SWITCHER_BASE {
            return Err(bad("not a kernel address"));
        }
        if bottom < self.mmu.kernel_boundary() {
            return Err(bad("outside the guest kernel"));
        }
        Ok(bottom)
    }

    /// A new kernel stack is pinned: the switcher pages must learn of it.
    fn stack_installed(&mut self, top: u64) {
        // The first stack also opens the direct gates, which stay closed
        // while there is none (they would push into nowhere).
        self.switcher_changed.gates |= self.kernel_stack_top.is_none();
        self.switcher_changed.kernel_stack = true;
        self.kernel_stack_top = Some(top);
    }

    /// Why `handler` may not be where the CPU enters the guest kernel: an
    /// address it could not jump to, the switcher's, or one below the
    /// guest kernel's half. Shared by IDT gates and the syscall entry.
    fn handler_problem(&self, handler: u64) -> Option<&'static str> {
        if !is_canonical(handler) {
            Some("non-canonical handler")
        } else if handler >= SWITCHER_BASE {
            Some("handler in the switcher")
        } else if handler < self.mmu.kernel_boundary() {
            Some("handler outside the guest kernel")
        } else {
            None
        }
    }

    /// SET_SYSCALL_ENTRY: where `syscall` from user mode enters the guest
    /// kernel, checked as a handler of LOAD_IDT_ENTRY is; 0 closes the
    /// direct path again.
    pub(crate) fn set_syscall_entry(&mut self, handler: u64) -> Result<u64, Kill> {
        let bad = |why| Kill::BadSyscallEntry { handler, why };
        if handler != 0
            && let Some(why) = self.handler_problem(handler)
        {
            return Err(bad(why));
        }
        self.syscall_entry = (handler != 0).then_some(handler);
        self.switcher_changed.syscall = true;
        Ok(abi::RESULT_OK)
    }

    /// The guest kernel's syscall entry, once SET_SYSCALL_ENTRY named one.
    pub fn syscall_entry(&self) -> Option<u64> {
        self.syscall_entry
    }

    /// The handler of a vector the real IDT should route straight to the
    /// guest kernel: present, user-raisable, from 32 up, and never one of
    /// the host's (LOAD_IDT_ENTRY refuses those; this is the second lock).
    pub fn direct_gate(&self, vector: u8) -> Option<GuestGate> {
        let gate = self.idt[vector as usize];
        (vector >= 32 && !abi::is_host_vector(vector) && gate.present() && gate.user()).then_some(gate)
    }

    /// The kernel stack for traps from user mode, once SET_STACK named it.
    pub fn kernel_stack_top(&self) -> Option<u64> {
        self.kernel_stack_top
    }

    /// What of the real IDT's direct gates and the TSS's ring-1 stack must
    /// be rewritten before the next entry; asking clears it.
    pub fn take_switcher_changes(&mut self) -> SwitcherChanges {
        core::mem::take(&mut self.switcher_changed)
    }

    fn shared_field(&self, offset: usize) -> Option<u64> {
        self.shared_page.and_then(|page| self.mmu.memory().read_u64(page + offset as u64))
    }

    fn set_shared_field(&mut self, offset: usize, value: u64) {
        if let Some(page) = self.shared_page {
            self.mmu.memory_mut().write_u64(page + offset as u64, value);
        }
    }

    /// The virtual interrupt flag (the low half of the word also holds
    /// `abi_version`, so read the u32 that is `irq_enabled`).
    pub(crate) fn virtual_interrupts_on(&self) -> bool {
        let word = self.shared_field(offset_of!(SharedPage, abi_version)).unwrap_or(0);
        (word >> 32) as u32 != 0
    }

    pub(crate) fn set_virtual_interrupts(&mut self, on: bool) {
        let offset = offset_of!(SharedPage, abi_version);
        let word = self.shared_field(offset).unwrap_or(0);
        let flag = if on { 1u64 << 32 } else { 0 };
        self.set_shared_field(offset, (word & 0xffff_ffff) | flag);
    }

    /// Deliver `vector` to the guest's handler: push the frame the CPU
    /// would have pushed and point the registers at the handler.
    /// `resume_at` is the RIP the frame returns to.
    pub(crate) fn deliver(
        &mut self,
        regs: &mut GuestRegs,
        vector: u8,
        error_code: Option<u64>,
        resume_at: u64,
    ) -> Result<(), Kill> {
        let gate = self.idt[vector as usize];
        if !gate.present() {
            return Err(Kill::NoHandler { vector, error_code: error_code.unwrap_or(0), rip: regs.rip });
        }
        let from_user = regs.cs & 3 == 3;
        let stack =
            if from_user { self.kernel_stack_top.ok_or(Kill::NoKernelStack { vector })? } else { regs.rsp };
        let virtual_if = if self.virtual_interrupts_on() { RFLAGS_IF } else { 0 };
        let mut frame = [regs.ss, regs.rsp, (regs.rflags & !RFLAGS_IF) | virtual_if, regs.cs, resume_at, 0];
        let words = if let Some(code) = error_code {
            frame[5] = code;
            6
        } else {
            5
        };
        let bottom = self
            .push_frame(stack, &frame[..words])
            .map_err(|at| at.unwrap_or_else(|at| Kill::DoubleFault { vector, stack: at }))?;
        regs.rsp = bottom;
        regs.rip = gate.handler;
        regs.cs = u64::from(abi::GUEST_KERNEL_CS);
        regs.ss = u64::from(abi::GUEST_KERNEL_SS);
        regs.rflags &= !RFLAGS_CLEARED_ON_DELIVERY;
        if !gate.trap_gate() {
            self.set_virtual_interrupts(false);
        }
        self.stats.delivered[vector as usize] += 1;
        Ok(())
    }

    /// Push `frame` (outermost word first) below `stack`, aligned down to
    /// 16 bytes as long mode does, through the guest's own tables as
    /// kernel writes; returns the new stack pointer. On failure, the kill
    /// the tables call for, or the address that could not be written.
    fn push_frame(&mut self, stack: u64, frame: &[u64]) -> Result<u64, Result<Kill, u64>> {
        let top = stack & !0xf;
        let bottom = top.wrapping_sub(frame.len() as u64 * 8);
        // One walk of the guest's tables per page the frame touches (one,
        // unless it straddles a page boundary), not one per word.
        let mut page: Option<(u64, u64)> = None;
        for (index, word) in frame.iter().enumerate() {
            let at = top.wrapping_sub((index as u64 + 1) * 8);
            let page_va = at & !(PAGE_SIZE - 1);
            let gpa_page = match page {
                Some((va, gpa)) if va == page_va => gpa,
                _ => {
                    let gpa = self.translate_stack_word(at).map_err(|reason| reason.ok_or(at))?;
                    page = Some((page_va, gpa & !(PAGE_SIZE - 1)));
                    gpa & !(PAGE_SIZE - 1)
                }
            };
            if !self.mmu.memory_mut().write_u64(gpa_page + (at & (PAGE_SIZE - 1)), *word) {
                return Err(Err(at));
            }
        }
        Ok(bottom)
    }

    /// Where a word of the guest's stack lies, through its own page
    /// tables, for a kernel write; `Err(None)` when the tables do not
    /// allow it.
    fn translate_stack_word(&self, va: u64) -> Result<u64, Option<Kill>> {
        match self.mmu.translate(va, Access::KERNEL_WRITE) {
            Ok(gpa) => Ok(gpa),
            Err(TranslateError::Kill(reason)) => Err(Some(Kill::Paging(reason))),
            Err(TranslateError::PageFault { .. }) => Err(None),
        }
    }

    /// A page fault that is the guest's own: CR2 goes in the shared page,
    /// the fault to its handler.
    pub(crate) fn reflect_page_fault(&mut self, regs: &mut GuestRegs, addr: u64) -> Result<(), Kill> {
        self.set_shared_field(offset_of!(SharedPage, cr2), addr);
        self.deliver(regs, 14, Some(regs.error_code), regs.rip)
    }

    /// The software interrupt at `rip`, if the bytes there are one: its
    /// vector and length. Only `int n` and `int3`: `into` (0xce) is invalid
    /// in 64-bit mode, and the CPU's #UD for it is the guest's to handle.
    fn software_interrupt_at(&self, rip: u64, user: bool) -> Option<(u8, u64)> {
        match self.instruction_bytes(rip, user)? {
            [0xcd, vector] => Some((vector, 2)),
            [0xcc, _] => Some((3, 1)),
            _ => None,
        }
    }

    /// `int n` or `int3` at the guest's RIP that the CPU refused to run
    /// directly: deliver it ourselves if the guest allows user mode to
    /// raise that vector. Returns false if the bytes are no such
    /// instruction.
    pub(crate) fn emulate_software_interrupt(&mut self, regs: &mut GuestRegs) -> Result<bool, Kill> {
        let Some((vector, length)) = self.software_interrupt_at(regs.rip, regs.cs & 3 == 3) else {
            return Ok(false);
        };
        let gate = self.idt[vector as usize];
        if !(gate.present() && gate.user()) {
            // What the CPU does for a gate user mode may not use.
            self.deliver(regs, 13, Some(software_interrupt_error(vector)), regs.rip)?;
            return Ok(true);
        }
        self.stats.emulated_software_interrupts += 1;
        self.deliver(regs, vector, None, regs.rip + length)?;
        Ok(true)
    }

    /// Is this page fault a `syscall` that did not go where the CPU
    /// should have sent it? This machine's nested KVM runs `syscall`
    /// whatever EFER.SCE says, as it runs `sysretq` at ring 1: `rcx` gets
    /// the address after it and `r11` the flags, and it jumps to LSTAR
    /// without leaving ring 3; the fetch there faults, the direct path's
    /// code being supervisor-only (or, with LSTAR at 0 as it was, nothing
    /// at all). So a user-mode fetch fault at LSTAR (or 0), with `rip`
    /// there and the two bytes before `rcx` being `syscall` (`0f 05`,
    /// read through the guest's own tables as user code), is that
    /// instruction.
    pub(crate) fn is_stray_syscall(&self, regs: &GuestRegs, cr2: u64) -> bool {
        const USER_FETCH: u64 = 1 << 2 | 1 << 4;
        matches!(regs.rip, 0 | layout::SYSCALL_VA)
            && cr2 == regs.rip
            && regs.error_code & USER_FETCH == USER_FETCH
            && regs.rcx >= 2
            && self.is_syscall_at(regs.rcx - 2)
    }

    /// Whether user code at `rip` is `syscall`.
    pub(crate) fn is_syscall_at(&self, rip: u64) -> bool {
        self.instruction_bytes(rip, true) == Some(SYSCALL_INSTRUCTION)
    }

    /// A stray `syscall` (above): what the direct path would have done
    /// when the guest has a syscall entry; otherwise the #UD the CPU
    /// owed, at the instruction, as a CPU that follows the manual raises
    /// it. `rcx` and `r11` keep what the stray run put there, as a real
    /// `syscall` would have: the Linux ABI gives them to the kernel anyway.
    pub(crate) fn deliver_stray_syscall(&mut self, regs: &mut GuestRegs) -> Result<(), Kill> {
        self.stats.stray_syscalls += 1;
        if self.syscall_entry.is_some() {
            let user = UserSyscall { rip_after: regs.rcx, rflags: regs.r11, rsp: regs.rsp };
            return self.syscall_by_host(regs, user);
        }
        let at = regs.rcx - 2;
        self.deliver(regs, 6, None, at)
    }

    /// A user-mode `syscall` that did not take the direct path, made by
    /// hand: the guest kernel's entry gets exactly what the switcher's
    /// direct path gives it (the frame `int n` pushes from ring 3 on its
    /// kernel stack, `rcx` the user's RIP after the instruction, `r11` its
    /// RFLAGS, interrupts on). Without an entry it is the #UD it was; with
    /// an entry and no kernel stack, a kill.
    pub(crate) fn syscall_by_host(&mut self, regs: &mut GuestRegs, user: UserSyscall) -> Result<(), Kill> {
        let Some(entry) = self.syscall_entry else {
            *regs = GuestRegs {
                rip: user.rip_after.wrapping_sub(2),
                cs: u64::from(abi::GUEST_USER_CS),
                rflags: user.rflags,
                rsp: user.rsp,
                ss: u64::from(abi::GUEST_USER_SS),
                ..*regs
            };
            return self.deliver(regs, 6, None, regs.rip);
        };
        let stack = self.kernel_stack_top.ok_or(Kill::SyscallBeforeStack)?;
        let frame = [
            u64::from(abi::GUEST_USER_SS),
            user.rsp,
            user.rflags,
            u64::from(abi::GUEST_USER_CS),
            user.rip_after,
        ];
        let bottom = self
            .push_frame(stack, &frame)
            .map_err(|at| at.unwrap_or_else(|at| Kill::SyscallStackFault { stack: at }))?;
        *regs = GuestRegs {
            rip: entry,
            cs: u64::from(abi::GUEST_KERNEL_CS),
            rflags: layout::SYSCALL_ENTRY_RFLAGS,
            rsp: bottom,
            ss: u64::from(abi::GUEST_KERNEL_SS),
            rcx: user.rip_after,
            r11: user.rflags,
            ..*regs
        };
        self.stats.syscalls_by_host += 1;
        Ok(())
    }

    /// A #GP from the guest kernel. When an `int n` at ring 1 raised it
    /// (every gate it does not own is DPL 0), the error code names the IDT
    /// entry as hardware encodes it; QEMU's TCG encodes it otherwise, so
    /// the guest gets hardware's value whatever Umbra runs on.
    pub(crate) fn deliver_kernel_general_protection(&mut self, regs: &mut GuestRegs) -> Result<(), Kill> {
        const ERROR_IDT: u64 = 1 << 1;
        if regs.error_code & ERROR_IDT != 0
            && let Some((vector, _)) = self.software_interrupt_at(regs.rip, false)
        {
            regs.error_code = software_interrupt_error(vector);
        }
        self.deliver(regs, 13, Some(regs.error_code), regs.rip)
    }

    /// SET_CLOCKEVENT: one shot of the guest's IRQ 0.
    pub(crate) fn set_clock_event(&mut self, delta_ns: u64, now_ns: u64) -> u64 {
        self.clock_deadline_ns =
            (delta_ns != 0).then(|| now_ns.saturating_add(delta_ns.min(abi::CLOCK_DELTA_MAX_NS)));
        abi::RESULT_OK
    }

    /// When the host must next look at this guest: its clock deadline.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.clock_deadline_ns
    }

    /// Raise guest interrupt `irq`.
    pub fn raise_irq(&mut self, irq: u64) {
        let vector = abi::IRQ_BASE + irq;
        if vector < 256 {
            self.pending[(vector / 64) as usize] |= 1 << (vector % 64);
        }
    }

    /// The lowest pending vector the guest can take now, if any. Nothing
    /// pending is the common case, and costs one look at four words: this
    /// runs before every entry.
    fn deliverable(&self, rip: u64) -> Option<u8> {
        if !any_bit(&self.pending) || !self.virtual_interrupts_on() {
            return None;
        }
        if self.shared_field(offset_of!(SharedPage, noirq_iret)) == Some(rip) {
            return None;
        }
        for (index, &word) in self.pending.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let vector = index * 64 + bits.trailing_zeros() as usize;
                if self.idt[vector].present() {
                    return Some(vector as u8);
                }
                bits &= bits - 1;
            }
        }
        None
    }

    /// Before every entry: update the guest's clock, fire its clock event
    /// if due, and deliver the first pending interrupt it can take.
    #[inline]
    pub fn prepare_entry(&mut self, regs: &mut GuestRegs, now_ns: u64) -> Result<(), Kill> {
        self.update_shared_time(now_ns);
        if self.clock_deadline_ns.is_some_and(|deadline| deadline <= now_ns) {
            self.clock_deadline_ns = None;
            self.raise_irq(abi::CLOCK_IRQ);
        }
        // Nothing pending and nothing changed since the guest's copy was
        // written: the common case, decided without a call.
        let (pending, mirrored) = (&self.pending, &self.pending_mirrored);
        if any_bit(pending) || any_bit(mirrored) {
            return self.prepare_interrupts(regs);
        }
        Ok(())
    }

    /// The part of [`Self::prepare_entry`] for when interrupts are or were
    /// pending: apart, so that the common case stays short.
    #[inline(never)]
    fn prepare_interrupts(&mut self, regs: &mut GuestRegs) -> Result<(), Kill> {
        // The guest's copy of the pending bits is written when ours
        // change: Umbra never reads it back, so bits the guest scribbles
        // there deliver nothing, and an unchanged bitmap costs no writes.
        let (pending, mirrored) = (&self.pending, &self.pending_mirrored);
        let changed = [
            pending[0] ^ mirrored[0],
            pending[1] ^ mirrored[1],
            pending[2] ^ mirrored[2],
            pending[3] ^ mirrored[3],
        ];
        if any_bit(&changed)
            && let Some(page) = self.shared_page
        {
            for (index, word) in self.pending.iter().enumerate() {
                let offset = offset_of!(SharedPage, irq_pending) + index * 8;
                self.mmu.memory_mut().write_u64(page + offset as u64, *word);
            }
            self.pending_mirrored = self.pending;
        }
        if let Some(vector) = self.deliverable(regs.rip) {
            self.pending[vector as usize / 64] &= !(1 << (vector % 64));
            self.deliver(regs, vector, None, regs.rip)?;
        }
        Ok(())
    }

    /// For HALT: can the guest run on now, must it sleep until a deadline,
    /// or would it sleep for ever? `input_poll_ns`, for the guest that owns
    /// the console, is when Umbra next looks for console input, which may
    /// wake it: such a guest may halt with no clock armed.
    pub fn halt_state(&self, now_ns: u64, input_poll_ns: Option<u64>) -> HaltState {
        if !self.virtual_interrupts_on() {
            return HaltState::Forever;
        }
        // Anything pending wakes the guest, handler or not: a clock that
        // fired just before the HALT must not leave it asleep for ever.
        if self.pending.iter().any(|word| *word != 0) {
            return HaltState::Ready;
        }
        match (self.clock_deadline_ns, input_poll_ns) {
            (Some(deadline), _) if deadline <= now_ns => HaltState::Ready,
            (Some(deadline), poll) => HaltState::SleepUntil(poll.map_or(deadline, |poll| poll.min(deadline))),
            (None, Some(poll)) => HaltState::SleepUntil(poll),
            (None, None) => HaltState::Forever,
        }
    }
}

/// Whether any bit of a 256-bit vector set is set (a plain `==` on the
/// array becomes a call to `memcmp`, on a path taken before every entry).
fn any_bit(words: &[u64; 4]) -> bool {
    (words[0] | words[1] | words[2] | words[3]) != 0
}

/// What a halted guest waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaltState {
    Ready,
    SleepUntil(u64),
    Forever,
}
