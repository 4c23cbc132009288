//! varlora's fine-tuning benchmark on all-MiniLM-L6-v2. Its programs are this package's
//! examples, run from the workspace root:
//!
//! ```sh
//! cargo run --release --example finetune -- --preset overconfident --optimizer ivon
//! cargo run --release --example predict -- --adapter runs/ivon --input sentences.txt
//! ```
//!
//! This library is empty: the programs' dependencies are dev-dependencies, so that
//! building the core crate's examples at the root does not compile them.
