//! The `foresight` binary end to end: `complete` on a real file with the tiny model (plain and
//! speculative print the same completion), its refusals, and `inspect`.

use std::path::Path;
use std::process::{Command, Output};

use foresight::model::tiny::TinySpec;
use foresight::model::weights::param_counts;

fn foresight(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_foresight"))
        .args(args)
        .env_remove("FORESIGHT_LOG")
        .output()
        .unwrap()
}

fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    TinySpec::default().write_dir(dir.path()).unwrap();
    dir
}

const SOURCE: &str =
    "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n\nfn main() {\n    let total = \n}\n";

fn write_source(dir: &Path, name: &str, content: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn complete_prints_the_same_completion_in_plain_and_spec_mode() {
    let model = model_dir();
    let src = tempfile::tempdir().unwrap();
    let file = write_source(src.path(), "main.rs", SOURCE.as_bytes());
    let loc = format!("{file}:6:17");
    let m = model.path().to_str().unwrap();
    let plain = foresight(&[
        "complete",
        &loc,
        "--model",
        m,
        "--mode",
        "plain",
        "--max-tokens",
        "24",
        "--stats",
    ]);
    let spec = foresight(&[
        "complete",
        &loc,
        "--model",
        m,
        "--mode",
        "spec",
        "--max-tokens",
        "24",
        "--stats",
    ]);
    let lookup = foresight(&[
        "complete",
        &loc,
        "--model",
        m,
        "--mode",
        "lookup",
        "--max-tokens",
        "24",
    ]);
    for out in [&plain, &spec, &lookup] {
        assert!(out.status.success(), "{}", stderr(out));
    }
    assert_eq!(spec.stdout, plain.stdout);
    assert_eq!(lookup.stdout, plain.stdout);
    assert!(!plain.stdout.is_empty());
    // Statistics go to stderr, never stdout.
    assert!(
        stderr(&plain).contains("tokens/forward=1.00"),
        "{}",
        stderr(&plain)
    );
    assert!(stderr(&spec).contains("tokens/forward="));
    assert!(!String::from_utf8_lossy(&spec.stdout).contains("tokens/forward"));
}

#[test]
fn complete_refuses_bad_input_with_a_message() {
    let model = model_dir();
    let m = model.path().to_str().unwrap();
    let src = tempfile::tempdir().unwrap();
    let good = write_source(src.path(), "good.rs", SOURCE.as_bytes());
    let empty = write_source(src.path(), "empty.rs", b"");
    let binary = write_source(
        src.path(),
        "blob.bin",
        &[0x7f, b'E', b'L', b'F', 0, 1, 2, 3],
    );
    let latin1 = write_source(src.path(), "latin1.txt", &[b'c', b'a', b'f', 0xe9, b'\n']);
    let dir = src.path().to_str().unwrap().to_string();
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("{good}:99:1"), m, "line 99 is past the end"),
        (
            format!("{good}:6:40"),
            m,
            "column 40 is past the end of line 6",
        ),
        (format!("{good}:0:1"), m, "1-based"),
        (format!("{empty}:1:1"), m, "is empty"),
        (format!("{binary}:1:1"), m, "binary"),
        (format!("{latin1}:1:1"), m, "not UTF-8"),
        (format!("{dir}/missing.rs:1:1"), m, "cannot read"),
        (format!("{dir}:1:1"), m, "cannot read"),
        (good.clone(), m, "expected FILE:LINE:COL"),
        (
            format!("{good}:1:1"),
            "/nonexistent/model",
            "does not exist",
        ),
    ];
    for (loc, model, needle) in cases {
        let out = foresight(&["complete", loc.as_str(), "--model", model]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{loc}: {err}");
        assert!(
            err.contains(needle),
            "{loc}: {err:?} should contain {needle:?}"
        );
        assert!(!err.contains("panicked"), "{loc}: {err}");
        assert!(out.stdout.is_empty(), "{loc}");
    }
}

#[test]
fn logs_can_go_to_a_file() {
    let model = model_dir();
    let src = tempfile::tempdir().unwrap();
    let file = write_source(src.path(), "main.rs", SOURCE.as_bytes());
    let log = src.path().join("log.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_foresight"))
        .args([
            "--log-file",
            log.to_str().unwrap(),
            "complete",
            &format!("{file}:99:1"),
            "--model",
            model.path().to_str().unwrap(),
        ])
        .env("FORESIGHT_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("line 99 is past the end"), "{logged}");
}

#[test]
fn inspect_reports_config_parameters_and_special_tokens() {
    let model = model_dir();
    let out = foresight(&["inspect", model.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let counts = param_counts(&TinySpec::default().config());
    for needle in [
        format!("trunk:      {}", counts.trunk),
        format!("heads:      {}", counts.heads),
        format!("embeddings: {}", counts.embeddings),
        "\"n_future_tokens\": 4".to_string(),
        "eos: 256 \"<|endoftext|>\"".to_string(),
        "fim: prefix 257 \"<fim_prefix>\", suffix 258 \"<fim_suffix>\", middle 259 \"<fim_middle>\"".to_string(),
    ] {
        assert!(text.contains(&needle), "missing {needle:?} in:\n{text}");
    }
    let out = foresight(&["inspect", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("missing config.json"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn eval_scores_tasks_in_both_modes_and_writes_json() {
    let model = model_dir();
    let dir = tempfile::tempdir().unwrap();
    let tasks = [
        serde_json::json!({"id": "a.rs:2:single", "language": "rust", "kind": "single", "path": "a.rs",
            "prefix": "fn main() {\n    let x = ", "middle": "1;", "suffix": "\n}\n"}),
        serde_json::json!({"id": "b.py:1:multi", "language": "python", "kind": "multi",
            "prefix": "def f(x):\n    ", "middle": "return x\n", "suffix": ""}),
        serde_json::json!({"id": "c.py:1:single", "language": "python", "kind": "single",
            "prefix": "import os\n", "middle": "import sys", "suffix": "\n"}),
    ];
    let tasks_path = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks_path,
        tasks
            .iter()
            .map(|t| t.to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let json_path = dir.path().join("out.jsonl");
    let out = foresight(&[
        "eval",
        tasks_path.to_str().unwrap(),
        "--model",
        model.path().to_str().unwrap(),
        "--max-tokens",
        "12",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    for needle in ["all ", "rust ", "python ", "single ", "multi ", "100.0"] {
        assert!(table.contains(needle), "missing {needle:?}:\n{table}");
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&json_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for (line, task) in lines.iter().zip(&tasks) {
        assert_eq!(line["id"], task["id"]);
        for key in ["completion", "tokens", "forwards", "ms"] {
            assert!(!line[key].is_null(), "{key} missing in {line}");
        }
        // Greedy speculative output equals plain output.
        assert_eq!(line["identical"], true);
        assert_eq!(line["plain"]["completion"], line["spec"]["completion"]);
    }
    let summary = &lines[3]["summary"];
    assert_eq!(summary["all"]["tasks"], 3);
    assert_eq!(summary["all"]["identical"], 1.0);
    assert_eq!(summary["by_language"]["python"]["tasks"], 2);

    // --mode plain --limit 1 runs one mode on one task.
    let out = foresight(&[
        "eval",
        tasks_path.to_str().unwrap(),
        "--model",
        model.path().to_str().unwrap(),
        "--mode",
        "plain",
        "--limit",
        "1",
        "--max-tokens",
        "4",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("all") && l.split_whitespace().nth(1) == Some("1")),
        "{table}"
    );

    // A malformed tasks file names the line.
    std::fs::write(&tasks_path, "{\"id\": 1}\n").unwrap();
    let out = foresight(&[
        "eval",
        tasks_path.to_str().unwrap(),
        "--model",
        model.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("tasks.jsonl:1"), "{}", stderr(&out));
}

#[test]
fn the_test_hooks_environment_variable_takes_1_true_and_yes() {
    use foresight::lsp::guard::{frame, read_frame_blocking, Frame};
    use std::io::{BufReader, Write};
    let model = model_dir();
    for (value, hooks) in [("1", true), ("true", true), ("yes", true), ("0", false)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_foresight"))
            .args(["serve", "--model", model.path().to_str().unwrap()])
            .env("FORESIGHT_TEST_HOOKS", value)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // Frames come through a thread, so a hung server fails the test instead of hanging it.
        let (tx, frames) = std::sync::mpsc::channel();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            while let Ok(Some(frame)) = read_frame_blocking(&mut stdout) {
                if tx.send(frame).is_err() {
                    break;
                }
            }
        });
        let mut send = |v: serde_json::Value| {
            stdin.write_all(&frame(v.to_string().as_bytes())).unwrap();
            stdin.flush().unwrap();
        };
        // Waits for the answer to request `id` (skipping notifications).
        let answer = |id: i64| loop {
            match frames.recv_timeout(std::time::Duration::from_secs(60)) {
                Ok(Frame::Body(body)) => {
                    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    if m["id"] == id {
                        break m;
                    }
                }
                other => panic!("FORESIGHT_TEST_HOOKS={value}: {other:?}"),
            }
        };
        send(
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"capabilities": {}}}),
        );
        answer(1);
        send(serde_json::json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
        send(
            serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "foresight/debugHold",
            "params": {"closed": false}}),
        );
        let reply = answer(2);
        if hooks {
            assert_eq!(
                reply["result"], false,
                "FORESIGHT_TEST_HOOKS={value}: {reply}"
            );
        } else {
            assert_eq!(reply["error"]["code"], -32601, "{reply}");
        }
        send(serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "shutdown"}));
        answer(3);
        send(serde_json::json!({"jsonrpc": "2.0", "method": "exit"}));
        assert!(
            child.wait().unwrap().success(),
            "FORESIGHT_TEST_HOOKS={value}"
        );
    }
}

#[test]
fn resume_refuses_run_options_named_as_given_and_takes_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let out = out.to_str().unwrap();
    let refused = foresight(&[
        "train",
        "--resume",
        "--out",
        out,
        "--lr",
        "1e-3",
        "--seed",
        "3",
        "--save-bf16",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let err = stderr(&refused);
    assert!(
        err.contains("remove --save-bf16, --lr, --seed") || err.contains("remove --lr"),
        "{err}"
    );
    for flag in ["--lr", "--seed", "--save-bf16"] {
        assert!(err.contains(flag), "{flag} named: {err}");
    }
    // Flags about where the run is and how to show it pass the check (and the run is then
    // refused for having no checkpoint).
    let allowed = foresight(&[
        "train",
        "--resume",
        "--out",
        out,
        "--verbose",
        "--no-progress",
    ]);
    assert_eq!(allowed.status.code(), Some(1));
    let err = stderr(&allowed);
    assert!(!err.contains("remove"), "{err}");
    assert!(err.contains("checkpoint"), "{err}");
}
