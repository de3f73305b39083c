//! GGUF export for llama.cpp and the tools built on it (llama-server, Ollama): the trunk with
//! head 1 as a standard `llama` or `qwen2` model (the extra heads are left out: llama.cpp refuses
//! tensors it does not use), the byte-level BPE tokenizer and the FIM tokens in the metadata.
//! Weights in f32, f16 or 8-bit `q8_0`; norms and biases stay f32, as llama.cpp wants them.
//! For `llama`, query and key rows are reordered into the interleaved RoPE layout llama.cpp's
//! LLaMA graph rotates (`qwen2` keeps Hugging Face's half rotation). Not reading GGUF.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;

use super::{
    half_rotation_tensors, half_to_interleaved, io_err, permute_rows, ExportError, Result,
};
use crate::model::config::Architecture;
use crate::model::weights::write_atomic;
use crate::model::{LoadedModel, ModelConfig};

/// The weight types a GGUF export can store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    F32,
    F16,
    Q8_0,
}

impl GgufType {
    fn ggml(self) -> GgmlDType {
        match self {
            GgufType::F32 => GgmlDType::F32,
            GgufType::F16 => GgmlDType::F16,
            GgufType::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_*).
    fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
        }
    }
}

/// llama.cpp's name for a Hugging Face tensor name of the trunk or head 1; `None` for the extra
/// heads (not exported).
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let parts = [
        ("input_layernorm.", "attn_norm."),
        ("self_attn.q_proj.", "attn_q."),
        ("self_attn.k_proj.", "attn_k."),
        ("self_attn.v_proj.", "attn_v."),
        ("self_attn.o_proj.", "attn_output."),
        ("post_attention_layernorm.", "ffn_norm."),
        ("mlp.gate_proj.", "ffn_gate."),
        ("mlp.up_proj.", "ffn_up."),
        ("mlp.down_proj.", "ffn_down."),
    ];
    let (h, g) = parts.iter().find(|(h, _)| part.starts_with(h))?;
    Some(format!("blk.{layer}.{g}{}", &part[h.len()..]))
}

/// Writes the GGUF file `out` for `loaded`, weights in `ty`.
pub fn write(loaded: &LoadedModel, out: &Path, ty: GgufType) -> Result<()> {
    let (cfg, tensors) = half_rotation_tensors(loaded)?;
    let arch = match cfg.architecture()? {
        Architecture::Llama => "llama",
        Architecture::Qwen2 => "qwen2",
    };
    if cfg.rope_scaling.is_some() {
        return Err(ExportError::Unsupported(
            "RoPE scaling is not exported to GGUF".into(),
        ));
    }
    let mut quantized: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in tensors {
        let Some(gname) = gguf_name(&name) else {
            continue;
        };
        let rotary = gname.contains(".attn_q.") || gname.contains(".attn_k.");
        let t = if arch == "llama" && rotary {
            permute_rows(&t, cfg.head_dim(), &half_to_interleaved(cfg.head_dim()))?
        } else {
            t
        };
        quantized.push((gname, quantize(&t, ty)?));
    }
    let metadata = metadata(loaded, &cfg, arch, ty)?;
    let merges_empty = metadata
        .iter()
        .any(|(k, v)| k == "tokenizer.ggml.merges" && matches!(v, Value::Array(a) if a.is_empty()));
    let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> =
        quantized.iter().map(|(n, t)| (n.as_str(), t)).collect();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    write_atomic(out, |tmp| {
        let io = |source| crate::model::ModelError::Io {
            path: tmp.to_path_buf(),
            source,
        };
        let mut w = std::io::BufWriter::new(std::fs::File::create(tmp).map_err(io)?);
        candle_core::quantized::gguf_file::write(&mut w, &meta_refs, &tensor_refs).map_err(
            |source| crate::model::ModelError::BadWeights {
                path: tmp.to_path_buf(),
                source,
            },
        )?;
        std::io::Write::flush(&mut w).map_err(io)?;
        drop(w);
        if merges_empty {
            // candle writes an empty array's element type as u32; llama.cpp wants strings here.
            retype_empty_array(tmp, "tokenizer.ggml.merges", 8).map_err(io)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Sets the element type of the empty metadata array `key` in the GGUF file `path` (GGUF type
/// ids: 8 is string). The key, its array type (9), element type and zero length are found in
/// the metadata, which precedes the tensor data.
fn retype_empty_array(path: &Path, key: &str, elem_type: u32) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut head = Vec::new();
    (&mut f).take(64 << 20).read_to_end(&mut head)?;
    let mut entry = (key.len() as u64).to_le_bytes().to_vec();
    entry.extend_from_slice(key.as_bytes());
    entry.extend_from_slice(&9u32.to_le_bytes());
    let at = head
        .windows(entry.len())
        .position(|w| w == entry.as_slice())
        .ok_or_else(|| std::io::Error::other(format!("{key} not found in the metadata")))?;
    let elem_at = at + entry.len();
    let len = &head[elem_at + 4..elem_at + 12];
    if len != 0u64.to_le_bytes() {
        return Err(std::io::Error::other(format!("{key} is not empty")));
    }
    f.seek(SeekFrom::Start(elem_at as u64))?;
    f.write_all(&elem_type.to_le_bytes())
}

/// One tensor in the file's type: matrices in `ty` (q8_0 needs rows of whole 32-blocks, else
/// f16), vectors (norms, biases) in f32.
fn quantize(t: &Tensor, ty: GgufType) -> Result<QTensor> {
    let ggml = match ty {
        _ if t.rank() < 2 => GgmlDType::F32,
        GgufType::Q8_0 if t.dim(t.rank() - 1)? % 32 != 0 => GgmlDType::F16,
        _ => ty.ggml(),
    };
    Ok(QTensor::quantize(t, ggml)?)
}

fn metadata(
    loaded: &LoadedModel,
    cfg: &ModelConfig,
    arch: &str,
    ty: GgufType,
) -> Result<Vec<(String, Value)>> {
    let key = |k: &str| format!("{arch}.{k}");
    let u = |n: usize| Value::U32(n as u32);
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String(
                loaded
                    .dir
                    .file_name()
                    .map_or("foresight".into(), |n| n.to_string_lossy().into_owned()),
            ),
        ),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        (key("context_length"), u(cfg.max_position_embeddings)),
        (key("embedding_length"), u(cfg.hidden_size)),
        (key("block_count"), u(cfg.num_hidden_layers)),
        (key("feed_forward_length"), u(cfg.intermediate_size)),
        (key("attention.head_count"), u(cfg.num_attention_heads)),
        (key("attention.head_count_kv"), u(cfg.n_kv_heads())),
        (key("attention.key_length"), u(cfg.head_dim())),
        (key("attention.value_length"), u(cfg.head_dim())),
        (key("rope.dimension_count"), u(cfg.head_dim())),
        (key("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (key("vocab_size"), u(cfg.vocab_size)),
    ];
    m.extend(tokenizer_metadata(loaded, cfg.vocab_size)?);
    Ok(m)
}

/// The byte-level BPE tokenizer as llama.cpp's `gpt2` tokenizer: tokens by id, their types
/// (special added tokens are control tokens, other added ones user-defined), merges, and the
/// BOS/EOS/FIM ids. The list has one entry per embedding row (`vocab_size`): rows past the
/// tokenizer's (presets round the vocabulary up) get unused `[PAD{id}]` tokens, as llama.cpp's
/// own converter writes them.
fn tokenizer_metadata(loaded: &LoadedModel, vocab_size: usize) -> Result<Vec<(String, Value)>> {
    let json: serde_json::Value = serde_json::from_str(
        &loaded
            .tokenizer
            .to_string(false)
            .map_err(|e| ExportError::Unsupported(format!("cannot read the tokenizer: {e}")))?,
    )?;
    let model = &json["model"];
    let pre = &json["pre_tokenizer"];
    let gpt2_pre =
        pre["type"] == "ByteLevel" && pre["use_regex"] != false && pre["add_prefix_space"] != true;
    if model["type"] != "BPE" || !gpt2_pre {
        return Err(ExportError::Unsupported(format!(
            "GGUF export handles byte-level BPE tokenizers (GPT-2 style), not {} with {} pre-tokenization",
            model["type"], pre
        )));
    }
    let size = loaded.tokenizer.get_vocab_size(true);
    if size > vocab_size {
        return Err(ExportError::Unsupported(format!(
            "the tokenizer has {size} tokens, more than the model's {vocab_size} embedding rows"
        )));
    }
    let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
    let mut types = vec![5i32; vocab_size]; // unused, until a token claims the id
    let mut claimed = vec![false; vocab_size];
    for (token, id) in loaded.tokenizer.get_vocab(true) {
        let id = id as usize;
        if id < vocab_size {
            tokens[id] = token;
            types[id] = 1; // normal
            claimed[id] = true;
        }
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        if let Some(id) = added["id"]
            .as_u64()
            .map(|id| id as usize)
            .filter(|&id| id < vocab_size)
        {
            types[id] = if added["special"].as_bool() == Some(true) {
                3 // control
            } else {
                4 // user-defined
            };
        }
    }
    if let Some(id) = claimed[..size].iter().position(|c| !c) {
        return Err(ExportError::Unsupported(format!(
            "the tokenizer has no token for id {id}"
        )));
    }
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            serde_json::Value::Array(pair) => Value::String(format!(
                "{} {}",
                pair[0].as_str().unwrap_or(""),
                pair.get(1).and_then(|p| p.as_str()).unwrap_or("")
            )),
            other => Value::String(other.as_str().unwrap_or("").to_string()),
        })
        .collect();
    let sp = &loaded.special;
    let mut m: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt-2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(sp.bos.is_some()),
        ),
    ];
    let mut id = |k: &str, v: Option<u32>| {
        if let Some(v) = v {
            m.push((format!("tokenizer.ggml.{k}"), Value::U32(v)));
        }
    };
    id("bos_token_id", sp.bos);
    id("eos_token_id", sp.eos.first().copied());
    id("fim_pre_token_id", sp.fim.map(|f| f.prefix));
    id("fim_suf_token_id", sp.fim.map(|f| f.suffix));
    id("fim_mid_token_id", sp.fim.map(|f| f.middle));
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_table() {
        let cases = [
            ("model.embed_tokens.weight", Some("token_embd.weight")),
            ("model.norm.weight", Some("output_norm.weight")),
            ("lm_head.weight", Some("output.weight")),
            (
                "model.layers.0.input_layernorm.weight",
                Some("blk.0.attn_norm.weight"),
            ),
            (
                "model.layers.12.self_attn.q_proj.bias",
                Some("blk.12.attn_q.bias"),
            ),
            (
                "model.layers.3.self_attn.o_proj.weight",
                Some("blk.3.attn_output.weight"),
            ),
            (
                "model.layers.4.post_attention_layernorm.weight",
                Some("blk.4.ffn_norm.weight"),
            ),
            (
                "model.layers.4.mlp.down_proj.weight",
                Some("blk.4.ffn_down.weight"),
            ),
            ("model.extra_heads.0.mlp.up_proj.weight", None),
            ("model.layers.x.mlp.up_proj.weight", None),
        ];
        for (hf, want) in cases {
            assert_eq!(gguf_name(hf).as_deref(), want, "{hf}");
        }
    }
}
