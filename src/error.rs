//! The crate's error type.

use candle_core::{DType, Shape};

/// Everything that can go wrong in varlora. Each message says what to fix.
///
/// An operation that returns an error leaves the optimizer's state and the model's weights
/// as they were before the call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A hyperparameter is outside its valid range.
    #[error("invalid hyperparameter `{field}` = {value}: expected {expected}")]
    InvalidConfig {
        /// The field's name, as in the config struct.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// The valid range.
        expected: &'static str,
    },

    /// A gradient holds NaN or Inf. Nothing was accumulated.
    #[error(
        "the gradient of group {group}, var {var} (shape {shape:?}) has NaN or Inf values; \
         fix the loss, or set `on_nonfinite: NonFinite::SkipStep` to skip such steps"
    )]
    NonFiniteGradient {
        /// Index of the parameter group.
        group: usize,
        /// Index of the var within its group.
        var: usize,
        /// The var's shape.
        shape: Shape,
    },

    /// A gradient does not match its var in shape, dtype or device.
    #[error("the gradient of group {group}, var {var} does not match the var: {detail}")]
    GradientMismatch {
        /// Index of the parameter group.
        group: usize,
        /// Index of the var within its group.
        var: usize,
        /// What differs.
        detail: String,
    },

    /// The operation needs a weight sample that has not been drawn or collected.
    #[error("{0}")]
    NoSample(&'static str),

    /// Vars given to one optimizer differ in dtype or device, or a var appears twice.
    #[error("vars do not fit together: {0}")]
    VarMismatch(String),

    /// The parameters' dtype is not supported.
    #[error("unsupported parameter dtype {0:?}: IVON keeps f32 or f64 parameters; convert the trainable vars to f32")]
    UnsupportedDType(DType),

    /// An operation was asked for in a state that forbids it.
    #[error("{0}")]
    InvalidState(&'static str),

    /// A checkpoint is corrupt or does not match the optimizer it is loaded into.
    #[error("checkpoint: {0}")]
    Checkpoint(String),

    /// A file the crate reads is corrupt (its checksum, kind or format version does not
    /// match) or malformed.
    #[error("{}: {problem}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        problem: String,
    },

    /// The ranks of a [`crate::collective::Collective`] disagree or one stopped answering
    /// (a timeout, buffers of different shapes, a non-finite gradient on another rank).
    #[error("collective: {0}")]
    Collective(String),

    /// A model's weights would not fit the memory that is free.
    #[error(
        "the model needs {:.1} GiB and {:.1} GiB is free: store its base in bf16 (half of \
         f32), or take a smaller model",
        *needed as f64 / (1u64 << 30) as f64,
        *available as f64 / (1u64 << 30) as f64
    )]
    OutOfMemory {
        /// Bytes the weights take.
        needed: u64,
        /// Bytes free.
        available: u64,
    },

    /// Something asked for by name or index is not there: a parameter group or var, a
    /// weight of a model file, an adapter var that stacked samples name.
    #[error("not found: {0}")]
    NotFound(String),

    /// The operation is not one this object does, with what to do instead (stacked
    /// samples of a BLoB or MC dropout model, the merged weight of an ensemble).
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A value could not be written as JSON (a file's header).
    #[error("serialisation: {0}")]
    Serialization(String),

    /// A tensor's shape does not fit what it is given with: the message names the
    /// tensor, its shape and the shape it needs.
    #[error("shape mismatch: {0}")]
    ShapeMismatch(String),

    /// Invalid input to a function: ranges, empty batches, NaN, malformed text.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `Result` with varlora's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(inner) => inner,
            other => candle_core::Error::wrap(other),
        }
    }
}
