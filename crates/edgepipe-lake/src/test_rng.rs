//! A small deterministic generator (xorshift) for the crate's randomized tests, so they need no
//! extra dependency and every run sees the same inputs.

/// xorshift64; seed with any non-zero value.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next value below `n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
