//! Greedy self-speculative decoding must equal plain greedy decoding token for token, whatever
//! the draft source, and oracle drafts must be accepted in full.

mod common;

use common::{random_prompt, rng, run, tiny};
use foresight::decode::{
    GenerateParams, HeadDrafts, LookupThenHeads, NoDrafts, OracleDrafts, PromptLookup,
};
use foresight::model::tiny::TINY_VOCAB;
use rand::Rng;

#[test]
fn speculative_equals_plain_over_200_random_prompts() {
    let model = tiny();
    let mut plain_cache = model.new_cache(256, 1).unwrap();
    let mut spec_cache = model.new_cache(256, model.n_heads()).unwrap();
    let mut lookup_cache = model.new_cache(256, 1).unwrap();
    let mut oracle_cache = model.new_cache(256, model.n_heads()).unwrap();
    let mut both_cache = model.new_cache(256, model.n_heads()).unwrap();
    let mut r = rng(2024);
    let (mut both_copied_rounds, mut both_head_rounds) = (0, 0);
    let (mut head_accepted, mut head_drafted, mut lookup_accepted, mut total_tokens) = (0, 0, 0, 0);
    for case in 0..200 {
        let prompt = random_prompt(&mut r, TINY_VOCAB as u32);
        let params = GenerateParams {
            max_tokens: r.random_range(1..40),
            stop_tokens: vec![256, 257, 258, 259],
            max_draft_len: r.random_range(1..8),
            sampling: None,
        };
        let plain = run(&model, &mut plain_cache, &prompt, &params, &mut NoDrafts);
        let heads = run(
            &model,
            &mut spec_cache,
            &prompt,
            &params,
            &mut HeadDrafts::every_head(),
        );
        let lookup = run(
            &model,
            &mut lookup_cache,
            &prompt,
            &params,
            &mut PromptLookup {
                min_ngram: 1,
                max_ngram: 4,
            },
        );
        // Copies where the context has a match, the heads (every one: a random model is never
        // confident) elsewhere, on a cache with extra heads that skip rounds.
        let mut both_src = LookupThenHeads::new(
            PromptLookup {
                min_ngram: 1,
                max_ngram: 4,
            },
            HeadDrafts::every_head(),
        );
        let both = run(&model, &mut both_cache, &prompt, &params, &mut both_src);
        let mut oracle_src = OracleDrafts {
            prompt_len: prompt.len(),
            continuation: plain.tokens.clone(),
        };
        let oracle = run(&model, &mut oracle_cache, &prompt, &params, &mut oracle_src);
        assert_eq!(
            heads.tokens, plain.tokens,
            "case {case}: heads vs plain, prompt {prompt:?}"
        );
        assert_eq!(
            lookup.tokens, plain.tokens,
            "case {case}: prompt lookup vs plain"
        );
        assert_eq!(oracle.tokens, plain.tokens, "case {case}: oracle vs plain");
        assert_eq!(
            both.tokens, plain.tokens,
            "case {case}: lookup then heads vs plain"
        );
        both_copied_rounds += both_src.copied_rounds;
        both_head_rounds += both_src.head_rounds;
        assert_eq!(heads.stop, plain.stop, "case {case}");
        assert_eq!(
            plain.stats.tokens_per_forward(),
            if plain.stats.decode_forwards > 0 {
                1.0
            } else {
                0.0
            }
        );
        // Oracle drafts are the true continuation: every one is accepted.
        assert_eq!(oracle.stats.accepted, oracle.stats.drafted, "case {case}");
        head_accepted += heads.stats.accepted.iter().sum::<usize>();
        head_drafted += heads.stats.drafted.iter().sum::<usize>();
        lookup_accepted += lookup.stats.accepted.iter().sum::<usize>();
        total_tokens += plain.tokens.len();
    }
    // The speculative paths really ran: drafts were proposed, and some were accepted and some rejected.
    assert!(head_drafted > 500, "{head_drafted}");
    assert!(head_accepted < head_drafted);
    assert!(lookup_accepted > 0);
    assert!(
        both_copied_rounds > 50 && both_head_rounds > 50,
        "{both_copied_rounds} {both_head_rounds}"
    );
    assert!(total_tokens > 2000, "{total_tokens}");
}

#[test]
fn oracle_drafts_give_draft_len_plus_one_tokens_per_forward() {
    let model = tiny();
    let prompt: Vec<u32> = b"fn main() {\n    let x = "
        .iter()
        .map(|&b| b as u32)
        .collect();
    for draft_len in [1usize, 3, 7] {
        let rounds = 5;
        let params = GenerateParams {
            max_tokens: 1 + rounds * (draft_len + 1),
            max_draft_len: draft_len,
            sampling: None,
            stop_tokens: Vec::new(),
        };
        let mut cache = model.new_cache(256, 1).unwrap();
        let plain = run(&model, &mut cache, &prompt, &params, &mut NoDrafts);
        let mut oracle = OracleDrafts {
            prompt_len: prompt.len(),
            continuation: plain.tokens.clone(),
        };
        let mut cache = model.new_cache(256, 1).unwrap();
        let spec = run(&model, &mut cache, &prompt, &params, &mut oracle);
        assert_eq!(spec.tokens, plain.tokens);
        assert_eq!(spec.stats.decode_forwards, rounds);
        assert_eq!(
            spec.stats.tokens_per_forward(),
            (draft_len + 1) as f64,
            "draft_len {draft_len}"
        );
        assert_eq!(plain.stats.decode_forwards, rounds * (draft_len + 1));
        // Every speculative round verified a draft; no plain round did.
        assert_eq!(
            spec.stats.rounds_with_draft.tokens,
            rounds * (draft_len + 1)
        );
        assert_eq!(spec.stats.rounds_without_draft.tokens, 0);
        assert_eq!(plain.stats.rounds_with_draft.tokens, 0);
        assert_eq!(
            plain.stats.rounds_without_draft.tokens,
            plain.stats.decode_tokens
        );
        assert!(spec.stats.rounds_with_draft.ms > 0.0 && plain.stats.rounds_without_draft.ms > 0.0);
    }
}

#[test]
fn wrong_drafts_cost_forwards_but_not_correctness() {
    let model = tiny();
    let prompt: Vec<u32> = (10..30).collect();
    let params = GenerateParams {
        max_tokens: 24,
        max_draft_len: 5,
        sampling: None,
        stop_tokens: Vec::new(),
    };
    let plain = run(
        &model,
        &mut model.new_cache(128, 1).unwrap(),
        &prompt,
        &params,
        &mut NoDrafts,
    );
    // An oracle for a different continuation: all drafts are wrong.
    let wrong: Vec<u32> = plain.tokens.iter().map(|t| (t + 1) % 256).collect();
    let mut oracle = OracleDrafts {
        prompt_len: prompt.len(),
        continuation: wrong,
    };
    let spec = run(
        &model,
        &mut model.new_cache(128, 1).unwrap(),
        &prompt,
        &params,
        &mut oracle,
    );
    assert_eq!(spec.tokens, plain.tokens);
    assert_eq!(spec.stats.tokens_per_forward(), 1.0);
    // Rejected drafts still count as rounds with a draft: they cost a wider verification.
    let (with, without) = (
        spec.stats.rounds_with_draft,
        spec.stats.rounds_without_draft,
    );
    assert!(with.tokens > 0, "{with:?}");
    assert_eq!(with.tokens + without.tokens, spec.stats.decode_tokens);
}

#[test]
fn cache_reuse_across_generations_is_exact() {
    let model = tiny();
    let params = GenerateParams {
        max_tokens: 16,
        sampling: None,
        stop_tokens: Vec::new(),
        max_draft_len: 8,
    };
    let mut warm = model.new_cache(256, model.n_heads()).unwrap();
    let mut typed: Vec<u32> = (40..60).collect();
    for next in [61u32, 62, 7, 8] {
        // Simulate typing: the prompt grows one token at a time, and sometimes an earlier token changes.
        typed.push(next);
        if next == 7 {
            typed[5] = 99;
        }
        let reused = run(
            &model,
            &mut warm,
            &typed,
            &params,
            &mut HeadDrafts::every_head(),
        );
        let fresh = run(
            &model,
            &mut model.new_cache(256, 1).unwrap(),
            &typed,
            &params,
            &mut NoDrafts,
        );
        assert_eq!(reused.tokens, fresh.tokens, "after typing {next}");
        assert!(reused.stats.reused_tokens > 0 || next == 61);
    }
}

/// A detokenizer that raises a cancel flag once the generation holds `after` tokens: a cancel
/// arriving mid-generation, at a known point, without timing.
struct CancelAfter<'a> {
    after: usize,
    flag: &'a std::sync::atomic::AtomicBool,
}

impl foresight::decode::Detokenize for CancelAfter<'_> {
    fn detokenize(&self, ids: &[u32]) -> String {
        if ids.len() >= self.after {
            self.flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        String::new()
    }
}

#[test]
fn a_cancel_mid_generation_stops_between_forward_passes_with_the_tokens_so_far() {
    use foresight::decode::{generate, Control, StopReason};
    let model = tiny();
    let prompt: Vec<u32> = (10..30).collect();
    let params = GenerateParams {
        max_tokens: 40,
        sampling: None,
        stop_tokens: Vec::new(),
        max_draft_len: 0,
    };
    let full = run(
        &model,
        &mut model.new_cache(256, 1).unwrap(),
        &prompt,
        &params,
        &mut NoDrafts,
    );
    assert_eq!(full.tokens.len(), 40, "runs to max tokens uncancelled");
    for after in [1, 5, 17] {
        let flag = std::sync::atomic::AtomicBool::new(false);
        let detok = CancelAfter { after, flag: &flag };
        let control = Control {
            cancel: Some(&flag),
            stop_strings: Some((&detok, &[])),
            ..Control::default()
        };
        let mut cache = model.new_cache(256, 1).unwrap();
        let g = generate(
            &model,
            &mut cache,
            &prompt,
            &params,
            &mut NoDrafts,
            &control,
        )
        .unwrap();
        assert_eq!(g.stop, StopReason::Cancelled, "cancel after {after}");
        assert_eq!(g.tokens, full.tokens[..after], "cancel after {after}");
        assert_eq!(g.stats.forwards, after, "no forward pass after the cancel");
    }
}
