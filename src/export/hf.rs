//! Hugging Face export: `config.json`, `model.safetensors`, `tokenizer.json` and
//! `tokenizer_config.json` that transformers loads as `LlamaForCausalLM` / `Qwen2ForCausalLM`:
//! the trunk and head 1 are its `model.layers.*`, the shared norm and unembedding its
//! `model.norm` / `lm_head`. The extra heads stay under `model.extra_heads.{j}.*` (one decoder
//! layer each, Hugging Face names inside), which transformers reports as unused weights and
//! Foresight loads back; `n_future_tokens` in config.json says how many heads there are.
//! Not GGUF (`export::gguf`) and not a checkpoint with optimizer state.

use std::collections::HashMap;
use std::path::Path;

use candle_core::DType;
use serde_json::{json, Value};

use super::{half_rotation_tensors, io_err, ExportError, Result};
use crate::model::weights::{write_atomic, TOKENIZER_FILE, WEIGHTS_FILE};
use crate::model::LoadedModel;

/// The dtypes a Hugging Face export can store, with transformers' `torch_dtype` names.
pub fn torch_dtype(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("float32"),
        DType::F16 => Ok("float16"),
        DType::BF16 => Ok("bfloat16"),
        other => Err(ExportError::Unsupported(format!(
            "a Hugging Face export stores f32, f16 or bf16, not {other:?}"
        ))),
    }
}

/// Writes `loaded` into `out` (created if needed) in Hugging Face's layout, weights in `dtype`.
pub fn write(loaded: &LoadedModel, out: &Path, dtype: DType) -> Result<()> {
    let torch_dtype = torch_dtype(dtype)?;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let (mut cfg, tensors) = half_rotation_tensors(loaded)?;
    // transformers' AutoConfig reads `model_type`, AutoModel `architectures`: both, always.
    let (model_type, class) = match cfg.architecture()? {
        crate::model::config::Architecture::Llama => ("llama", "LlamaForCausalLM"),
        crate::model::config::Architecture::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
    };
    cfg.model_type.get_or_insert_with(|| model_type.into());
    if cfg.architectures.is_empty() {
        cfg.architectures = vec![class.into()];
    }
    let mut config = serde_json::to_value(&cfg)?;
    config["torch_dtype"] = Value::from(torch_dtype);
    if let (Some(bos), None) = (loaded.special.bos, cfg.bos_token_id) {
        config["bos_token_id"] = Value::from(bos);
    }
    let tensors: HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    let weights = out.join(WEIGHTS_FILE);
    write_atomic(&weights, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).map_err(|source| {
            crate::model::ModelError::BadWeights {
                path: tmp.to_path_buf(),
                source,
            }
        })
    })?;
    write_json(&out.join("config.json"), &config)?;
    let tokenizer = out.join(TOKENIZER_FILE);
    loaded.tokenizer.save(&tokenizer, true).map_err(|e| {
        ExportError::Unsupported(format!("cannot write {}: {e}", tokenizer.display()))
    })?;
    write_json(
        &out.join("tokenizer_config.json"),
        &tokenizer_config(loaded),
    )?;
    Ok(())
}

/// `tokenizer_config.json` for transformers' `AutoTokenizer`: the fast tokenizer of
/// `tokenizer.json`, its BOS/EOS, and the FIM tokens as additional special tokens.
fn tokenizer_config(loaded: &LoadedModel) -> Value {
    let tok = &loaded.tokenizer;
    let name = |id: u32| tok.id_to_token(id).map(Value::from).unwrap_or(Value::Null);
    let fim: Vec<Value> = loaded
        .special
        .fim
        .map(|f| vec![name(f.prefix), name(f.suffix), name(f.middle)])
        .unwrap_or_default();
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": loaded.special.bos.map_or(Value::Null, name),
        "eos_token": loaded.special.eos.first().copied().map_or(Value::Null, name),
        "additional_special_tokens": fim,
        "clean_up_tokenization_spaces": false,
        "model_max_length": loaded.model.max_positions(),
    })
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).map_err(io_err(path))
}
