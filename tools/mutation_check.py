"""Applies deliberate bugs to IVON one at a time and checks that the reference replay
test (tests/ivon_reference.rs) catches each. Restores the sources afterwards.

Usage (from the repository root): python3 tools/mutation_check.py
"""

import pathlib
import subprocess
import sys

MATH = "src/optim/ivon/math.rs"
STEP = "src/optim/ivon/step.rs"

# (name, file, original text, mutated text)
MUTANTS = [
    ("mean update uses the old h", STEP,
     "math::mean(&p.row(MEAN)?, &momentum, &hess, s, lr_t, bc)",
     "math::mean(&p.row(MEAN)?, &momentum, &p.row(HESS)?, s, lr_t, bc)"),
    ("correction term uses the new-h estimate f in place of the old h", MATH,
     "let correction = (((h - &f)?.sqr()? * (0.5 * (1.0 - s.beta2).powi(2)))? / &h_wd)?;",
     "let correction = (((h - &f)?.sqr()? * (0.5 * (1.0 - s.beta2).powi(2)))? / (&f + s.weight_decay)?)?;"),
    ("correction term dropped", MATH,
     "Ok((((h * s.beta2)? + (f * (1.0 - s.beta2))?)? + correction)?)",
     "Ok((((h * s.beta2)? + (f * (1.0 - s.beta2))?)? + (correction * 0.0)?)?)"),
    ("debias dropped", MATH,
     "(lr, config.debias.then(|| 1.0 - s.beta1.powf(t as f64)))",
     "(lr, None)"),
    ("rescale_lr ignored", MATH,
     "let lr = if config.rescale_lr {",
     "let lr = if false {"),
    ("clip ignored", MATH,
     "if s.clip_radius.is_finite() {",
     "if false {"),
    ("price estimate without (h + wd)", MATH,
     "HessApprox::Price => ((avg_hess * &h_wd)? * s.ess)?,",
     "HessApprox::Price => ((avg_hess * h)? * s.ess)?,"),
    ("Welford mean replaced by the last sample", MATH,
     "Some(avg) => {\n            let step",
     "Some(avg) if false => {\n            let step"),
    ("momentum coefficients swapped", MATH,
     "Ok(((g * s.beta1)? + (avg_grad * (1.0 - s.beta1))?)?)",
     "Ok(((g * (1.0 - s.beta1))? + (avg_grad * s.beta1)?)?)"),
    ("weight decay left out of the sampling variance", MATH,
     "let precision = ((hess + s.weight_decay)? * s.ess)?;",
     "let precision = (hess * s.ess)?;"),
    ("weight decay left out of the step", MATH,
     "let mut step = ((g + (m * s.weight_decay)?)? / (h_new + s.weight_decay)?)?;",
     "let mut step = (g / (h_new + s.weight_decay)?)?;"),
    ("scalar coefficient rounded differently (1 - beta2 in f32)", MATH,
     "(f * (1.0 - s.beta2))?",
     "(f * f64::from(1.0f32 - s.beta2 as f32))?"),
]

WELFORD_FALLBACK = "None | Some(_) => Ok(new),"


def cargo(*args):
    cmd = ["cargo", "test", "-q", "--test", "ivon_reference", *args]
    return subprocess.run(cmd, capture_output=True, text=True).returncode == 0


def check_patterns():
    """Refuses to run unless every mutant's text occurs exactly once: a pattern the code
    has moved away from would otherwise plant nothing and pass unseen."""
    stale = [
        f"  {name}: {pathlib.Path(path).read_text().count(old)} matches in {path} of {old!r}"
        for name, path, old, _ in MUTANTS
        if pathlib.Path(path).read_text().count(old) != 1
    ]
    if stale:
        sys.exit(
            "mutation_check.py: these mutants' patterns are not found exactly once, so "
            "they would plant no bug; update MUTANTS to the code:\n" + "\n".join(stale)
        )


def main():
    check_patterns()
    failures = 0
    for name, path, old, new in MUTANTS:
        p = pathlib.Path(path)
        src = p.read_text()
        mutated = src.replace(old, new)
        if "if false =>" in new:
            mutated = mutated.replace("None => Ok(new),", WELFORD_FALLBACK)
        p.write_text(mutated)
        try:
            builds = cargo("--no-run")
            caught = builds and not cargo()
        finally:
            p.write_text(src)
        verdict = "caught" if caught else ("MISSED" if builds else "NO BUILD")
        print(f"{verdict:8} {name}")
        failures += not caught
    print(f"{len(MUTANTS) - failures} of {len(MUTANTS)} mutants caught")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
