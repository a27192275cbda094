//! Guest-virtual to guest-physical, for the hypervisor's own use.
//!
//! When the guest hands the hypervisor a pointer (a hypercall argument, a
//! trap frame to build on its stack), the hypervisor must find the memory
//! behind it exactly as the guest's own access would, with the same checks.
//! So this walks the guest's tables, not the shadow, which may be stale or
//! simply not filled yet. It sets no accessed or dirty bits: the access is
//! the host's, and lguest's equivalent did not either.

use crate::address::{self, PAGE_SIZE};
use crate::memory::{FramePool, GuestMemory};
use crate::outcome::{Access, KillReason, TranslateError};
use crate::shadow::ShadowMmu;
use crate::walk::{self, WalkStop};

impl<M: GuestMemory, P: FramePool> ShadowMmu<M, P> {
    /// The guest-physical address of `va` in the current address space, if
    /// the guest's tables allow `access` to it.
    pub fn translate(&self, va: u64, access: Access) -> Result<u64, TranslateError> {
        if !address::is_canonical(va) {
            return Err(TranslateError::Kill(KillReason::NonCanonicalAddress));
        }
        if address::in_switcher(va) {
            return Err(TranslateError::Kill(KillReason::SwitcherTranslate));
        }
        let offset = va & (PAGE_SIZE - 1);

        let cr3 = match self.current_cr3() {
            Some(cr3) if !self.linear => cr3,
            _ => {
                // Linear mode: the 1:1 pretence, kernel only.
                let present = va < self.limit;
                return if present && !access.user {
                    Ok(va)
                } else {
                    Err(TranslateError::PageFault { error_code: access.error_code(present) })
                };
            }
        };
        match walk::walk(&self.memory, self.limit, cr3, va) {
            Ok(mapping) if mapping.rights.permit(access) => Ok(mapping.page + offset),
            Ok(_) => Err(TranslateError::PageFault { error_code: access.error_code(true) }),
            Err(WalkStop::NotPresent) => {
                Err(TranslateError::PageFault { error_code: access.error_code(false) })
            }
            Err(WalkStop::Kill(reason)) => Err(TranslateError::Kill(reason)),
        }
    }
}
