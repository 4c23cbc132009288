//! `--save DIR`: the trained adapters in peft's layout and, for IVON, the posterior file
//! that `examples/predict` serves.

use std::path::Path;

use candle_nn::VarMap;
use varlora::files::peft::PeftAdapter;
use varlora::lora::LoraConfig;
use varlora::models::AdapterTargets;
use varlora::optim::Ivon;

use crate::Method;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Refuses, before any training, a `--save` that could not be written.
pub fn check(method: Method, adapted_head: bool) -> Res<()> {
    if matches!(method, Method::LoraEnsemble | Method::Hydra) {
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

/// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` (IVON's and
/// BLoB's at their mean) and, for IVON, `dir/posterior.safetensors`.
pub fn save(dir: &Path, varmap: &VarMap, lora: &LoraConfig, ivon: Option<&mut Ivon>) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    let adapter = PeftAdapter {
        base_model: Some("sentence-transformers/all-MiniLM-L6-v2".into()),
        ..PeftAdapter::new(lora.clone(), AdapterTargets::default())
    };
    match ivon {
        Some(opt) => {
            opt.posterior()?.save(dir.join("posterior.safetensors"))?;
            opt.with_mean(|| adapter.save(dir, varmap).map_err(candle_core::Error::wrap))?;
        }
        None => adapter.save(dir, varmap)?,
    }
    println!("adapters and posterior saved in {}", dir.display());
    Ok(())
}
