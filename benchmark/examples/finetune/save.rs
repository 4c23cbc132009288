//! `--save DIR`: the trained classifier in one file (`classifier.safetensors`; for BLoB,
//! its posterior), its adapters in peft's layout, and for IVON the posterior file, all
//! of which `examples/predict` serves.

use std::path::Path;

use candle_nn::VarMap;
use varlora::files::peft::PeftAdapter;
use varlora::lora::TargetModules;
use varlora::lora::{BlobConfig, LoraConfig};
use varlora::models::{SavedAdapter, SavedClassifier};
use varlora::optim::Ivon;

use crate::Method;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Refuses, before any training, a `--save` that could not be written.
pub fn check(method: Method, adapted_head: bool) -> Res<()> {
    if matches!(
        method,
        Method::LoraEnsemble | Method::Hydra | Method::MultiIvon
    ) {
        return Err(format!(
            "--save writes one LoRA adapter; {} has one per member",
            method.name()
        )
        .into());
    }
    if adapted_head {
        return Err("--save: peft has no layout for the adapted head's frozen random base".into());
    }
    Ok(())
}

/// Writes `dir/classifier.safetensors`, `dir/adapter_config.json` and
/// `dir/adapter_model.safetensors` (IVON's at its mean, BLoB's peft adapter at its mean)
/// and, for IVON, `dir/posterior.safetensors`.
pub fn save(
    dir: &Path,
    (method, targets): (Method, TargetModules),
    (varmap, lora, seed): (&VarMap, &LoraConfig, u64),
    ivon: Option<&mut Ivon>,
) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    let peft = PeftAdapter {
        base_model: Some("sentence-transformers/all-MiniLM-L6-v2".into()),
        ..PeftAdapter::new(lora.clone(), targets.clone())
    };
    let adapter = match method {
        Method::Blob => SavedAdapter::Blob {
            blob: BlobConfig::new(lora.clone()),
            seed,
        },
        _ => SavedAdapter::Lora { lora: lora.clone() },
    };
    let classifier = SavedClassifier {
        adapter,
        targets,
        classes: 2,
    };
    let write = || -> varlora::Result<()> {
        peft.save(dir, varmap)?;
        classifier.save(dir.join("classifier.safetensors"), varmap)
    };
    match ivon {
        Some(opt) => {
            opt.posterior()?.save(dir.join("posterior.safetensors"))?;
            opt.with_mean(|| write().map_err(candle_core::Error::wrap))?;
        }
        None => write()?,
    }
    println!(
        "classifier, adapters and posterior saved in {}",
        dir.display()
    );
    Ok(())
}
