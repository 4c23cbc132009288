//! A scheduled IVON run (two MC samples per update, saved in the middle of a round) saved
//! with `Scheduled::save` and resumed into a fresh optimizer and schedule equals the run
//! that never stopped, bit for bit, rates included; a file without a schedule, or of
//! another schedule, is refused and changes nothing.

mod common;

use candle_core::{DType, Var};
use candle_nn::Optimizer;
use varlora::optim::{Ivon, IvonConfig, Schedule, Scheduled};
use varlora::Error;

const SCHEDULE: Schedule = Schedule::LinearWarmupDecay {
    warmup_steps: 2,
    total_steps: 8,
};

fn run() -> (Vec<Var>, Scheduled<Ivon>) {
    let vars = vec![
        Var::from_tensor(&common::randn(1, 1.0, &[3, 2], DType::F32)).unwrap(),
        Var::from_tensor(&common::randn(2, 1.0, &[4], DType::F32)).unwrap(),
    ];
    let config = IvonConfig::new(0.1, 50.0).mc_samples(2).seed(3);
    let ivon = Ivon::new(vars.clone(), config).unwrap();
    let opt = Scheduled::new(ivon, SCHEDULE).unwrap();
    (vars, opt)
}

fn call(vars: &[Var], opt: &mut Scheduled<Ivon>) {
    let loss = (vars[0].as_tensor().sqr().unwrap().sum_all().unwrap()
        + vars[1].as_tensor().exp().unwrap().sum_all().unwrap())
    .unwrap();
    opt.backward_step(&loss).unwrap();
}

fn bits(vars: &[Var]) -> Vec<Vec<u32>> {
    vars.iter()
        .map(|v| {
            let x: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            x.iter().map(|f| f.to_bits()).collect()
        })
        .collect()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("varlora-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_resumed_scheduled_ivon_run_equals_the_uninterrupted_one() {
    let (vars, mut opt) = run();
    let mut rates = Vec::new();
    for _ in 0..13 {
        rates.push(opt.learning_rate());
        call(&vars, &mut opt);
    }
    let (uninterrupted, last_rate) = (bits(&vars), opt.learning_rate());

    let dir = scratch("scheduled-resume");
    let path = dir.join("ivon.safetensors");
    let (vars, mut opt) = run();
    for _ in 0..7 {
        call(&vars, &mut opt);
    }
    opt.save(&path).unwrap();

    let (vars, mut opt) = run();
    opt.load_state(&path).unwrap();
    assert_eq!(opt.step_count(), 3);
    for (i, rate) in rates[7..].iter().enumerate() {
        assert_eq!(opt.learning_rate(), *rate, "call {}", 7 + i);
        call(&vars, &mut opt);
    }
    assert!(bits(&vars) == uninterrupted, "the resumed run differs");
    assert_eq!(opt.learning_rate(), last_rate);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_file_without_this_schedule_changes_nothing() {
    let dir = scratch("scheduled-refused");
    let (vars, mut opt) = run();
    call(&vars, &mut opt);
    let bare = dir.join("bare.safetensors");
    opt.inner().save(&bare).unwrap();
    let other = dir.join("other.safetensors");
    let ivon = Ivon::new(
        vars.clone(),
        IvonConfig::new(0.1, 50.0).mc_samples(2).seed(3),
    )
    .unwrap();
    Scheduled::new(ivon, Schedule::Constant)
        .unwrap()
        .save(&other)
        .unwrap();

    let (fresh_vars, mut fresh) = run();
    let (before, rate) = (bits(&fresh_vars), fresh.learning_rate());
    for (path, says) in [(&bare, "holds no schedule"), (&other, "Constant")] {
        match fresh.load_state(path) {
            Err(Error::Checkpoint(msg)) => assert!(msg.contains(says), "{msg}"),
            other => panic!("{}: {other:?}", path.display()),
        }
        assert!(bits(&fresh_vars) == before);
        assert_eq!((fresh.step_count(), fresh.learning_rate()), (0, rate));
        assert_eq!(fresh.inner().step_count(), 0);
    }
    // The bare file still loads into the bare optimizer.
    fresh.inner_mut().load_state(&bare).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
