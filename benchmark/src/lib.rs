//! What the fine-tuning benchmark's programs (`examples/finetune`, `examples/predict`)
//! share: all-MiniLM-L6-v2's tokenizer and its batches. The programs themselves are this
//! package's examples:
//!
//! ```sh
//! cargo run --release --example finetune -- --preset overconfident --optimizer ivon
//! cargo run --release --example predict -- --adapter runs/ivon --input sentences.txt
//! ```

pub mod minilm;
