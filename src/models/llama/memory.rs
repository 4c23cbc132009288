//! Whether a model's base fits the memory this machine has free, asked before it is
//! loaded, so that a model too large is an error that says how much it needs rather than
//! a process the kernel kills.

use crate::{Error, Result};

/// An [`Error::OutOfMemory`] unless `needed` bytes fit in the memory that is free now
/// (`MemAvailable` of `/proc/meminfo`). Where that cannot be read (not Linux) nothing is
/// checked.
pub fn check_memory(needed: u64) -> Result<()> {
    match available_memory() {
        Some(available) => fits(needed, available),
        None => Ok(()),
    }
}

/// The check itself, for a given amount `available`.
pub(crate) fn fits(needed: u64, available: u64) -> Result<()> {
    if needed <= available {
        Ok(())
    } else {
        Err(Error::OutOfMemory { needed, available })
    }
}

/// `MemAvailable` in bytes, if this system reports it.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_too_large_says_what_it_needs_and_what_to_do() {
        let gib = 1u64 << 30;
        assert!(fits(3 * gib, 4 * gib).is_ok());
        let err = fits(6 * gib, 4 * gib).unwrap_err().to_string();
        assert!(err.contains("6.0 GiB") && err.contains("4.0 GiB"), "{err}");
        assert!(err.contains("bf16"), "{err}");
        // This machine reports its free memory, and a petabyte is more than it has.
        if available_memory().is_some() {
            assert!(check_memory(1 << 50).is_err());
        }
    }
}
