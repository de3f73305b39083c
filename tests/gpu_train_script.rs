//! `scripts/gpu_train.sh --dry-run`: the GPU training call of issue 14, run end to end on the CPU
//! (this binary, a tiny base model, this repository's src/ as the corpus, a 60 s time budget), so a
//! session that is lent a GPU knows the call works except for the device itself. Checks what comes
//! back under $OUT: at most 8 files, none over 16 MiB; a model that loads (bf16 shards + index);
//! training metrics whose learning rate ends at the floor (the time schedule ended on time); the
//! device-check report with its checks passed.

use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device};
use foresight::model::weights::load_dir;

#[test]
fn the_gpu_training_call_runs_end_to_end_on_the_cpu() {
    let out = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(root.join("scripts/gpu_train.sh"))
        .arg("--dry-run")
        .current_dir(root)
        .env("OUT", out.path())
        .env("FORESIGHT_BIN", env!("CARGO_BIN_EXE_foresight"))
        .env("TRAIN_SECS", "40")
        .status()
        .expect("bash runs the script");
    let summary = std::fs::read_to_string(out.path().join("summary.txt")).unwrap_or_default();
    assert!(status.success(), "the dry run failed:\n{summary}");

    let files: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert!(
        files.len() <= 8,
        "{} files come back: {summary}",
        files.len()
    );
    for f in &files {
        let len = f.metadata().unwrap().len();
        assert!(len <= 16 << 20, "{:?} is {len} bytes", f.file_name());
    }

    let loaded = load_dir(out.path(), &Device::Cpu, DType::F32).expect("the returned model loads");
    assert!(loaded.model.n_heads() >= 2);
    assert!(
        out.path().join("model.safetensors.index.json").is_file()
            && !out.path().join("model.safetensors").exists()
    );

    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let lrs: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "train")
        .map(|r| r["lr"].as_f64().unwrap())
        .collect();
    assert!(lrs.len() > 10, "{} steps", lrs.len());
    let (peak, last) = (
        lrs.iter().cloned().fold(0.0, f64::max),
        *lrs.last().unwrap(),
    );
    assert!((peak - 3e-4).abs() < 1e-9, "peak lr {peak}");
    assert!(
        last < 0.2 * peak,
        "the schedule decayed by the end of the budget: last lr {last}"
    );

    let checks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("checks.json")).unwrap())
            .unwrap();
    let rows: Vec<&serde_json::Value> = checks["targets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["checks"].as_array().unwrap())
        .collect();
    assert!(!rows.is_empty(), "device checks ran");
    assert!(rows.iter().all(|c| c["passed"] == true), "{rows:?}");
    assert!(
        summary.contains("probe exit 0") && summary.contains("train exit 0"),
        "{summary}"
    );
}
