//! Data-parallel IVON: the ranks average the statistics of their samples before every
//! update, as ivon-opt's `sync=True` does, so that `m`, `h` and the momentum stay
//! identical on every rank without a broadcast.

use std::sync::Arc;

use candle_core::Tensor;

use super::{Ivon, Position};
use crate::collective::{Collective, ReduceOp};
use crate::noise::PhiloxNormal;
use crate::optim::shell::ranks;
use crate::{Error, Result};

/// Rank `rank`'s training-noise seed: the configured seed itself on rank 0 (so a run of
/// one rank draws what a run without a collective draws), a mix of it with the rank
/// elsewhere.
pub(super) fn rank_seed(seed: u64, rank: usize) -> u64 {
    if rank == 0 {
        return seed;
    }
    let mut z = seed ^ (rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Ivon {
    /// Makes this optimizer one rank of a data-parallel run over `collective`: before
    /// each update the ranks average the MC-averaged gradient and the Hessian statistic
    /// (the noise-gradient products for `Price`, the squared gradients for `Gradsq`); a
    /// NaN or Inf gradient on any rank makes every rank skip (or fail) the same step.
    ///
    /// Each rank draws its own training samples from the Philox stream of
    /// `rank_seed(seed, rank)` at the shared position, so a checkpoint saved on rank 0
    /// resumes every rank: load it, then call `set_collective`. The current sample is
    /// redrawn from this rank's stream (rank 0's is unchanged). A noise source of your
    /// own is left as it is: give each rank its own draws. Call it between steps,
    /// with the same vars, settings and step count on every rank; a mismatch that the
    /// ranks can see is an error on all of them. Where the fused kernel runs (see
    /// [`Ivon::try_step`]), it still does: each rank forms its statistics, the ranks
    /// average them, and one pass per var updates the state and draws the next sample.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use varlora::collective::ThreadGroup;
    /// use varlora::optim::{Ivon, IvonConfig};
    /// # fn replica() -> Vec<candle_core::Var> { unimplemented!() }
    /// for rank in ThreadGroup::new(2)?.into_ranks() {
    ///     std::thread::spawn(move || -> varlora::Result<()> {
    ///         let mut opt = Ivon::new(replica(), IvonConfig::new(0.1, 1e4))?;
    ///         opt.set_collective(Arc::new(rank))?;
    ///         // ... forward and backward on this rank's shard, then opt.try_step(&grads)
    ///         Ok(())
    ///     });
    /// }
    /// # Ok::<(), varlora::Error>(())
    /// ```
    pub fn set_collective(&mut self, collective: Arc<dyn Collective>) -> Result<()> {
        if self.count > 0 {
            return Err(Error::InvalidState(
                "set_collective needs an empty sample buffer: call it between steps",
            ));
        }
        self.check_same_on_every_rank(collective.as_ref())?;
        let seed = rank_seed(self.config.seed, collective.rank());
        let drawn = self.blocks_per_sample();
        let at_sample = self.position == Position::Sample;
        let mut redraw = false;
        if let Some(philox) = self.noise.philox() {
            // Back to where the current sample was drawn, on this rank's stream.
            let block = if at_sample {
                philox.block().saturating_sub(drawn)
            } else {
                philox.block()
            };
            *philox = PhiloxNormal::at(seed, block);
            redraw = at_sample;
        }
        self.collective = Some(collective);
        if redraw {
            self.restore_mean()?;
            self.resample()?;
        }
        Ok(())
    }

    /// The collective this rank averages over, if any.
    pub fn collective(&self) -> Option<&Arc<dyn Collective>> {
        self.collective.as_ref()
    }

    /// The collective the statistics go through: every step takes the path that reduces
    /// them, even in a world of one, so that one GPU exercises all of it.
    pub(super) fn peers(&self) -> Option<&dyn Collective> {
        self.collective.as_deref()
    }

    /// Errors on every rank unless the ranks agree on the layout, settings and step.
    fn check_same_on_every_rank(&self, c: &dyn Collective) -> Result<()> {
        let mut shapes = 0u64;
        for p in self.groups.iter().flat_map(|g| g.params.iter()) {
            for &d in p.var.dims() {
                shapes = shapes.wrapping_mul(1_000_003).wrapping_add(d as u64 + 1);
            }
        }
        let signature = [
            self.groups.len() as f64,
            self.groups.iter().map(|g| g.params.len()).sum::<usize>() as f64,
            self.blocks_per_sample() as f64,
            (shapes % (1 << 50)) as f64,
            self.counts.step as f64,
            self.config.mc_samples as f64,
            self.config.seed as f64,
            c.world_size() as f64,
        ];
        let mine = Tensor::new(&signature, &self.device)?;
        let max = c.all_reduce(&mine, ReduceOp::Max)?.to_vec1::<f64>()?;
        let min = c
            .all_reduce(&mine.neg()?, ReduceOp::Max)?
            .neg()?
            .to_vec1::<f64>()?;
        if max != min {
            return Err(Error::Collective(format!(
                "the ranks' optimizers differ (groups, vars, size, shapes, step, mc_samples, \
                 seed, world): from {min:?} to {max:?}"
            )));
        }
        Ok(())
    }

    /// Replaces every var's gradient and Hessian statistics with their mean over ranks,
    /// in one all-reduce. Nothing changes if it fails.
    pub(super) fn average_over_ranks(&mut self) -> Result<()> {
        if self.peers().is_none() {
            return Ok(());
        }
        let mut stats = Vec::new();
        for p in self.groups.iter().flat_map(|g| g.params.iter()) {
            let (Some(g), Some(h)) = (&p.avg_grad, &p.avg_hess) else {
                return Err(Error::NoSample("a var has no gradient sample"));
            };
            stats.extend([g.clone(), h.clone()]);
        }
        let Some(mean) = ranks::mean_over_ranks(self.peers(), &stats)? else {
            return Ok(());
        };
        let mut offset = 0;
        for p in self.params_mut() {
            let n = p.var.elem_count();
            let shape = p.var.shape().clone();
            p.avg_grad = Some(mean.narrow(0, offset, n)?.reshape(&shape)?);
            p.avg_hess = Some(mean.narrow(0, offset + n, n)?.reshape(&shape)?);
            offset += 2 * n;
        }
        Ok(())
    }
}
