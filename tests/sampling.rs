//! Speculative sampling must draw from the model's own distribution. We compute the exact joint
//! distribution of the first two tokens from the model, draw thousands of samples with plain
//! sampling and with speculative sampling (head drafts, and one-hot drafts), and run a chi-square
//! goodness-of-fit test on each. A sampler with the wrong temperature must fail the same test.

mod common;

use std::collections::HashMap;

use common::{run, tiny};
use foresight::decode::sampling::probs;
use foresight::decode::{
    DraftSource, GenerateParams, HeadDrafts, NoDrafts, OracleDrafts, SamplingParams,
};
use foresight::model::{Logits, MtpModel};

const PROMPT: &[u32] = &[102, 110, 32, 109, 97, 105, 110, 40, 41];
const TEMPERATURE: f32 = 0.8;
const TOP_P: f32 = 0.9;
const SAMPLES: u64 = 4000;

fn last_probs(model: &MtpModel, seq: &[u32]) -> Vec<f32> {
    let out = model
        .forward(&mut model.new_cache(64, 1).unwrap(), seq, Logits::Last)
        .unwrap();
    probs(
        &out.logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap(),
        TEMPERATURE,
        TOP_P,
    )
}

/// Exact P(first two tokens) under temperature and top-p.
fn exact_pairs(model: &MtpModel) -> HashMap<(u32, u32), f64> {
    let p1 = last_probs(model, PROMPT);
    let mut out = HashMap::new();
    for (t0, &a) in p1.iter().enumerate().filter(|(_, &a)| a > 0.0) {
        let mut seq = PROMPT.to_vec();
        seq.push(t0 as u32);
        for (t1, &b) in last_probs(model, &seq)
            .iter()
            .enumerate()
            .filter(|(_, &b)| b > 0.0)
        {
            out.insert((t0 as u32, t1 as u32), a as f64 * b as f64);
        }
    }
    out
}

/// Counts of the first two tokens over `SAMPLES` seeded generations of 3 tokens (so that the
/// second token goes through draft verification).
fn sample_pairs(
    model: &MtpModel,
    n_heads: usize,
    temperature: f32,
    make: &dyn Fn() -> Box<dyn DraftSource>,
) -> HashMap<(u32, u32), u64> {
    let mut cache = model.new_cache(64, n_heads).unwrap();
    let mut counts = HashMap::new();
    for seed in 0..SAMPLES {
        let params = GenerateParams {
            max_tokens: 3,
            sampling: Some(SamplingParams {
                temperature,
                top_p: TOP_P,
                seed,
            }),
            max_draft_len: 3,
            stop_tokens: Vec::new(),
        };
        let g = run(model, &mut cache, PROMPT, &params, make().as_mut());
        *counts.entry((g.tokens[0], g.tokens[1])).or_insert(0) += 1;
    }
    counts
}

/// Pearson's statistic with bins of expected count < 5 pooled; returns (statistic, degrees of freedom).
fn chi_square(exact: &HashMap<(u32, u32), f64>, counts: &HashMap<(u32, u32), u64>) -> (f64, usize) {
    let n = SAMPLES as f64;
    let (mut stat, mut bins) = (0.0, 0);
    let (mut pooled_expected, mut pooled_observed) = (0.0, 0.0);
    for (pair, &p) in exact {
        let observed = *counts.get(pair).unwrap_or(&0) as f64;
        let expected = p * n;
        if expected >= 5.0 {
            stat += (observed - expected).powi(2) / expected;
            bins += 1;
        } else {
            pooled_expected += expected;
            pooled_observed += observed;
        }
    }
    // Samples outside the exact support (impossible pairs) land in the pooled bin too.
    pooled_observed += counts
        .iter()
        .filter(|(k, _)| !exact.contains_key(k))
        .map(|(_, &c)| c as f64)
        .sum::<f64>();
    if pooled_expected > 0.0 {
        stat += (pooled_observed - pooled_expected).powi(2) / pooled_expected;
        bins += 1;
    }
    (stat, bins - 1)
}

/// Upper 0.1% point of the chi-square distribution (Wilson-Hilferty approximation).
fn critical_value(df: usize) -> f64 {
    let k = df as f64;
    let z = 3.09;
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

#[test]
fn speculative_sampling_draws_from_the_models_distribution() {
    let model = tiny();
    let exact = exact_pairs(&model);
    let likely_second = exact.iter().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 .1;
    type Make = Box<dyn Fn() -> Box<dyn DraftSource>>;
    let samplers: Vec<(&str, usize, Make)> = vec![
        ("plain", 1, Box::new(|| Box::new(NoDrafts))),
        ("heads", 4, Box::new(|| Box::new(HeadDrafts::every_head()))),
        // A one-hot draft of the most likely second token, whatever the first was.
        (
            "one-hot",
            1,
            Box::new(move || {
                Box::new(OracleDrafts {
                    prompt_len: PROMPT.len(),
                    continuation: vec![0, likely_second],
                })
            }),
        ),
    ];
    for (name, n_heads, make) in &samplers {
        let counts = sample_pairs(&model, *n_heads, TEMPERATURE, make.as_ref());
        let (stat, df) = chi_square(&exact, &counts);
        assert!(df >= 5, "{name}: too few bins ({df}) for a meaningful test");
        let crit = critical_value(df);
        eprintln!("{name}: chi2 {stat:.1}, df {df}, critical {crit:.1}");
        assert!(stat < crit, "{name}: chi2 {stat:.1} >= {crit:.1} (df {df})");
    }
    // The test has power: sampling at another temperature is rejected.
    let counts = sample_pairs(&model, 1, 1.3, &|| Box::new(NoDrafts));
    let (stat, df) = chi_square(&exact, &counts);
    assert!(
        stat > critical_value(df),
        "wrong temperature not detected: {stat:.1} (df {df})"
    );
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let model = tiny();
    let params = GenerateParams {
        max_tokens: 20,
        sampling: Some(SamplingParams {
            temperature: 1.0,
            top_p: 0.95,
            seed: 42,
        }),
        stop_tokens: Vec::new(),
        max_draft_len: 8,
    };
    let a = run(
        &model,
        &mut model.new_cache(64, 4).unwrap(),
        PROMPT,
        &params,
        &mut HeadDrafts::every_head(),
    );
    let b = run(
        &model,
        &mut model.new_cache(64, 4).unwrap(),
        PROMPT,
        &params,
        &mut HeadDrafts::every_head(),
    );
    assert_eq!(a.tokens, b.tokens);
    let other = GenerateParams {
        sampling: Some(SamplingParams {
            seed: 43,
            ..params.sampling.unwrap()
        }),
        ..params.clone()
    };
    let c = run(
        &model,
        &mut model.new_cache(64, 4).unwrap(),
        PROMPT,
        &other,
        &mut HeadDrafts::every_head(),
    );
    assert_ne!(a.tokens, c.tokens);
}
