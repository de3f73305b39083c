//! Shared helpers for the integration tests: the tiny fixture model and generation shortcuts.
#![allow(dead_code)]

use foresight::decode::{generate, Control, DraftSource, GenerateParams, Generation};
use foresight::model::{ModelCache, MtpModel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn tiny() -> MtpModel {
    foresight::model::tiny::TinySpec::default().model().unwrap()
}

pub fn run(
    model: &MtpModel,
    cache: &mut ModelCache,
    prompt: &[u32],
    params: &GenerateParams,
    drafter: &mut dyn DraftSource,
) -> Generation {
    generate(model, cache, prompt, params, drafter, &Control::default()).unwrap()
}

/// Random prompts with repeated segments, so prompt lookup finds matches as it would in code.
pub fn random_prompt(rng: &mut ChaCha8Rng, vocab: u32) -> Vec<u32> {
    let len = rng.random_range(1..48);
    let mut out: Vec<u32> = Vec::with_capacity(len);
    while out.len() < len {
        if out.len() > 4 && rng.random_bool(0.3) {
            let start = rng.random_range(0..out.len() - 2);
            let n = rng.random_range(2..=(out.len() - start).min(8));
            let seg = out[start..start + n].to_vec();
            out.extend(seg);
        } else {
            out.push(rng.random_range(0..vocab));
        }
    }
    out.truncate(len);
    out
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Largest absolute difference between two tensors.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Runs an installer script of scripts/ that ends by printing `python=PATH` (the interpreter
/// with the packages a test needs) and returns that path. An installer that fails, or says
/// `unavailable: WHY`, fails the test, unless the environment variable `allow` is `1`: then the
/// test is skipped, knowingly, with a line on stderr.
pub fn installed_python(script: &str, allow: &str) -> Option<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("bash")
        .arg(format!("{root}/scripts/{script}"))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    if let (Some(python), true) = (last.strip_prefix("python="), out.status.success()) {
        return Some(python.to_string());
    }
    let why = match last.strip_prefix("unavailable: ") {
        Some(reason) => format!("scripts/{script}: unavailable here ({reason})"),
        None => format!(
            "scripts/{script} failed ({:?}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    };
    assert!(
        std::env::var_os(allow).is_some_and(|v| v == "1"),
        "{why}\nthe tests that need it cannot run; set {allow}=1 to skip them knowingly"
    );
    eprintln!("SKIPPED ({allow}=1): {why}");
    None
}
