//! # A seeded generator for the fuzzers
//!
//! Every fuzzer in the project (the guest's hypercall fuzzer, and the host
//! fuzzers of the dispatcher, the ELF loader and the start_info parser)
//! draws from this one: xorshift64*, a few instructions, no state beyond
//! one word, so any run replays exactly from the seed it printed. Not for
//! anything that needs unpredictability.

/// xorshift64* over a nonzero state.
pub struct Rng(pub u64);

impl Rng {
    /// A generator for `seed`, any value, 0 included.
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// An index into something `len` long (0 when it is empty).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// One of `items`, which must not be empty.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.index(items.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn replays_from_the_seed_and_stays_in_range() {
        let (mut a, mut b) = (Rng::seeded(42), Rng::seeded(42));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            assert!(a.below(7) < 7);
            b.below(7);
        }
        assert_eq!(Rng::seeded(0).below(0), 0);
        assert_ne!(Rng::seeded(1).next_u64(), Rng::seeded(2).next_u64());
    }
}
