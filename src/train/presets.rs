//! Model shapes for training from scratch (`--config`): named size presets or a JSON config file.
//! Presets are compute matched as in the paper: a model with n heads has n - 1 fewer trunk layers
//! than its next-token twin, so `layers` counts trunk layers plus all heads. Only configs here.

use std::path::Path;

use super::error::{io_err, Result, TrainError};
use crate::model::ModelConfig;

/// One size preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    /// Trunk layers plus head layers (the next-token twin's layer count).
    pub layers: usize,
    pub attention_heads: usize,
    pub kv_heads: usize,
}

pub const PRESETS: [Preset; 4] = [
    Preset {
        name: "tiny",
        hidden_size: 64,
        intermediate_size: 176,
        layers: 4,
        attention_heads: 4,
        kv_heads: 2,
    },
    Preset {
        name: "10m",
        hidden_size: 256,
        intermediate_size: 704,
        layers: 8,
        attention_heads: 4,
        kv_heads: 4,
    },
    Preset {
        name: "20m",
        hidden_size: 384,
        intermediate_size: 1024,
        layers: 8,
        attention_heads: 6,
        kv_heads: 6,
    },
    Preset {
        name: "60m",
        hidden_size: 512,
        intermediate_size: 1408,
        layers: 12,
        attention_heads: 8,
        kv_heads: 4,
    },
];

/// Context length of preset models: room for the serving prompt (1024 + 256 tokens) and a completion.
pub const PRESET_CONTEXT: usize = 2048;

/// Rounds a tokenizer's size up to a multiple of 64 (faster matmuls; the extra rows are never produced).
pub fn padded_vocab(tokenizer_vocab: usize) -> usize {
    tokenizer_vocab.div_ceil(64) * 64
}

/// The config of preset `p` with `heads` heads over `vocab_size` tokens.
pub fn preset_config(p: &Preset, vocab_size: usize, heads: usize) -> Result<ModelConfig> {
    if heads == 0 || heads >= p.layers {
        return Err(TrainError::InvalidOptions(format!(
            "preset {} has {} layers; --heads must be between 1 and {} (at least one trunk layer)",
            p.name,
            p.layers,
            p.layers - 1
        )));
    }
    let json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        // Trunk (layers - heads) plus head 1; the other heads are extra_heads.
        "num_hidden_layers": p.layers - heads + 1,
        "num_attention_heads": p.attention_heads,
        "num_key_value_heads": p.kv_heads,
        "max_position_embeddings": PRESET_CONTEXT,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "n_future_tokens": heads,
    });
    Ok(serde_json::from_value(json).expect("preset config is valid"))
}

/// `--config SPEC`: a preset name (4 heads by default, fewer where the preset has too few layers),
/// or a path to a config.json. The file's `vocab_size` must hold
/// the tokenizer; `heads` (when given) overrides its `n_future_tokens`.
pub fn scratch_config(
    spec: &str,
    tokenizer_vocab: usize,
    heads: Option<usize>,
) -> Result<ModelConfig> {
    if let Some(p) = PRESETS.iter().find(|p| p.name == spec) {
        let heads = heads.unwrap_or_else(|| 4.min(p.layers - 1));
        return preset_config(p, padded_vocab(tokenizer_vocab), heads);
    }
    let path = Path::new(spec);
    if !path.is_file() {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        return Err(TrainError::InvalidOptions(format!(
            "--config {spec:?} is neither a preset ({}) nor a file",
            names.join(", ")
        )));
    }
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut cfg: ModelConfig =
        serde_json::from_str(&text).map_err(|source| crate::model::ModelError::BadConfig {
            path: path.to_path_buf(),
            what: "model config",
            source,
        })?;
    if let Some(h) = heads {
        cfg.n_future_tokens = h;
    }
    if cfg.vocab_size < tokenizer_vocab {
        return Err(TrainError::InvalidOptions(format!(
            "{spec}: vocab_size {} is smaller than the tokenizer's {tokenizer_vocab} tokens",
            cfg.vocab_size
        )));
    }
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::param_counts;

    #[test]
    fn presets_are_compute_matched() {
        for heads in [1, 2, 4] {
            let cfg = scratch_config("10m", 8192, Some(heads)).unwrap();
            assert_eq!(cfg.n_trunk_layers() + cfg.n_heads(), 8, "heads {heads}");
            assert_eq!(cfg.vocab_size, 8192);
        }
    }

    #[test]
    fn the_10m_preset_is_about_10m_parameters_at_vocab_8192() {
        let cfg = scratch_config("10m", 8192, Some(4)).unwrap();
        let total = param_counts(&cfg).total();
        assert!((9_000_000..12_000_000).contains(&total), "{total}");
    }

    #[test]
    fn vocab_is_padded_and_bad_specs_are_refused() {
        assert_eq!(padded_vocab(260), 320);
        assert_eq!(padded_vocab(8192), 8192);
        assert!(scratch_config("huge", 260, None)
            .unwrap_err()
            .to_string()
            .contains("tiny"));
        assert!(
            scratch_config("tiny", 260, Some(4)).is_err(),
            "tiny has 4 layers: 4 heads leave no trunk"
        );
    }
}
