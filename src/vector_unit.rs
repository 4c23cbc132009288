//! Running a hot loop with the widest vector unit the processor has, chosen at run time.

/// Defines `fn $name(args)`, which runs `$body(args)` compiled for AVX-512F, AVX2 or the
/// x86-64 baseline, the widest the processor supports, and the two x86-64 variants
/// `$avx512` and `$avx2` (for tests that compare them). `$body` must be
/// `#[inline(always)]`, so that each variant compiles it for its own unit. The operations
/// are the same IEEE ones on each (Rust never fuses a multiply and an add), so are the
/// bits.
macro_rules! widest_vector_unit {
    (
        $(#[$attr:meta])*
        fn $name:ident, $avx512:ident, $avx2:ident => $body:ident($($arg:ident: $ty:ty),* $(,)?)
    ) => {
        $(#[$attr])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the processor supports AVX-512F, checked just above.
                    unsafe { $avx512($($arg),*) };
                    return;
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the processor supports AVX2, checked just above.
                    unsafe { $avx2($($arg),*) };
                    return;
                }
            }
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        fn $avx512($($arg: $ty),*) {
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn $avx2($($arg: $ty),*) {
            $body($($arg),*)
        }
    };
}

pub(crate) use widest_vector_unit;
