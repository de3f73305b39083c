//! `foresight export --to gguf` run in llama.cpp (its Python binding, the library llama-server
//! runs on; tests/fixtures/gguf_check.py): the file loads as is, llama.cpp's logits for every
//! prompt position agree with Foresight's, and its greedy tokens equal Foresight's own, for the
//! tiny random model (f32) and for models/default (f16 and q8_0). llama.cpp comes from
//! scripts/install_llama_cpp.sh; when it is missing the tests fail, unless
//! `FORESIGHT_ALLOW_MISSING_LLAMA=1` says the developer knowingly runs without it.

mod common;

use std::path::Path;
use std::process::Command;

use common::installed_python;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use foresight::decode::sampling::argmax;
use foresight::decode::{generate, Control, GenerateParams, NoDrafts};
use foresight::export::gguf::{self, GgufType};
use foresight::model::tiny::TinySpec;
use foresight::model::{load_dir, LoadedModel, Logits};

const NEW_TOKENS: usize = 12;

/// The Python with llama_cpp (from scripts/install_llama_cpp.sh), once per test binary; `None`
/// when it is missing and the developer allowed that.
fn python() -> Option<&'static str> {
    static PYTHON: OnceLock<Option<String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| installed_python("install_llama_cpp.sh", "FORESIGHT_ALLOW_MISSING_LLAMA"))
        .as_deref()
}

struct LlamaRun {
    /// Per prompt: llama.cpp's logits, one row per prompt position.
    logits: Vec<Vec<Vec<f32>>>,
    greedy: Vec<Vec<u32>>,
}

fn run_llama(python: &str, gguf: &Path, prompts: &[Vec<u32>]) -> LlamaRun {
    let dir = gguf.parent().unwrap();
    let input = dir.join("in.json");
    let output = dir.join("out.json");
    std::fs::write(
        &input,
        serde_json::json!({"prompts": prompts, "new_tokens": NEW_TOKENS}).to_string(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_check.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(gguf)
        .arg(&input)
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "llama.cpp on {}: {}",
        gguf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    let results = v["results"].as_array().unwrap();
    LlamaRun {
        logits: results
            .iter()
            .map(|r| serde_json::from_value(r["logits"].clone()).unwrap())
            .collect(),
        greedy: results
            .iter()
            .map(|r| serde_json::from_value(r["greedy"].clone()).unwrap())
            .collect(),
    }
}

/// Foresight's head-1 logits for every prompt position, and its greedy continuation.
fn ours(loaded: &LoadedModel, prompt: &[u32]) -> (Vec<Vec<f32>>, Vec<u32>) {
    let model = &loaded.model;
    let mut cache = model.new_cache(prompt.len() + NEW_TOKENS + 1, 1).unwrap();
    let logits = model
        .forward(&mut cache, prompt, Logits::All)
        .unwrap()
        .logits
        .to_vec2::<f32>()
        .unwrap();
    let params = GenerateParams {
        max_tokens: NEW_TOKENS,
        sampling: None,
        stop_tokens: Vec::new(),
        max_draft_len: 0,
    };
    let mut cache = model.new_cache(prompt.len() + NEW_TOKENS + 1, 1).unwrap();
    let g = generate(
        model,
        &mut cache,
        prompt,
        &params,
        &mut NoDrafts,
        &Control::default(),
    )
    .unwrap();
    (logits, g.tokens)
}

/// Exports `loaded` as `ty`, runs llama.cpp on `prompts`, and returns (largest logit difference,
/// share of positions whose top-1 token agrees, whether every greedy continuation is equal).
fn compare(loaded: &LoadedModel, ty: GgufType, prompts: &[Vec<u32>]) -> Option<(f32, f64, bool)> {
    let python = python()?;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model.gguf");
    gguf::write(loaded, &file, ty).unwrap();
    let theirs = run_llama(python, &file, prompts);
    let (mut max_diff, mut agree, mut positions, mut greedy_equal) = (0f32, 0usize, 0usize, true);
    for (i, prompt) in prompts.iter().enumerate() {
        let (logits, greedy) = ours(loaded, prompt);
        assert_eq!(theirs.logits[i].len(), prompt.len());
        for (a, b) in logits.iter().zip(&theirs.logits[i]) {
            for (x, y) in a.iter().zip(b) {
                max_diff = max_diff.max((x - y).abs());
            }
            agree += usize::from(argmax(a) == argmax(b)); // the decoder's own argmax
            positions += 1;
        }
        if greedy != theirs.greedy[i] {
            eprintln!(
                "{ty:?} prompt {i}: ours {greedy:?} llama.cpp {:?}",
                theirs.greedy[i]
            );
            greedy_equal = false;
        }
    }
    let share = agree as f64 / positions as f64;
    eprintln!("{ty:?}: max |logit diff| {max_diff}, top-1 agreement {share:.3}, greedy equal {greedy_equal}");
    Some((max_diff, share, greedy_equal))
}

fn default_model() -> LoadedModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    load_dir(&dir, &Device::Cpu, DType::F32).unwrap()
}

fn code_prompts(loaded: &LoadedModel) -> Vec<Vec<u32>> {
    [
        "def mean(values):\n    return sum(values) / len(values)\n\n\ndef variance(values):\n",
        "fn main() {\n    let mut total = 0;\n    for i in 0..10 {\n",
        "import os\nimport sys\n\n\nclass Config:\n    def __init__(self, path):\n",
        "pub struct Point {\n    pub x: f64,\n    pub y: f64,\n}\n\nimpl Point {\n",
    ]
    .iter()
    .map(|s| {
        loaded
            .tokenizer
            .encode(*s, false)
            .unwrap()
            .get_ids()
            .to_vec()
    })
    .collect()
}

#[test]
fn the_tiny_model_in_f32_gives_foresights_logits_and_greedy_tokens_in_llama_cpp() {
    let tmp = tempfile::tempdir().unwrap();
    TinySpec::default().write_dir(tmp.path()).unwrap();
    let loaded = load_dir(tmp.path(), &Device::Cpu, DType::F32).unwrap();
    let prompts: Vec<Vec<u32>> = vec![(10..40).collect(), vec![5, 77, 200, 3, 9, 12]];
    let Some((diff, agree, greedy)) = compare(&loaded, GgufType::F32, &prompts) else {
        return;
    };
    assert!(diff < 1e-4, "max |logit diff| {diff}"); // measured 3.3e-5
    assert_eq!(agree, 1.0);
    assert!(greedy, "greedy tokens differ");
}

#[test]
fn the_default_model_in_f16_gives_foresights_greedy_tokens_in_llama_cpp() {
    let loaded = default_model();
    let prompts = code_prompts(&loaded);
    let Some((diff, agree, greedy)) = compare(&loaded, GgufType::F16, &prompts) else {
        return;
    };
    // Weights rounded to f16 (bf16 values round-trip unless tiny or huge, which trained weights
    // are not) and llama.cpp's own kernels: small differences.
    assert!(diff < 0.02, "max |logit diff| {diff}"); // measured 0.006
    assert!(agree >= 0.98, "top-1 agreement {agree}");
    assert!(greedy, "greedy tokens differ");
}

#[test]
fn the_default_model_in_q8_0_loads_in_llama_cpp_and_stays_close() {
    let loaded = default_model();
    let prompts = code_prompts(&loaded);
    let Some((diff, agree, _)) = compare(&loaded, GgufType::Q8_0, &prompts) else {
        return;
    };
    // 8-bit weights: the logits move a little, the top choice rarely.
    assert!(diff < 0.5, "max |logit diff| {diff}"); // measured 0.26
    assert!(agree >= 0.9, "top-1 agreement {agree}");
}

#[test]
fn a_qwen2_model_with_biases_and_tied_embeddings_gives_foresights_logits_in_llama_cpp() {
    let tmp = tempfile::tempdir().unwrap();
    TinySpec {
        model_type: "qwen2",
        tie_word_embeddings: true,
        ..TinySpec::default()
    }
    .write_dir(tmp.path())
    .unwrap();
    let loaded = load_dir(tmp.path(), &Device::Cpu, DType::F32).unwrap();
    assert!(loaded.model.config().qkv_bias() && loaded.model.config().tie_word_embeddings);
    let prompts: Vec<Vec<u32>> = vec![(30..60).collect(), vec![7, 7, 200, 13, 9]];
    let Some((diff, agree, greedy)) = compare(&loaded, GgufType::F32, &prompts) else {
        return;
    };
    assert!(diff < 1e-4, "max |logit diff| {diff}");
    assert_eq!(agree, 1.0);
    assert!(greedy, "greedy tokens differ");
}

#[test]
fn a_byte_level_model_with_a_padded_vocabulary_loads_in_llama_cpp() {
    // Presets round the embedding rows up (here 260 tokens, 320 rows): the GGUF pads its token
    // list with unused tokens, or llama.cpp refuses the file.
    let tmp = tempfile::tempdir().unwrap();
    TinySpec::default().write_dir(tmp.path()).unwrap();
    let mut loaded = load_dir(tmp.path(), &Device::Cpu, DType::F32).unwrap();
    let mut cfg = loaded.model.config().clone();
    cfg.vocab_size = 320;
    let tensors = loaded
        .model
        .named_tensors()
        .into_iter()
        .map(|(name, t)| {
            let t = if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
                let pad =
                    candle_core::Tensor::zeros((60, t.dim(1).unwrap()), t.dtype(), t.device())
                        .unwrap();
                candle_core::Tensor::cat(&[&t, &pad], 0).unwrap()
            } else {
                t
            };
            (name, t)
        })
        .collect();
    loaded.model =
        foresight::model::weights::model_from_tensors(&cfg, tensors, DType::F32, &Device::Cpu)
            .unwrap();
    let prompts: Vec<Vec<u32>> = vec![(10..30).collect()];
    let Some((diff, agree, _)) = compare(&loaded, GgufType::F32, &prompts) else {
        return;
    };
    assert!(diff < 1e-4, "max |logit diff| {diff}");
    assert_eq!(agree, 1.0);
}
