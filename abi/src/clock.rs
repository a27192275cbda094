//! # Measuring the TSC's rate
//!
//! Umbra times its guests' clock on the TSC, which it measures at boot
//! against the APIC timer; the guest kernel booted natively measures it
//! against the PIT. Both count TSC ticks across about 10 ms of the other
//! timer, and both meet the same trap: on a busy machine the VMM can be
//! descheduled between reading the timer and reading the TSC, for
//! milliseconds, and that time lands in the window. The TSC then looks
//! many times faster (or slower) than it is, and so runs every clock built
//! on it.
//!
//! So each end of a window is a [`Bracket`]: the timer read between two
//! TSC reads. Its width says how far off that end can be. A window whose
//! two brackets together exceed 1% of it is not trusted: the caller
//! measures again, and [`Narrowest`] keeps the best it has seen.

/// Where a read of the reference timer fell, in TSC ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bracket {
    pub tsc_before: u64,
    pub tsc_after: u64,
}

impl Bracket {
    fn middle(self) -> u128 {
        (u128::from(self.tsc_before) + u128::from(self.tsc_after)) / 2
    }

    fn width(self) -> u128 {
        u128::from(self.tsc_after.saturating_sub(self.tsc_before))
    }
}

/// The measurements so far, and the one with the narrowest brackets.
#[derive(Clone, Copy, Debug, Default)]
pub struct Narrowest {
    best: Option<(u128, u64)>,
}

impl Narrowest {
    /// Takes a window of `elapsed_ns` on the reference timer, from the
    /// read at `start` to the one at `end`. True when the window is
    /// good enough to stop measuring.
    pub fn offer(&mut self, start: Bracket, end: Bracket, elapsed_ns: u64) -> bool {
        if elapsed_ns == 0 {
            return false;
        }
        let tsc_ticks = end.middle().saturating_sub(start.middle());
        let uncertainty = start.width() + end.width();
        let khz = (tsc_ticks * 1_000_000 / u128::from(elapsed_ns)).clamp(1, u128::from(u64::MAX)) as u64;
        if self.best.is_none_or(|(narrowest, _)| uncertainty < narrowest) {
            self.best = Some((uncertainty, khz));
        }
        uncertainty * 100 < tsc_ticks
    }

    /// The TSC's rate in kHz, from the best window (None before any).
    pub fn khz(&self) -> Option<u64> {
        self.best.map(|(_, khz)| khz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn at(tsc_before: u64, tsc_after: u64) -> Bracket {
        Bracket { tsc_before, tsc_after }
    }

    #[test]
    fn a_clean_window_gives_the_rate_at_once() {
        let mut measured = Narrowest::default();
        // 10 ms at 2.5 GHz, each read taking 100 ticks.
        assert!(measured.offer(at(1_000, 1_100), at(25_001_000, 25_001_100), 10_000_000));
        assert_eq!(measured.khz(), Some(2_500_000));
    }

    #[test]
    fn a_descheduled_end_is_not_trusted_and_the_narrowest_wins() {
        let mut measured = Narrowest::default();
        // 5 ms lost between the timer's read and the TSC's at the end:
        // read plainly, the rate would come out 1.5 times too high.
        assert!(!measured.offer(at(1_000, 1_100), at(25_001_000, 37_501_000), 10_000_000));
        assert!(measured.khz().is_some());
        assert!(measured.offer(at(0, 50), at(25_000_000, 25_000_050), 10_000_000));
        assert_eq!(measured.khz(), Some(2_500_000));
        // A later, wider window does not replace it.
        assert!(!measured.offer(at(0, 9_000_000), at(30_000_000, 31_000_000), 10_000_000));
        assert_eq!(measured.khz(), Some(2_500_000));
    }

    #[test]
    fn nothing_measured_is_no_rate() {
        let mut measured = Narrowest::default();
        assert!(!measured.offer(at(0, 1), at(5, 6), 0));
        assert_eq!(measured.khz(), None);
        // A TSC that went backwards gives the lowest rate, not a wrap.
        assert!(!measured.offer(at(100, 101), at(50, 51), 10_000_000));
        assert_eq!(measured.khz(), Some(1));
    }
}
