//! # varlora
//!
//! Variational fine-tuning for [candle](https://github.com/huggingface/candle): learn a
//! Gaussian posterior over the weights you train and average predictions over its samples,
//! for calibrated uncertainty at about the cost of AdamW.
//!
//! - [`optim::Ivon`]: IVON (Shen et al., "Variational Learning is Effective for Large Deep
//!   Networks", ICML 2024), a drop-in replacement for candle-nn's `AdamW` that agrees with
//!   the official PyTorch implementation (`ivon-opt` 0.1.3) step for step.
//! - [`calibrate`]: temperature scaling, the post-hoc baseline a posterior has to beat.
//! - [`alloc`]: allocator settings that halve a CPU training step's time on glibc.
//! - [`threads`]: a shorter spin for candle's thread pool, which on few cores takes a core
//!   from the matmuls.
//! - [`ensemble`]: LoRA-Ensemble and ensemble distribution distillation.
//! - [`files`]: checksummed files, and LoRA adapters PEFT can load.
//! - [`lora`]: LoRA adapters on frozen linear layers, with merge and unmerge.
//! - [`models`]: a BERT-family encoder (all-MiniLM-L6-v2) and a Llama-family decoder
//!   (SmolLM2, Qwen2, Qwen3) whose layers carry adapters.
//! - [`noise`]: the seeded, checkpointable standard-normal draws behind the samples, and
//!   the trait to supply your own.
//! - [`predict`]: the Monte Carlo predictive over any [`predict::Posterior`], with total,
//!   aleatoric and epistemic uncertainty per example.
//! - [`metrics`]: accuracy, NLL, ECE, Brier, OOD AUROC / AUPR / FPR95, AURC and the
//!   reliability diagram.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{linear, loss, Module, Optimizer, VarBuilder, VarMap};
//! use varlora::optim::{Ivon, IvonConfig};
//!
//! let dev = Device::Cpu;
//! let varmap = VarMap::new();
//! let model = linear(2, 2, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
//! let mut opt = Ivon::new(varmap.all_vars(), IvonConfig::new(0.05, 64.0))?;
//! let x = Tensor::new(&[[1f32, 0.], [0., 1.]], &dev)?;
//! let y = Tensor::new(&[0u32, 1], &dev)?;
//! opt.backward_step(&loss::cross_entropy(&model.forward(&x)?, &y)?)?;
//! // Average the predictive over 8 posterior samples.
//! let mut probs = Vec::new();
//! for _ in 0..8 {
//!     probs.push(opt.with_sample(|| candle_nn::ops::softmax_last_dim(&model.forward(&x)?))?);
//! }
//! let p_bar = (Tensor::stack(&probs, 0)?.mean(0))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod alloc;
pub mod calibrate;
pub mod collective;
pub mod ensemble;
mod error;
pub mod files;
pub mod hydra;
mod kernels;
pub mod lora;
pub mod metrics;
pub mod models;
pub mod noise;
pub mod optim;
pub mod predict;
pub mod threads;
mod vector_unit;

pub use error::{Error, Result};
