//! The model directory format on disk: `config.json`, `model.safetensors` (single file or sharded
//! with `model.safetensors.index.json`) and `tokenizer.json`. Loading validates every tensor name and
//! shape before building the model; saving writes files atomically. Not here: the math (`mtp.rs`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use tokenizers::Tokenizer;

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::mtp::{head_layer_prefix, MtpModel};
use super::tokenizer::{load_tokenizer, SpecialTokens};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Every tensor `config` implies, with its shape, in a stable order.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim(),
        cfg.n_kv_heads() * cfg.head_dim(),
    );
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d])];
    let layer = |prefix: &str, out: &mut Vec<(String, Vec<usize>)>| {
        for (name, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            out.push((format!("{prefix}.self_attn.{name}.weight"), vec![rows, d]));
            if cfg.qkv_bias() {
                out.push((format!("{prefix}.self_attn.{name}.bias"), vec![rows]));
            }
        }
        out.push((format!("{prefix}.self_attn.o_proj.weight"), vec![d, q]));
        if cfg.o_bias() {
            out.push((format!("{prefix}.self_attn.o_proj.bias"), vec![d]));
        }
        out.push((format!("{prefix}.mlp.gate_proj.weight"), vec![f, d]));
        out.push((format!("{prefix}.mlp.up_proj.weight"), vec![f, d]));
        out.push((format!("{prefix}.mlp.down_proj.weight"), vec![d, f]));
        out.push((format!("{prefix}.input_layernorm.weight"), vec![d]));
        out.push((format!("{prefix}.post_attention_layernorm.weight"), vec![d]));
    };
    for i in 0..cfg.n_trunk_layers() {
        layer(&format!("model.layers.{i}"), &mut out);
    }
    for h in 0..cfg.n_heads() {
        layer(&head_layer_prefix(cfg, h), &mut out);
    }
    out.push(("model.norm.weight".to_string(), vec![d]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, d]));
    }
    out
}

/// Parameter counts split the way `inspect` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParamCounts {
    /// Trunk layers `layers[..L-1]`.
    pub trunk: usize,
    /// Head layers (head 1 and the extra heads) plus the shared final norm.
    pub heads: usize,
    /// Token embedding and, when untied, the unembedding.
    pub embeddings: usize,
}

impl ParamCounts {
    pub fn total(&self) -> usize {
        self.trunk + self.heads + self.embeddings
    }
}

pub fn param_counts(cfg: &ModelConfig) -> ParamCounts {
    let trunk_prefixes: Vec<String> = (0..cfg.n_trunk_layers())
        .map(|i| format!("model.layers.{i}."))
        .collect();
    let mut counts = ParamCounts::default();
    for (name, shape) in expected_tensors(cfg) {
        let n: usize = shape.iter().product();
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            counts.embeddings += n;
        } else if trunk_prefixes.iter().any(|p| name.starts_with(p)) {
            counts.trunk += n;
        } else {
            counts.heads += n;
        }
    }
    counts
}

/// A standard-normal sample from a seeded generator (Box-Muller), so weights are reproducible.
fn normal(rng: &mut rand_chacha::ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Seeded random weights for `cfg`: matrices and biases ~ N(0, std²), norm weights 1.
/// The same seed gives the same weights on every machine.
pub fn init_weights(
    cfg: &ModelConfig,
    seed: u64,
    std: f32,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for (name, shape) in expected_tensors(cfg) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("layernorm.weight") || name == "model.norm.weight" {
            vec![1.0; n]
        } else {
            (0..n).map(|_| normal(&mut rng) * std).collect()
        };
        out.insert(name, Tensor::from_vec(data, shape, device)?);
    }
    Ok(out)
}

/// Builds a model from named tensors after checking each against `cfg`.
pub fn model_from_tensors(
    cfg: &ModelConfig,
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<MtpModel> {
    cfg.validate()?;
    check_tensor_names(
        cfg,
        tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())),
    )?;
    MtpModel::load(cfg, VarBuilder::from_tensors(tensors, dtype, device))
}

/// Missing tensors, wrong shapes and layers the config does not know about, as typed errors.
fn check_tensor_names(
    cfg: &ModelConfig,
    present: impl Iterator<Item = (String, Vec<usize>)>,
) -> Result<()> {
    let present: HashMap<String, Vec<usize>> = present.collect();
    for (name, shape) in expected_tensors(cfg) {
        match present.get(&name) {
            None => return Err(ModelError::MissingTensor { name }),
            Some(found) if *found != shape => {
                return Err(ModelError::ShapeMismatch {
                    name,
                    expected: shape,
                    found: found.clone(),
                })
            }
            Some(_) => {}
        }
    }
    let layer_index = |name: &str, prefix: &str| -> Option<usize> {
        name.strip_prefix(prefix)?.split('.').next()?.parse().ok()
    };
    let unexpected: BTreeSet<String> = present
        .keys()
        .filter(|name| {
            layer_index(name, "model.layers.").is_some_and(|i| i >= cfg.num_hidden_layers)
                || layer_index(name, "model.extra_heads.").is_some_and(|j| j + 1 >= cfg.n_heads())
        })
        .cloned()
        .collect();
    if !unexpected.is_empty() {
        return Err(ModelError::UnexpectedTensors {
            names: unexpected.into_iter().take(8).collect(),
        });
    }
    Ok(())
}

/// A model directory loaded into memory.
pub struct LoadedModel {
    pub dir: PathBuf,
    pub model: MtpModel,
    pub tokenizer: Tokenizer,
    pub special: SpecialTokens,
}

fn require_file(dir: &Path, file: &str, hint: &'static str) -> Result<PathBuf> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelError::MissingFile {
            dir: dir.to_path_buf(),
            file: file.to_string(),
            hint,
        })
    }
}

pub fn read_config(dir: &Path) -> Result<ModelConfig> {
    let path = require_file(dir, CONFIG_FILE, "every model directory needs its config")?;
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ModelError::BadConfig {
            path: path.clone(),
            what: "JSON file (config.json)",
            source,
        })?;
    super::config::normalize_rope_parameters(&mut json);
    let cfg: ModelConfig =
        serde_json::from_value(json).map_err(|source| ModelError::BadConfig {
            path,
            what: "model config",
            source,
        })?;
    cfg.validate()?;
    Ok(cfg)
}

/// The safetensors files of a directory: the single file, or every shard named in the index.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if !index.is_file() {
        return Err(ModelError::MissingFile {
            dir: dir.to_path_buf(),
            file: WEIGHTS_FILE.into(),
            hint: "expected model.safetensors or a sharded model.safetensors.index.json",
        });
    }
    let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
        path: index.clone(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ModelError::BadConfig {
            path: index.clone(),
            what: "JSON file (the shard index)",
            source,
        })?;
    let files: BTreeSet<String> = json["weight_map"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if files.is_empty() {
        return Err(ModelError::InvalidConfig {
            reason: format!("{}: no weight_map entries", index.display()),
        });
    }
    files
        .into_iter()
        .map(|f| require_file(dir, &f, "a shard named in model.safetensors.index.json"))
        .collect()
}

/// Loads `dir` onto `device` in `dtype`, checking config, every tensor, and the tokenizer.
pub fn load_dir(dir: &Path, device: &Device, dtype: DType) -> Result<LoadedModel> {
    if !dir.is_dir() {
        return Err(ModelError::NoDirectory(dir.to_path_buf()));
    }
    if !dir.join(CONFIG_FILE).is_file() && dir.join(super::meta::PARAMS_FILE).is_file() {
        return load_meta_dir(dir, device, dtype);
    }
    let cfg = read_config(dir)?;
    let files = weight_files(dir)?;
    let tokenizer_path = require_file(
        dir,
        TOKENIZER_FILE,
        "the model's tokenizer (Hugging Face tokenizers JSON)",
    )?;
    // SAFETY: the files are memory-mapped read-only; a concurrent writer could change them under us,
    // which is the documented hazard of mmap and acceptable for model files.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }.map_err(
        |source| ModelError::BadWeights {
            path: files[0].clone(),
            source,
        },
    )?;
    let views = st.tensors();
    check_tensor_names(
        &cfg,
        views
            .iter()
            .map(|(name, view)| (name.clone(), view.shape().to_vec())),
    )?;
    let mut tensors = HashMap::new();
    for (name, _) in expected_tensors(&cfg) {
        let t = st
            .load(&name, device)
            .map_err(|source| ModelError::BadWeights {
                path: files[0].clone(),
                source,
            })?;
        tensors.insert(name, t.to_dtype(dtype)?);
    }
    let model = MtpModel::load(&cfg, VarBuilder::from_tensors(tensors, dtype, device))?;
    with_tokenizer(dir, model, &tokenizer_path)
}

/// A model directory's config, tokenizer and special tokens, without its weights: what building
/// prompts for that model takes when another program runs it (a remote engine). The directory
/// needs `config.json` and `tokenizer.json` only.
pub fn load_tokenizer_dir(dir: &Path) -> Result<(ModelConfig, Tokenizer, SpecialTokens)> {
    if !dir.is_dir() {
        return Err(ModelError::NoDirectory(dir.to_path_buf()));
    }
    let cfg = read_config(dir)?;
    let tokenizer_path = require_file(
        dir,
        TOKENIZER_FILE,
        "the model's tokenizer (Hugging Face tokenizers JSON)",
    )?;
    let tokenizer = load_tokenizer(&tokenizer_path)?;
    let special = SpecialTokens::detect(&tokenizer, &cfg);
    Ok((cfg, tokenizer, special))
}

/// Pairs a built model with its directory's tokenizer, refusing one with more tokens than the model.
fn with_tokenizer(dir: &Path, model: MtpModel, tokenizer_path: &Path) -> Result<LoadedModel> {
    let tokenizer = load_tokenizer(tokenizer_path)?;
    let cfg = model.config();
    let tokenizer_vocab = tokenizer.get_vocab_size(true);
    if tokenizer_vocab > cfg.vocab_size {
        return Err(ModelError::VocabMismatch {
            tokenizer: tokenizer_vocab,
            config: cfg.vocab_size,
        });
    }
    let special = SpecialTokens::detect(&tokenizer, cfg);
    Ok(LoadedModel {
        dir: dir.to_path_buf(),
        model,
        tokenizer,
        special,
    })
}

/// A Meta-layout directory (`params.json`, `consolidated.pth`, and a user-supplied `tokenizer.json`).
fn load_meta_dir(dir: &Path, device: &Device, dtype: DType) -> Result<LoadedModel> {
    let tokenizer_path = require_file(
        dir,
        TOKENIZER_FILE,
        "Meta checkpoints ship no tokenizer.json; put the matching one beside params.json",
    )?;
    let (cfg, tensors) = super::meta::read_meta_dir(dir, device, dtype)?;
    let model = model_from_tensors(&cfg, tensors, dtype, device)?;
    with_tokenizer(dir, model, &tokenizer_path)
}

/// Writes `path` through a temporary file and a rename, so a crash never leaves half a file.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// How [`save_dir_with`] stores the weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SaveOptions {
    /// Store the tensors as bf16 (half the bytes; how `models/default` is kept).
    pub bf16: bool,
    /// Split the weights into `model-0000i-of-0000n.safetensors` files of at most this many bytes
    /// (a tensor larger than that gets a file of its own) with `model.safetensors.index.json`.
    pub max_shard_bytes: Option<u64>,
}

/// Groups `sizes` (name, bytes), in name order, into consecutive shards of at most `max` bytes;
/// a tensor over `max` is a shard of its own.
pub fn plan_shards(sizes: &[(String, u64)], max: u64) -> Vec<Vec<String>> {
    let mut sorted: Vec<&(String, u64)> = sizes.iter().collect();
    sorted.sort();
    let mut shards: Vec<Vec<String>> = Vec::new();
    let mut used = 0;
    for (name, bytes) in sorted {
        if shards.is_empty() || used + bytes > max {
            shards.push(Vec::new());
            used = 0;
        }
        shards.last_mut().expect("pushed above").push(name.clone());
        used += bytes;
    }
    shards
}

/// Whether `name` is a weight shard's file name (`model-00001-of-00003.safetensors`).
pub fn is_shard_file(name: &str) -> bool {
    name.strip_prefix("model-")
        .and_then(|r| r.strip_suffix(".safetensors"))
        .is_some_and(|r| {
            let parts: Vec<&str> = r.split("-of-").collect();
            parts.len() == 2
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// Removes the shard files in `dir` that are not in `keep` (what an earlier save left behind).
pub fn remove_stale_shards(dir: &Path, keep: &[String]) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_shard_file(&name) && !keep.contains(&name) {
            std::fs::remove_file(entry.path()).map_err(|source| ModelError::Io {
                path: entry.path(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Saves `model` and `tokenizer` as a model directory (created if needed), each file atomically.
pub fn save_dir(model: &MtpModel, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    save_dir_with(model, tokenizer, dir, SaveOptions::default())
}

/// [`save_dir`] with the weights in bf16 and/or sharded.
pub fn save_dir_with(
    model: &MtpModel,
    tokenizer: &Tokenizer,
    dir: &Path,
    opts: SaveOptions,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let tensors: HashMap<String, Tensor> = model
        .named_tensors()
        .into_iter()
        .map(|(name, t)| {
            let t = t.to_device(&Device::Cpu)?;
            Ok((
                name,
                if opts.bf16 {
                    t.to_dtype(DType::BF16)?
                } else {
                    t
                },
            ))
        })
        .collect::<candle_core::Result<_>>()?;
    match opts.max_shard_bytes {
        None => {
            write_atomic(&dir.join(WEIGHTS_FILE), |tmp| {
                Ok(candle_core::safetensors::save(&tensors, tmp)?)
            })?;
            // A stale sharded index would contradict what we just wrote.
            let _ = std::fs::remove_file(dir.join(WEIGHTS_INDEX_FILE));
            remove_stale_shards(dir, &[])?;
        }
        Some(max) => {
            let sizes: Vec<(String, u64)> = tensors
                .iter()
                .map(|(n, t)| {
                    (
                        n.clone(),
                        (t.elem_count() * t.dtype().size_in_bytes()) as u64,
                    )
                })
                .collect();
            let shards = plan_shards(&sizes, max);
            let mut weight_map = serde_json::Map::new();
            let files: Vec<String> = (1..=shards.len())
                .map(|i| format!("model-{i:05}-of-{:05}.safetensors", shards.len()))
                .collect();
            for (names, file) in shards.iter().zip(&files) {
                let part: HashMap<&str, Tensor> = names
                    .iter()
                    .map(|n| (n.as_str(), tensors[n].clone()))
                    .collect();
                write_atomic(&dir.join(file), |tmp| {
                    Ok(candle_core::safetensors::save(&part, tmp)?)
                })?;
                for n in names {
                    weight_map.insert(n.clone(), file.clone().into());
                }
            }
            let total: u64 = sizes.iter().map(|(_, b)| b).sum();
            let index =
                serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            write_atomic(&dir.join(WEIGHTS_INDEX_FILE), |tmp| {
                std::fs::write(
                    tmp,
                    serde_json::to_string_pretty(&index).expect("index serializes"),
                )
                .map_err(|source| ModelError::Io {
                    path: tmp.to_path_buf(),
                    source,
                })
            })?;
            // The loader prefers a single file: a stale one would shadow the shards.
            let _ = std::fs::remove_file(dir.join(WEIGHTS_FILE));
            remove_stale_shards(dir, &files)?;
        }
    }
    let config = serde_json::to_string_pretty(model.config()).expect("config serializes");
    write_atomic(&dir.join(CONFIG_FILE), |tmp| {
        std::fs::write(tmp, config).map_err(|source| ModelError::Io {
            path: tmp.to_path_buf(),
            source,
        })
    })?;
    write_atomic(&dir.join(TOKENIZER_FILE), |tmp| {
        tokenizer
            .save(tmp, false)
            .map_err(|e| ModelError::BadTokenizer {
                path: tmp.to_path_buf(),
                reason: e.to_string(),
            })
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_file_names_table() {
        for (name, want) in [
            ("model-00001-of-00003.safetensors", true),
            ("model-1-of-2.safetensors", true),
            ("model.safetensors", false),
            ("model-00001-of-.safetensors", false),
            ("model-a-of-00002.safetensors", false),
            ("model-00001-of-00002.safetensors.tmp", false),
        ] {
            assert_eq!(is_shard_file(name), want, "{name}");
        }
    }

    #[test]
    #[allow(clippy::type_complexity)] // a table of cases: its row type is spelled out once
    fn plan_shards_table() {
        let s = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(n, b)| (n.to_string(), *b))
                .collect::<Vec<_>>()
        };
        // (sizes, max) -> shards, names in order
        let cases: [(Vec<(String, u64)>, u64, Vec<Vec<&str>>); 4] = [
            (
                s(&[("b", 4), ("a", 4), ("c", 4)]),
                8,
                vec![vec!["a", "b"], vec!["c"]],
            ),
            (s(&[("a", 10), ("b", 1)]), 8, vec![vec!["a"], vec!["b"]]), // over max: a shard of its own
            (s(&[("a", 1), ("b", 1)]), 100, vec![vec!["a", "b"]]),
            (s(&[]), 8, vec![]),
        ];
        for (sizes, max, want) in cases {
            assert_eq!(plan_shards(&sizes, max), want, "{sizes:?} max {max}");
        }
    }
}
