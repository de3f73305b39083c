//! `foresight bench-gpu` end to end on the CPU (the smoke path of the GPU benchmark): the JSON
//! report has every section with plausible figures, the device checks pass, and asking for a GPU
//! in a build without one is refused with the rebuild command.

use std::process::Command;

fn foresight() -> Command {
    Command::new(env!("CARGO_BIN_EXE_foresight"))
}

#[test]
fn cpu_smoke_run_writes_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let run = foresight()
        .current_dir(dir.path())
        // 2000 prompt tokens do not fit the tiny model's 1024 positions: the prompt is shortened, and said so.
        .args([
            "bench-gpu",
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--check",
            "--prompt-tokens",
            "2000",
            "--new-tokens",
            "12",
        ])
        .args([
            "--completion-tokens",
            "6",
            "--prefill",
            "16,64",
            "--repeats",
            "1",
            "--train-seq",
            "16",
            "--train-batch",
            "2",
        ])
        .args(["--train-steps", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.stdout.is_empty(), "logs and progress go to stderr");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let t = &r["targets"][0];
    assert_eq!(t["name"], "tiny");
    assert_eq!(t["config"]["n_future_tokens"], 4);
    let prefill: Vec<u64> = t["prefill"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(prefill, vec![16, 64]);
    assert!(t["prefill"][0]["tokens_per_s"].as_f64().unwrap() > 0.0);
    let modes: Vec<&str> = t["decode"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, vec!["plain", "spec"]);
    assert_eq!(t["decode"][0]["tokens"], 12);
    assert_eq!(t["decode"][0]["prompt_tokens"], 1024 - 12 - 16);
    let skipped = t["skipped"].to_string();
    assert!(skipped.contains("prompt shortened to 996"), "{skipped}");
    assert_eq!(t["completion"][1]["new_tokens"], 6);
    assert!(t["train"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    let checks = t["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 5, "{checks:?}");
    assert!(checks.iter().all(|c| c["passed"] == true), "{checks:?}");
}

#[test]
fn asking_for_a_gpu_without_one_is_refused() {
    let run = foresight()
        .args([
            "bench-gpu",
            "--device",
            "cuda",
            "--preset",
            "tiny",
            "--out",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    if cfg!(feature = "cuda") {
        assert!(err.contains("CUDA") || err.contains("cuda"), "{err}");
    } else {
        assert!(err.contains("--features cuda"), "{err}");
    }
}
