//! The MTP transformer in candle: config, blocks, heads, KV caches, the directory format, and a
//! deterministic tiny model for tests. Imports candle and tokenizers only; knows nothing of decoding.

pub mod config;
pub mod cpu_kernels;
pub mod device;
pub mod error;
pub mod gpu_ops;
pub mod kv_cache;
pub mod layers;
pub mod meta;
pub mod mtp;
pub mod rope;
pub mod tiny;
pub mod tokenizer;
pub mod train_kernels;
pub mod weights;

pub use config::ModelConfig;
pub use device::{weight_dtype, DeviceChoice};
pub use error::{ModelError, Result};
pub use layers::{attention_path, AttentionPath, Kernels, FUSED_MAX_ROWS};
pub use mtp::{ForwardOutput, HeadLogits, Logits, ModelCache, MtpModel, VerifyOutput};
pub use tokenizer::{FimTokens, SpecialTokens};
pub use weights::{load_dir, save_dir, LoadedModel};
