//! Seeded initialisation of trainable tensors. candle's CPU initialisers cannot be
//! seeded, so a layer built through a `VarBuilder` starts from fresh entropy; these draw
//! from a Philox stream keyed by a seed and the var's name instead, so that the same seed
//! gives the same model whatever the order the layers are built or initialised in.

use candle_core::{DType, Device, Shape, Tensor, Var};

use crate::noise::PhiloxNormal;
use crate::{Error, Result};

/// The stream of the var named `name` under `seed`: the seed mixed with the FNV-1a hash
/// of the name (std's hasher is not guaranteed stable across releases).
fn stream(seed: u64, name: &str) -> PhiloxNormal {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    PhiloxNormal::new(seed ^ hash.rotate_left(17))
}

/// A tensor of `shape` with draws from U(lo, hi) for the tensor named `name`, or `lo`
/// everywhere when `lo == hi`.
pub(crate) fn seeded_uniform(
    shape: &Shape,
    name: &str,
    seed: u64,
    (lo, hi): (f64, f64),
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mut values = vec![lo as f32; shape.elem_count()];
    if lo != hi {
        stream(seed, name).fill_uniform(&mut values, lo as f32, hi as f32);
    }
    Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
}

/// Sets the var behind `t` (named `name`) to [`seeded_uniform`] draws.
pub(crate) fn set_uniform(t: &Tensor, name: &str, seed: u64, lo: f64, hi: f64) -> Result<()> {
    if !t.is_variable() {
        return Err(Error::InvalidState(
            "init needs the layer's vars: build it from a VarMap, not from loaded weights or \
             a detached copy",
        ));
    }
    let values = seeded_uniform(t.shape(), name, seed, (lo, hi), t.dtype(), t.device())?;
    Var::from_tensor(t)?.set(&values)?;
    Ok(())
}

/// Sets a LoRA pair under `prefix`: `A` ("lora_a") to U(-a_bound, a_bound) draws and
/// `B` ("lora_b") to zero, so that the update starts at zero.
pub(crate) fn init_lora_pair(
    prefix: &str,
    seed: u64,
    a: &Tensor,
    a_bound: f64,
    b: &Tensor,
) -> Result<()> {
    set_uniform(a, &var_name(prefix, "lora_a"), seed, -a_bound, a_bound)?;
    set_uniform(b, &var_name(prefix, "lora_b"), seed, 0.0, 0.0)
}

/// The bound of PyTorch's default `nn.Linear` and PEFT's LoRA `A` initialisation,
/// Kaiming-uniform with `a = sqrt 5`: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub(crate) fn kaiming_uniform_bound(fan_in: usize) -> f64 {
    1.0 / (fan_in as f64).sqrt()
}

/// A var's full name: the builder's prefix and the var's own name.
pub(crate) fn var_name(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}
