//! A fine-tuned classifier in one checksummed file: its adapters and head, and what it
//! takes to rebuild the model around them on the pretrained weights. For BLoB, that is
//! the posterior (`M`, `G`, `B` and the config).

use std::path::Path;

use candle_core::DType;
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::{AdapterSpec, BertClassifier, BertConfig, BertEncoder};
use crate::files::sealed;
use crate::lora::{BlobConfig, BlobSampler, LoraConfig, TargetModules};
use crate::Result;

const KIND: &str = "classifier";
const VERSION: u32 = 1;
const HEADER_KEY: &str = "varlora.classifier";

/// The adapter a saved classifier carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "adapter", rename_all = "lowercase")]
pub enum SavedAdapter {
    /// LoRA (trained with AdamW, or IVON at its mean; IVON's posterior is a
    /// [`crate::predict::GaussianPosterior`] file of its own).
    Lora {
        /// Rank, alpha and dropout.
        lora: LoraConfig,
    },
    /// BLoB: the saved vars are its posterior, sampled by a [`BlobSampler`] of `seed`.
    Blob {
        /// BLoB's settings.
        blob: BlobConfig,
        /// The sampler's seed.
        seed: u64,
    },
}

/// How to rebuild a [`BertClassifier`] (head trained whole) around saved adapters.
///
/// ```no_run
/// use candle_core::{DType, Device};
/// use candle_nn::VarBuilder;
/// use varlora::models::{BertConfig, SavedClassifier};
/// # fn config() -> BertConfig { unimplemented!() }
/// # let varmap = candle_nn::VarMap::new();
/// # let saved: SavedClassifier = unimplemented!();
/// // After training: the adapters and head live in `varmap`.
/// saved.save("runs/blob/classifier.safetensors", &varmap)?;
/// // To serve: the pretrained weights, and the file.
/// let base = VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let loaded = SavedClassifier::load("runs/blob/classifier.safetensors", base, &config())?;
/// # Ok::<(), varlora::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedClassifier {
    /// The adapter and its settings.
    pub adapter: SavedAdapter,
    /// The layers that carry it. Files written before 0.2 hold six BERT flags here, read
    /// as the modules they named.
    pub targets: TargetModules,
    /// The head's outputs.
    pub classes: usize,
}

/// A classifier rebuilt from a file.
pub struct LoadedClassifier {
    /// The model, its vars set from the file.
    pub model: BertClassifier,
    /// Its adapter and head vars.
    pub varmap: VarMap,
    /// The posterior to predict with, for BLoB.
    pub sampler: Option<BlobSampler>,
    /// What the file said.
    pub saved: SavedClassifier,
}

impl SavedClassifier {
    /// Writes every var of `adapters` (the adapters and the head, as
    /// [`BertClassifier::new`] names them) and these settings to `path`, checksummed.
    pub fn save(&self, path: impl AsRef<Path>, adapters: &VarMap) -> Result<()> {
        let vars = crate::files::lock_vars(adapters)?;
        let tensors = vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        let meta = sealed::header_meta(HEADER_KEY, self)?;
        sealed::write(path.as_ref(), KIND, VERSION, tensors, meta)
    }

    /// Rebuilds the classifier on the pretrained weights `base` and sets its vars from the
    /// file at `path`. Every var must find its tensor with its shape, and every tensor its
    /// var.
    pub fn load(
        path: impl AsRef<Path>,
        base: VarBuilder,
        config: &BertConfig,
    ) -> Result<LoadedClassifier> {
        let path = path.as_ref();
        let dev = base.device().clone();
        let file = sealed::read(path, KIND, VERSION, &dev)?;
        let saved: SavedClassifier = file.header(HEADER_KEY, path)?;
        let (spec, sampler) = match &saved.adapter {
            SavedAdapter::Lora { lora } => (AdapterSpec::Lora(lora.clone()), None),
            SavedAdapter::Blob { blob, seed } => {
                let s = BlobSampler::new(*seed);
                (AdapterSpec::Blob(blob.clone(), s.clone()), Some(s))
            }
        };
        let varmap = VarMap::new();
        let adapters = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let encoder =
            BertEncoder::load(base, adapters.clone(), config, Some(&spec), &saved.targets)?;
        let model = BertClassifier::new(encoder, saved.classes, adapters)?;
        {
            let vars = crate::files::lock_vars(&varmap)?;
            let targets = vars
                .iter()
                .map(|(name, var)| (name.clone(), name.as_str(), var));
            crate::files::set_vars(path, file.tensors, targets, |_, t| Ok(t))?;
        }
        Ok(LoadedClassifier {
            model,
            varmap,
            sampler,
            saved,
        })
    }
}
