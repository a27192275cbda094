//! # Command-line words
//!
//! The guest's command line is a list of words, and the one that matters
//! to it is `test=...`. These two helpers are shared by the boot path
//! (which `test=` word was given), the process kernel (the counts in
//! `bench:NAME=COUNT,...`) and the probes (`exit:N`, `fuzz:SEED:COUNT`),
//! so they live apart from all three.

/// The value after `test=`, if the command line has such a word.
pub fn test_word(cmdline: &[u8]) -> Option<&[u8]> {
    cmdline.split(u8::is_ascii_whitespace).find_map(|word| word.strip_prefix(b"test="))
}

/// A decimal number, digits only.
pub fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let digit = (d as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(digit as u64)
    })
}
