//! Memory-allocator settings for training on the CPU.
//!
//! A training step allocates and frees hundreds of tensors of a few megabytes each. glibc's
//! `malloc` serves such blocks with fresh `mmap`s (or trims them off its heap) and hands
//! them back to the kernel on `free`, so every step zero-fills the same pages again: on
//! the fine-tuning example that page faulting took half of the step time.

/// Makes glibc's `malloc` keep freed memory for reuse: blocks up to 32 MiB (its largest
/// setting) come from the heap instead of their own `mmap`, and the heap is not trimmed.
/// The process keeps about its peak working set mapped instead of returning it to the
/// system between steps. It changes process-wide settings, so call it once, at the start
/// of a program that trains or predicts on the CPU; other allocators (e.g. mimalloc) have
/// their own settings.
///
/// Returns whether the settings were applied: `false` on targets other than Linux with
/// glibc, where it does nothing.
///
/// ```
/// let applied = varlora::alloc::keep_freed_memory();
/// assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; both values are in range.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
