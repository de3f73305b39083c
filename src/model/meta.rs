//! Meta's checkpoint layout (`params.json` + `consolidated.pth`, as in facebook/multi-token-prediction):
//! tensor renaming to Hugging Face names and the config derived from params and shapes. The
//! model then runs with interleaved RoPE, so no weights are permuted. Not here: the HF layout itself.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::error::{ModelError, Result};

pub const PARAMS_FILE: &str = "params.json";

/// Hugging Face name for a Meta tensor name, or `None` for tensors the model does not use
/// (for example `rope.freqs`).
pub fn hf_name(meta: &str) -> Option<String> {
    let block = |rest: &str| -> Option<&'static str> {
        Some(match rest {
            "attention.wq.weight" => "self_attn.q_proj.weight",
            "attention.wk.weight" => "self_attn.k_proj.weight",
            "attention.wv.weight" => "self_attn.v_proj.weight",
            "attention.wo.weight" => "self_attn.o_proj.weight",
            "feed_forward.w1.weight" => "mlp.gate_proj.weight",
            "feed_forward.w3.weight" => "mlp.up_proj.weight",
            "feed_forward.w2.weight" => "mlp.down_proj.weight",
            "attention_norm.weight" => "input_layernorm.weight",
            "ffn_norm.weight" => "post_attention_layernorm.weight",
            _ => return None,
        })
    };
    match meta {
        "tok_embeddings.weight" => return Some("model.embed_tokens.weight".into()),
        "norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    for (meta_prefix, hf_prefix) in [
        ("layers.", "model.layers."),
        ("extra_heads.", "model.extra_heads."),
    ] {
        if let Some(rest) = meta.strip_prefix(meta_prefix) {
            let (index, rest) = rest.split_once('.')?;
            index.parse::<usize>().ok()?;
            return Some(format!("{hf_prefix}{index}.{}", block(rest)?));
        }
    }
    None
}

/// The config implied by `params.json` and the tensors' shapes (vocabulary and FFN width come
/// from the weights, since Meta's params leave them implicit).
pub fn config_from_params(
    params: &serde_json::Value,
    tensors: &HashMap<String, Tensor>,
) -> Result<ModelConfig> {
    let bad = |reason: String| ModelError::InvalidConfig { reason };
    let get = |key: &str| params.get(key).and_then(|v| v.as_u64()).map(|v| v as usize);
    let dim = get("dim").ok_or_else(|| bad("params.json has no dim".into()))?;
    let n_layers = get("n_layers").ok_or_else(|| bad("params.json has no n_layers".into()))?;
    let n_heads = get("n_heads").ok_or_else(|| bad("params.json has no n_heads".into()))?;
    let shape = |name: &str| {
        tensors
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })
    };
    let vocab_size = shape("model.embed_tokens.weight")?[0];
    let intermediate_size = shape("model.layers.0.mlp.gate_proj.weight")?[0];
    let json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": dim,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": get("n_kv_heads").unwrap_or(n_heads),
        "rms_norm_eps": params.get("norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-5),
        "rope_theta": params.get("rope_theta").and_then(|v| v.as_f64()).unwrap_or(10_000.0),
        "max_position_embeddings": get("max_seq_len").unwrap_or(4096),
        "tie_word_embeddings": false,
        "n_future_tokens": get("n_future_tokens").unwrap_or(1),
        "rope_interleaved": true,
    });
    let cfg: ModelConfig = serde_json::from_value(json).map_err(|e| bad(e.to_string()))?;
    cfg.validate()?;
    Ok(cfg)
}

/// Renames Meta tensors to HF names, dropping those the model does not use.
pub fn rename_tensors(meta: impl IntoIterator<Item = (String, Tensor)>) -> HashMap<String, Tensor> {
    meta.into_iter()
        .filter_map(|(name, t)| Some((hf_name(&name)?, t)))
        .collect()
}

/// Reads `params.json` and the `.pth` file of a Meta-layout directory.
pub fn read_meta_dir(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(ModelConfig, HashMap<String, Tensor>)> {
    let params_path = dir.join(PARAMS_FILE);
    let text = std::fs::read_to_string(&params_path).map_err(|source| ModelError::Io {
        path: params_path.clone(),
        source,
    })?;
    let params: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ModelError::BadConfig {
            path: params_path,
            what: "JSON file (Meta's params.json)",
            source,
        })?;
    let mut pths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pth"))
        .collect();
    pths.sort();
    let pth = match pths.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(ModelError::MissingFile {
                dir: dir.to_path_buf(),
                file: "consolidated.pth".into(),
                hint: "Meta layout needs its weights",
            })
        }
        _ => {
            return Err(ModelError::InvalidConfig {
                reason: format!(
                "{}: several .pth files; model-parallel shards are not supported, merge them first",
                dir.display()
            ),
            })
        }
    };
    let bad_weights = |source| ModelError::BadWeights {
        path: pth.clone(),
        source,
    };
    let pth_tensors = candle_core::pickle::PthTensors::new(&pth, None).map_err(bad_weights)?;
    let mut meta = Vec::new();
    for name in pth_tensors.tensor_infos().keys() {
        let t = pth_tensors
            .get(name)
            .map_err(bad_weights)?
            .expect("listed tensor exists");
        meta.push((name.clone(), t.to_device(device)?.to_dtype(dtype)?));
    }
    let tensors = rename_tensors(meta);
    let cfg = config_from_params(&params, &tensors)?;
    Ok((cfg, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_name_table() {
        let cases = [
            ("tok_embeddings.weight", Some("model.embed_tokens.weight")),
            (
                "layers.3.attention.wq.weight",
                Some("model.layers.3.self_attn.q_proj.weight"),
            ),
            (
                "layers.10.feed_forward.w1.weight",
                Some("model.layers.10.mlp.gate_proj.weight"),
            ),
            (
                "layers.0.feed_forward.w3.weight",
                Some("model.layers.0.mlp.up_proj.weight"),
            ),
            (
                "layers.0.feed_forward.w2.weight",
                Some("model.layers.0.mlp.down_proj.weight"),
            ),
            (
                "layers.1.ffn_norm.weight",
                Some("model.layers.1.post_attention_layernorm.weight"),
            ),
            (
                "extra_heads.2.attention_norm.weight",
                Some("model.extra_heads.2.input_layernorm.weight"),
            ),
            ("output.weight", Some("lm_head.weight")),
            ("norm.weight", Some("model.norm.weight")),
            ("rope.freqs", None),
            ("layers.x.attention.wq.weight", None),
        ];
        for (meta, want) in cases {
            assert_eq!(hf_name(meta).as_deref(), want, "{meta}");
        }
    }
}
