//! `LoraLinear`: a frozen linear layer plus a trainable low-rank update.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{ModuleT, Tensor};
use candle_nn::{init::Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::dropout::unseeded_dropout;
use super::init::{init_lora_pair, kaiming_uniform_bound, var_name};
use super::stacked::StackedLora;
use super::{Adapter, McDropout};
use crate::kernels::layers::FrozenLinear;
use crate::{Error, Result};

/// The adapter's shape and scaling.
///
/// ```
/// let config = varlora::lora::LoraConfig::new(8).alpha(16.0).dropout(0.1);
/// assert_eq!(config.scale(), 2.0);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// The rank `r` of the update `B A`.
    pub rank: usize,
    /// The update is scaled by `alpha / rank`.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter's input during training (0 for none).
    #[serde(default)]
    pub dropout: f32,
}

fn default_alpha() -> f64 {
    8.0
}

impl LoraConfig {
    /// Rank `rank`, `alpha = 8` (PEFT's default), no dropout.
    pub fn new(rank: usize) -> Self {
        Self {
            rank,
            alpha: default_alpha(),
            dropout: 0.0,
        }
    }

    /// Sets `alpha`.
    #[must_use]
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// Sets `dropout`.
    #[must_use]
    pub fn dropout(mut self, dropout: f32) -> Self {
        self.dropout = dropout;
        self
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, value: String, expected| Error::InvalidConfig {
            field,
            value,
            expected,
        };
        if self.rank == 0 {
            return Err(invalid("rank", "0".into(), ">= 1"));
        }
        if !self.alpha.is_finite() {
            return Err(invalid("alpha", self.alpha.to_string(), "a finite value"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid(
                "dropout",
                self.dropout.to_string(),
                "a value in [0, 1)",
            ));
        }
        Ok(())
    }
}

/// A frozen `Linear` plus a trainable low-rank update:
/// `y = W x + b + (alpha / r) B A dropout(x)`, with `A` (r x in) initialised as PEFT does
/// (Kaiming-uniform with `a = sqrt 5`, i.e. U(-1/sqrt(in), 1/sqrt(in))) and `B` (out x r)
/// at zero, so that the layer starts as the frozen one.
///
/// Only `A` and `B` are created through the `VarBuilder` (name them with `vb.pp(...)`), so
/// `varmap.all_vars()` hands exactly the adapters to an optimizer; the frozen weight is a
/// plain tensor. candle draws `A` from unseeded entropy: call [`Adapter::init`] with a
/// seed for a reproducible start.
///
/// It implements [`ModuleT`] (`train` switches the dropout), not `Module`, so that generic
/// code cannot drop the dropout by accident: call `forward_t(&x, false)` to evaluate.
///
/// ```
/// use candle_core::{DType, Device, ModuleT, Tensor};
/// use candle_nn::{Linear, VarBuilder, VarMap};
/// use varlora::lora::{LoraConfig, LoraLinear};
///
/// let dev = Device::Cpu;
/// let base = Linear::new(Tensor::randn(0f32, 1., (4, 6), &dev)?, None);
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
/// let layer = LoraLinear::new(base, LoraConfig::new(2), vb.pp("q"))?;
/// assert_eq!(varmap.all_vars().len(), 2); // A and B only
/// let y = layer.forward_t(&Tensor::ones((3, 6), DType::F32, &dev)?, false)?;
/// assert_eq!(y.dims(), &[3, 4]);
/// # Ok::<(), varlora::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LoraLinear {
    base: FrozenLinear,
    a: Tensor,
    b: Tensor,
    config: LoraConfig,
    dropout: LoraDropout,
    merged: bool,
    prefix: String,
}

/// The dropout on the adapter's input: candle's (unseeded), or MC dropout's seeded masks.
#[derive(Clone, Debug)]
enum LoraDropout {
    Unseeded(f32),
    Seeded(f32, McDropout),
}

impl LoraLinear {
    /// Wraps `base` (out x in) with adapters `a` (`vb` name "lora_a") and `b` ("lora_b").
    pub fn new(base: Linear, config: LoraConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let (out_dim, in_dim) = base.weight().dims2()?;
        let bound = kaiming_uniform_bound(in_dim);
        let a = vb.get_with_hints(
            (config.rank, in_dim),
            "lora_a",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let b = vb.get_with_hints((out_dim, config.rank), "lora_b", Init::Const(0.0))?;
        let mut layer = Self::from_parts(base, a, b, config)?;
        layer.prefix = vb.prefix();
        Ok(layer)
    }

    /// As [`Self::new`], with the dropout masks drawn from `mc` (seeded, and switched on at
    /// evaluation by its posterior samples): LoRA for MC dropout.
    pub fn with_mc_dropout(
        base: Linear,
        config: LoraConfig,
        vb: VarBuilder,
        mc: &McDropout,
    ) -> Result<Self> {
        let p = config.dropout;
        let mut layer = Self::new(base, config, vb)?;
        layer.dropout = LoraDropout::Seeded(p, mc.clone());
        Ok(layer)
    }

    /// A layer from existing adapter tensors, e.g. loaded from a checkpoint.
    pub fn from_parts(base: Linear, a: Tensor, b: Tensor, config: LoraConfig) -> Result<Self> {
        config.validate()?;
        let (out_dim, in_dim) = base.weight().dims2()?;
        if a.dims() != [config.rank, in_dim] || b.dims() != [out_dim, config.rank] {
            return Err(Error::ShapeMismatch(format!(
                "adapters of shapes {:?} and {:?} for a {out_dim}x{in_dim} layer of rank {}: expected [{}, {in_dim}] and [{out_dim}, {}]",
                a.dims(),
                b.dims(),
                config.rank,
                config.rank,
                config.rank
            )));
        }
        Ok(Self {
            dropout: LoraDropout::Unseeded(config.dropout),
            base: FrozenLinear::new(base),
            a,
            b,
            config,
            merged: false,
            prefix: String::new(),
        })
    }

    /// A copy for inference: the same weights (shared storage, so later updates of the
    /// vars show through) without gradient tracking, so that a forward pass frees its
    /// intermediate tensors as it goes instead of keeping them for a backward pass.
    pub fn detach(&self) -> Self {
        Self {
            a: self.a.detach(),
            b: self.b.detach(),
            ..self.clone()
        }
    }

    /// The adapter `A` (r x in).
    pub fn a(&self) -> &Tensor {
        &self.a
    }

    /// The adapter `B` (out x r).
    pub fn b(&self) -> &Tensor {
        &self.b
    }

    /// The frozen layer (with the update folded in while merged).
    pub fn base(&self) -> &Linear {
        self.base.linear()
    }

    /// The configuration.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Whether the update is folded into the frozen weight.
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// `(alpha / r) B A`, the update as a full matrix.
    pub fn delta_weight(&self) -> Result<Tensor> {
        Ok((self.b.matmul(&self.a)? * self.config.scale())?)
    }

    /// Folds the update into the frozen weight, so that inference costs one matmul. The
    /// adapters are then bypassed: merge for inference, not while training.
    pub fn merge(&mut self) -> Result<()> {
        if self.merged {
            return Err(Error::InvalidState("the adapter is already merged"));
        }
        self.base = FrozenLinear::new(self.merged_linear()?);
        self.merged = true;
        Ok(())
    }

    /// Takes the update back out of the frozen weight (up to rounding).
    pub fn unmerge(&mut self) -> Result<()> {
        if !self.merged {
            return Err(Error::InvalidState("the adapter is not merged"));
        }
        let base = self.base().weight();
        let w = (base - self.delta_weight()?.to_dtype(base.dtype())?)?;
        self.base = FrozenLinear::new(Linear::new(w, self.base().bias().cloned()));
        self.merged = false;
        Ok(())
    }

    /// The adapter's contribution for `x`, with dropout when `train`. The rows are
    /// flattened into one matrix, so that the backward pass computes `A`'s gradient as one
    /// matmul instead of one per sequence and a sum.
    fn update(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let x = match &self.dropout {
            LoraDropout::Unseeded(p) => unseeded_dropout(x, *p, train)?,
            LoraDropout::Seeded(p, mc) => mc.apply(x, *p, train)?,
        };
        let mut dims = x.dims().to_vec();
        let in_dim = dims.pop().unwrap_or(1);
        let xa = x.reshape(((), in_dim))?.matmul(&self.a.t()?)?;
        dims.push(self.b.dim(0)?);
        (xa.matmul(&self.b.t()?)? * self.config.scale())?.reshape(dims)
    }
}

impl ModuleT for LoraLinear {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = self.base.forward(x)?;
        if self.merged {
            return Ok(y);
        }
        y + self.update(x, train)?
    }
}

impl Adapter for LoraLinear {
    fn forward_rows(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.forward_t(x, train)
    }

    fn detach(&self) -> Arc<dyn Adapter> {
        Arc::new(LoraLinear::detach(self))
    }

    /// Errors while merged (unmerge first) and with MC dropout, whose samples are its
    /// masks, not its weights.
    fn with_stacked_weights(
        &self,
        stacked: &mut HashMap<String, Tensor>,
        samples: usize,
    ) -> Result<Arc<dyn Adapter>> {
        if self.merged {
            return Err(Error::InvalidState(
                "the adapter is merged: unmerge it to evaluate stacked samples",
            ));
        }
        if let LoraDropout::Seeded(..) = self.dropout {
            return Err(Error::Unsupported(
                "MC dropout samples masks, not weights: predict it sample by sample".into(),
            ));
        }
        let (a_name, b_name) = (
            var_name(&self.prefix, "lora_a"),
            var_name(&self.prefix, "lora_b"),
        );
        Ok(Arc::new(StackedLora::new(
            self.base.clone(),
            (&a_name, &self.a),
            (&b_name, &self.b),
            self.config.scale(),
            stacked,
            samples,
        )?))
    }

    fn merged_linear(&self) -> Result<Linear> {
        if self.merged {
            return Ok(self.base().clone());
        }
        let base = self.base().weight();
        let w = (base + self.delta_weight()?.to_dtype(base.dtype())?)?;
        Ok(Linear::new(w, self.base().bias().cloned()))
    }

    /// `A` Kaiming-uniform as PEFT, U(-1/sqrt(in), 1/sqrt(in)); `B` zero.
    fn init(&self, seed: u64) -> Result<()> {
        if self.merged {
            return Err(Error::InvalidState(
                "the adapter is merged: unmerge it before init",
            ));
        }
        let bound = kaiming_uniform_bound(self.a.dim(1)?);
        init_lora_pair(&self.prefix, seed, &self.a, bound, &self.b)
    }
}
