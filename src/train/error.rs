//! Typed errors of training: refusals with the data a user needs to fix them, and wrapped model,
//! tensor and file errors. Not for CLI wording (the CLI adds context with anyhow).

use std::path::PathBuf;

use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("repository {0} is not a directory")]
    NoRepository(PathBuf),
    #[error("no usable source files in {repos:?} ({skipped} files skipped; run with --verbose to see which and why)")]
    EmptyCorpus { repos: Vec<PathBuf>, skipped: usize },
    #[error("found only {found} usable source file; training needs at least 2 (one is held out for validation)")]
    TooFewFiles { found: usize },
    #[error("the training split has {tokens} tokens, fewer than one sequence of {needed} (--seq-len + 1); lower --seq-len or add files")]
    TooLittleData { tokens: usize, needed: usize },
    #[error("--seq-len {seq_len} is over the model's context of {context} positions; to train a longer context, copy the --base directory and raise max_position_embeddings in its config.json (RoPE positions past {context} start untrained and adapt in a few hundred steps)")]
    SeqLenOverContext { seq_len: usize, context: usize },
    #[error("invalid training options: {0}")]
    InvalidOptions(String),
    #[error("output directory {0} already holds files; pass --force to start a new run there, or --resume to continue its run")]
    OutputExists(PathBuf),
    #[error("{0} holds no checkpoint to resume (expected checkpoints/latest)")]
    NoCheckpoint(PathBuf),
    #[error("checkpoint {path} is unusable: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },
    #[error("cannot load the base model {dir}: {source}")]
    BaseModel {
        dir: PathBuf,
        source: Box<ModelError>,
    },
    #[error("tokenizer training failed: {0}")]
    Tokenizer(String),
    #[error("the base tokenizer has no end-of-text token (looked for <|endoftext|>, </s> and the config's eos_token_id); documents need a separator")]
    NoEndOfText,
    #[error("device {0:?} is not available: {1}")]
    Device(String, String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(Box<ModelError>),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Model errors are boxed: they are large, and every training `Result` would carry their size.
impl From<ModelError> for TrainError {
    fn from(e: ModelError) -> Self {
        TrainError::Model(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;

/// Wraps an I/O error with its path.
pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
