//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011)
//! with the Box-Muller transform in plain f32 arithmetic.
//!
//! The transform uses its own logarithm and sine/cosine, built from multiplications,
//! additions, one division and a square root, all correctly rounded in IEEE arithmetic,
//! evaluated in a fixed order without fused multiply-adds. Any implementation that does
//! the same (a thread of the fused CPU kernel, a CUDA kernel compiled without FMA
//! contraction) produces the same bits.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::NoiseSource;
use crate::vector_unit::widest_vector_unit;
use crate::{Error, Result};

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// One block of Philox4x32 with 10 rounds: four random 32-bit words from a 128-bit
/// counter and a 64-bit key.
///
/// ```
/// // Known-answer test from Random123.
/// let out = varlora::noise::philox4x32_10([0; 4], [0; 2]);
/// assert_eq!(out, [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
/// ```
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = u64::from(M0) * u64::from(c[0]);
        let p1 = u64::from(M1) * u64::from(c[2]);
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// A uniform draw in (0, 1): the top 23 bits, centred, so that it is never 0 or 1.
#[inline(always)]
fn uniform(word: u32) -> f32 {
    ((word >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// Natural logarithm of a positive, finite, normal f32: `x = 2^e m` with `m` in
/// [sqrt(1/2), sqrt(2)), and `ln m = 2 atanh(s)`, `s = (m - 1) / (m + 1)`, by its series to
/// `s^9` (|s| <= 0.172, so the next term is below 4e-10). Branch-free, so that loops over
/// it vectorise.
#[inline(always)]
fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 127;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > std::f32::consts::SQRT_2;
    let m = if big { m * 0.5 } else { m };
    let e = (e + i32::from(big)) as f32;
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 1.0 + s2 * (1.0 / 3.0 + s2 * (0.2 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0))));
    let ln_m = 2.0 * s * series;
    // ln 2 split in two so that e * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    e * LN2_HI + (e * LN2_LO + ln_m)
}

/// `(sin, cos)` of `2 pi u` for `u = uniform(word)` in (0, 1): the quarter turn is split
/// off exactly and the rest, within [-pi/4, pi/4], goes through Taylor polynomials to
/// degree 9 and 10. Branch-free.
///
/// The quadrant `floor(4 u)` is the word's top two bits (`4 u` is `(word >> 9) + 0.5` over
/// `2^21`, and the half never carries). Taking it from the bits rather than by `4 u as i32`
/// gives the same value and lets the loop vectorise: Rust's saturating float-to-int
/// conversion compiles to scalar code.
#[inline(always)]
fn sincos_turns(word: u32) -> (f32, f32) {
    let a = 4.0 * uniform(word);
    let q = (word >> 30) as i32;
    let f = a - q as f32;
    let up = f >= 0.5;
    let f = if up { f - 1.0 } else { f };
    let q = q + i32::from(up);
    let x = f * std::f32::consts::FRAC_PI_2;
    let x2 = x * x;
    let s = x
        * (1.0
            - x2 * (1.0 / 6.0 - x2 * (1.0 / 120.0 - x2 * (1.0 / 5040.0 - x2 * (1.0 / 362_880.0)))));
    let c = 1.0
        - x2 * (0.5
            - x2 * (1.0 / 24.0
                - x2 * (1.0 / 720.0 - x2 * (1.0 / 40320.0 - x2 * (1.0 / 3_628_800.0)))));
    // Quadrant q turns (s, c) into (s, c), (c, -s), (-s, -c), (-c, s); sign flips are exact.
    let (a, b) = if q & 1 == 1 { (c, s) } else { (s, c) };
    let sin_sign = if q & 2 == 2 { -1.0 } else { 1.0 };
    let cos_sign = if (q + 1) & 2 == 2 { -1.0 } else { 1.0 };
    (a * sin_sign, b * cos_sign)
}

/// Two standard-normal draws from two random words (Box-Muller), one pair at a time.
#[cfg(test)]
fn box_muller(u: u32, v: u32) -> [f32; 2] {
    let r = (-2.0 * ln(uniform(u))).sqrt();
    let (s, c) = sincos_turns(v);
    [r * c, r * s]
}

/// The four standard-normal draws of counter block `block` for `seed`, one block at a time
/// (the tests' reference for the batched generator).
#[cfg(test)]
fn normal_block(seed: u64, block: u64) -> [f32; 4] {
    let key = [seed as u32, (seed >> 32) as u32];
    let w = philox4x32_10([block as u32, (block >> 32) as u32, 0, 0], key);
    let [a, b] = box_muller(w[0], w[1]);
    let [c, d] = box_muller(w[2], w[3]);
    [a, b, c, d]
}

/// Blocks generated together: enough independent work for the vector units (with two
/// blocks per 64-bit lane, two independent chains of rounds in 512-bit registers).
pub(crate) const BATCH_BLOCKS: usize = 32;

/// Two blocks' words side by side in one 64-bit lane: the even block low, the odd high.
const PAIRS: usize = BATCH_BLOCKS / 2;
const LOW: u64 = 0xFFFF_FFFF;

/// Both halves of `w`: the words of one Philox round's key for a pair of blocks.
#[inline(always)]
fn both(w: u32) -> u64 {
    u64::from(w) * (1 << 32 | 1)
}

/// The 32 x 32 -> 64-bit products `m * x` of both halves of `x`, returned as their high
/// words and their low words, each pair packed as `x` is. Vector units multiply the low
/// halves of 64-bit lanes (x86's `pmuludq`), so two multiplies serve 2 blocks, with no
/// widening or narrowing shuffles.
#[inline(always)]
fn mul_hi_lo(m: u32, x: u64) -> (u64, u64) {
    let even = u64::from(m) * (x & LOW);
    let odd = u64::from(m) * (x >> 32);
    ((even >> 32) | (odd & !LOW), (even & LOW) | (odd << 32))
}

/// The draws of `BATCH_BLOCKS` consecutive blocks from `first`, in order: the same values
/// as [`normal_block`], computed lane-parallel (structure of arrays, so that the loops
/// vectorise).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lane-indexed loops over parallel arrays vectorise
pub(crate) fn normal_batch(seed: u64, first: u64, out: &mut [f32; 4 * BATCH_BLOCKS]) {
    let key = [seed as u32, (seed >> 32) as u32];
    // Counter words 0 and 1 of blocks 2j and 2j + 1; words 2 and 3 start at 0.
    let mut c = [[0u64; PAIRS]; 4];
    for j in 0..PAIRS {
        let (b0, b1) = (first + 2 * j as u64, first + 2 * j as u64 + 1);
        c[0][j] = (b0 & LOW) | (b1 << 32);
        c[1][j] = (b0 >> 32) | (b1 >> 32 << 32);
    }
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let (k0, k1) = (both(k[0]), both(k[1]));
        for j in 0..PAIRS {
            let (hi0, lo0) = mul_hi_lo(M0, c[0][j]);
            let (hi1, lo1) = mul_hi_lo(M1, c[2][j]);
            let n0 = hi1 ^ c[1][j] ^ k0;
            let n2 = hi0 ^ c[3][j] ^ k1;
            c[0][j] = n0;
            c[1][j] = lo1;
            c[2][j] = n2;
            c[3][j] = lo0;
        }
    }
    // Unpacked into block order for the transform (a loop: `array::map`'s closure is
    // not inlined into the vector-unit variants).
    let mut words = [[0u32; BATCH_BLOCKS]; 4];
    for (w, pairs) in words.iter_mut().zip(&c) {
        for j in 0..BATCH_BLOCKS {
            w[j] = (pairs[j / 2] >> (32 * (j % 2))) as u32;
        }
    }
    // Lane k of every block, computed lane-parallel, then interleaved into block order:
    // multiplying in the interleaving loop compiled to scalar code.
    let mut lanes = [[0f32; BATCH_BLOCKS]; 4];
    for pair in 0..2 {
        let (us, vs) = (&words[2 * pair], &words[2 * pair + 1]);
        for j in 0..BATCH_BLOCKS {
            let r = (-2.0 * ln(uniform(us[j]))).sqrt();
            let (sn, cs) = sincos_turns(vs[j]);
            lanes[2 * pair][j] = r * cs;
            lanes[2 * pair + 1][j] = r * sn;
        }
    }
    for j in 0..BATCH_BLOCKS {
        for (k, lane) in lanes.iter().enumerate() {
            out[4 * j + k] = lane[j];
        }
    }
}

/// Seeded standard-normal draws from Philox4x32-10 and Box-Muller.
///
/// Draw `i` of a request depends only on the seed, the block the request starts at and
/// `i`: block `start + i / 4`, lane `i % 4`. Every request starts at a fresh block, so the
/// stream's state is just `(seed, next block)`, and any split of a request (across threads
/// or tensors) reproduces it. Draws are f32 (f64 requests get them widened).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhiloxNormal {
    seed: u64,
    block: u64,
}

impl PhiloxNormal {
    /// A stream for `seed`, at its start.
    pub fn new(seed: u64) -> Self {
        Self { seed, block: 0 }
    }

    /// A stream for `seed` positioned at counter block `block`.
    pub fn at(seed: u64, block: u64) -> Self {
        Self { seed, block }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next unused counter block.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// Moves the stream past a request of `numel` draws without drawing them, and returns
    /// the block the request starts at.
    pub fn skip(&mut self, numel: usize) -> u64 {
        let start = self.block;
        self.block += numel.div_ceil(4) as u64;
        start
    }

    /// Fills `out` with random signs (+1 or -1, equally likely), one bit of the stream
    /// each, and advances the stream past them.
    pub fn fill_signs(&mut self, out: &mut [f32]) {
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        for (j, chunk) in out.chunks_mut(128).enumerate() {
            let b = self.block + j as u64;
            let words = philox4x32_10([b as u32, (b >> 32) as u32, 0, 0], key);
            for (i, o) in chunk.iter_mut().enumerate() {
                let bit = (words[i / 32] >> (i % 32)) & 1;
                *o = if bit == 1 { 1.0 } else { -1.0 };
            }
        }
        self.block += out.len().div_ceil(128) as u64;
    }

    /// Fills `out` with draws from U(lo, hi), four per counter block (one 32-bit word
    /// each, 23 bits of resolution), and advances the stream
    /// past them: the seeded initialisers of the adapters use it.
    ///
    /// ```
    /// let mut stream = varlora::noise::PhiloxNormal::new(7);
    /// let mut u = [0f32; 6];
    /// stream.fill_uniform(&mut u, -0.5, 0.5);
    /// assert!(u.iter().all(|&x| (-0.5..0.5).contains(&x)));
    /// assert_eq!(stream.block(), 2);
    /// ```
    pub fn fill_uniform(&mut self, out: &mut [f32], lo: f32, hi: f32) {
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        for (j, chunk) in out.chunks_mut(4).enumerate() {
            let b = self.block + j as u64;
            let words = philox4x32_10([b as u32, (b >> 32) as u32, 0, 0], key);
            for (o, w) in chunk.iter_mut().zip(words) {
                *o = lo + (hi - lo) * uniform(w);
            }
        }
        self.block += out.len().div_ceil(4) as u64;
    }

    /// Fills `out` with the next request's draws and advances the stream.
    pub fn fill(&mut self, out: &mut [f32]) {
        let start = self.skip(out.len());
        draws_at(self.seed, start, 0, out);
    }
}

widest_vector_unit! {
    /// Draws `offset..offset + out.len()` of the request that starts at `block`, with the
    /// widest vector unit the processor has, with the same bits on each.
    fn draws_at, draws_at_avx512, draws_at_avx2 => draws_at_baseline(
        seed: u64,
        block: u64,
        offset: usize,
        out: &mut [f32],
    )
}

#[inline(always)]
fn draws_at_baseline(seed: u64, block: u64, offset: usize, out: &mut [f32]) {
    let mut batch = [0f32; 4 * BATCH_BLOCKS];
    let mut i = 0;
    while i < out.len() {
        let idx = offset + i;
        let first = idx / 4;
        normal_batch(seed, block + first as u64, &mut batch);
        let lane = idx - 4 * first;
        let n = (batch.len() - lane).min(out.len() - i);
        out[i..i + n].copy_from_slice(&batch[lane..lane + n]);
        i += n;
    }
}

impl NoiseSource for PhiloxNormal {
    fn standard_normal(&mut self, numel: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut z = vec![0f32; numel];
        self.fill(&mut z);
        Ok(Tensor::from_vec(z, numel, device)?.to_dtype(dtype)?)
    }

    fn state(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        *self = serde_json::from_value(state.clone())
            .map_err(|e| Error::Checkpoint(format!("bad PhiloxNormal state {state}: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer vectors from Random123's kat_vectors (philox4x32_10).
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn ln_and_sincos_agree_with_the_standard_library() {
        let mut worst_ln = 0f64;
        let mut worst_trig = 0f64;
        for k in 0..(1u32 << 16) {
            let word = k.wrapping_mul(0x9E37_79B9) ^ (k << 7);
            let u = uniform(word);
            let exact = f64::from(u).ln();
            worst_ln = worst_ln.max((f64::from(ln(u)) - exact).abs() / exact.abs().max(1.0));
            let (s, c) = sincos_turns(word);
            let (es, ec) = (std::f64::consts::TAU * f64::from(u)).sin_cos();
            worst_trig = worst_trig.max((f64::from(s) - es).abs().max((f64::from(c) - ec).abs()));
        }
        // A few f32 ulps.
        assert!(worst_ln < 5e-7, "ln error {worst_ln}");
        assert!(worst_trig < 5e-7, "sin/cos error {worst_trig}");
        assert!(ln(uniform(0)).is_finite() && ln(uniform(u32::MAX)) < 0.0);
    }

    #[test]
    fn draws_depend_only_on_seed_and_index() {
        let mut whole = PhiloxNormal::new(7);
        let mut all = vec![0.0; 12];
        whole.fill(&mut all);
        let mut split = PhiloxNormal::new(7);
        let (mut a, mut b) = (vec![0.0; 8], vec![0.0; 4]);
        split.fill(&mut a);
        split.fill(&mut b);
        assert_eq!(&all[..8], &a[..]);
        assert_eq!(&all[8..], &b[..]);
        // The batched generator gives the per-block values, also where the counter's
        // high word changes between the two blocks that share a 64-bit lane.
        let mut batch = [0.0; 4 * BATCH_BLOCKS];
        for first in [0, (1 << 32) - 5, u64::MAX - BATCH_BLOCKS as u64 + 1] {
            normal_batch(7, first, &mut batch);
            for (j, block) in batch.chunks(4).enumerate() {
                assert_eq!(block, &normal_block(7, first + j as u64)[..], "block {j}");
            }
        }
        normal_batch(7, 0, &mut batch);
        assert_eq!(&all[..], &batch[..12]);
        // Every vector-unit variant of a fill gives the baseline's bits.
        let mut base = vec![0.0; 1000];
        draws_at_baseline(7, 3, 5, &mut base);
        let mut dispatched = vec![0.0; 1000];
        draws_at(7, 3, 5, &mut dispatched);
        assert_eq!(base, dispatched);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let mut avx2 = vec![0.0; 1000];
            // SAFETY: AVX2 is present.
            unsafe { draws_at_avx2(7, 3, 5, &mut avx2) };
            assert_eq!(base, avx2);
        }
        // Any window of a request, from its start block.
        let mut window = vec![0.0; 5];
        draws_at(7, 0, 3, &mut window);
        assert_eq!(&all[3..8], &window[..]);
        let mut other = PhiloxNormal::new(8);
        let mut c = vec![0.0; 12];
        other.fill(&mut c);
        assert_ne!(all, c);
    }

    #[test]
    fn signs_are_balanced_and_independent_of_the_normals() {
        let mut stream = PhiloxNormal::new(5);
        let mut signs = vec![0.0; 100_000];
        stream.fill_signs(&mut signs);
        assert!(signs.iter().all(|&s| s == 1.0 || s == -1.0));
        let mean = signs.iter().map(|&s| f64::from(s)).sum::<f64>() / signs.len() as f64;
        // Standard error 0.0032.
        assert!(mean.abs() < 0.015, "{mean}");
        assert_eq!(stream.block(), 100_000usize.div_ceil(128) as u64);
    }

    #[test]
    fn uniform_draws_fill_their_interval_evenly() {
        let mut stream = PhiloxNormal::new(11);
        let mut u = vec![0.0; 100_000];
        stream.fill_uniform(&mut u, -2.0, 6.0);
        assert!(u.iter().all(|&x| (-2.0..=6.0).contains(&x)));
        // Ten bins of width 0.8 hold 10% each; the binomial standard error is 0.095%.
        let mut bins = [0usize; 10];
        for &x in &u {
            bins[(((x + 2.0) / 0.8) as usize).min(9)] += 1;
        }
        for (i, &count) in bins.iter().enumerate() {
            let share = count as f64 / u.len() as f64;
            assert!((share - 0.1).abs() < 0.005, "bin {i}: {share}");
        }
        // A fresh block per request, and the next request continues the stream.
        let mut again = PhiloxNormal::new(11);
        let mut first = vec![0.0; 50_000];
        again.fill_uniform(&mut first, -2.0, 6.0);
        assert_eq!(first[..], u[..50_000]);
    }

    #[test]
    fn moments_and_tails_are_standard_normal() {
        let n = 400_000;
        let mut z = vec![0.0; n];
        PhiloxNormal::new(3).fill(&mut z);
        let z: Vec<f64> = z.into_iter().map(f64::from).collect();
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        let kurt = z.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n as f64 / var.powi(2);
        // Standard errors: mean 0.0016, variance 0.0022, kurtosis ~0.008.
        assert!(mean.abs() < 0.008, "mean {mean}");
        assert!((var - 1.0).abs() < 0.011, "var {var}");
        assert!((kurt - 3.0).abs() < 0.04, "kurtosis {kurt}");
        // P(|z| > 1.96) = 0.05, P(|z| > 3) = 0.0027, P(|z| > 4) = 6.3e-5 for N(0, 1).
        let frac = |c: f64| z.iter().filter(|v| v.abs() > c).count() as f64 / n as f64;
        assert!((frac(1.96) - 0.05).abs() < 0.0018, "{}", frac(1.96));
        assert!((frac(3.0) - 0.0027).abs() < 0.0004, "{}", frac(3.0));
        assert!((frac(4.0) - 6.3e-5).abs() < 5e-5, "{}", frac(4.0));
        // Successive draws and the two halves of a pair are uncorrelated.
        let lag1 = z.windows(2).map(|w| w[0] * w[1]).sum::<f64>() / n as f64;
        assert!(lag1.abs() < 0.008, "lag-1 correlation {lag1}");
    }
}
