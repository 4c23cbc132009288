//! Ensemble distribution distillation (Fathullah, Xia and Gales, 2023) of the trained
//! teacher into a student: the same LoRA-adapted encoder with a Laplace head over the
//! logits, fitted to the teacher's sample logits on the training sentences.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tokenizers::Tokenizer;
use varlora::ensemble::{distillation_loss, laplace_predictive, LaplaceHead};
use varlora::lora::LoraConfig;
use varlora::models::{AdapterSpec, BertConfig, BertEncoder};
use varlora::predict::{sample_logits, Predictive};

use crate::data::{batches, Batch, Rows};
use crate::evaluate::{timed, Rows as ReportRows};
use crate::methods::Ctx;
use crate::train::Trainer;
use crate::Method;

pub struct Student {
    encoder: BertEncoder,
    head: LaplaceHead,
}

impl Student {
    /// A LoRA-adapted encoder over the frozen `base` weights and a Laplace head, with its
    /// trainable tensors in `varmap`.
    pub fn new(
        base: VarBuilder,
        varmap: &VarMap,
        config: &BertConfig,
        lora: LoraConfig,
        dev: &Device,
    ) -> varlora::Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, dev);
        let spec = AdapterSpec::Lora(lora);
        let encoder = BertEncoder::load(
            base,
            vb.clone(),
            config,
            Some(&spec),
            &BertEncoder::query_value(),
        )?;
        let head = LaplaceHead::new(config.hidden_size, 2, vb.pp("student"))?;
        Ok(Self { encoder, head })
    }

    /// Seeds the adapters and the heads (see `varlora::lora::Adapter::init`).
    pub fn init(&self, seed: u64) -> varlora::Result<()> {
        self.encoder.init(seed)?;
        self.head.init(seed)
    }

    /// `(mu, log b)` of the Laplace over the batch's logits.
    pub fn forward_t(&self, b: &Batch, train: bool) -> varlora::Result<(Tensor, Tensor)> {
        let h = self
            .encoder
            .forward_t(&b.ids, &b.types, Some(&b.mask), train)?;
        self.head.forward(&BertEncoder::mean_pool(&h, &b.mask)?)
    }

    pub fn detach(&self) -> Self {
        Self {
            encoder: self.encoder.detach(),
            head: self.head.detach(),
        }
    }

    /// The predictive of `samples` logit draws from one forward per batch.
    pub fn predict(
        &self,
        data: &[Batch],
        samples: usize,
        seed: u64,
    ) -> varlora::Result<Predictive> {
        let mut parts = Vec::new();
        for (i, b) in data.iter().enumerate() {
            let (mu, log_scale) = self.forward_t(b, false)?;
            parts.push(laplace_predictive(
                &mu,
                &log_scale,
                samples,
                seed + i as u64,
            )?);
        }
        Predictive::cat(&parts)
    }
}

/// How the student is trained.
pub struct Schedule<'a> {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub constant_lr: bool,
    pub laplace_weight: f64,
    pub tokenizer: &'a Tokenizer,
}

/// Trains `student` (its tensors in `varmap`) on `train` with the teacher's logits
/// `targets` `(S, train.len(), 2)`; returns milliseconds per step.
pub fn train(
    student: &Student,
    varmap: &VarMap,
    train: &Rows,
    targets: &Tensor,
    schedule: &Schedule,
    rng: &mut StdRng,
    dev: &Device,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut opt = AdamW::new(
        crate::sorted_vars(varmap, |_| true)?,
        ParamsAdamW {
            lr: schedule.lr,
            weight_decay: 0.0,
            eps: 1e-6,
            ..Default::default()
        },
    )?;
    let steps_per_epoch = train.len() / schedule.batch;
    let total = (steps_per_epoch * schedule.epochs).max(1);
    let start = Instant::now();
    let mut step = 0;
    for epoch in 0..schedule.epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(rng);
        for idx in order[..steps_per_epoch * schedule.batch].chunks(schedule.batch) {
            if !schedule.constant_lr {
                opt.set_learning_rate(schedule.lr * (1.0 - step as f64 / total as f64));
            }
            let rows: Rows = idx.iter().map(|&i| train[i].clone()).collect();
            let b = batches(schedule.tokenizer, &rows, schedule.batch, dev)?.remove(0);
            let idx = Tensor::new(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), dev)?;
            let (mu, log_scale) = student.forward_t(&b, true)?;
            let loss = distillation_loss(
                &mu,
                &log_scale,
                &targets.index_select(&idx, 1)?,
                1.0,
                schedule.laplace_weight,
            )?;
            opt.backward_step(&loss)?;
            step += 1;
            crate::progress(step, total, epoch, loss.to_scalar::<f32>()?, "student");
        }
    }
    Ok(1e3 * start.elapsed().as_secs_f64() / total as f64)
}

/// The teacher's logits `(S, n, 2)` on every training sentence, in split order: `S`
/// posterior samples, or the members of a LoRA-Ensemble.
fn teacher_targets(
    ctx: &Ctx,
    method: Method,
    trainer: &mut Trainer,
) -> Result<Tensor, Box<dyn std::error::Error>> {
    let s = ctx.args.test_samples;
    let mut parts = Vec::new();
    for b in &batches(ctx.tokenizer, &ctx.split.train, 64, ctx.dev)? {
        let logits = || {
            ctx.model
                .forward_t(&b.ids, &b.types, &b.mask, false)
                .map_err(candle_core::Error::wrap)
        };
        parts.push(match (method, trainer.ivon_mut()) {
            (Method::Ivon, Some(opt)) => sample_logits(opt, s, logits)?,
            (Method::Blob, _) => sample_logits(&mut ctx.sampler.clone(), s, logits)?,
            (Method::McDropout, _) => sample_logits(&mut ctx.mc.clone(), s, logits)?,
            _ => logits()?,
        });
    }
    Ok(Tensor::cat(&parts, 1)?)
}

/// Distils the trained teacher into a student and adds the student's row.
pub fn student_row(
    ctx: &Ctx,
    rows: &mut ReportRows,
    method: Method,
    trainer: &mut Trainer,
    rng: &mut StdRng,
    (base, lora): (VarBuilder, &LoraConfig),
) -> Result<(), Box<dyn std::error::Error>> {
    let (targets, teacher_secs) = timed(|| teacher_targets(ctx, method, trainer));
    let targets = targets?;
    println!(
        "teacher targets: {} samples of {} sentences in {teacher_secs:.1} s",
        targets.dim(0)?,
        ctx.split.train.len()
    );
    let args = ctx.args;
    let student_vars = VarMap::new();
    let student = Student::new(base, &student_vars, ctx.config, lora.clone(), ctx.dev)?;
    student.init(args.seed ^ 0x5eed)?;
    let schedule = Schedule {
        epochs: args.student_epochs,
        batch: args.batch,
        lr: args.student_lr,
        constant_lr: args.constant_lr,
        laplace_weight: args.laplace_weight,
        tokenizer: ctx.tokenizer,
    };
    let ms = train(
        &student,
        &student_vars,
        &ctx.split.train,
        &targets,
        &schedule,
        rng,
        ctx.dev,
    )?;
    let student = student.detach();
    let k = args.student_samples;
    let name = format!("Student of {}, {k} Laplace samples", method.name());
    // The evaluation set and the OOD sets draw from different streams.
    let mut first = true;
    rows.add_trained_at(name, ms, &mut |b| {
        let seed = if first { args.seed } else { args.seed ^ 0x00d };
        first = false;
        student.predict(b, k, seed)
    })?;
    Ok(())
}
