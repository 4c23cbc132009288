//! Which attention heads and feed-forward neurons each member keeps.

use serde::{Deserialize, Serialize};

use crate::noise::PhiloxNormal;
use crate::{Error, Result};

/// Importance scores of one model: `heads[layer][head]` and `neurons[layer][neuron]`
/// (see [`super::HydraClassifier::taylor_importance`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Importance {
    /// Per layer, one score per attention head.
    pub heads: Vec<Vec<f64>>,
    /// Per layer, one score per feed-forward neuron.
    pub neurons: Vec<Vec<f64>>,
}

/// The units one member keeps, per layer, ascending: `heads[layer]` and
/// `neurons[layer]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberPlan {
    /// Per layer, the attention heads kept.
    pub heads: Vec<Vec<usize>>,
    /// Per layer, the feed-forward neurons kept.
    pub neurons: Vec<Vec<usize>>,
}

impl MemberPlan {
    /// Every head and neuron of a model with `layers` layers: the unpruned model.
    pub fn full(layers: usize, heads: usize, neurons: usize) -> Self {
        Self {
            heads: vec![(0..heads).collect(); layers],
            neurons: vec![(0..neurons).collect(); layers],
        }
    }

    /// Checks the plan against a model's shape: one entry per layer, indices in range,
    /// ascending and without repeats.
    pub fn validate(&self, layers: usize, heads: usize, neurons: usize) -> Result<()> {
        for (what, sets, n) in [
            ("heads", &self.heads, heads),
            ("neurons", &self.neurons, neurons),
        ] {
            if sets.len() != layers {
                return Err(Error::InvalidInput(format!(
                    "a member plan has {what} for {} layers; the model has {layers}",
                    sets.len()
                )));
            }
            for (l, set) in sets.iter().enumerate() {
                if set.windows(2).any(|w| w[0] >= w[1]) || set.last().is_some_and(|&i| i >= n) {
                    return Err(Error::InvalidInput(format!(
                        "layer {l}'s kept {what} {set:?} must be ascending, distinct and \
                         below {n}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// How members choose their units from the importance scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Selection {
    /// The most important units, the same rule for every member: given one shared
    /// importance, every member is the same pruned model (the paper's naive baseline).
    TopK,
    /// An importance-weighted draw without replacement per member and layer, seeded:
    /// important units are kept by most members, the rest vary (Efraimidis-Spirakis
    /// keys `u^(1/w)`).
    Weighted {
        /// Seeds the draws; member `m`'s come from a stream of its own.
        seed: u64,
    },
}

/// How many members, how much of each layer they keep, and how they choose.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneConfig {
    /// The number of members `M`.
    pub members: usize,
    /// Heads kept per layer by each member.
    pub keep_heads: usize,
    /// Feed-forward neurons kept per layer by each member.
    pub keep_neurons: usize,
    /// How each member's subset is chosen.
    pub selection: Selection,
}

impl PruneConfig {
    fn validate(&self, heads: usize, neurons: usize) -> Result<()> {
        let checks = [
            ("members", self.members, 1, usize::MAX),
            ("keep_heads", self.keep_heads, 1, heads),
            ("keep_neurons", self.keep_neurons, 1, neurons),
        ];
        for (field, v, lo, hi) in checks {
            if v < lo || v > hi {
                return Err(Error::InvalidConfig {
                    field,
                    value: v.to_string(),
                    expected: "at least 1 and at most the layer's units",
                });
            }
        }
        Ok(())
    }
}

/// One plan per member from importance scores: `importance` holds one set of scores
/// shared by every member, or one per member (e.g. from different calibration batches).
///
/// ```
/// use varlora::hydra::{plan_members, Importance, PruneConfig, Selection};
///
/// let imp = Importance { heads: vec![vec![3.0, 1.0, 2.0]], neurons: vec![vec![1.0, 5.0]] };
/// let config = PruneConfig { members: 2, keep_heads: 2, keep_neurons: 1, selection: Selection::TopK };
/// let plans = plan_members(&[imp], &config)?;
/// assert_eq!(plans[1].heads[0], vec![0, 2]);
/// assert_eq!(plans[1].neurons[0], vec![1]);
/// # Ok::<(), varlora::Error>(())
/// ```
pub fn plan_members(importance: &[Importance], config: &PruneConfig) -> Result<Vec<MemberPlan>> {
    let first = importance
        .first()
        .ok_or_else(|| Error::InvalidInput("no importance scores".into()))?;
    if importance.len() != 1 && importance.len() != config.members {
        return Err(Error::InvalidInput(format!(
            "{} sets of importance scores for {} members: give one, or one per member",
            importance.len(),
            config.members
        )));
    }
    let width = |sets: &Vec<Vec<f64>>| sets.first().map_or(0, Vec::len);
    config.validate(width(&first.heads), width(&first.neurons))?;
    (0..config.members)
        .map(|m| {
            let imp = &importance[m.min(importance.len() - 1)];
            let pick = |sets: &[Vec<f64>], keep: usize, salt: u64| -> Result<Vec<Vec<usize>>> {
                sets.iter()
                    .enumerate()
                    .map(|(l, s)| select(s, keep, config.selection, [m as u64, l as u64, salt]))
                    .collect()
            };
            let plan = MemberPlan {
                heads: pick(&imp.heads, config.keep_heads, 0)?,
                neurons: pick(&imp.neurons, config.keep_neurons, 1)?,
            };
            plan.validate(
                first.heads.len(),
                width(&first.heads),
                width(&first.neurons),
            )?;
            Ok(plan)
        })
        .collect()
}

/// `keep` indices of `scores`, ascending.
fn select(scores: &[f64], keep: usize, selection: Selection, key: [u64; 3]) -> Result<Vec<usize>> {
    if keep > scores.len() || scores.iter().any(|s| !s.is_finite() || *s < 0.0) {
        return Err(Error::InvalidInput(format!(
            "cannot keep {keep} of {} units with scores {scores:?}: scores must be finite \
             and non-negative",
            scores.len()
        )));
    }
    let mut ranked: Vec<(f64, usize)> = match selection {
        Selection::TopK => scores.iter().copied().zip(0..).collect(),
        Selection::Weighted { seed } => {
            let mut u = vec![0f32; scores.len()];
            PhiloxNormal::new(mix(seed, key)).fill_uniform(&mut u, 0.0, 1.0);
            // A floor so that a unit scored zero can still be drawn, rarely.
            let floor = 1e-3 * scores.iter().sum::<f64>() / scores.len().max(1) as f64;
            scores
                .iter()
                .zip(u)
                .zip(0..)
                .map(|((&s, u), i)| {
                    let u = f64::from(u).max(f64::MIN_POSITIVE);
                    (u.ln() / (s + floor).max(f64::MIN_POSITIVE), i)
                })
                .collect()
        }
    };
    // Highest score (or key) first; ties to the lower index.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut kept: Vec<usize> = ranked.into_iter().take(keep).map(|(_, i)| i).collect();
    kept.sort_unstable();
    Ok(kept)
}

/// One seed from the member, the layer and what is drawn.
fn mix(seed: u64, key: [u64; 3]) -> u64 {
    key.iter().fold(seed ^ 0x9e37_79b9_7f4a_7c15, |h, &k| {
        (h ^ k).wrapping_mul(0x0100_0000_01b3).rotate_left(29)
    })
}
