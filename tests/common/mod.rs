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
