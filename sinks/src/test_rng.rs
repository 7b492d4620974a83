//! A seeded generator for the unit tests of this crate.

/// Each call gives a number below `n` (xorshift from `seed`).
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    }
}
