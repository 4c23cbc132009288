//! BLoB's update after AdamW's, for one layer: SGD with rate `kl_lr` on `pi_t * KL` for
//! the mean `M` and on `pi_t * KL + NLL` for `G`, whose NLL gradient the reference never
//! clears (`B` and the heads have no KL gradient, and AdamW alone moves them).
//!
//! ```text
//! M <- M - kl_lr pi_t dKL/dM
//! G <- G - kl_lr (pi_t dKL/dG + dNLL/dG)
//! ```

use candle_core::Tensor;

use crate::lora::BlobLayerVars;
use crate::Result;

/// The layer's next `(M, G)` for the KL weight `pi` and the KL rate `kl_lr`, given `G`'s
/// NLL gradient when the loss reached it.
pub(super) fn kl_step(
    layer: &BlobLayerVars,
    pi: f64,
    kl_lr: f64,
    nll_grad_g: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (d_m, d_g) = layer.kl_grads()?;
    let m = (layer.a_mean.as_tensor() - (d_m * (kl_lr * pi))?)?;
    let mut d_g = (d_g * pi)?;
    if let Some(nll) = nll_grad_g {
        d_g = (d_g + nll)?;
    }
    let g = (layer.a_g.as_tensor() - (d_g * kl_lr)?)?;
    Ok((m, g))
}
