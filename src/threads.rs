//! Thread settings for training on the CPU.
//!
//! candle runs its elementwise ops on a thread pool of its own, whose workers spin 25,000
//! times after each op before they park, while the matmuls run on rayon's threads. On a
//! machine with few cores that spinning takes a core from the matmuls: on 2 cores it was
//! 12% of a decoder training step's samples, and a short spin made the step 7-8% faster
//! (`results/speed/decoder-piqa-step-amd.md`).

/// The spin that [`short_candle_spin`] sets.
pub const SHORT_SPIN: &str = "500";

/// Makes candle's pool workers park after a short spin: sets
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` to [`SHORT_SPIN`] unless the environment already sets
/// it. candle reads it when it starts its pool, at the first elementwise op on the CPU, so
/// call this at the start of the program, before any thread is spawned. Returns whether it
/// set the variable.
///
/// ```
/// varlora::threads::short_candle_spin();
/// assert!(std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_some());
/// ```
pub fn short_candle_spin() -> bool {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_some() {
        return false;
    }
    std::env::set_var(VAR, SHORT_SPIN);
    true
}
