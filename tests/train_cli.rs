//! `foresight train` as a user runs it: a real process interrupted with Ctrl-C (SIGINT) or killed
//! outright (SIGKILL) and then resumed ends with the same loss curve and weights as an
//! uninterrupted run; clear refusals on the command line. The interrupted runs use the
//! `FORESIGHT_TEST_HOLD=1` test hook (they wait after their first checkpoint until Ctrl-C), so the
//! signal always lands mid-run, however fast the machine trains.

mod train_common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn bin() -> Command {
    // The token cache of these runs lives with the test, not in the user's cache folder.
    static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| tempfile::tempdir().unwrap());
    let mut c = Command::new(env!("CARGO_BIN_EXE_foresight"));
    c.stdin(Stdio::null())
        .env("FORESIGHT_TOKEN_CACHE", cache.path())
        .env_remove("FORESIGHT_TEST_HOLD");
    c
}

const STEPS: &str = "200";
/// The bound on waiting for a held run to reach its hold: a hang fails the test, never blocks it.
const HOLD_WAIT: Duration = Duration::from_secs(600);

fn train(repo: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.args([
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
    .stderr(Stdio::piped());
    c
}

/// A run started with the test hold: it waits after its first checkpoint (step 10) until Ctrl-C.
/// Its stderr is read line by line on a thread. Dropping it kills the process, so a failed
/// assertion never leaves a held run behind.
struct Held {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: Option<JoinHandle<String>>,
}

impl Held {
    fn start(repo: &Path, out: &Path) -> Self {
        let mut child = train(repo, out)
            .env("FORESIGHT_TEST_HOLD", "1")
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let (mut stderr, mut all, mut buf) =
                (BufReader::new(stderr), String::new(), Vec::new());
            while stderr.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
                buf.clear();
            }
            all
        });
        Self {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// Waits until the run says it holds (its checkpoint of step 10 is written). A run that ends
    /// first, or no hold within HOLD_WAIT, fails the test with the run's stderr.
    fn wait_for_hold(&mut self) {
        let deadline = Instant::now() + HOLD_WAIT;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.starts_with("test hold:") => {
                    assert!(line.contains("step 10 "), "held at another step: {line}");
                    return;
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let (status, stderr) = self.finish();
                    panic!("the run ended ({status}) before it held:\n{stderr}");
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the run did not reach its hold in {HOLD_WAIT:?}")
                }
            }
        }
    }

    /// Waits for the process to end: its exit status and all of its stderr.
    fn finish(&mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        let stderr = self
            .reader
            .take()
            .map(|r| r.join().unwrap())
            .unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let o = train(repo.path(), &whole).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        !stderr.contains("test hold"),
        "the reference run never holds: {stderr}"
    );
    let reference = curve(&whole);
    assert_eq!(
        reference.iter().filter(|r| r["kind"] == "train").count(),
        200
    );

    // Ctrl-C: the run writes a checkpoint after the current step (the one after its hold) and
    // exits with 130.
    let int = tmp.path().join("sigint");
    let mut run = Held::start(repo.path(), &int);
    run.wait_for_hold();
    assert_eq!(train_lines(&int), 10, "held after step 10");
    // SAFETY: sending a signal to our own child process by its id.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGINT) };
    let (status, stderr) = run.finish();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("stopped at step 11;") && stderr.contains("--resume"),
        "stops after the next step and tells how to continue: {stderr}"
    );
    assert_eq!(train_lines(&int), 11);
    assert!(
        !int.join("model.safetensors").exists(),
        "the run did not finish"
    );
    resume(&int);
    assert_eq!(curve(&int), reference);

    // SIGKILL right after the first periodic checkpoint: no chance to save anything.
    let killed = tmp.path().join("sigkill");
    let mut run = Held::start(repo.path(), &killed);
    run.wait_for_hold();
    run.child.kill().unwrap();
    let (status, _) = run.finish();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
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
