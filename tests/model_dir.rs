//! The model directory format: save then load gives identical logits (single file and sharded),
//! and each kind of malformed directory gives its own clear, typed error.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use foresight::model::tiny::TinySpec;
use foresight::model::tokenizer::byte_level_tokenizer;
use foresight::model::weights::{init_weights, load_dir, model_from_tensors, save_dir};
use foresight::model::{Logits, ModelError, MtpModel};

const SEQ: &[u32] = &[5, 80, 81, 82, 10, 32, 32, 120];

fn logits(model: &MtpModel) -> Vec<Vec<f32>> {
    let out = model
        .forward(&mut model.new_cache(32, 4).unwrap(), SEQ, Logits::All)
        .unwrap();
    let mut rows = out.logits.to_vec2::<f32>().unwrap();
    rows.extend(model.extra_head_logits(&out, SEQ.len() - 1).unwrap());
    rows
}

fn write_tiny(dir: &Path) -> TinySpec {
    let spec = TinySpec::default();
    spec.write_dir(dir).unwrap();
    spec
}

fn load_err(dir: &Path) -> ModelError {
    match load_dir(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn save_then_load_gives_identical_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_tiny(tmp.path());
    let loaded = load_dir(tmp.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(logits(&loaded.model), logits(&spec.model().unwrap()));
    assert_eq!(loaded.model.n_heads(), 4);
    assert_eq!(loaded.special.eos, vec![256]);
    assert_eq!(
        loaded.special.fim.map(|f| (f.prefix, f.suffix, f.middle)),
        Some((257, 258, 259))
    );
    // Saving the loaded model again reproduces the same files' content.
    let again = tempfile::tempdir().unwrap();
    save_dir(&loaded.model, &loaded.tokenizer, again.path()).unwrap();
    let reloaded = load_dir(again.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(logits(&reloaded.model), logits(&loaded.model));
}

#[test]
fn sharded_weights_load_through_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_tiny(tmp.path());
    let all =
        candle_core::safetensors::load(tmp.path().join("model.safetensors"), &Device::Cpu).unwrap();
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (i, (name, t)) in all.into_iter().enumerate() {
        let file = if i % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        weight_map.insert(name.clone(), file.into());
        if i % 2 == 0 {
            a.insert(name, t)
        } else {
            b.insert(name, t)
        };
    }
    candle_core::safetensors::save(&a, tmp.path().join("model-00001-of-00002.safetensors"))
        .unwrap();
    candle_core::safetensors::save(&b, tmp.path().join("model-00002-of-00002.safetensors"))
        .unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let loaded = load_dir(tmp.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(logits(&loaded.model), logits(&spec.model().unwrap()));
}

#[test]
#[allow(clippy::type_complexity)] // a table of cases: its row type is spelled out once
fn each_malformed_directory_has_its_own_error() {
    let nowhere = Path::new("/nonexistent/foresight-model");
    assert!(matches!(load_err(nowhere), ModelError::NoDirectory(_)));

    type Breaker = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Breaker, fn(&ModelError) -> bool, &str)> = vec![
        (
            "no config",
            Box::new(|d| std::fs::remove_file(d.join("config.json")).unwrap()),
            |e| matches!(e, ModelError::MissingFile { file, .. } if file == "config.json"),
            "config.json",
        ),
        (
            "no weights",
            Box::new(|d| std::fs::remove_file(d.join("model.safetensors")).unwrap()),
            |e| matches!(e, ModelError::MissingFile { file, .. } if file == "model.safetensors"),
            "model.safetensors",
        ),
        (
            "no tokenizer",
            Box::new(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap()),
            |e| matches!(e, ModelError::MissingFile { file, .. } if file == "tokenizer.json"),
            "tokenizer.json",
        ),
        (
            "config not JSON",
            Box::new(|d| std::fs::write(d.join("config.json"), "{ nope").unwrap()),
            |e| matches!(e, ModelError::BadConfig { .. }),
            "config.json",
        ),
        (
            "unknown architecture",
            Box::new(|d| edit_config(d, |v| v["model_type"] = "gpt2".into())),
            |e| matches!(e, ModelError::UnknownArchitecture { found } if found == "gpt2"),
            "gpt2",
        ),
        (
            "invalid config",
            Box::new(|d| edit_config(d, |v| v["num_key_value_heads"] = 3.into())),
            |e| matches!(e, ModelError::InvalidConfig { .. }),
            "num_key_value_heads",
        ),
        (
            "wrong shapes",
            Box::new(|d| edit_config(d, |v| v["intermediate_size"] = 96.into())),
            |e| matches!(e, ModelError::ShapeMismatch { expected, found, .. } if expected[0] == 96 && found[0] == 128),
            "[96, 64]",
        ),
        (
            "fewer heads than weights",
            Box::new(|d| edit_config(d, |v| v["n_future_tokens"] = 2.into())),
            |e| matches!(e, ModelError::UnexpectedTensors { names } if names.iter().all(|n| n.starts_with("model.extra_heads."))),
            "n_future_tokens",
        ),
        (
            "more heads than weights",
            Box::new(|d| edit_config(d, |v| v["n_future_tokens"] = 5.into())),
            |e| matches!(e, ModelError::MissingTensor { name } if name.starts_with("model.extra_heads.3.")),
            "model.extra_heads.3",
        ),
        (
            "corrupt weights",
            Box::new(|d| {
                std::fs::write(
                    d.join("model.safetensors"),
                    b"garbage bytes, not safetensors",
                )
                .unwrap()
            }),
            |e| matches!(e, ModelError::BadWeights { .. }),
            "model.safetensors",
        ),
        (
            "corrupt tokenizer",
            Box::new(|d| std::fs::write(d.join("tokenizer.json"), "[]").unwrap()),
            |e| matches!(e, ModelError::BadTokenizer { .. }),
            "tokenizer.json",
        ),
    ];
    for (name, break_it, is_expected, needle) in cases {
        let tmp = tempfile::tempdir().unwrap();
        write_tiny(tmp.path());
        break_it(tmp.path());
        let err = load_err(tmp.path());
        assert!(is_expected(&err), "{name}: got {err:?}");
        assert!(
            err.to_string().contains(needle),
            "{name}: message {err} should mention {needle}"
        );
    }
}

#[test]
fn a_tokenizer_from_another_model_is_refused() {
    // Weights and config agree on a 200-token vocabulary, but the tokenizer has 260 tokens.
    let mut cfg = TinySpec::default().config();
    cfg.vocab_size = 200;
    let tensors: HashMap<String, Tensor> = init_weights(&cfg, 1, 0.1, &Device::Cpu).unwrap();
    let model = model_from_tensors(&cfg, tensors, DType::F32, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    save_dir(&model, &byte_level_tokenizer(), tmp.path()).unwrap();
    let err = load_err(tmp.path());
    assert!(
        matches!(
            err,
            ModelError::VocabMismatch {
                tokenizer: 260,
                config: 200
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("260") && err.to_string().contains("200"));
}

#[test]
fn meta_layout_checkpoint_loads_as_the_same_model() {
    // The tiny HF-layout model, rewritten by a script as params.json + consolidated.pth with
    // Meta's tensor names and interleaved-RoPE row order, must give the same logits.
    let hf = tempfile::tempdir().unwrap();
    let spec = write_tiny(hf.path());
    let meta = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/hf_to_meta.py"
        ))
        .args([hf.path(), meta.path()])
        .status()
        .expect("python3 runs");
    assert!(status.success());
    assert!(
        meta.path().join("consolidated.pth").is_file() && !meta.path().join("config.json").exists()
    );
    let loaded = load_dir(meta.path(), &Device::Cpu, DType::F32).unwrap();
    let cfg = loaded.model.config();
    assert!(cfg.rope_interleaved && cfg.n_heads() == 4 && cfg.vocab_size == 260);
    let (got, want) = (logits(&loaded.model), logits(&spec.model().unwrap()));
    let diff = got
        .iter()
        .flatten()
        .zip(want.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "{diff}");
    // Without its tokenizer, the error says what to supply.
    std::fs::remove_file(meta.path().join("tokenizer.json")).unwrap();
    let err = load_err(meta.path());
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn sharded_bf16_saves_load_and_replace_earlier_weight_files() {
    use foresight::model::weights::{save_dir_with, SaveOptions};
    let tmp = tempfile::tempdir().unwrap();
    write_tiny(tmp.path());
    let loaded = load_dir(tmp.path(), &Device::Cpu, DType::F32).unwrap();
    let want = logits(&loaded.model);
    let out = tmp.path().join("out");
    let files = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // Small shards first, then fewer larger ones, then a single f32 file: each save leaves only its own weight files.
    for (max, bf16) in [
        (Some(40_000u64), true),
        (Some(400_000), true),
        (None, false),
    ] {
        save_dir_with(
            &loaded.model,
            &loaded.tokenizer,
            &out,
            SaveOptions {
                bf16,
                max_shard_bytes: max,
            },
        )
        .unwrap();
        let names = files(&out);
        let shards: Vec<&String> = names.iter().filter(|n| n.starts_with("model-")).collect();
        match max {
            Some(m) => {
                let n = shards.len();
                assert!(
                    n >= 1
                        && names.contains(&"model.safetensors.index.json".to_string())
                        && !names.contains(&"model.safetensors".to_string()),
                    "{names:?}"
                );
                assert!(
                    shards
                        .iter()
                        .all(|s| s.ends_with(&format!("-of-{n:05}.safetensors"))),
                    "stale shards: {names:?}"
                );
                for s in &shards {
                    let len = std::fs::metadata(out.join(s)).unwrap().len();
                    assert!(len <= m + 4096, "{s}: {len} bytes for shards of {m}");
                }
            }
            None => assert!(
                shards.is_empty()
                    && names.contains(&"model.safetensors".to_string())
                    && !names.iter().any(|n| n.ends_with("index.json")),
                "{names:?}"
            ),
        }
        let again = load_dir(&out, &Device::Cpu, DType::F32).unwrap();
        let got = logits(&again.model);
        let worst = want
            .iter()
            .flatten()
            .zip(got.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // bf16 keeps 8 bits of mantissa: logits move by a small fraction of their scale.
        let scale = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        let tol = if bf16 { 0.02 * scale } else { 0.0 };
        assert!(
            worst <= tol,
            "max {max:?} bf16 {bf16}: logits differ by {worst} (scale {scale})"
        );
    }
}

#[test]
fn json_errors_name_the_file_they_are_about() {
    use foresight::model::weights::{save_dir_with, SaveOptions};
    let tmp = tempfile::tempdir().unwrap();
    write_tiny(tmp.path());
    let loaded = load_dir(tmp.path(), &Device::Cpu, DType::F32).unwrap();
    let out = tmp.path().join("sharded");
    save_dir_with(
        &loaded.model,
        &loaded.tokenizer,
        &out,
        SaveOptions {
            bf16: false,
            max_shard_bytes: Some(100_000),
        },
    )
    .unwrap();
    std::fs::write(out.join("model.safetensors.index.json"), "{ not json").unwrap();
    let err = load_err(&out).to_string();
    assert!(
        err.contains("the shard index") && !err.contains("config.json"),
        "{err}"
    );
    std::fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    let err = load_err(tmp.path()).to_string();
    assert!(err.contains("config.json"), "{err}");
}
