//! # Exit statuses
//!
//! The firmware's last line is always `umbra: exit status N`. Where QEMU's
//! `isa-debug-exit` device is present, N is then written to port 0xf4 and
//! QEMU itself exits with `(N << 1) | 1`, which is how every test learns
//! the outcome. Statuses below [`FIRST_RESERVED`] belong to the guest: it
//! passes its own status through `SHUTDOWN`. The rest are Umbra's own.
//!
//! They belong to the ABI because a guest passes its own through and must
//! know where its range ends, and because every test that boots Umbra
//! reads them. hv-core's run loop decides most of the rest (a kill, a
//! guest that could not be set up, the first failure among many), the
//! firmware the others (a crash, a malformed boot).

/// Everything went as planned.
pub const SUCCESS: u8 = 0;

/// The first status the firmware keeps for itself; a guest's status at or
/// above this is reported as [`GUEST_STATUS_OUT_OF_RANGE`].
pub const FIRST_RESERVED: u8 = crate::GUEST_STATUS_MAX as u8 + 1;

/// The guest broke a rule and was killed; the reason was printed first.
pub const GUEST_KILLED: u8 = FIRST_RESERVED;

/// The firmware could not go on: malformed boot input, too little memory,
/// no usable ACPI where it was required. One line said why.
pub const FIRMWARE_ERROR: u8 = 101;

/// A CPU exception or a panic inside the firmware: a crash report with a
/// backtrace was printed. This is always a bug in Umbra.
pub const CRASH: u8 = 102;

/// The guest asked to exit with a status of 100 or more, which would be
/// mistaken for one of Umbra's own.
pub const GUEST_STATUS_OUT_OF_RANGE: u8 = 103;

/// What QEMU's process exits with when the firmware writes `status` to
/// `isa-debug-exit`.
pub const fn qemu_exit_code(status: u8) -> i32 {
    ((status as i32) << 1) | 1
}
