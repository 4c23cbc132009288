//! LoRA adapters in the layout of Hugging Face's peft (`adapter_config.json` and
//! `adapter_model.safetensors`), so that an adapter trained here loads into Python's
//! `PeftModel.from_pretrained` on the same base model, and one trained there loads here.
//!
//! Every model here names its adapter vars after the module they sit on, as transformers
//! names it, so the names map one to one: a decoder's
//! `model.layers.0.self_attn.q_proj.lora_a` is peft's
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` on a
//! `LlamaForCausalLM`, and BERT's `encoder.layer.0.attention.self.query.lora_a` is
//! `base_model.model.encoder.layer.0.attention.self.query.lora_A.weight` on a
//! `BertModel`. A BERT classifier's head trained whole (`classifier.weight`,
//! `classifier.bias`) is saved as peft saves a module in `modules_to_save`:
//! `base_model.model.classifier.weight`. peft's `BertModel` has no such head: apply it to
//! the mean-pooled output, as [`crate::models::BertClassifier`] does.
//!
//! A BLoB adapter exports its mean (`lora_a` is the mean of `A`; its `lora_a_g` is left
//! out). An IVON-trained adapter exports whatever its vars hold: save at the mean.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use serde_json::{json, Value};

use super::sealed;
use crate::lora::{LoraConfig, TargetModules};
use crate::{Error, Result};

const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KIND: &str = "peft-adapter";
const VERSION: u32 = 1;
const PREFIX: &str = "base_model.model.";

/// A LoRA adapter's settings as `adapter_config.json` holds them.
///
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{VarBuilder, VarMap};
/// use varlora::files::peft::PeftAdapter;
/// use varlora::lora::{LoraConfig, TargetModules};
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// // What `LlamaDecoder::load` creates for rank-2 LoRA on q and v, hidden size 4.
/// for module in ["q_proj", "v_proj"] {
///     vb.get((2, 4), &format!("model.layers.0.self_attn.{module}.lora_a"))?;
///     vb.get((4, 2), &format!("model.layers.0.self_attn.{module}.lora_b"))?;
/// }
/// let dir = std::env::temp_dir().join("varlora-doc-peft");
/// let targets = TargetModules::new(["q_proj", "v_proj"]);
/// let adapter = PeftAdapter::new(LoraConfig::new(2).alpha(16.0), targets);
/// adapter.save(&dir, &varmap)?;
/// let loaded = PeftAdapter::load(&dir, &varmap)?;
/// assert_eq!(loaded.lora.alpha, 16.0);
/// # Ok::<(), varlora::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct PeftAdapter {
    /// Rank, `lora_alpha` and `lora_dropout`.
    pub lora: LoraConfig,
    /// peft's `target_modules`.
    pub targets: TargetModules,
    /// peft's `base_model_name_or_path`, e.g. `sentence-transformers/all-MiniLM-L6-v2`.
    pub base_model: Option<String>,
}

fn bad(path: &Path, problem: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

impl PeftAdapter {
    /// An adapter with no base model recorded.
    pub fn new(lora: LoraConfig, targets: TargetModules) -> Self {
        Self {
            lora,
            targets,
            base_model: None,
        }
    }

    /// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` (with this
    /// crate's checksum in its metadata, which peft ignores) from the adapter vars in
    /// `adapters`, named as the models here name them (`{module}.lora_a`,
    /// `{module}.lora_b`). Every adapted module must be one the targets name, with both
    /// factors of this rank; a head trained whole (`classifier.weight`,
    /// `classifier.bias`) is saved as peft's `modules_to_save`.
    pub fn save(&self, dir: impl AsRef<Path>, adapters: &VarMap) -> Result<()> {
        let dir = dir.as_ref();
        self.lora.validate()?;
        let tensors = self.peft_tensors(dir, adapters)?;
        let head = tensors
            .keys()
            .any(|k| k.starts_with("base_model.model.classifier."));
        std::fs::create_dir_all(dir)?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let tensors = tensors.into_iter().collect();
        sealed::write(&dir.join(WEIGHTS_FILE), KIND, VERSION, tensors, meta)?;
        let config = json!({
            "peft_type": "LORA",
            "task_type": null,
            "base_model_name_or_path": self.base_model,
            "r": self.lora.rank,
            "lora_alpha": self.lora.alpha,
            // Through its shortest decimal, so that 0.1f32 is written 0.1.
            "lora_dropout": self.lora.dropout.to_string().parse::<f64>().unwrap_or(0.0),
            "target_modules": &self.targets,
            "modules_to_save": if head { json!(["classifier"]) } else { Value::Null },
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "use_dora": false,
            "init_lora_weights": true,
            "inference_mode": true,
        });
        let text = serde_json::to_string_pretty(&config).map_err(|e| bad(dir, e))?;
        std::fs::write(dir.join(CONFIG_FILE), text)?;
        Ok(())
    }

    /// The adapter tensors under peft's names, checked against the targets and rank.
    fn peft_tensors(&self, dir: &Path, adapters: &VarMap) -> Result<HashMap<String, Tensor>> {
        let vars = super::lock_vars(adapters)?;
        let mut out = HashMap::new();
        for (peft, name, var) in peft_vars(&vars).map_err(|e| bad(dir, e))? {
            out.insert(peft, head_as_peft(name, var.as_tensor())?);
        }
        for k in out.keys() {
            let Some(module) = k.strip_suffix(".lora_A.weight") else {
                continue;
            };
            let name = module.strip_prefix(PREFIX).unwrap_or(module);
            if !self.targets.matches(name) {
                return Err(bad(
                    dir,
                    format!("{name} carries an adapter, but the targets {:?} do not name it: give the targets the model was built with", self.targets),
                ));
            }
            if !out.contains_key(&format!("{module}.lora_B.weight")) {
                return Err(bad(dir, format!("{module} has lora_a but no lora_b")));
            }
        }
        for (k, t) in &out {
            let r = if k.ends_with(".lora_A.weight") {
                t.dims().first()
            } else if k.ends_with(".lora_B.weight") {
                t.dims().get(1)
            } else {
                continue;
            };
            if t.rank() != 2 || r != Some(&self.lora.rank) {
                return Err(bad(
                    dir,
                    format!(
                        "{k} has shape {:?}, not a rank-{} LoRA factor",
                        t.dims(),
                        self.lora.rank
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// Reads `dir/adapter_config.json`, written here or by peft. Settings this crate's LoRA
    /// does not implement (rsLoRA, DoRA, biases, per-layer ranks) are errors.
    pub fn read_config(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join(CONFIG_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|e| bad(&path, format!("cannot read: {e}")))?;
        let c: Value = serde_json::from_str(&text).map_err(|e| bad(&path, e))?;
        check_supported(&c, &path)?;
        let field = |k: &str| c.get(k).unwrap_or(&Value::Null);
        let number = |k: &str| {
            field(k)
                .as_f64()
                .ok_or_else(|| bad(&path, format!("{k} is missing or not a number")))
        };
        let lora = LoraConfig {
            rank: number("r")? as usize,
            alpha: number("lora_alpha")?,
            dropout: field("lora_dropout").as_f64().unwrap_or(0.0) as f32,
        };
        lora.validate()?;
        Ok(Self {
            lora,
            targets: serde_json::from_value(field("target_modules").clone()).map_err(|e| {
                bad(
                    &path,
                    format!("target_modules is missing or not a list or pattern: {e}"),
                )
            })?,
            base_model: field("base_model_name_or_path").as_str().map(String::from),
        })
    }

    /// Reads the adapter in `dir` and sets the vars of `adapters` (a model built with
    /// [`PeftAdapter::read_config`]'s settings) to its tensors. Every var must find its
    /// tensor with its shape, and every tensor its var; otherwise nothing is set. A file
    /// written here is checked against its checksum; one written by peft has none.
    pub fn load(dir: impl AsRef<Path>, adapters: &VarMap) -> Result<Self> {
        let dir = dir.as_ref();
        let adapter = Self::read_config(dir)?;
        let path = dir.join(WEIGHTS_FILE);
        let file = sealed::read_foreign(&path, KIND, VERSION, &Device::Cpu)?.tensors;
        let file = from_sequence_classification(file).map_err(|e| bad(&path, e))?;
        let vars = super::lock_vars(adapters)?;
        let targets = peft_vars(&vars).map_err(|e| bad(&path, e))?;
        super::set_vars(&path, file, targets, head_from_peft)?;
        Ok(adapter)
    }
}

/// The tensors of an adapter trained on a `BertForSequenceClassification` (peft names
/// its encoder `base_model.model.bert.encoder...`) under a `BertModel`'s names. Its head
/// reads the pooler's output, which [`crate::models::BertClassifier`] does not have, so
/// such a file with a head is an error rather than a model that predicts wrongly.
fn from_sequence_classification(
    file: HashMap<String, Tensor>,
) -> std::result::Result<HashMap<String, Tensor>, String> {
    let nested = format!("{PREFIX}bert.");
    if !file.keys().any(|k| k.starts_with(&nested)) {
        return Ok(file);
    }
    if let Some(head) = file.keys().find(|k| !k.starts_with(&nested)) {
        return Err(format!(
            "{head}: a BertForSequenceClassification head reads the pooler output, which \
             BertClassifier (a head on the mean-pooled output) does not have; load the \
             encoder's adapters alone"
        ));
    }
    Ok(file
        .into_iter()
        .map(|(k, v)| (k.replacen(&nested, PREFIX, 1), v))
        .collect())
}

/// Every var of `vars` a peft adapter holds, with its peft name: all but BLoB's
/// `lora_a_g` (the std, which peft has no place for). Any other var without a peft name
/// is an error.
fn peft_vars(
    vars: &HashMap<String, Var>,
) -> std::result::Result<Vec<(String, &str, &Var)>, String> {
    vars.iter()
        .filter(|(name, _)| !name.ends_with(".lora_a_g"))
        .map(|(name, var)| {
            let peft = peft_name(name)
                .ok_or_else(|| format!("var {name} has no place in a peft LoRA adapter"))?;
            Ok((peft, name.as_str(), var))
        })
        .collect()
}

/// peft's name for an adapter var, or `None` for a var peft has no place for.
fn peft_name(name: &str) -> Option<String> {
    if let Some(module) = name.strip_suffix(".lora_a") {
        return Some(format!("{PREFIX}{module}.lora_A.weight"));
    }
    if let Some(module) = name.strip_suffix(".lora_b") {
        return Some(format!("{PREFIX}{module}.lora_B.weight"));
    }
    matches!(name, "classifier.weight" | "classifier.bias").then(|| format!("{PREFIX}{name}"))
}

/// A head trained whole is stored with a member axis of 1; peft's has none.
fn head_as_peft(name: &str, t: &Tensor) -> Result<Tensor> {
    if !name.starts_with("classifier.") {
        return Ok(t.clone());
    }
    if t.dims().first() != Some(&1) {
        return Err(Error::Unsupported(format!(
            "{name} has shape {:?}: a head per LoRA-Ensemble member has no peft layout",
            t.dims()
        )));
    }
    Ok(t.squeeze(0)?)
}

/// The inverse of [`head_as_peft`]: peft's head gets back its member axis of 1.
fn head_from_peft(name: &str, t: Tensor) -> Result<Tensor> {
    if name.starts_with("classifier.") {
        Ok(t.unsqueeze(0)?)
    } else {
        Ok(t)
    }
}

/// An error unless the config `c` read from `path` is a plain LoRA adapter: no rsLoRA,
/// DoRA, transposed weights, biases or per-module ranks and alphas, which the adapters
/// here do not implement.
fn check_supported(c: &Value, path: &Path) -> Result<()> {
    let field = |k: &str| c.get(k).unwrap_or(&Value::Null);
    if field("peft_type").as_str() != Some("LORA") {
        return Err(bad(
            path,
            format!("peft_type {}, expected \"LORA\"", field("peft_type")),
        ));
    }
    let off = |k: &str| !field(k).as_bool().unwrap_or(false);
    let empty = |k: &str| field(k).as_object().is_none_or(|m| m.is_empty());
    for (k, ok) in [
        ("use_rslora", off("use_rslora")),
        ("use_dora", off("use_dora")),
        ("fan_in_fan_out", off("fan_in_fan_out")),
        (
            "bias",
            matches!(field("bias").as_str(), None | Some("none")),
        ),
        ("rank_pattern", empty("rank_pattern")),
        ("alpha_pattern", empty("alpha_pattern")),
    ] {
        if !ok {
            return Err(bad(path, format!("{k} = {} is not supported", field(k))));
        }
    }
    Ok(())
}
