//! AdamW, IVON and a BLoB Bayesian last layer on the digits data, side by side: accuracy,
//! NLL, ECE and Brier on the test digits; the total, aleatoric and epistemic uncertainty
//! of the test digits against two shifted sets (the same digits rotated by 90 degrees,
//! and with Gaussian pixel noise); the OOD AUROC of each score; and a reliability diagram
//! per model (SVG and CSV).
//!
//! `cargo run --release --example digits_uncertainty [-- OUT_DIR]`
//! (the diagrams go to `target/digits_uncertainty` by default).

mod common;

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::{linear, loss, AdamW, Linear, Optimizer, VarBuilder, VarMap};
use varlora::lora::{Adapter, BayesianLoraLinear, BlobConfig, BlobSampler, LoraConfig};
use varlora::metrics;
use varlora::optim::{Blob, BlobOptimConfig, Ivon, IvonConfig, Schedule, Scheduled};
use varlora::predict::{predictive, predictive_at_point, PointMass, Posterior, Predictive};

const EPOCHS: usize = 40;
const BATCH: usize = 32;
const TEST: usize = 500;
const SEED: u64 = 0;

/// The same network with a BLoB adapter (rank 8) on a frozen, randomly initialised last
/// layer: only the last layer is Bayesian.
struct BlobMlp {
    fc1: Linear,
    fc2: BayesianLoraLinear,
}

impl BlobMlp {
    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.fc2.forward_t(&self.fc1.forward(x)?.relu()?, train)
    }
}

/// The pixels of each 8x8 digit rotated by 90 degrees.
fn rotate(x: &Tensor) -> candle_core::Result<Tensor> {
    let perm: Vec<u32> = (0..64u32).map(|k| (7 - k % 8) * 8 + k / 8).collect();
    x.index_select(&Tensor::new(perm.as_slice(), x.device())?, 1)
}

/// Each pixel plus N(0, 0.3^2) noise, clipped to [0, 1], from a seeded stream.
fn noisy(x: &Tensor) -> varlora::Result<Tensor> {
    let mut z = vec![0f32; x.elem_count()];
    varlora::noise::PhiloxNormal::new(SEED + 7).fill(&mut z);
    let z = Tensor::from_vec(z, x.shape(), x.device())?;
    Ok((x + (z * 0.3)?)?.clamp(0f32, 1f32)?)
}

struct Report {
    name: String,
    id: Predictive,
    shifted: Vec<Predictive>,
}

/// `name`'s predictive with `samples` draws of `posterior` (0: its point estimate) on the
/// test set and on each shifted set.
fn evaluate<P: Posterior>(
    (name, samples): (&str, usize),
    posterior: &mut P,
    model: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    (x, shifted): (&Tensor, &[Tensor]),
) -> varlora::Result<Report> {
    // 0 samples: the point estimate (BLoB's mean, "N = 0").
    let mut predict = |x: &Tensor| match samples {
        0 => predictive_at_point(posterior, || model(x)),
        s => predictive(posterior, s, false, || model(x)),
    };
    Ok(Report {
        name: name.into(),
        id: predict(x)?,
        shifted: shifted
            .iter()
            .map(&mut predict)
            .collect::<varlora::Result<_>>()?,
    })
}

fn mean(t: &Tensor) -> varlora::Result<f64> {
    Ok(t.mean_all()?.to_scalar::<f64>()?)
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// AdamW and IVON as in the quickstart, from the same seeded initialisation and batches:
/// the AdamW model, the IVON model and its optimizer.
fn train_adamw_ivon(data: &common::Data, dev: &Device) -> Res<(common::Mlp, common::Mlp, Ivon)> {
    let (adamw_vars, ivon_vars) = (VarMap::new(), VarMap::new());
    let adamw_model = common::Mlp::new(VarBuilder::from_varmap(&adamw_vars, DType::F32, dev))?;
    let ivon_model = common::Mlp::new(VarBuilder::from_varmap(&ivon_vars, DType::F32, dev))?;
    common::seeded_init(&adamw_vars, 0.125, SEED, dev)?;
    common::seeded_init(&ivon_vars, 0.125, SEED, dev)?;
    let mut adamw = AdamW::new_lr(adamw_vars.all_vars(), 3e-2)?;
    let mut ivon = Ivon::from_varmap(
        &ivon_vars,
        IvonConfig::new(1.0, data.n_train as f64)
            .hess_init(1.0)
            .weight_decay(2e-4),
    )?;
    for (xb, yb) in &data.batches {
        adamw.backward_step(&loss::cross_entropy(&adamw_model.forward(xb)?, yb)?)?;
        ivon.backward_step(&loss::cross_entropy(&ivon_model.forward(xb)?, yb)?)?;
    }
    Ok((adamw_model, ivon_model, ivon))
}

/// The BLoB model, trained by BLoB's optimizer (AdamW on the NLL, SGD on the reweighted
/// KL, both rates on the reference's linear schedule with 6% warm-up), and its sampler.
fn train_blob(data: &common::Data, dev: &Device) -> Res<(BlobMlp, BlobSampler)> {
    let blob_vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&blob_vars, DType::F32, dev);
    let sampler = BlobSampler::new(SEED);
    let fc1 = linear(64, 64, vb.pp("fc1"))?;
    let frozen_vars = VarMap::new();
    let w0 = VarBuilder::from_varmap(&frozen_vars, DType::F32, dev).get((10, 64), "w")?;
    common::seeded_init(&frozen_vars, 0.125, SEED + 1, dev)?;
    let frozen = Linear::new(w0.copy()?, None);
    let lora = LoraConfig::new(8).alpha(16.0);
    let fc2 = BayesianLoraLinear::new(frozen, BlobConfig::new(lora), vb.pp("fc2"), &sampler)?;
    // Seeded: fc1 U(-1/8, 1/8) as the MLP's layers, then the adapter as the reference
    // initialises it (M Kaiming-uniform, G U(eps / sqrt 2, eps), B zero).
    common::seeded_init(&blob_vars, 0.125, SEED, dev)?;
    fc2.init(SEED)?;
    let model = BlobMlp { fc1, fc2 };
    let steps = data.batches.len() as u64;
    let config = BlobOptimConfig::new(data.n_train, BATCH)
        .lr(1e-2)
        .kl_lr(1e-2);
    let blob = Blob::new(
        blob_vars.all_vars(),
        vec![model.fc2.posterior_vars()?],
        config,
    )?;
    let mut blob = Scheduled::new(blob, Schedule::linear_with_warmup_ratio(0.06, steps)?)?;
    for (xb, yb) in &data.batches {
        blob.backward_step(&loss::cross_entropy(&model.forward(xb, true)?, yb)?)?;
    }
    Ok((model, sampler))
}

/// Accuracy and calibration on the test digits, and each model's reliability diagram
/// (SVG and CSV) in `out_dir`.
fn print_calibration(reports: &[Report], y_test: &Tensor, out_dir: &str) -> Res<()> {
    println!("| model                | accuracy |    NLL | ECE-15 |  Brier |");
    println!("|----------------------|----------|--------|--------|--------|");
    for r in reports {
        let p = &r.id.probs;
        println!(
            "| {:<20} | {:>7.2}% | {:>6.4} | {:>6.4} | {:>6.4} |",
            r.name,
            100.0 * metrics::accuracy(p, y_test)?,
            metrics::nll(&r.id.log_probs, y_test)?,
            metrics::ece(p, y_test, 15)?,
            metrics::brier(p, y_test)?,
        );
        let bins = metrics::reliability(p, y_test, 15)?;
        let file = r
            .name
            .to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        let title = format!("{}: ECE {:.4}", r.name, metrics::ece(p, y_test, 15)?);
        std::fs::write(
            format!("{out_dir}/{file}.svg"),
            metrics::reliability_svg(&bins, &title),
        )?;
        std::fs::write(
            format!("{out_dir}/{file}.csv"),
            metrics::reliability_csv(&bins),
        )?;
    }
    Ok(())
}

/// Mean uncertainty per set, and the OOD AUROC of each score against each shifted set.
fn print_uncertainty(reports: &[Report]) -> Res<()> {
    println!("| model                | set     |    TU |    AU |     MI | AUROC 1-MSP | AUROC TU | AUROC MI |");
    println!("|----------------------|---------|-------|-------|--------|-------------|----------|----------|");
    let msp = |p: &Predictive| -> varlora::Result<Tensor> { Ok((p.probs.max(1)?.neg()? + 1.0)?) };
    for r in reports {
        let sets = std::iter::once(("test", &r.id, None)).chain(
            ["rotated", "noisy"]
                .into_iter()
                .zip(&r.shifted)
                .map(|(n, p)| (n, p, Some(p))),
        );
        for (set, p, ood) in sets {
            let aurocs = match ood {
                None => "             |          |         ".to_string(),
                Some(o) => format!(
                    " {:>11.3} | {:>8.3} | {:>8}",
                    metrics::auroc(&msp(&r.id)?, &msp(o)?)?,
                    metrics::auroc(&r.id.total, &o.total)?,
                    if r.name == "AdamW" {
                        "-".to_string()
                    } else {
                        format!("{:.3}", metrics::auroc(&r.id.epistemic, &o.epistemic)?)
                    },
                ),
            };
            println!(
                "| {:<20} | {set:<7} | {:.3} | {:.3} | {:.4} |{aurocs} |",
                r.name,
                mean(&p.total)?,
                mean(&p.aleatoric)?,
                mean(&p.epistemic)?,
            );
        }
    }
    Ok(())
}

fn main() -> Res<()> {
    let out_dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/digits_uncertainty".into());
    std::fs::create_dir_all(&out_dir)?;
    let dev = Device::Cpu;
    let data = common::load(TEST, EPOCHS, BATCH, SEED, &dev)?;
    let (x_test, y_test) = (&data.x_test, &data.y_test);
    let shifted = [rotate(x_test)?, noisy(x_test)?];
    let (adamw_model, ivon_model, mut ivon) = train_adamw_ivon(&data, &dev)?;
    let (blob_model, sampler) = train_blob(&data, &dev)?;

    let mut blob = sampler.clone();
    let blob_forward = |x: &Tensor| blob_model.forward(x, false);
    let sets = (x_test, &shifted[..]);
    let reports = [
        evaluate(
            ("AdamW", 1),
            &mut PointMass,
            &|x| adamw_model.forward(x),
            sets,
        )?,
        evaluate(
            ("IVON (32 samples)", 32),
            &mut ivon,
            &|x| ivon_model.forward(x),
            sets,
        )?,
        evaluate(("BLoB last layer (0)", 0), &mut blob, &blob_forward, sets)?,
        evaluate(("BLoB last layer (10)", 10), &mut blob, &blob_forward, sets)?,
    ];

    println!(
        "digits: {} train / {TEST} test; shifted sets: the test digits rotated by 90 degrees, and with N(0, 0.3^2) pixel noise\n",
        data.n_train
    );
    print_calibration(&reports, y_test, &out_dir)?;
    println!("\nMean uncertainty (nats) and the OOD AUROC of each score, test digits against each shifted set:\n");
    print_uncertainty(&reports)?;
    println!("\nreliability diagrams: {out_dir}/<model>.svg (and .csv), e.g. {out_dir}/blob-last-layer-10.svg");
    Ok(())
}
