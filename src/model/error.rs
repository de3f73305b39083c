//! Typed errors for loading, saving and running models. Not for CLI messages (those wrap these with anyhow).

use std::path::PathBuf;

/// Everything that can go wrong between a model directory on disk and a forward pass.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model directory {0} does not exist")]
    NoDirectory(PathBuf),
    #[error("{dir}: missing {file}: {hint}")]
    MissingFile {
        dir: PathBuf,
        file: String,
        hint: &'static str,
    },
    /// A JSON file of a model directory (config.json, the shard index, Meta's params.json) that
    /// does not parse, or does not hold what that file should.
    #[error("{path}: not a valid {what}: {source}")]
    BadConfig {
        path: PathBuf,
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("invalid model config: {reason}")]
    InvalidConfig { reason: String },
    #[error("unknown architecture {found:?}: Foresight loads Llama- and Qwen2-style decoders (model_type \"llama\" or \"qwen2\")")]
    UnknownArchitecture { found: String },
    #[error("tensor {name} is missing from the weights (config.json expects it)")]
    MissingTensor { name: String },
    #[error("tensor {name} has shape {found:?}, but config.json implies {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("the weights hold tensors that config.json does not account for (wrong num_hidden_layers or n_future_tokens?): {names:?}")]
    UnexpectedTensors { names: Vec<String> },
    #[error("{path}: cannot read tokenizer: {reason}")]
    BadTokenizer { path: PathBuf, reason: String },
    #[error("tokenizer has {tokenizer} tokens but config.json says vocab_size {config}: they belong to different models")]
    VocabMismatch { tokenizer: usize, config: usize },
    #[error("{path}: cannot read weights: {source}")]
    BadWeights {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("KV cache holds at most {capacity} positions; this forward needs {needed}")]
    CacheFull { capacity: usize, needed: usize },
    #[error("token id {id} is out of range for vocab_size {vocab_size}")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    /// A forward or cache call that breaks an invariant of the model's API (a caller's bug).
    #[error("model misuse: {reason}")]
    Misuse { reason: String },
    #[error("remote engine {url}: {reason}")]
    Remote { url: String, reason: String },
    #[error("cannot open device {device}: {reason}")]
    Device { device: String, reason: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
