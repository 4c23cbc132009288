//! Which linear layers carry adapters, named as peft's `target_modules` names them.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The modules that get an adapter, in either of peft's two forms of `target_modules`:
///
/// - a list of names ([`TargetModules::new`]): a module matches when its full name (e.g.
///   `model.layers.3.self_attn.q_proj`) equals an entry or ends with `.` and the entry;
/// - a regular expression ([`TargetModules::pattern`]) that must match the whole name, as
///   peft's `re.fullmatch` does (its syntax is the `regex` crate's, which agrees with
///   Python's on the usual classes, groups and alternations).
///
/// Each model names its own modules as peft does on transformers' model: BERT's are
/// `encoder.layer.{i}.attention.self.query`, ..., `encoder.layer.{i}.output.dense`; a
/// Llama's `model.layers.{i}.self_attn.q_proj`, ..., `model.layers.{i}.mlp.down_proj`.
///
/// ```
/// use varlora::lora::TargetModules;
/// let t = TargetModules::new(["q_proj", "v_proj"]);
/// assert!(t.matches("model.layers.3.self_attn.q_proj"));
/// assert!(!t.matches("model.layers.3.self_attn.k_proj"));
/// // A suffix must start at a `.`: `xq_proj` is another module.
/// assert!(!t.matches("model.layers.3.self_attn.xq_proj"));
/// // BERT's MLP output without the attention output, which the suffix `output.dense`
/// // would also hit:
/// let mlp_out = TargetModules::pattern(r".*\.layer\.\d+\.output\.dense")?;
/// assert!(mlp_out.matches("encoder.layer.0.output.dense"));
/// assert!(!mlp_out.matches("encoder.layer.0.attention.output.dense"));
/// # Ok::<(), varlora::Error>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
pub struct TargetModules(Form);

#[derive(Clone, Debug)]
enum Form {
    Names(Vec<String>),
    /// The pattern as given, and compiled anchored at both ends.
    Pattern(String, Regex),
}

impl TargetModules {
    /// The modules named by `names` (peft's list form).
    pub fn new<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Self(Form::Names(names.into_iter().map(Into::into).collect()))
    }

    /// The modules whose whole name matches the regular expression `pattern` (peft's string
    /// form). Errors if `pattern` is not a valid expression.
    pub fn pattern(pattern: impl Into<String>) -> Result<Self> {
        let pattern = pattern.into();
        let regex = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| Error::InvalidConfig {
            field: "target_modules",
            value: format!("{pattern:?} ({e})"),
            expected: "a regular expression over module names",
        })?;
        Ok(Self(Form::Pattern(pattern, regex)))
    }

    /// Whether the module of full name `module` is a target.
    pub fn matches(&self, module: &str) -> bool {
        match &self.0 {
            Form::Names(names) => names.iter().any(|entry| {
                module == entry
                    || module
                        .strip_suffix(entry.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }),
            Form::Pattern(_, regex) => regex.is_match(module),
        }
    }

    /// The list of names, or `None` for a pattern.
    pub fn names(&self) -> Option<&[String]> {
        match &self.0 {
            Form::Names(names) => Some(names),
            Form::Pattern(..) => None,
        }
    }

    /// The pattern as given, or `None` for a list of names.
    pub fn as_pattern(&self) -> Option<&str> {
        match &self.0 {
            Form::Names(_) => None,
            Form::Pattern(p, _) => Some(p),
        }
    }
}

impl PartialEq for TargetModules {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Form::Names(a), Form::Names(b)) => a == b,
            (Form::Pattern(a, _), Form::Pattern(b, _)) => a == b,
            _ => false,
        }
    }
}

impl Eq for TargetModules {}

/// How [`TargetModules`] is written: peft's `target_modules` (a list, or a string that is
/// a pattern). Files written before version 0.2 hold six BERT flags, read as the modules
/// they named.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Wire {
    Names(Vec<String>),
    Pattern(String),
    BertFlags(BertFlags),
}

/// The six flags of the `AdapterTargets` that BERT's targets were before.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BertFlags {
    query: bool,
    key: bool,
    value: bool,
    attention_output: bool,
    intermediate: bool,
    output: bool,
}

impl TryFrom<Wire> for TargetModules {
    type Error = Error;

    fn try_from(w: Wire) -> Result<Self> {
        match w {
            Wire::Names(names) => Ok(Self::new(names)),
            Wire::Pattern(p) => Self::pattern(p),
            Wire::BertFlags(f) => {
                let chosen: Vec<&str> = [
                    (f.query, r"attention\.self\.query"),
                    (f.key, r"attention\.self\.key"),
                    (f.value, r"attention\.self\.value"),
                    (f.attention_output, r"attention\.output\.dense"),
                    (f.intermediate, r"intermediate\.dense"),
                    (f.output, r"output\.dense"),
                ]
                .into_iter()
                .filter_map(|(on, m)| on.then_some(m))
                .collect();
                Self::pattern(format!(r".*\.layer\.\d+\.({})", chosen.join("|")))
            }
        }
    }
}

impl From<TargetModules> for Wire {
    fn from(t: TargetModules) -> Self {
        match t.0 {
            Form::Names(names) => Wire::Names(names),
            Form::Pattern(p, _) => Wire::Pattern(p),
        }
    }
}
