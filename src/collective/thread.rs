//! The in-process backend: `n` ranks, each a thread holding a [`ThreadCollective`].

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use super::{Collective, ReduceOp};
use crate::{Error, Result};

/// A rank's contribution: its values in f64 (exact for f32 and f64) and what it asked.
#[derive(Clone, Debug, PartialEq)]
struct Contribution {
    values: Vec<f64>,
    dims: Vec<usize>,
    dtype: DType,
    op: Option<ReduceOp>,
}

#[derive(Debug, Default)]
struct Round {
    slots: Vec<Option<Contribution>>,
    result: Option<std::result::Result<Arc<Vec<f64>>, String>>,
    taken: usize,
    /// Set when a rank timed out: every later call fails with it.
    broken: Option<String>,
}

#[derive(Debug)]
struct Shared {
    world: usize,
    timeout: Duration,
    round: Mutex<Round>,
    changed: Condvar,
}

/// Makes the ranks of an in-process group: one [`ThreadCollective`] per thread.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use varlora::collective::{Collective, ReduceOp, ThreadGroup};
///
/// let ranks = ThreadGroup::new(2)?.into_ranks();
/// let sums: Vec<f32> = std::thread::scope(|s| {
///     let handles: Vec<_> = ranks
///         .iter()
///         .map(|c| s.spawn(move || {
///             let t = Tensor::new(&[c.rank() as f32 + 1.0], &Device::Cpu)?;
///             c.all_reduce(&t, ReduceOp::Sum)?.to_vec1::<f32>().map_err(varlora::Error::from)
///         }))
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap().unwrap()[0]).collect()
/// });
/// assert_eq!(sums, vec![3.0, 3.0]);
/// # Ok::<(), varlora::Error>(())
/// ```
#[derive(Debug)]
pub struct ThreadGroup {
    shared: Arc<Shared>,
}

impl ThreadGroup {
    /// A group of `world` ranks whose calls wait at most 60 s for the others.
    pub fn new(world: usize) -> Result<Self> {
        Self::with_timeout(world, Duration::from_secs(60))
    }

    /// A group of `world` ranks whose calls wait at most `timeout` for the others, then
    /// fail (a rank that stopped, or that calls a different sequence of operations).
    pub fn with_timeout(world: usize, timeout: Duration) -> Result<Self> {
        if world == 0 {
            return Err(Error::InvalidConfig {
                field: "world",
                value: "0".into(),
                expected: "at least one rank",
            });
        }
        let round = Round {
            slots: vec![None; world],
            ..Round::default()
        };
        Ok(Self {
            shared: Arc::new(Shared {
                world,
                timeout,
                round: Mutex::new(round),
                changed: Condvar::new(),
            }),
        })
    }

    /// One handle per rank, rank `r` at index `r`: give each to its own thread.
    pub fn into_ranks(self) -> Vec<ThreadCollective> {
        (0..self.shared.world)
            .map(|rank| ThreadCollective {
                rank,
                shared: self.shared.clone(),
            })
            .collect()
    }
}

/// One rank of a [`ThreadGroup`].
#[derive(Debug, Clone)]
pub struct ThreadCollective {
    rank: usize,
    shared: Arc<Shared>,
}

fn poisoned<T>(_: T) -> Error {
    Error::Collective("a rank panicked while holding the group's lock".into())
}

impl ThreadCollective {
    /// Waits on the condition variable until `done` or the deadline; a timeout breaks the
    /// group for every rank.
    fn wait_until<'a>(
        &'a self,
        mut round: MutexGuard<'a, Round>,
        deadline: Instant,
        what: &str,
        done: impl Fn(&Round) -> bool,
    ) -> Result<MutexGuard<'a, Round>> {
        while !done(&round) {
            if let Some(b) = &round.broken {
                return Err(Error::Collective(b.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<usize> = (0..self.shared.world)
                    .filter(|&r| round.slots[r].is_none())
                    .collect();
                let msg = format!(
                    "rank {} waited {:?} {what}; ranks {missing:?} had not arrived: a rank \
                     stopped, or the ranks call different operations",
                    self.rank, self.shared.timeout
                );
                round.broken = Some(msg.clone());
                self.shared.changed.notify_all();
                return Err(Error::Collective(msg));
            }
            round = self
                .shared
                .changed
                .wait_timeout(round, deadline - now)
                .map_err(poisoned)?
                .0;
        }
        Ok(round)
    }

    /// Deposits this rank's contribution, waits for the round's result and takes it.
    fn exchange(&self, c: Contribution) -> Result<Arc<Vec<f64>>> {
        let deadline = Instant::now() + self.shared.timeout;
        let round = self.shared.round.lock().map_err(poisoned)?;
        // A rank that finished the last round fast waits for it to be emptied.
        let mut round = self.wait_until(round, deadline, "for the last round to end", |r| {
            r.result.is_none() && r.slots[self.rank].is_none()
        })?;
        if let Some(b) = &round.broken {
            return Err(Error::Collective(b.clone()));
        }
        round.slots[self.rank] = Some(c);
        if round.slots.iter().all(Option::is_some) {
            round.result = Some(reduce(&round.slots));
            self.shared.changed.notify_all();
        }
        // The result stays until every rank has taken it, this one included.
        let mut round = self.wait_until(round, deadline, "for the other ranks", |r| {
            r.result.is_some()
        })?;
        let result = round
            .result
            .clone()
            .ok_or_else(|| Error::Collective("the round ended without a result".into()))?;
        round.taken += 1;
        if round.taken == self.shared.world {
            round.taken = 0;
            round.result = None;
            round.slots.iter_mut().for_each(|s| *s = None);
            self.shared.changed.notify_all();
        }
        result.map_err(Error::Collective)
    }
}

/// The elementwise reduction of every rank's contribution, in rank order, or why the
/// contributions do not fit together.
fn reduce(slots: &[Option<Contribution>]) -> std::result::Result<Arc<Vec<f64>>, String> {
    let all: Vec<&Contribution> = slots.iter().flatten().collect();
    let first = all[0];
    for (r, c) in all.iter().enumerate() {
        if c.dims != first.dims || c.dtype != first.dtype || c.op != first.op {
            return Err(format!(
                "rank {r} sent {:?} {:?} for {:?}, rank 0 {:?} {:?} for {:?}",
                c.dims, c.dtype, c.op, first.dims, first.dtype, first.op
            ));
        }
    }
    let Some(op) = first.op else {
        return Ok(Arc::new(Vec::new()));
    };
    let f32s = first.dtype == DType::F32;
    // Each step is rounded to the buffer's dtype, as a reduction in that dtype would be.
    let round = |v: f64| if f32s { f64::from(v as f32) } else { v };
    let mut out = first.values.clone();
    for (k, c) in all.iter().enumerate().skip(1) {
        for (o, &x) in out.iter_mut().zip(&c.values) {
            *o = match op {
                ReduceOp::Sum => round(*o + x),
                ReduceOp::Max => o.max(x),
                ReduceOp::Mean => round(*o + round(round(x - *o) / (k + 1) as f64)),
            };
        }
    }
    Ok(Arc::new(out))
}

impl Collective for ThreadCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let dtype = t.dtype();
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::UnsupportedDType(dtype));
        }
        let values = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let dims = t.dims().to_vec();
        let out = self.exchange(Contribution {
            values,
            dims: dims.clone(),
            dtype,
            op: Some(op),
        })?;
        Ok(Tensor::from_slice(&out, dims, t.device())?.to_dtype(dtype)?)
    }

    fn barrier(&self) -> Result<()> {
        self.exchange(Contribution {
            values: Vec::new(),
            dims: Vec::new(),
            dtype: DType::F32,
            op: None,
        })
        .map(|_| ())
    }
}
