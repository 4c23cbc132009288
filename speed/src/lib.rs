//! varlora's speed measurements, run from the workspace root:
//!
//! ```sh
//! cargo bench --bench optimizer_step          # also encoder_step, hydra_forward
//! cargo run --release --example step_cost -- 8
//! ```
//!
//! This library is empty: the benches' and examples' dependencies are dev-dependencies,
//! so that the core crate's examples at the root build without criterion.
