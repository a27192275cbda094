//! # Finding the present entries of a page table
//!
//! Freeing an address space, copying one for `fork` and dropping a shadow
//! root all walk page tables that are mostly empty: a small process uses
//! a handful of the 512 entries in each of its tables. Looked at one entry
//! at a time, each table costs a few thousand instructions, and under a
//! nested hypervisor that emulates kernel code, instructions are time.
//! [`next_present`] looks at eight entries at once (their present bits
//! ORed together), so an empty stretch costs about two instructions an
//! entry. Umbra's shadow MMU and the guest kernel both use it.

/// Entries per page-table page.
pub const ENTRIES: usize = 512;

/// The present bit of an x86_64 page-table entry.
const PRESENT: u64 = 1;

/// The index of the first present entry of `table` at or after `from`.
pub fn next_present(table: &[u64; ENTRIES], from: usize) -> Option<usize> {
    let start = from.min(ENTRIES);
    // One at a time up to a multiple of eight.
    let aligned = start.next_multiple_of(8).min(ENTRIES);
    if let Some(at) = table[start..aligned].iter().position(|entry| entry & PRESENT != 0) {
        return Some(start + at);
    }
    for (step, eight) in table[aligned..].chunks_exact(8).enumerate() {
        let any = eight[0] | eight[1] | eight[2] | eight[3] | eight[4] | eight[5] | eight[6] | eight[7];
        if any & PRESENT != 0 {
            let at = eight.iter().position(|entry| entry & PRESENT != 0).unwrap_or(0);
            return Some(aligned + step * 8 + at);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow(table: &[u64; ENTRIES], from: usize) -> Option<usize> {
        (from..ENTRIES).find(|&i| table[i] & PRESENT != 0)
    }

    #[test]
    fn finds_what_a_plain_scan_finds() {
        let mut table = [0u64; ENTRIES];
        // Not-present entries with other bits set must not count.
        for (i, entry) in table.iter_mut().enumerate() {
            *entry = (i as u64) << 12 | 0x62;
        }
        for present in [0, 1, 7, 8, 9, 63, 64, 200, 505, 511] {
            table[present] |= PRESENT;
        }
        for from in 0..=ENTRIES + 3 {
            assert_eq!(next_present(&table, from), slow(&table, from), "from {from}");
        }
        assert_eq!(next_present(&[0; ENTRIES], 0), None);
        assert_eq!(next_present(&[PRESENT; ENTRIES], 511), Some(511));
    }
}
