//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011)
//! with the Box-Muller transform.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::NoiseSource;
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

/// Seeded standard-normal draws from Philox4x32-10 and Box-Muller.
///
/// Draw `i` of the stream depends only on the seed and `i`: block `i / 4` of the counter,
/// lane `i % 4`, with lanes (0, 1) and (2, 3) each giving a Box-Muller pair. Every request
/// starts at a fresh block, so its state is just `(seed, next block)`. The transform runs in
/// f64 and rounds once to the requested dtype.
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

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next unused counter block.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// Fills `out` with draws, as f64, and advances the stream.
    pub fn fill(&mut self, out: &mut [f64]) {
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        for (j, chunk) in out.chunks_mut(4).enumerate() {
            let b = self.block + j as u64;
            let words = philox4x32_10([b as u32, (b >> 32) as u32, 0, 0], key);
            let pair = |u: u32, v: u32| {
                // Centred in (0, 1): ln never sees 0.
                let u1 = (f64::from(u) + 0.5) * (1.0 / 4_294_967_296.0);
                let u2 = (f64::from(v) + 0.5) * (1.0 / 4_294_967_296.0);
                let r = (-2.0 * u1.ln()).sqrt();
                let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
                [r * c, r * s]
            };
            let [a, b2] = pair(words[0], words[1]);
            let [c, d] = pair(words[2], words[3]);
            for (o, z) in chunk.iter_mut().zip([a, b2, c, d]) {
                *o = z;
            }
        }
        self.block += out.len().div_ceil(4) as u64;
    }
}

impl NoiseSource for PhiloxNormal {
    fn standard_normal(&mut self, numel: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut z = vec![0f64; numel];
        self.fill(&mut z);
        let t = match dtype {
            DType::F64 => Tensor::from_vec(z, numel, device)?,
            DType::F32 => {
                let z: Vec<f32> = z.into_iter().map(|v| v as f32).collect();
                Tensor::from_vec(z, numel, device)?
            }
            other => Tensor::from_vec(z, numel, device)?.to_dtype(other)?,
        };
        Ok(t)
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
        let mut other = PhiloxNormal::new(8);
        let mut c = vec![0.0; 12];
        other.fill(&mut c);
        assert_ne!(all, c);
    }

    #[test]
    fn moments_and_tails_are_standard_normal() {
        let n = 200_000;
        let mut z = vec![0.0; n];
        PhiloxNormal::new(3).fill(&mut z);
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        let kurt = z.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n as f64 / var.powi(2);
        // Standard errors: mean 1/sqrt(n) = 0.0022, var sqrt(2/n) = 0.0032, kurtosis ~0.011.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "var {var}");
        assert!((kurt - 3.0).abs() < 0.06, "kurtosis {kurt}");
        // P(|z| > 1.96) = 0.05 and P(|z| > 3) = 0.0027 for N(0, 1).
        let frac = |c: f64| z.iter().filter(|v| v.abs() > c).count() as f64 / n as f64;
        assert!((frac(1.96) - 0.05).abs() < 0.0025, "{}", frac(1.96));
        assert!((frac(3.0) - 0.0027).abs() < 0.0006, "{}", frac(3.0));
    }
}
