//! IVON's hyperparameters.

use candle_core::Var;
use serde::{Deserialize, Serialize};

use crate::optim::shell::NonFinite;
use crate::{Error, Result};

/// How IVON estimates the Hessian diagonal from a sampled gradient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HessApprox {
    /// The reparameterisation (Price/Bonnet) estimator `ess * noise * grad * (h + wd)`:
    /// the reference default, and the one the papers use.
    #[default]
    Price,
    /// The squared gradient `ess * grad^2`, a Gauss-Newton-like estimate that is never
    /// negative.
    Gradsq,
}

/// IVON's configuration. `lr` and `ess` are required; everything else has the reference's
/// default (`ivon-opt` 0.1.3).
///
/// | field | default | valid |
/// |---|---|---|
/// | `lr` | required | finite, >= 0 |
/// | `ess` | required | finite, > 0 |
/// | `hess_init` | 1.0 | finite, > 0 |
/// | `beta1` | 0.9 | [0, 1], and < 1 with `debias` |
/// | `beta2` | 0.99999 | [0, 1] |
/// | `weight_decay` | 1e-4 | finite, >= 0 |
/// | `mc_samples` | 1 | >= 1 |
/// | `hess_approx` | `Price` | |
/// | `clip_radius` | inf | > 0 (inf: no clipping) |
/// | `debias` | true | |
/// | `rescale_lr` | true | |
/// | `on_nonfinite` | `Error` | |
/// | `seed` | 0 | |
/// | `fused` | true | |
///
/// The first seven are per-group settings: these values are the defaults that a
/// [`ParamGroup`] may override. In JSON an infinite `clip_radius` is written as `null`.
///
/// ```
/// use varlora::optim::{HessApprox, IvonConfig};
///
/// let config = IvonConfig::new(0.1, 1000.0)
///     .hess_init(0.5)
///     .mc_samples(2)
///     .hess_approx(HessApprox::Gradsq);
/// config.validate()?;
/// let json = serde_json::to_string(&config).unwrap();
/// let back: IvonConfig = serde_json::from_str(&json).unwrap();
/// assert_eq!(back, config);
/// # Ok::<(), varlora::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IvonConfig {
    /// Learning rate.
    pub lr: f64,
    /// Effective sample size: how many data points the likelihood counts, usually the
    /// training-set size. The posterior variance is `1 / (ess * (h + weight_decay))`,
    /// so the first samples have standard deviation `1 / sqrt(ess * hess_init)`.
    ///
    /// With a small `hess_init` (ivon-lora's 3e-4 for LoRA) the training-set size gives
    /// a posterior far wider than the adapters' weights, which then cannot learn. For
    /// LoRA on MiniLM the validation split chose `ess * hess_init` close to the
    /// training-set size `N` at both sizes measured (`ess = N / hess_init`: 1e7 for
    /// 3200 sentences, 1e6 for 320), and a tenfold error either way cost a lot: at 320
    /// sentences, 1e7 overfit worse than AdamW and 1e5 did not learn
    /// (docs/overconfident.md).
    pub ess: f64,
    /// Initial Hessian estimate `h`.
    #[serde(default = "defaults::hess_init")]
    pub hess_init: f64,
    /// Momentum decay.
    #[serde(default = "defaults::beta1")]
    pub beta1: f64,
    /// Hessian decay.
    #[serde(default = "defaults::beta2")]
    pub beta2: f64,
    /// Prior precision per unit of `ess` (`wd`).
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    /// Weight samples per update. The [`candle_nn::Optimizer`] one-liner updates after
    /// every `mc_samples`-th call of `step`; a [`crate::optim::Scheduled`] learns it and
    /// counts updates.
    #[serde(default = "defaults::mc_samples")]
    pub mc_samples: usize,
    /// Hessian estimator.
    #[serde(default)]
    pub hess_approx: HessApprox,
    /// Elementwise clip of the preconditioned step; infinite means none.
    #[serde(default = "defaults::clip_radius", with = "inf_as_null")]
    pub clip_radius: f64,
    /// Bias-correct the momentum by `1 - beta1^t`.
    #[serde(default = "defaults::yes")]
    pub debias: bool,
    /// Multiply the learning rate by `hess_init + weight_decay`.
    #[serde(default = "defaults::yes")]
    pub rescale_lr: bool,
    /// What a NaN or Inf gradient does.
    #[serde(default)]
    pub on_nonfinite: NonFinite,
    /// Seed of the default noise source.
    #[serde(default)]
    pub seed: u64,
    /// Use the fused kernel where it applies (one sample per step, f32 vars on the CPU,
    /// or on CUDA with the `cuda` feature, the default noise source). Its results are
    /// bit-identical to the tensor-op path; `false` forces the latter, e.g. to compare
    /// the two.
    #[serde(default = "defaults::yes")]
    pub fused: bool,
}

mod defaults {
    pub fn hess_init() -> f64 {
        1.0
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.99999
    }
    pub fn weight_decay() -> f64 {
        1e-4
    }
    pub fn mc_samples() -> usize {
        1
    }
    pub fn clip_radius() -> f64 {
        f64::INFINITY
    }
    pub fn yes() -> bool {
        true
    }
}

mod inf_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_infinite() && *v > 0.0 {
            s.serialize_none()
        } else {
            s.serialize_some(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $name(mut self, $name: $ty) -> Self {
                self.$name = $name;
                self
            }
        )*
    };
}

impl IvonConfig {
    /// The reference defaults with the two required values.
    pub fn new(lr: f64, ess: f64) -> Self {
        Self {
            lr,
            ess,
            hess_init: defaults::hess_init(),
            beta1: defaults::beta1(),
            beta2: defaults::beta2(),
            weight_decay: defaults::weight_decay(),
            mc_samples: defaults::mc_samples(),
            hess_approx: HessApprox::Price,
            clip_radius: defaults::clip_radius(),
            debias: true,
            rescale_lr: true,
            on_nonfinite: NonFinite::Error,
            seed: 0,
            fused: true,
        }
    }

    setters! {
        /// Sets `hess_init`.
        hess_init: f64,
        /// Sets `beta1`.
        beta1: f64,
        /// Sets `beta2`.
        beta2: f64,
        /// Sets `weight_decay`.
        weight_decay: f64,
        /// Sets `mc_samples`.
        mc_samples: usize,
        /// Sets `hess_approx`.
        hess_approx: HessApprox,
        /// Sets `clip_radius`.
        clip_radius: f64,
        /// Sets `debias`.
        debias: bool,
        /// Sets `rescale_lr`.
        rescale_lr: bool,
        /// Sets `on_nonfinite`.
        on_nonfinite: NonFinite,
        /// Sets `seed`.
        seed: u64,
        /// Sets `fused`.
        fused: bool,
    }

    /// The per-group settings these values give a group that overrides nothing.
    pub fn group_settings(&self) -> GroupSettings {
        GroupSettings {
            lr: self.lr,
            ess: self.ess,
            hess_init: self.hess_init,
            beta1: self.beta1,
            beta2: self.beta2,
            weight_decay: self.weight_decay,
            clip_radius: self.clip_radius,
        }
    }

    /// Checks every field; the error names the first invalid one and its valid range.
    pub fn validate(&self) -> Result<()> {
        self.group_settings().validate(self.debias)?;
        if self.mc_samples < 1 {
            return Err(invalid("mc_samples", self.mc_samples, ">= 1"));
        }
        Ok(())
    }
}

/// The settings of one parameter group, after its overrides are applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupSettings {
    /// Learning rate.
    pub lr: f64,
    /// Effective sample size.
    pub ess: f64,
    /// Initial Hessian estimate.
    pub hess_init: f64,
    /// Momentum decay.
    pub beta1: f64,
    /// Hessian decay.
    pub beta2: f64,
    /// Prior precision per unit of `ess`.
    pub weight_decay: f64,
    /// Elementwise clip of the preconditioned step.
    #[serde(with = "inf_as_null")]
    pub clip_radius: f64,
}

fn invalid(field: &'static str, value: impl std::fmt::Display, expected: &'static str) -> Error {
    Error::InvalidConfig {
        field,
        value: value.to_string(),
        expected,
    }
}

impl GroupSettings {
    /// Checks every field against its valid range.
    pub fn validate(&self, debias: bool) -> Result<()> {
        let finite_at_least = |field, v: f64, strict: bool, expected| {
            let ok = v.is_finite() && if strict { v > 0.0 } else { v >= 0.0 };
            if ok {
                Ok(())
            } else {
                Err(invalid(field, v, expected))
            }
        };
        finite_at_least("lr", self.lr, false, "a finite value >= 0")?;
        finite_at_least("ess", self.ess, true, "a finite value > 0")?;
        finite_at_least("hess_init", self.hess_init, true, "a finite value > 0")?;
        finite_at_least(
            "weight_decay",
            self.weight_decay,
            false,
            "a finite value >= 0",
        )?;
        if !(0.0..=1.0).contains(&self.beta1) {
            return Err(invalid("beta1", self.beta1, "a value in [0, 1]"));
        }
        if debias && self.beta1 == 1.0 {
            return Err(invalid(
                "beta1",
                self.beta1,
                "a value below 1 while debias is on (1 - beta1^t would be 0)",
            ));
        }
        if !(0.0..=1.0).contains(&self.beta2) {
            return Err(invalid("beta2", self.beta2, "a value in [0, 1]"));
        }
        if self.clip_radius.is_nan() || self.clip_radius <= 0.0 {
            return Err(invalid(
                "clip_radius",
                self.clip_radius,
                "a value > 0 (inf for no clipping)",
            ));
        }
        Ok(())
    }
}

/// Vars that share settings, some of which may differ from the [`IvonConfig`]'s.
///
/// Name the vars ([`ParamGroup::from_varmap`], [`ParamGroup::named`]) for runs that do
/// not depend on the order of `VarMap::all_vars` (a hash-map order that changes from run
/// to run), and for checkpoints that are matched by name.
///
/// ```
/// use candle_core::{DType, Device, Var};
/// use varlora::optim::ParamGroup;
///
/// let w = Var::zeros((4, 3), DType::F32, &Device::Cpu)?;
/// let b = Var::zeros(4, DType::F32, &Device::Cpu)?;
/// let groups = vec![ParamGroup::new(vec![w]), ParamGroup::new(vec![b]).weight_decay(0.0)];
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct ParamGroup {
    /// The group's vars, in the order their noise is drawn.
    pub vars: Vec<Var>,
    /// The vars' names, one per var, or empty for unnamed vars.
    pub names: Vec<String>,
    /// Override of [`IvonConfig::lr`].
    pub lr: Option<f64>,
    /// Override of [`IvonConfig::ess`].
    pub ess: Option<f64>,
    /// Override of [`IvonConfig::hess_init`].
    pub hess_init: Option<f64>,
    /// Override of [`IvonConfig::beta1`].
    pub beta1: Option<f64>,
    /// Override of [`IvonConfig::beta2`].
    pub beta2: Option<f64>,
    /// Override of [`IvonConfig::weight_decay`].
    pub weight_decay: Option<f64>,
    /// Override of [`IvonConfig::clip_radius`].
    pub clip_radius: Option<f64>,
}

macro_rules! overrides {
    ($($name:ident),*) => {
        $(
            #[doc = concat!("Overrides `", stringify!($name), "` for this group.")]
            #[must_use]
            pub fn $name(mut self, $name: f64) -> Self {
                self.$name = Some($name);
                self
            }
        )*
    };
}

impl ParamGroup {
    /// A group with the config's settings.
    pub fn new(vars: Vec<Var>) -> Self {
        Self {
            vars,
            ..Self::default()
        }
    }

    /// A group of named vars, sorted by name so that the order is reproducible.
    pub fn named(vars: impl IntoIterator<Item = (String, Var)>) -> Self {
        let mut named: Vec<(String, Var)> = vars.into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, vars) = named.into_iter().unzip();
        Self {
            vars,
            names,
            ..Self::default()
        }
    }

    /// Every var of `varmap`, by name.
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// use candle_nn::{linear, VarBuilder, VarMap};
    /// use varlora::optim::ParamGroup;
    ///
    /// let varmap = VarMap::new();
    /// let _ = linear(3, 2, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu).pp("fc"))?;
    /// let group = ParamGroup::from_varmap(&varmap)?;
    /// assert_eq!(group.names, ["fc.bias", "fc.weight"]);
    /// # Ok::<(), varlora::Error>(())
    /// ```
    pub fn from_varmap(varmap: &candle_nn::VarMap) -> Result<Self> {
        let data = crate::files::lock_vars(varmap)?;
        Ok(Self::named(
            data.iter().map(|(k, v)| (k.clone(), v.clone())),
        ))
    }

    overrides!(lr, ess, hess_init, beta1, beta2, weight_decay, clip_radius);

    /// The group's settings: its overrides on top of `config`'s values.
    pub fn settings(&self, config: &IvonConfig) -> GroupSettings {
        let d = config.group_settings();
        GroupSettings {
            lr: self.lr.unwrap_or(d.lr),
            ess: self.ess.unwrap_or(d.ess),
            hess_init: self.hess_init.unwrap_or(d.hess_init),
            beta1: self.beta1.unwrap_or(d.beta1),
            beta2: self.beta2.unwrap_or(d.beta2),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            clip_radius: self.clip_radius.unwrap_or(d.clip_radius),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_needs_lr_and_ess_and_defaults_the_rest() {
        let c: IvonConfig = serde_json::from_str(r#"{"lr": 0.1, "ess": 10}"#).unwrap();
        assert_eq!(c, IvonConfig::new(0.1, 10.0));
        assert!(serde_json::from_str::<IvonConfig>(r#"{"lr": 0.1}"#).is_err());
        let json = serde_json::to_value(IvonConfig::new(0.1, 10.0)).unwrap();
        assert!(json["clip_radius"].is_null());
        let finite = IvonConfig::new(0.1, 10.0).clip_radius(1e-3);
        let back: IvonConfig =
            serde_json::from_str(&serde_json::to_string(&finite).unwrap()).unwrap();
        assert_eq!(back.clip_radius, 1e-3);
    }

    #[test]
    fn each_invalid_field_is_named() {
        let base = IvonConfig::new(0.1, 10.0);
        let cases: Vec<(IvonConfig, &str)> = vec![
            (IvonConfig::new(-0.1, 10.0), "lr"),
            (IvonConfig::new(f64::NAN, 10.0), "lr"),
            (IvonConfig::new(0.1, 0.0), "ess"),
            (IvonConfig::new(0.1, f64::INFINITY), "ess"),
            (base.clone().hess_init(0.0), "hess_init"),
            (base.clone().beta1(1.5), "beta1"),
            (base.clone().beta1(1.0), "beta1"),
            (base.clone().beta2(-0.1), "beta2"),
            (base.clone().weight_decay(-1e-4), "weight_decay"),
            (base.clone().mc_samples(0), "mc_samples"),
            (base.clone().clip_radius(0.0), "clip_radius"),
            (base.clone().clip_radius(f64::NAN), "clip_radius"),
        ];
        for (config, name) in cases {
            match config.validate() {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, name),
                other => panic!("{name}: expected InvalidConfig, got {other:?}"),
            }
        }
        base.clone().beta1(1.0).debias(false).validate().unwrap();
        base.clip_radius(f64::INFINITY).validate().unwrap();
    }

    #[test]
    fn group_overrides_apply_on_top_of_config() {
        let config = IvonConfig::new(0.1, 10.0).weight_decay(1e-3);
        let s = ParamGroup::new(vec![]).lr(0.5).settings(&config);
        assert_eq!(s.lr, 0.5);
        assert_eq!(s.weight_decay, 1e-3);
        assert_eq!(s.ess, 10.0);
    }
}
