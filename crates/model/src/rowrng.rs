//! The generator behind every training draw: rand's `SmallRng` on 64-bit targets (Xoshiro256++
//! seeded through SplitMix64), as a type of our own.
//!
//! Why our own: `SmallRng` hides its state, and [`crate::lanes`] advances eight rows' generators
//! side by side in vector registers and must hand each row's state to rand_distr for a rare draw
//! and take it back. The stream is the same, value for value (a test checks it against
//! `SmallRng`), so every recorded run draws what it drew before.

use std::convert::Infallible;

use rand::TryRng;

/// One row's Xoshiro256++ generator; `s` is its state, word by word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RowRng {
    pub(crate) s: [u64; 4],
}

impl RowRng {
    /// The state `SmallRng::seed_from_u64(seed)` starts from: four SplitMix64 outputs.
    pub(crate) fn seed_from_u64(mut seed: u64) -> Self {
        let mut s = [0u64; 4];
        for w in &mut s {
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *w = z ^ (z >> 31);
        }
        Self { s }
    }

    /// Xoshiro256++'s next output.
    #[inline(always)]
    pub(crate) fn next(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }
}

impl TryRng for RowRng {
    type Error = Infallible;

    #[inline]
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        // As Xoshiro256++ in rand: the upper half.
        Ok((self.next() >> 32) as u32)
    }

    #[inline]
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, RngExt, SeedableRng};
    use rand_distr::StandardNormal;

    #[test]
    fn the_stream_is_small_rngs() {
        for seed in [0u64, 1, 42, u64::MAX, 0x1234_5678_9ABC_DEF0] {
            let (mut ours, mut theirs) =
                (RowRng::seed_from_u64(seed), SmallRng::seed_from_u64(seed));
            for _ in 0..1000 {
                assert_eq!(ours.next_u64(), theirs.next_u64(), "seed {seed}");
            }
            // Derived draws too: 32-bit, f64 and normals go through the same words.
            assert_eq!(ours.next_u32(), theirs.next_u32());
            assert_eq!(ours.random::<f64>(), theirs.random::<f64>());
            let (a, b): (f64, f64) = (ours.sample(StandardNormal), theirs.sample(StandardNormal));
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }

    /// The published Xoshiro256++ reference outputs for the state [1, 2, 3, 4]
    /// (prng.di.unimi.it/xoshiro256plusplus.c), independent of rand.
    #[test]
    fn reference_outputs() {
        let mut rng = RowRng { s: [1, 2, 3, 4] };
        let want = [41943041u64, 58720359, 3588806011781223, 3591011842654386];
        for w in want {
            assert_eq!(rng.next(), w);
        }
    }
}
