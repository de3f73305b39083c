//! The model configuration (`config.json`): Hugging Face Llama/Qwen2 keys plus `n_future_tokens`.
//! Only data and validation live here, no tensors.

use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};

/// The decoder families Foresight knows how to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
}

/// `eos_token_id` is a number in some configs and a list in others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// `config.json` of a model directory. Unknown keys are kept (in `extra`) and written back on save.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    /// Trunk layers plus head 1 (the last layer), as in Hugging Face configs.
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama: bias on q/k/v/o. Qwen2 always has q/k/v bias and ignores this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// Number of MTP heads (1 = plain next-token model).
    #[serde(default = "default_n_future_tokens")]
    pub n_future_tokens: usize,
    /// Meta-style interleaved RoPE (pairs (0,1),(2,3)...) instead of Hugging Face's half rotation.
    #[serde(default)]
    pub rope_interleaved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position_embeddings() -> usize {
    4096
}
fn default_n_future_tokens() -> usize {
    1
}

/// transformers 5 writes RoPE settings as `rope_parameters: {rope_theta, rope_type, ...}` instead
/// of top-level `rope_theta` / `rope_scaling`. Lifts them to the top level (where a top-level key
/// is absent), so both generations of config.json read alike; any rope_type but "default" becomes
/// `rope_scaling`, which `validate` refuses by name.
pub fn normalize_rope_parameters(config: &mut serde_json::Value) {
    let Some(obj) = config.as_object_mut() else {
        return;
    };
    let Some(params) = obj
        .get("rope_parameters")
        .and_then(|p| p.as_object())
        .cloned()
    else {
        return;
    };
    if !obj.contains_key("rope_theta") {
        if let Some(theta) = params.get("rope_theta") {
            obj.insert("rope_theta".into(), theta.clone());
        }
    }
    let rope_type = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    if rope_type != "default" && obj.get("rope_scaling").is_none_or(|v| v.is_null()) {
        obj.insert("rope_scaling".into(), serde_json::Value::Object(params));
    }
}

impl ModelConfig {
    /// Which decoder family this config describes, from `model_type` or else `architectures`.
    pub fn architecture(&self) -> Result<Architecture> {
        let from_name = |name: &str| match name {
            "llama" | "LlamaForCausalLM" | "mistral" | "MistralForCausalLM" => {
                Some(Architecture::Llama)
            }
            "qwen2" | "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
            _ => None,
        };
        if let Some(model_type) = &self.model_type {
            return from_name(model_type).ok_or_else(|| ModelError::UnknownArchitecture {
                found: model_type.clone(),
            });
        }
        match self.architectures.first() {
            Some(arch) => from_name(arch).ok_or_else(|| ModelError::UnknownArchitecture {
                found: arch.clone(),
            }),
            None => Err(ModelError::UnknownArchitecture {
                found: "(no model_type or architectures)".into(),
            }),
        }
    }

    pub fn n_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Layers shared by all heads: `layers[..L-1]`.
    pub fn n_trunk_layers(&self) -> usize {
        self.num_hidden_layers - 1
    }

    /// Number of heads (head 1 plus `n_future_tokens - 1` extra heads).
    pub fn n_heads(&self) -> usize {
        self.n_future_tokens
    }

    pub fn qkv_bias(&self) -> bool {
        match self.architecture() {
            Ok(Architecture::Qwen2) => true,
            _ => self.attention_bias.unwrap_or(false),
        }
    }

    pub fn o_bias(&self) -> bool {
        match self.architecture() {
            Ok(Architecture::Qwen2) => false,
            _ => self.attention_bias.unwrap_or(false),
        }
    }

    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// Checks everything the model code relies on, with a message naming the offending key.
    pub fn validate(&self) -> Result<()> {
        self.architecture()?;
        let bad = |reason: String| Err(ModelError::InvalidConfig { reason });
        if self.vocab_size == 0 || self.hidden_size == 0 || self.intermediate_size == 0 {
            return bad("vocab_size, hidden_size and intermediate_size must be positive".into());
        }
        if self.num_hidden_layers == 0 {
            return bad("num_hidden_layers must be at least 1 (the last layer is head 1)".into());
        }
        if self.n_future_tokens == 0 {
            return bad("n_future_tokens must be at least 1".into());
        }
        if self.num_attention_heads == 0 || self.n_kv_heads() == 0 {
            return bad("num_attention_heads and num_key_value_heads must be positive".into());
        }
        if !self.num_attention_heads.is_multiple_of(self.n_kv_heads()) {
            return bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.n_kv_heads()
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size ({}) must be a multiple of num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim()
            ));
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return bad(format!(
                    "hidden_act {act:?} is not supported (only silu/SwiGLU)"
                ));
            }
        }
        if self.mlp_bias == Some(true) {
            return bad("mlp_bias = true is not supported".into());
        }
        match &self.rope_scaling {
            None | Some(serde_json::Value::Null) => {}
            Some(other) => return bad(format!("rope_scaling {other} is not supported")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2
        })
    }

    fn parse(v: serde_json::Value) -> ModelConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn rope_parameters_table() {
        use serde_json::json;
        let cases = [
            // transformers 5: theta only inside rope_parameters
            (
                json!({"rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}}),
                Some(json!(5e5)),
                None,
            ),
            // top-level key wins
            (
                json!({"rope_theta": 1e4, "rope_parameters": {"rope_theta": 5e5}}),
                Some(json!(1e4)),
                None,
            ),
            // scaled RoPE becomes rope_scaling (refused later by validate)
            (
                json!({"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 32.0}}),
                Some(json!(5e5)),
                Some("llama3"),
            ),
            // transformers 4 layout is left alone
            (json!({"rope_theta": 1e6}), Some(json!(1e6)), None),
            (json!({}), None, None),
        ];
        for (mut v, theta, scaling) in cases {
            let before = v.clone();
            normalize_rope_parameters(&mut v);
            assert_eq!(v.get("rope_theta").cloned(), theta, "{before}");
            assert_eq!(
                v.get("rope_scaling").and_then(|s| s["rope_type"].as_str()),
                scaling,
                "{before}"
            );
        }
    }

    #[test]
    fn defaults_and_derived_values() {
        let c = parse(base());
        assert_eq!(c.n_future_tokens, 1);
        assert_eq!(c.head_dim(), 16);
        assert_eq!(c.n_trunk_layers(), 2);
        assert!(!c.qkv_bias());
        c.validate().unwrap();
    }

    #[test]
    fn architecture_table() {
        let cases = [
            (Some("llama"), vec![], Ok(Architecture::Llama)),
            (Some("qwen2"), vec![], Ok(Architecture::Qwen2)),
            (None, vec!["Qwen2ForCausalLM"], Ok(Architecture::Qwen2)),
            (Some("gpt2"), vec![], Err(())),
            (None, vec![], Err(())),
        ];
        for (model_type, archs, want) in cases {
            let mut c = parse(base());
            c.model_type = model_type.map(String::from);
            c.architectures = archs.into_iter().map(String::from).collect();
            assert_eq!(c.architecture().map_err(|_| ()), want, "{model_type:?}");
        }
    }

    #[test]
    fn invalid_configs_name_the_problem() {
        let cases = [
            (
                serde_json::json!({"num_key_value_heads": 3}),
                "multiple of num_key_value_heads",
            ),
            (
                serde_json::json!({"num_hidden_layers": 0}),
                "num_hidden_layers",
            ),
            (serde_json::json!({"n_future_tokens": 0}), "n_future_tokens"),
            (serde_json::json!({"hidden_act": "gelu"}), "gelu"),
            (
                serde_json::json!({"rope_scaling": {"type": "yarn"}}),
                "rope_scaling",
            ),
        ];
        for (patch, needle) in cases {
            let mut v = base();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let err = parse(v).validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn qwen2_has_qkv_bias_and_unknown_keys_survive() {
        let mut v = base();
        v["model_type"] = "qwen2".into();
        v["use_sliding_window"] = false.into();
        let c = parse(v);
        assert!(c.qkv_bias() && !c.o_bias());
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["use_sliding_window"], false);
    }
}
