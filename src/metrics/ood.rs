//! Out-of-distribution detection from an uncertainty score: OOD is the positive class and a
//! higher score means "more likely OOD" (1 - max probability, entropy, mutual
//! information, ...).

use candle_core::Tensor;

use super::scores;
use crate::Result;

/// Scores of both sets, sorted by score descending, each tagged OOD (true) or not.
fn ranked(in_dist: &Tensor, ood: &Tensor) -> Result<Vec<(f64, bool)>> {
    let mut all: Vec<(f64, bool)> = scores(in_dist, "in-distribution scores")?
        .into_iter()
        .map(|s| (s, false))
        .chain(scores(ood, "OOD scores")?.into_iter().map(|s| (s, true)))
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(all)
}

/// Groups of tied scores, each as (OOD count, in-distribution count), from the highest
/// score down.
fn tie_groups(ranked: &[(f64, bool)]) -> Vec<(usize, usize)> {
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut last = f64::NAN;
    for &(s, is_ood) in ranked {
        if s != last || groups.is_empty() {
            groups.push((0, 0));
            last = s;
        }
        let g = groups.last_mut().expect("pushed above");
        if is_ood {
            g.0 += 1;
        } else {
            g.1 += 1;
        }
    }
    groups
}

/// Area under the ROC curve, exactly: the probability that a random OOD example scores
/// higher than a random in-distribution one, ties counted half (as sklearn).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let id = Tensor::new(&[0.1f32, 0.4], &Device::Cpu)?;
/// let ood = Tensor::new(&[0.4f32, 0.9], &Device::Cpu)?;
/// // Pairs (ood > id): 0.9 beats both, 0.4 beats 0.1 and ties 0.4: (2 + 1.5) / 4.
/// assert_eq!(varlora::metrics::auroc(&id, &ood)?, 0.875);
/// # Ok::<(), varlora::Error>(())
/// ```
pub fn auroc(in_dist: &Tensor, ood: &Tensor) -> Result<f64> {
    let ranked = ranked(in_dist, ood)?;
    let (mut ood_above, mut wins) = (0usize, 0f64);
    let n_ood = ranked.iter().filter(|r| r.1).count();
    for (pos, neg) in tie_groups(&ranked) {
        wins += neg as f64 * (ood_above as f64 + 0.5 * pos as f64);
        ood_above += pos;
    }
    Ok(wins / (n_ood as f64 * (ranked.len() - n_ood) as f64))
}

/// Area under the precision-recall curve with OOD as the positive class, as a step sum
/// over thresholds (sklearn's average precision, no interpolation).
pub fn aupr_out(in_dist: &Tensor, ood: &Tensor) -> Result<f64> {
    let ranked = ranked(in_dist, ood)?;
    let n_ood = ranked.iter().filter(|r| r.1).count() as f64;
    let (mut tp, mut fp, mut area) = (0f64, 0f64, 0f64);
    for (pos, neg) in tie_groups(&ranked) {
        tp += pos as f64;
        fp += neg as f64;
        area += pos as f64 / n_ood * (tp / (tp + fp));
    }
    Ok(area)
}

/// The false-positive rate (in-distribution flagged as OOD) at the first threshold that
/// flags at least 95% of the OOD examples.
pub fn fpr_at_95_tpr(in_dist: &Tensor, ood: &Tensor) -> Result<f64> {
    let ranked = ranked(in_dist, ood)?;
    let n_ood = ranked.iter().filter(|r| r.1).count() as f64;
    let n_in = ranked.len() as f64 - n_ood;
    let (mut tp, mut fp) = (0f64, 0f64);
    for (pos, neg) in tie_groups(&ranked) {
        tp += pos as f64;
        fp += neg as f64;
        if tp / n_ood >= 0.95 {
            break;
        }
    }
    Ok(fp / n_in)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f64]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    /// AUROC by brute force over all pairs, the definition.
    fn pairs(id: &[f64], ood: &[f64]) -> f64 {
        let mut s = 0.0;
        for o in ood {
            for i in id {
                s += if o > i {
                    1.0
                } else if o == i {
                    0.5
                } else {
                    0.0
                };
            }
        }
        s / (id.len() * ood.len()) as f64
    }

    #[test]
    fn auroc_is_the_pairwise_probability_with_half_ties() {
        let id = [0.1, 0.3, 0.3, 0.5, 0.9, 0.2];
        let ood = [0.3, 0.8, 0.95, 0.5, 0.05];
        assert_eq!(auroc(&t(&id), &t(&ood)).unwrap(), pairs(&id, &ood));
        assert_eq!(auroc(&t(&[0.0, 0.1]), &t(&[0.5, 0.6])).unwrap(), 1.0);
        assert_eq!(auroc(&t(&[0.5, 0.6]), &t(&[0.0, 0.1])).unwrap(), 0.0);
        assert_eq!(auroc(&t(&[0.5, 0.5]), &t(&[0.5])).unwrap(), 0.5);
    }

    #[test]
    fn aupr_matches_a_hand_computed_step_sum() {
        // Descending: 0.9 ood, 0.8 id, 0.7 ood, 0.6 id.
        // Precision at each OOD recall step: 1/1 then 2/3; AP = 0.5 * 1 + 0.5 * 2/3.
        let ap = aupr_out(&t(&[0.8, 0.6]), &t(&[0.9, 0.7])).unwrap();
        assert!((ap - (0.5 + 1.0 / 3.0)).abs() < 1e-12, "{ap}");
        // A tie of one OOD and one id example counts as one step at precision 1/2.
        assert_eq!(aupr_out(&t(&[0.5]), &t(&[0.5])).unwrap(), 0.5);
        assert_eq!(aupr_out(&t(&[0.1, 0.2]), &t(&[0.5])).unwrap(), 1.0);
    }

    #[test]
    fn fpr95_counts_in_distribution_above_the_threshold() {
        // 20 OOD scores 1..=20, in-distribution 0.5 and 10.5 and 19.5: 95% TPR needs the
        // top 19 OOD (down to 2), which puts 10.5 and 19.5 above the threshold.
        let ood: Vec<f64> = (1..=20).map(f64::from).collect();
        let fpr = fpr_at_95_tpr(&t(&[0.5, 10.5, 19.5]), &t(&ood)).unwrap();
        assert!((fpr - 2.0 / 3.0).abs() < 1e-12, "{fpr}");
        assert_eq!(fpr_at_95_tpr(&t(&[0.0]), &t(&[1.0])).unwrap(), 0.0);
    }

    #[test]
    fn bad_scores_are_errors() {
        assert!(auroc(&t(&[f64::NAN]), &t(&[1.0])).is_err());
        assert!(auroc(&t(&[]), &t(&[1.0])).is_err());
        assert!(aupr_out(&t(&[1.0]), &t(&[])).is_err());
    }
}
