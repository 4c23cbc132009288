//! The fused CPU kernel against the tensor-op path: same inputs, same draws, the same
//! bits after every step (signed zeros included).

mod common;

use candle_core::Device;
use varlora::optim::IvonConfig;

/// Sizes chosen so that vars straddle generator batches (64 draws) and thread chunks
/// (32768 elements) at unaligned offsets within their group.
const GROUPS: [&[usize]; 2] = [&[37, 70_001, 5], &[3, 40_000]];

fn run(config: &IvonConfig, fused: bool, steps: usize) -> (Vec<Vec<u32>>, u64) {
    common::ivon_trajectory(config, GROUPS, &Device::Cpu, fused, steps)
}

fn check(config: IvonConfig) {
    check_groups(config, GROUPS);
}

fn check_groups(config: IvonConfig, groups: [&[usize]; 2]) {
    let trajectory = |fused| common::ivon_trajectory(&config, groups, &Device::Cpu, fused, 4);
    let (fused, n_fused) = trajectory(true);
    let (plain, n_plain) = trajectory(false);
    assert_eq!(n_fused, 4, "the fused kernel was not used");
    assert_eq!(n_plain, 0);
    for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
        let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differ,
            0,
            "{config:?}: tensor {i} differs in {differ} of {} elements",
            a.len()
        );
    }
}

#[test]
fn price_debias_rescale_no_clip() {
    check(common::price_debias_rescale_no_clip());
}

#[test]
fn price_clip_no_debias_no_rescale() {
    check(common::price_clip_no_debias_no_rescale());
}

#[test]
fn gradsq_clip_wd0() {
    check(common::gradsq_clip_wd0());
}

/// A zero-size var (an empty bias, a rank-0 adapter) has nothing to update; the fused
/// step skips it, and its neighbours' draws stay where the tensor-op path puts them.
#[test]
fn zero_size_vars() {
    check_groups(
        common::price_debias_rescale_no_clip(),
        [&[37, 0, 70_001], &[0, 3]],
    );
}

/// Where the kernel does not apply, the tensor-op path runs and the results still agree.
#[test]
fn fallback_when_not_fusable() {
    let config = IvonConfig::new(0.1, 500.0).mc_samples(2).seed(4);
    let (a, n) = run(&config, true, 4);
    let (b, _) = run(&config, false, 4);
    assert_eq!(n, 0);
    assert_eq!(a, b);
}
