//! Paired timing for the cost examples (which include this file by path): every round
//! runs each case once, in an order that rotates from round to round, and a ratio is the
//! median of the rounds' ratios. On a shared machine whose speed drifts over minutes,
//! this pairing resolves differences of a few percent that one-benchmark-after-another
//! medians do not.

use std::time::Instant;

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One case: its name and a closure that runs it once.
pub type Case<'a> = (String, Box<dyn FnMut() -> Res<()> + 'a>);

/// The median and the quartiles of `v`.
pub fn quartiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.5), at(0.25), at(0.75)]
}

/// Seconds of each case in each of `rounds` rounds, after one warm-up run each.
pub fn rounds(cases: &mut [Case<'_>], rounds: usize) -> Res<Vec<Vec<f64>>> {
    let k = cases.len();
    let mut secs = vec![Vec::with_capacity(rounds); k];
    for (_, run) in cases.iter_mut() {
        run()?;
    }
    for r in 0..rounds {
        for i in 0..k {
            let m = (r + i) % k;
            let start = Instant::now();
            (cases[m].1)()?;
            secs[m].push(start.elapsed().as_secs_f64());
        }
    }
    Ok(secs)
}

/// The count in argument `i`, or `default` without one; at least 1.
pub fn count_arg(i: usize, what: &str, default: usize) -> Res<usize> {
    let n = match std::env::args().nth(i) {
        Some(a) => a
            .parse()
            .map_err(|_| format!("{what}: {a:?} is not a count"))?,
        None => default,
    };
    if n == 0 {
        return Err(format!("{what}: at least 1").into());
    }
    Ok(n)
}

/// A markdown table of each case's median time and its paired ratio to case 0's, with
/// the quartiles of the ratios in brackets; `what` names the column of cases.
pub fn print_table(what: &str, cases: &[Case<'_>], secs: &[Vec<f64>]) {
    let first = &cases[0].0;
    println!("| {what} | median | vs {first}, paired |");
    println!("|---|---:|---:|");
    for ((name, _), s) in cases.iter().zip(secs) {
        let ratios = s.iter().zip(&secs[0]).map(|(a, b)| a / b).collect();
        let [ms, _, _] = quartiles(s.iter().map(|x| x * 1e3).collect());
        let [r, lo, hi] = quartiles(ratios);
        println!("| {name} | {ms:.1} ms | {r:.3} [{lo:.3}, {hi:.3}] |");
    }
}
