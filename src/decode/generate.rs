//! The generation loop: prefill with KV-cache reuse, then rounds of [pending token + draft] through
//! the trunk and head 1, verified (greedy or speculative sampling), the caches rolled back to the
//! accepted length, and only then the extra heads run on the kept rows for the next drafts.
//! Plain decoding is the same loop with no drafts.
//! Not here: prompts and text post-processing (`complete`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::cpu_kernels::MAX_ROWS;
use crate::model::{HeadLogits, Logits, ModelCache, MtpModel, Result, VerifyOutput};

use super::accept::{accept_greedy, acceptance_probability, residual};
use super::draft::{Draft, DraftRequest, DraftSource};
use super::sampling::{argmax, probs, sample, SamplingParams};
use super::stats::GenerationStats;
use super::stop::{find_stop_string, Detokenize};

/// What to generate and when to stop. No defaults here: callers derive them from the settings
/// (`complete::Settings`) or state every field.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    /// `None` (or temperature 0) decodes greedily.
    pub sampling: Option<SamplingParams>,
    /// Token ids that end generation (EOS, FIM markers); the stop token is not returned.
    pub stop_tokens: Vec<u32>,
    /// Most draft tokens verified per forward pass.
    pub max_draft_len: usize,
}

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum StopReason {
    MaxTokens,
    StopToken(u32),
    /// A stop string begins at this byte offset of the decoded generated text.
    StopString(usize),
    Cancelled,
    Deadline,
    /// The KV cache is full.
    ContextFull,
    /// A remote engine ended the completion itself (its end-of-text token, or a stop rule of its
    /// own); the token is not reported.
    EngineEnded,
}

/// A stop rule over decoded text: `Some(at)` cuts the text at byte `at`.
pub type StopRule = dyn Fn(&str) -> Option<usize>;

/// Optional controls checked between forward passes.
#[derive(Default)]
pub struct Control<'a> {
    pub cancel: Option<&'a AtomicBool>,
    pub deadline: Option<Instant>,
    pub stop_strings: Option<(&'a dyn Detokenize, &'a [String])>,
    /// A stop rule over the decoded generated text (needs `stop_strings` for its detokenizer):
    /// `Some(at)` stops as a stop string found at byte `at` would.
    pub stop_fn: Option<&'a StopRule>,
    /// Text the generation must begin with (token healing).
    pub forced: Option<Forced<'a>>,
}

/// Text a generation must begin with: the prompt's tail left out for token healing
/// (`complete::prompt::heal_start`). Until it is covered, each token is chosen among those whose
/// text agrees with what is left of it (one token per forward pass, no drafts, the same choice in
/// plain and speculative decoding). Stop strings and rules then see the text after it. If no token
/// agrees, the generation goes on unforced (its text then does not begin with `text`).
#[derive(Clone, Copy)]
pub struct Forced<'a> {
    pub text: &'a str,
    /// Each token id's text.
    pub token_texts: &'a [String],
}

impl Forced<'_> {
    /// Keeps in `row` only the tokens that agree with `left`: their text begins it, or begins
    /// with it and goes on with something other than a space or tab (the forced text is all the
    /// indentation the user typed: a token may not indent further). Returns false, leaving `row`
    /// alone, when none agrees.
    fn mask(&self, left: &str, row: &mut [f32]) -> bool {
        let agrees = |t: &str| {
            !t.is_empty()
                && (left.starts_with(t)
                    || t.strip_prefix(left)
                        .is_some_and(|rest| !rest.starts_with([' ', '\t'])))
        };
        if !self.token_texts.iter().any(|t| agrees(t)) {
            return false;
        }
        for (x, t) in row.iter_mut().zip(self.token_texts) {
            if !agrees(t) {
                *x = f32::NEG_INFINITY;
            }
        }
        true
    }

    /// What is left of the forced text after `token`.
    fn after(&self, left: &str, token: u32) -> String {
        let t = self
            .token_texts
            .get(token as usize)
            .map_or("", String::as_str);
        match left.strip_prefix(t) {
            Some(rest) if !t.is_empty() => rest.to_string(),
            _ => String::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub stats: GenerationStats,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Length of the longest common prefix of two token sequences.
pub fn common_prefix_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// How much of the cache to keep for `prompt`: the common prefix, but at least one prompt token
/// must be fed so the forward pass yields logits.
pub fn reuse_len(cached: &[u32], prompt: &[u32]) -> usize {
    common_prefix_len(cached, prompt).min(prompt.len().saturating_sub(1))
}

/// Generates from `prompt`, reusing whatever prefix of it `cache` already holds. With greedy
/// decoding the tokens equal plain greedy decoding's whatever `drafter` proposes.
pub fn generate(
    model: &MtpModel,
    cache: &mut ModelCache,
    prompt: &[u32],
    params: &GenerateParams,
    drafter: &mut dyn DraftSource,
    control: &Control,
) -> Result<Generation> {
    let start = Instant::now();
    let sampling = params.sampling.filter(|s| !s.is_greedy());
    let mut rng = ChaCha8Rng::seed_from_u64(sampling.map_or(0, |s| s.seed));
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    let mut tokens: Vec<u32> = Vec::new();
    if prompt.is_empty() || params.max_tokens == 0 {
        return Ok(Generation {
            tokens,
            stop: StopReason::MaxTokens,
            stats,
        });
    }

    let keep = reuse_len(cache.tokens(), prompt).min(cache.synced_len());
    cache.truncate(keep);
    stats.reused_tokens = keep;
    // Trunk and head 1 first; the extra heads then see only the rows that stay in the cache, and
    // run in full only where drafts are made (keys and values elsewhere, to stay in step).
    let has_extra = cache.n_heads() > 1;
    let uses_heads = drafter.uses_heads() && has_extra;
    let out = model.forward_verify(cache, &prompt[keep..], Logits::Last)?;
    stats.forwards += 1;
    let mut last_row = out.logits.squeeze(0)?.to_vec1::<f32>()?;
    let pick = |row: &[f32], rng: &mut ChaCha8Rng| match &sampling {
        None => argmax(row),
        Some(s) => sample(&probs(row, s.temperature, s.top_p), rng),
    };
    // What is left of the forced text; empty once it is covered (or given up).
    let mut forced_left = control.forced.map_or(String::new(), |f| f.text.to_string());
    if let Some(f) = control.forced.filter(|_| !forced_left.is_empty()) {
        if !f.mask(&forced_left, &mut last_row) {
            forced_left.clear();
        }
    }
    let mut pending = pick(&last_row, &mut rng);
    if let Some(f) = control.forced {
        forced_left = f.after(&forced_left, pending);
    }
    let mut context: Vec<u32> = prompt.to_vec();
    let mut head_logits = if has_extra {
        let upcoming = [&context[..], &[pending]].concat();
        let keep_rows = prompt.len() - keep;
        extend_heads(
            model, cache, &out, keep_rows, drafter, &upcoming, uses_heads,
        )?
    } else {
        Vec::new()
    };
    stats.prefill_ms = ms_since(start);

    let stop = 'outer: loop {
        // `pending` is chosen but not yet in the cache.
        if params.stop_tokens.contains(&pending) {
            break StopReason::StopToken(pending);
        }
        tokens.push(pending);
        context.push(pending);
        if let Some(reason) =
            stop_before_forward(&tokens, params, control, cache, forced_left.is_empty())
        {
            break reason;
        }
        let room = cache.capacity() - cache.len();
        let max_len = if forced_left.is_empty() {
            draft_room(params.max_draft_len, params.max_tokens - tokens.len(), room)
        } else {
            0 // forced tokens come one per pass
        };
        let round_start = Instant::now();
        let draft = if max_len > 0 {
            let req = DraftRequest {
                context: &context,
                head_logits: &head_logits,
                max_len,
                sampling: sampling.as_ref(),
            };
            let mut d = drafter.propose(&req, &mut rng);
            d.tokens.truncate(max_len);
            d
        } else {
            Default::default()
        };
        let forcing = control
            .forced
            .filter(|_| !forced_left.is_empty())
            .map(|f| (f, forced_left.as_str()));
        let (n_accepted, next, out) = verify_round(
            model,
            cache,
            pending,
            &draft,
            sampling.as_ref(),
            forcing,
            &mut rng,
        )?;
        if let Some((f, left)) = forcing {
            forced_left = f.after(left, next);
        }
        stats.forwards += 1;
        stats.decode_forwards += 1;
        stats.record_round(draft.tokens.len(), n_accepted);
        stats.decode_tokens += n_accepted + 1;
        if has_extra {
            let upcoming = [&context[..], &draft.tokens[..n_accepted], &[next]].concat();
            let keep_rows = n_accepted + 1;
            head_logits = extend_heads(
                model, cache, &out, keep_rows, drafter, &upcoming, uses_heads,
            )?;
        }
        let round = if draft.tokens.is_empty() {
            &mut stats.rounds_without_draft
        } else {
            &mut stats.rounds_with_draft
        };
        round.add(ms_since(round_start), n_accepted + 1);
        for &t in &draft.tokens[..n_accepted] {
            if params.stop_tokens.contains(&t) {
                break 'outer StopReason::StopToken(t);
            }
            tokens.push(t);
            context.push(t);
        }
        pending = next;
    };
    stats.tokens = tokens.len();
    stats.total_ms = ms_since(start);
    stats.decode_ms = stats.total_ms - stats.prefill_ms;
    Ok(Generation {
        tokens,
        stop,
        stats,
    })
}

/// The extra heads' half of a round ([`MtpModel::extend_heads`]): their logits, for as many heads
/// as `drafter` wants next (`upcoming`: the context its next draft follows, the pending token
/// last), when it drafts from them; keys and values only otherwise.
fn extend_heads(
    model: &MtpModel,
    cache: &mut ModelCache,
    out: &VerifyOutput,
    keep: usize,
    drafter: &mut dyn DraftSource,
    upcoming: &[u32],
    uses_heads: bool,
) -> Result<Vec<Vec<f32>>> {
    if !uses_heads {
        return model.extend_heads(cache, out, keep, HeadLogits::None);
    }
    let mut more = |computed: &[Vec<f32>]| drafter.more_heads(upcoming, computed);
    model.extend_heads(cache, out, keep, HeadLogits::While(&mut more))
}

/// Why generation stops before the next forward pass, if it does: checked after each token
/// joins `tokens` (stop strings and rules, max tokens, cancel, deadline, a full cache).
fn stop_before_forward(
    tokens: &[u32],
    params: &GenerateParams,
    control: &Control,
    cache: &ModelCache,
    forced_done: bool,
) -> Option<StopReason> {
    // Stop strings and rules see the text after the forced text, once it is covered.
    if let (Some((detok, stops)), true) = (control.stop_strings, forced_done) {
        let text = detok.detokenize(tokens);
        let forced = control.forced.map_or("", |f| f.text);
        let text = text.strip_prefix(forced).unwrap_or(&text);
        if let Some(at) =
            find_stop_string(text, stops).or_else(|| control.stop_fn.and_then(|f| f(text)))
        {
            return Some(StopReason::StopString(at));
        }
    }
    if tokens.len() >= params.max_tokens {
        return Some(StopReason::MaxTokens);
    }
    if control.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
        return Some(StopReason::Cancelled);
    }
    if control.deadline.is_some_and(|d| Instant::now() >= d) {
        return Some(StopReason::Deadline);
    }
    (cache.len() >= cache.capacity()).then_some(StopReason::ContextFull)
}

/// Most drafts the next chunk may carry: what the settings allow, within the small-chunk kernels'
/// rows (where verified rows are bit-identical to one-token decoding; a longer chunk would go
/// through gemm), the tokens still wanted after the pending one, and the cache room after it.
/// `tokens_left` and `cache_room` count the pending token and are at least 1.
fn draft_room(max_draft_len: usize, tokens_left: usize, cache_room: usize) -> usize {
    max_draft_len
        .min(MAX_ROWS - 1)
        .min(tokens_left - 1)
        .min(cache_room - 1)
}

/// One decoding round: `[pending, drafts...]` through the trunk and head 1, the drafts verified
/// (greedily, or by speculative sampling), the cache rolled back past the rejected ones. Returns
/// the drafts accepted, the next pending token, and the pass's output for the extra heads.
/// `forcing` (forced text and what is left of it; rounds without drafts only) restricts the next
/// token to those that agree with it.
fn verify_round(
    model: &MtpModel,
    cache: &mut ModelCache,
    pending: u32,
    draft: &Draft,
    sampling: Option<&SamplingParams>,
    forcing: Option<(Forced, &str)>,
    rng: &mut ChaCha8Rng,
) -> Result<(usize, u32, VerifyOutput)> {
    let mut chunk = Vec::with_capacity(1 + draft.tokens.len());
    chunk.push(pending);
    chunk.extend_from_slice(&draft.tokens);
    let out = model.forward_verify(cache, &chunk, Logits::All)?;
    let mut rows = out.logits.to_vec2::<f32>()?;
    if let (Some((f, left)), true) = (forcing, draft.tokens.is_empty()) {
        f.mask(left, &mut rows[0]);
    }
    let (n_accepted, next) = match sampling {
        None => {
            let targets: Vec<u32> = rows.iter().map(|r| argmax(r)).collect();
            let k = accept_greedy(&draft.tokens, &targets);
            (k, targets[k])
        }
        Some(s) => verify_sampled(&rows, &draft.tokens, &draft.dists, s, rng),
    };
    // Keep the pending token and the accepted drafts; forget the rejected ones.
    cache.truncate(cache.len() - (draft.tokens.len() - n_accepted));
    Ok((n_accepted, next, out))
}

/// Speculative sampling over one verified chunk: accept each draft with probability
/// min(1, p/q); at the first rejection draw from the residual; if all pass, draw the bonus token
/// from the last row. Returns (accepted drafts, next token).
fn verify_sampled(
    rows: &[Vec<f32>],
    drafts: &[u32],
    dists: &[Vec<f32>],
    s: &SamplingParams,
    rng: &mut ChaCha8Rng,
) -> (usize, u32) {
    for (j, &d) in drafts.iter().enumerate() {
        let p = probs(&rows[j], s.temperature, s.top_p);
        let q = dists.get(j).map(Vec::as_slice);
        let u: f32 = rng.random();
        if u >= acceptance_probability(&p, q, d) {
            return (j, sample(&residual(&p, q, d), rng));
        }
    }
    let p = probs(&rows[drafts.len()], s.temperature, s.top_p);
    (drafts.len(), sample(&p, rng))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_room_table() {
        // (max_draft_len, tokens_left, cache_room, drafts)
        let cases = [
            (8, 100, 100, 8),
            (40, 100, 100, MAX_ROWS - 1),
            (8, 3, 100, 2),
            (8, 1, 100, 0),
            (8, 100, 4, 3),
            (8, 100, 1, 0),
            (0, 100, 100, 0),
        ];
        for (max_draft_len, left, room, want) in cases {
            assert_eq!(
                draft_room(max_draft_len, left, room),
                want,
                "{max_draft_len} {left} {room}"
            );
        }
    }

    #[test]
    fn reuse_len_table() {
        let cases: [(&[u32], &[u32], usize); 5] = [
            (&[], &[1, 2], 0),
            (&[1, 2, 3], &[1, 2, 3, 4], 3),
            (&[1, 2, 3], &[1, 2, 3], 2), // identical prompt: re-feed the last token
            (&[1, 9, 3], &[1, 2, 3], 1),
            (&[1, 2, 3, 4], &[1, 2], 1),
        ];
        for (cached, prompt, want) in cases {
            assert_eq!(reuse_len(cached, prompt), want, "{cached:?} / {prompt:?}");
        }
    }
}
