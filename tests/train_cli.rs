//! `foresight train` as a user runs it: a real process interrupted with Ctrl-C (SIGINT) or killed
//! outright (SIGKILL) and then resumed ends with the same loss curve and weights as an
//! uninterrupted run; clear refusals on the command line.

mod train_common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn bin() -> Command {
    // The token cache of these runs lives with the test, not in the user's cache folder.
    static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| tempfile::tempdir().unwrap());
    let mut c = Command::new(env!("CARGO_BIN_EXE_foresight"));
    c.stdin(Stdio::null())
        .env("FORESIGHT_TOKEN_CACHE", cache.path());
    c
}

const STEPS: &str = "200";

fn start(repo: &Path, out: &Path) -> Child {
    bin()
        .args([
            "train",
            "--config",
            "tiny",
            "--heads",
            "2",
            "--seq-len",
            "32",
            "--batch-size",
            "2",
            "--steps",
            STEPS,
        ])
        .args([
            "--lr",
            "3e-3",
            "--eval-every",
            "50",
            "--checkpoint-every",
            "10",
            "--valid-fraction",
            "0.2",
            "--no-progress",
        ])
        .arg("--repo")
        .arg(repo)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn resume(out: &Path) {
    let o = bin()
        .args(["train", "--resume", "--no-progress", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn train_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .map(|t| t.lines().filter(|l| l.contains("\"train\"")).count())
        .unwrap_or(0)
}

/// Waits (without a deadline on the result: the process finishing first fails the test) until `ready`.
fn wait_until(child: &mut Child, ready: impl Fn() -> bool) {
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn curve(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("tokens_per_s");
            v
        })
        .collect()
}

#[test]
fn interrupted_and_killed_runs_resume_to_the_uninterrupted_result() {
    let repo = tempfile::tempdir().unwrap();
    train_common::code_repo(repo.path(), 16);
    let tmp = tempfile::tempdir().unwrap();

    let whole = tmp.path().join("whole");
    let status = start(repo.path(), &whole).wait().unwrap();
    assert!(status.success());
    let reference = curve(&whole);
    assert_eq!(
        reference.iter().filter(|r| r["kind"] == "train").count(),
        200
    );

    // Ctrl-C: the run writes a checkpoint after the current step and exits with 130.
    let int = tmp.path().join("sigint");
    let mut child = start(repo.path(), &int);
    wait_until(&mut child, || train_lines(&int) >= 3);
    // SAFETY: sending a signal to our own child process by its id.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("--resume"),
        "tells how to continue: {stderr}"
    );
    assert!(
        !int.join("model.safetensors").exists(),
        "the run did not finish"
    );
    resume(&int);
    assert_eq!(curve(&int), reference);

    // SIGKILL right after the first periodic checkpoint: no chance to save anything.
    let killed = tmp.path().join("sigkill");
    let mut child = start(repo.path(), &killed);
    wait_until(&mut child, || killed.join("checkpoints/latest").exists());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !killed.join("model.safetensors").exists(),
        "the run did not finish"
    );
    resume(&killed);
    assert_eq!(curve(&killed), reference);
    let weights = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert_eq!(weights(&killed), weights(&whole));
    assert_eq!(weights(&int), weights(&whole));
}

#[test]
fn the_command_line_refuses_clearly() {
    let repo = tempfile::tempdir().unwrap();
    train_common::code_repo(repo.path(), 4);
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = bin().arg("train").args(args).output().unwrap();
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(o.stdout.is_empty(), "nothing on stdout");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let repo_s = repo.path().to_str().unwrap();
    let out = tmp.path().join("o");
    let out_s = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--out", out_s, "--config", "tiny"], "--repo"),
        (vec!["--repo", repo_s, "--out", out_s], "--base DIR"),
        (
            vec!["--repo", repo_s, "--out", out_s, "--base", "/no/such/model"],
            "/no/such/model",
        ),
        (
            vec![
                "--repo",
                repo_s,
                "--out",
                out_s,
                "--config",
                "tiny",
                "--seq-len",
                "100000",
            ],
            "over the model's context",
        ),
        (
            vec![
                "--repo",
                tmp.path().to_str().unwrap(),
                "--out",
                out_s,
                "--config",
                "tiny",
            ],
            "no usable source files",
        ),
        (vec!["--resume", "--out", out_s], "no checkpoint"),
        (
            vec!["--resume", "--out", out_s, "--steps", "5"],
            "remove --steps",
        ),
        // The cache is not a run option: allowed with --resume (this one fails later, on the checkpoint).
        (
            vec!["--resume", "--out", out_s, "--no-token-cache"],
            "no checkpoint",
        ),
        (
            vec!["--resume", "--out", out_s, "--token-cache", out_s],
            "no checkpoint",
        ),
        (
            vec![
                "--resume",
                "--out",
                out_s,
                "--token-cache",
                out_s,
                "--no-token-cache",
            ],
            "cannot be used with",
        ),
    ];
    for (args, needle) in cases {
        let stderr = run(&args);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("x"), "").unwrap();
    let stderr = run(&["--repo", repo_s, "--out", out_s, "--config", "tiny"]);
    assert!(stderr.contains("--force"), "{stderr}");
}
