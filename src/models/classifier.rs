//! `BertClassifier`: the encoder's mean-pooled output into a classification head, trained
//! whole or through an adapter.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};

use super::bert::insert_linear;
use super::host;
use super::BertEncoder;
use crate::lora::{
    kaiming_uniform_bound, seeded_uniform, set_uniform, stacked_or_repeated, var_name, Adapter,
    AdapterBuilder, BlobLayerVars,
};
use crate::{Error, Result};

/// The head: trained whole, or a frozen random layer with an adapter.
#[derive(Clone, Debug)]
enum Head {
    /// Weight `(members, classes, hidden)` and bias `(members, classes)`, both vars.
    Trained {
        weight: Tensor,
        bias: Tensor,
        prefix: String,
    },
    Adapted(Arc<dyn Adapter>),
}

/// A sequence classifier: the encoder's mean-pooled output into a linear head, named
/// `classifier` under the adapters' `VarBuilder`.
///
/// - [`Self::new`]: a head trained whole. With LoRA-Ensemble each member has its own head,
///   stacked `(members, classes, hidden)`, and the logits come out as
///   `(members, batch, classes)`: train on the mean of the members' losses, predict with
///   `predict::predictive_from_samples`.
/// - [`Self::with_adapted_head`]: the reference recipe of BLoB and PEFT with a LoRA on the
///   classification head (bayesian-peft's `--apply-classhead-lora`): a frozen random head
///   plus an adapter, so that BLoB's head is Bayesian too.
#[derive(Clone, Debug)]
pub struct BertClassifier {
    encoder: BertEncoder,
    head: Head,
}

impl BertClassifier {
    /// The encoder plus a head (or one per member) with `classes` outputs, weight and
    /// bias U(-1/sqrt(hidden), 1/sqrt(hidden)) as PyTorch's `nn.Linear`.
    pub fn new(encoder: BertEncoder, classes: usize, adapters: VarBuilder) -> Result<Self> {
        let (m, h) = (encoder.members(), encoder.config().hidden_size);
        let vb = adapters.pp("classifier");
        let bound = kaiming_uniform_bound(h);
        let init = candle_nn::init::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let head = Head::Trained {
            weight: vb.get_with_hints((m, classes, h), "weight", init)?,
            bias: vb.get_with_hints((m, classes), "bias", init)?,
            prefix: vb.prefix(),
        };
        Ok(Self { encoder, head })
    }

    /// The encoder plus a frozen head with `classes` outputs, drawn from `seed` as
    /// PyTorch's `nn.Linear` (what a freshly created head holds when PEFT freezes it),
    /// carrying the adapter `builder` makes under `classifier`. Only the adapter trains.
    /// Not for LoRA-Ensemble encoders, whose members need heads of their own.
    ///
    /// ```no_run
    /// use varlora::lora::{BlobConfig, BlobSampler, LoraConfig};
    /// use varlora::models::{AdapterSpec, BertClassifier};
    /// # fn encoder() -> varlora::models::BertEncoder { unimplemented!() }
    /// # let varmap = candle_nn::VarMap::new();
    /// # let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &candle_core::Device::Cpu);
    /// let blob = AdapterSpec::Blob(BlobConfig::new(LoraConfig::new(8)), BlobSampler::new(0));
    /// let model = BertClassifier::with_adapted_head(encoder(), 2, vb, &blob, 0)?;
    /// # Ok::<(), varlora::Error>(())
    /// ```
    pub fn with_adapted_head(
        encoder: BertEncoder,
        classes: usize,
        adapters: VarBuilder,
        builder: &dyn AdapterBuilder,
        seed: u64,
    ) -> Result<Self> {
        if encoder.members() != 1 || builder.members() != 1 {
            return Err(Error::Unsupported(
                "an adapted head needs a single model: LoRA-Ensemble members train heads of \
                 their own (BertClassifier::new)"
                    .into(),
            ));
        }
        let h = encoder.config().hidden_size;
        let vb = adapters.pp("classifier");
        let bound = kaiming_uniform_bound(h);
        let frozen = |shape: &[usize], name: &str| {
            let name = var_name(&vb.prefix(), name);
            let shape = shape.into();
            let dev = vb.device();
            seeded_uniform(&shape, &name, seed, (-bound, bound), vb.dtype(), dev)
        };
        let base = Linear::new(
            frozen(&[classes, h], "base_weight")?,
            Some(frozen(&[classes], "base_bias")?),
        );
        Ok(Self {
            head: Head::Adapted(builder.build(base, vb)?),
            encoder,
        })
    }

    /// Sets the adapters and the head's trainable tensors to draws from `seed` (see
    /// [`Adapter::init`]; a head trained whole as in [`Self::new`]): the same seed gives
    /// the same model, whatever candle's unseeded initialisers drew.
    ///
    /// ```no_run
    /// # fn build() -> varlora::Result<varlora::models::BertClassifier> { unimplemented!() }
    /// let model = build()?;
    /// model.init(0)?;
    /// # Ok::<(), varlora::Error>(())
    /// ```
    pub fn init(&self, seed: u64) -> Result<()> {
        self.encoder.init(seed)?;
        match &self.head {
            Head::Trained {
                weight,
                bias,
                prefix,
            } => {
                let bound = kaiming_uniform_bound(self.encoder.config().hidden_size);
                for (t, name) in [(weight, "weight"), (bias, "bias")] {
                    set_uniform(t, &var_name(prefix, name), seed, -bound, bound)?;
                }
                Ok(())
            }
            Head::Adapted(a) => a.init(seed),
        }
    }

    /// A copy for inference without gradient tracking, sharing the weights (see
    /// [`BertEncoder::detach`]).
    pub fn detach(&self) -> Self {
        let head = match &self.head {
            Head::Trained {
                weight,
                bias,
                prefix,
            } => Head::Trained {
                weight: weight.detach(),
                bias: bias.detach(),
                prefix: prefix.clone(),
            },
            Head::Adapted(a) => Head::Adapted(a.detach()),
        };
        Self {
            encoder: self.encoder.detach(),
            head,
        }
    }

    /// A copy for inference that evaluates `samples` weight samples in one forward pass
    /// (see [`BertEncoder::with_stacked_weights`]); `stacked` holds the head's samples too
    /// (`classifier.weight` `(samples, 1, classes, hidden)` for a head trained whole), and
    /// an entry that is no var of the adapters or the head is an error.
    /// [`Self::forward_t`] then gives `(samples, batch, classes)`, or `(batch, classes)` for
    /// one sample: the logits [`crate::predict::predictive_stacked`] asks for.
    ///
    /// ```no_run
    /// use varlora::predict::{predictive_stacked, GaussianPosterior};
    /// # fn load() -> (varlora::models::BertClassifier, GaussianPosterior) { unimplemented!() }
    /// # let ids = candle_core::Tensor::new(&[[1u32, 2]], &candle_core::Device::Cpu)?;
    /// # let (types, mask) = (ids.zeros_like()?, ids.ones_like()?);
    /// let (model, posterior) = load(); // e.g. GaussianPosterior::load on the model's vars
    /// // 10 samples, 5 at a time in one forward each.
    /// let p = predictive_stacked(10, 5, false, |ks| {
    ///     let stacked = posterior.stacked_samples(ks.clone())?;
    ///     let sampled = model.with_stacked_weights(&stacked, ks.len())?;
    ///     sampled.forward_t(&ids, &types, &mask, false)
    /// })?;
    /// # Ok::<(), varlora::Error>(())
    /// ```
    pub fn with_stacked_weights(
        &self,
        stacked: &HashMap<String, Tensor>,
        samples: usize,
    ) -> Result<Self> {
        host::take_all_stacked(stacked, |rest| {
            Ok(Self {
                encoder: host::stacked(&self.encoder, rest, samples)?,
                head: self.stacked_head(rest, samples)?,
            })
        })
    }

    /// The head for `samples` stacked samples, taken out of `stacked` (a head trained whole
    /// without samples there is repeated).
    fn stacked_head(&self, stacked: &mut HashMap<String, Tensor>, samples: usize) -> Result<Head> {
        let (weight, bias, prefix) = match &self.head {
            Head::Adapted(a) => {
                return Ok(Head::Adapted(a.with_stacked_weights(stacked, samples)?))
            }
            Head::Trained {
                weight,
                bias,
                prefix,
            } => (weight, bias, prefix),
        };
        // `(samples, 1, ..)` from the `(1, ..)` var to `(samples, ..)`.
        let mut take = |t: &Tensor, name: &str| -> Result<Tensor> {
            let s = stacked_or_repeated(stacked, &var_name(prefix, name), t, samples)?;
            let mut dims = t.dims()[1..].to_vec();
            dims.insert(0, samples);
            Ok(s.reshape(dims)?)
        };
        Ok(Head::Trained {
            weight: take(weight, "weight")?,
            bias: take(bias, "bias")?,
            prefix: prefix.clone(),
        })
    }

    /// Every weight as one plain fine-tuned BERT classifier (see
    /// [`BertEncoder::merged_tensors`]), the head as `classifier.weight` `(classes,
    /// hidden)` and `classifier.bias`. The head is copied, so later training leaves the
    /// map as it is.
    pub fn merged_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = self.encoder.merged_tensors()?;
        let head = match &self.head {
            Head::Adapted(a) => a.merged_linear()?,
            Head::Trained { weight, bias, .. } => Linear::new(
                weight.squeeze(0)?.detach().copy()?,
                Some(bias.squeeze(0)?.detach().copy()?),
            ),
        };
        insert_linear(&mut out, "classifier", &head);
        Ok(out)
    }

    /// The encoder.
    pub fn encoder(&self) -> &BertEncoder {
        &self.encoder
    }

    /// Every adapter, the encoder's in layer order and then the head's.
    pub fn adapters(&self) -> impl Iterator<Item = &dyn Adapter> {
        let head = match &self.head {
            Head::Adapted(a) => Some(a.as_ref()),
            Head::Trained { .. } => None,
        };
        self.encoder.adapters().chain(head)
    }

    /// The vars of every BLoB layer, the head's included: what [`crate::optim::Blob`]
    /// trains.
    pub fn blob_layers(&self) -> Result<Vec<BlobLayerVars>> {
        let mut layers = self.encoder.blob_layers()?;
        if let Head::Adapted(a) = &self.head {
            layers.extend(a.posterior_vars()?);
        }
        Ok(layers)
    }

    /// Logits: `(batch, classes)`, or `(members, batch, classes)` for LoRA-Ensemble and
    /// stacked samples.
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let hidden =
            self.encoder
                .forward_t(input_ids, token_type_ids, Some(attention_mask), train)?;
        let pooled = BertEncoder::mean_pool(&hidden, attention_mask)?;
        let m = self.encoder.members();
        match &self.head {
            Head::Adapted(a) => {
                let logits = a.forward_rows(&pooled, train)?;
                if m == 1 {
                    return Ok(logits);
                }
                let (rows, classes) = logits.dims2()?;
                Ok(logits.reshape((m, rows / m, classes))?)
            }
            Head::Trained { weight, bias, .. } => {
                let (rows, h) = pooled.dims2()?;
                let pooled = pooled.reshape((m, rows / m, h))?;
                let logits = pooled
                    .matmul(&weight.transpose(1, 2)?)?
                    .broadcast_add(&bias.unsqueeze(1)?)?;
                Ok(if m == 1 { logits.squeeze(0)? } else { logits })
            }
        }
    }
}
