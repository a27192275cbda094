//! # A seeded generator for the fuzzers
//!
//! Every fuzzer in the project (the guest's hypercall fuzzer, and the host
//! fuzzers of the dispatcher, the ELF loader and the start_info parser)
//! draws from this one: xorshift64*, a few instructions, no state beyond
//! one word, so any run replays exactly from the seed it printed. Not for
//! anything that needs unpredictability.
//!
//! It sits behind the `rng` feature, off by default: a guest that does not
//! fuzz never compiles it. With `fuzz` (which needs std, so only host
//! tests turn it on) come `seeds` and `accepted_or_refused`, the loop
//! every host fuzzer runs around its one input: which seeds, a time limit
//! per input, a summary, and a check that the generator explores.

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

/// The seeds a host fuzzer runs: `UMBRA_FUZZ_RUNS` of them (`default_runs`
/// without it), from `UMBRA_FUZZ_SEED` (1 without it). A failure names its
/// seed, and the same two variables replay it.
#[cfg(feature = "fuzz")]
pub fn seeds(default_runs: u64) -> core::ops::Range<u64> {
    let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let runs = number("UMBRA_FUZZ_RUNS").unwrap_or(default_runs);
    let first = number("UMBRA_FUZZ_SEED").unwrap_or(1);
    first..first + runs
}

/// Runs a fuzzer whose inputs are either accepted or refused:
/// `run_once(seed)` for each of [`seeds`]`(20_000)` (a few seconds), `Ok`
/// when it accepted the input, or the line that refused it. A refusal
/// must be one non-empty line (`UMBRA_FUZZ_VERBOSE` prints each). An
/// input that takes seconds fails the test (a loop that does not end, most
/// likely); so does a generator that makes either outcome rare, since it
/// is then not exploring. `what` names the fuzzer and `inputs` what it
/// makes, in the summary it prints.
#[cfg(feature = "fuzz")]
pub fn accepted_or_refused(
    what: &str,
    inputs: &str,
    mut run_once: impl FnMut(u64) -> Result<(), std::string::String>,
) {
    use std::time::{Duration, Instant};

    let seeds = seeds(20_000);
    let (first, runs) = (seeds.start, seeds.end - seeds.start);
    let started = Instant::now();
    let (mut accepted, mut slowest) = (0u64, Duration::ZERO);
    let verbose = std::env::var("UMBRA_FUZZ_VERBOSE").is_ok();
    for seed in seeds {
        let start = Instant::now();
        match run_once(seed) {
            Ok(()) => accepted += 1,
            Err(line) => {
                assert!(!line.is_empty() && !line.contains('\n'), "seed {seed}: {line:?}");
                if verbose {
                    std::eprintln!("seed {seed}: {line}");
                }
            }
        }
        let took = start.elapsed();
        assert!(took < Duration::from_secs(5), "seed {seed}: took {took:?}: a loop that does not end?");
        slowest = slowest.max(took);
    }
    std::eprintln!(
        "{what}: {runs} {inputs} from seed {first}: {accepted} accepted, {} refused; slowest {slowest:?}; \
         {:?} in all",
        runs - accepted,
        started.elapsed()
    );
    if runs >= 1000 {
        assert!(accepted > runs / 20 && runs - accepted > runs / 20, "accepted {accepted} of {runs}");
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
