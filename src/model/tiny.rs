//! A deterministic tiny MTP model with random weights and the byte-level tokenizer, built in code
//! for tests and benchmarks (nothing large is committed). It is not a trained model and knows no code.

use std::path::Path;

use candle_core::{DType, Device};
use tokenizers::Tokenizer;

use super::config::ModelConfig;
use super::error::Result;
use super::mtp::MtpModel;
use super::tokenizer::byte_level_tokenizer;
use super::weights::{init_weights, model_from_tensors, save_dir};

/// Shape and seed of a tiny model. The defaults give a 4-head model with grouped-query attention.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub seed: u64,
    pub n_future_tokens: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    /// Trunk layers plus head 1.
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub model_type: &'static str,
    pub tie_word_embeddings: bool,
    pub rope_interleaved: bool,
    /// Standard deviation of the random weights; large enough that next-token distributions are
    /// peaked, as a trained model's are, rather than flat.
    pub weight_std: f32,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            seed: 7,
            n_future_tokens: 4,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            model_type: "llama",
            tie_word_embeddings: false,
            rope_interleaved: false,
            weight_std: 0.3,
        }
    }
}

/// Vocabulary of the byte-level tokenizer: 256 bytes and 4 special tokens.
pub const TINY_VOCAB: usize = 260;

impl TinySpec {
    pub fn config(&self) -> ModelConfig {
        let json = serde_json::json!({
            "architectures": [if self.model_type == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
            "model_type": self.model_type,
            "vocab_size": TINY_VOCAB,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": self.tie_word_embeddings,
            "n_future_tokens": self.n_future_tokens,
            "rope_interleaved": self.rope_interleaved,
            "eos_token_id": 256,
        });
        serde_json::from_value(json).expect("tiny config is valid")
    }

    /// The model in f32 on the CPU.
    pub fn model(&self) -> Result<MtpModel> {
        let cfg = self.config();
        let tensors = init_weights(&cfg, self.seed, self.weight_std, &Device::Cpu)?;
        model_from_tensors(&cfg, tensors, DType::F32, &Device::Cpu)
    }

    pub fn tokenizer(&self) -> Tokenizer {
        byte_level_tokenizer()
    }

    /// Writes a complete model directory (config, weights, tokenizer) to `dir`.
    pub fn write_dir(&self, dir: &Path) -> Result<()> {
        save_dir(&self.model()?, &self.tokenizer(), dir)
    }
}
