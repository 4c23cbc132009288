//! The walk over a model's adapters, written once for every model. A model lists its
//! linear layers under their full (peft) names and rebuilds itself from new ones; finding
//! its adapters, detaching them, stacking weight samples into them and initialising them
//! follow from those two.

use std::collections::HashMap;
use std::convert::Infallible;

use candle_core::Tensor;

use super::proj::Proj;
use crate::lora::Adapter;
use crate::{Error, Result};

/// A model made of named linear layers, frozen or adapted.
pub(crate) trait Linears: Sized {
    /// Every linear layer with its full name (`encoder.layer.0.attention.self.query`,
    /// `model.layers.0.self_attn.q_proj`), in the model's order.
    fn linears(&self) -> Vec<(String, &Proj)>;

    /// The model with each linear layer replaced by `f` of it; the rest is shared.
    fn try_map_linears<E>(
        &self,
        f: &mut dyn FnMut(&Proj) -> std::result::Result<Proj, E>,
    ) -> std::result::Result<Self, E>;

    /// The ensemble members (or stacked samples) carried in the batch dimension.
    fn members(&self) -> usize;

    /// The model carrying `members` in its batch dimension.
    fn with_members(self, members: usize) -> Self;
}

/// A transformer layer's linear layers, under their names within the layer.
pub(crate) trait LayerLinears: Sized {
    /// The names, in the order of [`Self::projs`].
    const NAMES: &'static [&'static str];

    /// The linear layers.
    fn projs(&self) -> Vec<&Proj>;

    /// The layer with each linear layer replaced by `f` of it.
    fn try_map<E>(
        &self,
        f: &mut dyn FnMut(&Proj) -> std::result::Result<Proj, E>,
    ) -> std::result::Result<Self, E>;
}

/// Every linear layer of `layers` under its full name, `{prefix}.{i}.{name}`.
pub(crate) fn layer_linears<'a, L: LayerLinears>(
    prefix: &str,
    layers: &'a [L],
) -> Vec<(String, &'a Proj)> {
    let mut out = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        for (name, proj) in L::NAMES.iter().zip(l.projs()) {
            out.push((format!("{prefix}.{i}.{name}"), proj));
        }
    }
    out
}

/// `layers` with each linear layer replaced by `f` of it.
pub(crate) fn map_layers<L: LayerLinears, E>(
    layers: &[L],
    f: &mut dyn FnMut(&Proj) -> std::result::Result<Proj, E>,
) -> std::result::Result<Vec<L>, E> {
    layers.iter().map(|l| l.try_map(f)).collect()
}

/// The adapters of `model`, in its order.
pub(crate) fn adapters<M: Linears>(model: &M) -> Vec<&dyn Adapter> {
    model
        .linears()
        .into_iter()
        .filter_map(|(_, p)| p.adapter())
        .collect()
}

/// `model` with every adapter detached from the autograd graph.
pub(crate) fn detached<M: Linears>(model: &M) -> M {
    match model.try_map_linears::<Infallible>(&mut |p| Ok(p.detach())) {
        Ok(m) => m,
        Err(never) => match never {},
    }
}

/// `model` with `samples` stacked weight samples in each adapter, carried in its batch
/// dimension, taking the entries it uses out of `stacked` (see
/// [`crate::lora::Adapter::with_stacked_weights`]).
pub(crate) fn stacked<M: Linears>(
    model: &M,
    stacked: &mut HashMap<String, Tensor>,
    samples: usize,
) -> Result<M> {
    if model.members() != 1 || samples == 0 {
        return Err(Error::InvalidInput(format!(
            "{samples} stacked samples of a model with {} members: stack at least one \
             sample, of a model that is not an ensemble",
            model.members()
        )));
    }
    Ok(model
        .try_map_linears(&mut |p| p.stacked(stacked, samples))?
        .with_members(samples))
}

/// Sets every adapter of `model` to draws from `seed`.
pub(crate) fn init<M: Linears>(model: &M, seed: u64) -> Result<()> {
    adapters(model).into_iter().try_for_each(|a| a.init(seed))
}

/// `stack` run on a copy of `stacked` that it takes the samples it uses out of; errors
/// unless every stacked sample found its var in the model, since samples of a var the
/// model does not use under that name would otherwise be left out unseen.
pub(crate) fn take_all_stacked<T>(
    stacked: &HashMap<String, Tensor>,
    stack: impl FnOnce(&mut HashMap<String, Tensor>) -> Result<T>,
) -> Result<T> {
    let mut rest = stacked.clone();
    let out = stack(&mut rest)?;
    match rest.keys().min() {
        None => Ok(out),
        Some(name) => Err(Error::NotFound(format!(
            "stacked samples of {name}, which is no adapter var of the model (and {} more): \
             the posterior and the model must name the vars alike",
            rest.len() - 1
        ))),
    }
}
