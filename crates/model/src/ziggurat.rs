//! Standard normal draws exactly as rand_distr's `StandardNormal` makes them, with its common
//! case inlined into our loops.
//!
//! rand_distr draws an f64 normal by the ZIGNOR ziggurat (then rounds to f32): one 64-bit word
//! gives a box `i` (its low 8 bits) and `u` in [−1, 1) (its top 52 bits); `x = u·X[i]` is the
//! draw when `|x| < X[i+1]`, about 98 % of the time, and otherwise a rejection step that takes
//! more words follows. Our loops do that first step themselves, and for every other case rewind
//! the generator to before the word and let rand_distr draw, so the values and the number of
//! words taken are rand_distr's in every case. Doing the first step here is what lets
//! [`crate::lanes`] draw eight rows at once with vector instructions.
//!
//! rand_distr keeps its table X private. [`table`] reads it off `StandardNormal` itself: a word
//! whose top bits give u = −2⁻ᵏ and whose low bits give box i makes it return u·X[i] exactly
//! (a power of two), having taken one word, whenever its first step accepts. A box whose limit
//! X[i+1] cannot be read that way (the last two) gets limit 0: its draws always go to rand_distr.
//! The table is then checked against `StandardNormal` on a fixed stream; on any difference (a
//! future rand_distr with another method) every draw goes to rand_distr.

use std::convert::Infallible;
use std::sync::OnceLock;

use rand::{RngExt, TryRng};
use rand_distr::StandardNormal;

use crate::rowrng::RowRng;

/// The first step's table: `x[i]` = X[i] and `limit[i]` = X[i+1], or 0 where draws in box `i`
/// always go to rand_distr.
pub(crate) struct Ziggurat {
    pub(crate) x: [f64; 256],
    pub(crate) limit: [f64; 256],
}

/// The exponent bits that put a 52-bit fraction `m` at 2·(1 + m/2⁵²) ∈ [2, 4).
pub(crate) const EXPONENT_ONE: u64 = 1024 << 52;

/// The table, read off rand_distr once per process.
pub(crate) fn table() -> &'static Ziggurat {
    static TABLE: OnceLock<Ziggurat> = OnceLock::new();
    TABLE.get_or_init(|| {
        let read = read_table();
        if agrees_with_rand_distr(&read) {
            read
        } else {
            Ziggurat {
                x: [0.0; 256],
                limit: [0.0; 256],
            }
        }
    })
}

/// Whether [`table`] took rand_distr's table (false: every draw goes through rand_distr).
#[cfg(test)]
pub(crate) fn first_step_active() -> bool {
    table().limit.iter().any(|&l| l > 0.0)
}

/// u from a word: the top 52 bits as 2·(1 + m/2⁵²) − 3, rand_distr's symmetric conversion.
#[inline(always)]
pub(crate) fn unit(word: u64) -> f64 {
    f64::from_bits((word >> 12) | EXPONENT_ONE) - 3.0
}

/// One standard normal, rounded to f32, from `rng`: the value and the stream position
/// `rng.sample::<f32, _>(StandardNormal)` gives.
#[inline(always)]
pub(crate) fn normal(rng: &mut RowRng, z: &Ziggurat) -> f32 {
    let before = *rng;
    let word = rng.next();
    let i = (word & 0xFF) as usize;
    let x = unit(word) * z.x[i];
    if x.abs() < z.limit[i] {
        return x as f32;
    }
    *rng = before;
    rng.sample::<f32, _>(StandardNormal)
}

/// A generator that gives a scripted first word, then an ordinary stream; counts words taken.
struct Scripted {
    first: u64,
    taken: usize,
    rest: RowRng,
}

impl TryRng for Scripted {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.try_next_u64()? >> 32) as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.taken += 1;
        Ok(if self.taken == 1 {
            self.first
        } else {
            self.rest.next()
        })
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.rest.try_fill_bytes(dst)
    }
}

fn read_table() -> Ziggurat {
    let mut x = [None; 256];
    for (i, xi) in x.iter_mut().enumerate() {
        // u = −2⁻ᵏ: 2·(1 + m/2⁵²) − 3 = −2⁻ᵏ for m = 2⁵²·(1/2 − 2⁻ᵏ⁻¹).
        for k in 1..=8u32 {
            let m = (1u64 << 51) - (1u64 << (51 - k));
            let word = (m << 12) | i as u64;
            let u = -(0.5f64.powi(k as i32));
            debug_assert_eq!(unit(word), u);
            let mut rng = Scripted {
                first: word,
                taken: 0,
                rest: RowRng::seed_from_u64(i as u64),
            };
            let v: f64 = rng.sample(StandardNormal);
            if rng.taken == 1 {
                *xi = Some(v / u);
                break;
            }
        }
    }
    let mut z = Ziggurat {
        x: [0.0; 256],
        limit: [0.0; 256],
    };
    for i in 0..256 {
        z.x[i] = x[i].unwrap_or(0.0);
        z.limit[i] = match (x[i], x.get(i + 1).copied().flatten()) {
            (Some(_), Some(next)) => next,
            _ => 0.0,
        };
    }
    z
}

/// 200,000 draws from fixed seeds, bit for bit and word for word.
fn agrees_with_rand_distr(z: &Ziggurat) -> bool {
    (0..20u64).all(|seed| {
        let (mut ours, mut theirs) = (RowRng::seed_from_u64(seed), RowRng::seed_from_u64(seed));
        (0..10_000).all(|_| {
            normal(&mut ours, z).to_bits() == theirs.sample::<f32, _>(StandardNormal).to_bits()
        }) && ours == theirs
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_table_is_read_and_draws_are_rand_distrs() {
        assert!(first_step_active(), "the table was read off rand_distr");
        let z = table();
        // ZIGNOR's known constants (Doornik 2005): X[1] = R = 3.6541528853610088, X[0] = V/f(R).
        assert!((z.x[1] - 3.654_152_885_361_009).abs() < 1e-15, "{}", z.x[1]);
        assert!((z.x[0] - 3.910_757_959_537_09).abs() < 1e-13, "{}", z.x[0]);
        assert!(z.x[..255].windows(2).all(|w| w[0] > w[1]), "X decreases");
        // Against SmallRng + StandardNormal, the stream every recorded run used: 2 M draws
        // over many seeds, so every box and the rejection and tail cases occur.
        let mut slow = 0usize;
        for seed in 0..200u64 {
            let (mut ours, mut theirs) =
                (RowRng::seed_from_u64(seed), SmallRng::seed_from_u64(seed));
            for _ in 0..10_000 {
                let before = ours;
                let a = normal(&mut ours, z);
                let b: f32 = theirs.sample(StandardNormal);
                assert_eq!(a.to_bits(), b.to_bits(), "seed {seed}");
                let mut one = before;
                one.next();
                slow += usize::from(one != ours);
            }
            assert_eq!(
                ours.next(),
                theirs.next_u64(),
                "seed {seed}: same words taken"
            );
        }
        // About 2 % of draws take more than one word (rejection, tail, the two last boxes).
        assert!(
            (10_000..100_000).contains(&slow),
            "{slow} draws took more than one word"
        );
    }
}
