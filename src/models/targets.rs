//! Which linear layers carry adapters, named as peft's `target_modules` names them.

use serde::{Deserialize, Serialize};

/// The modules that get an adapter, as a list of names in peft's `target_modules` sense: a
/// module matches when its full name (e.g. `model.layers.3.self_attn.q_proj`) equals an
/// entry or ends with `.` followed by the entry.
///
/// ```
/// use varlora::models::TargetModules;
/// let t = TargetModules::new(["q_proj", "v_proj"]);
/// assert!(t.matches("model.layers.3.self_attn.q_proj"));
/// assert!(!t.matches("model.layers.3.self_attn.k_proj"));
/// // A suffix must start at a `.`: `xq_proj` is another module.
/// assert!(!t.matches("model.layers.3.self_attn.xq_proj"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetModules(Vec<String>);

impl TargetModules {
    /// The modules named by `names`.
    pub fn new<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Self(names.into_iter().map(Into::into).collect())
    }

    /// Whether the module of full name `module` is a target.
    pub fn matches(&self, module: &str) -> bool {
        self.0.iter().any(|entry| {
            module == entry
                || module
                    .strip_suffix(entry.as_str())
                    .is_some_and(|head| head.ends_with('.'))
        })
    }

    /// The entries, as given.
    pub fn names(&self) -> &[String] {
        &self.0
    }
}
