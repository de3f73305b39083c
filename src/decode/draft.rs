//! Draft sources: anything that proposes tokens for head 1 to verify. The MTP heads, prompt
//! lookup (n-gram matches in the context), and an oracle (a given sequence, for tests) all come
//! through [`DraftSource`], so one verifier checks them all. Not here: verification (`generate.rs`).

use super::sampling::{argmax, probs, sample, SamplingParams};

/// What a source may look at when proposing.
pub struct DraftRequest<'a> {
    /// Prompt and generated tokens; the last one is about to be fed to the model.
    pub context: &'a [u32],
    /// Logits of heads 2..=n at the last fed position (they predict the tokens after
    /// `context`'s last). Empty unless the source [`uses_heads`](DraftSource::uses_heads).
    pub head_logits: &'a [Vec<f32>],
    /// Most tokens the verifier will take this round.
    pub max_len: usize,
    /// `None` for greedy decoding.
    pub sampling: Option<&'a SamplingParams>,
}

/// Proposed tokens; `dists[i]` is the distribution `tokens[i]` was sampled from, when it was.
/// Deterministic proposals leave `dists` empty (treated as one-hot by the verifier).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Draft {
    pub tokens: Vec<u32>,
    pub dists: Vec<Vec<f32>>,
}

pub trait DraftSource {
    /// Whether the decoder must compute the extra heads' logits for this source.
    fn uses_heads(&self) -> bool {
        false
    }
    /// Whether the decoder should compute the next extra head's logits for the next round, given
    /// the context that round drafts after (the pending token last) and the logits computed so
    /// far (none before head 2's). Asked only when [`uses_heads`](DraftSource::uses_heads).
    fn more_heads(&mut self, _context: &[u32], _computed: &[Vec<f32>]) -> bool {
        true
    }
    fn propose(&mut self, req: &DraftRequest, rng: &mut dyn rand::RngCore) -> Draft;
}

/// No drafts: plain decoding, one token per forward.
pub struct NoDrafts;

impl DraftSource for NoDrafts {
    fn propose(&mut self, _: &DraftRequest, _: &mut dyn rand::RngCore) -> Draft {
        Draft::default()
    }
}

/// Self-speculative drafts from the MTP heads 2..=n: greedy argmax, or sampled from each head's
/// tempered distribution when sampling (so speculative sampling can correct for them). Heads draft
/// in order while they are confident ([`confident_heads`]): a draft head 1 rejects costs a
/// verified row and its head's layer for nothing.
pub struct HeadDrafts {
    /// Least chain probability (the product of each head's top probability, head 2 onwards) at
    /// which a head still drafts; 0 drafts with every head.
    pub min_prob: f32,
}

impl HeadDrafts {
    /// Least chain probability of the default drafter, chosen on the dev set with the default
    /// model (docs/BENCHMARKS.md, "Confident drafts").
    pub const MIN_PROB: f32 = 0.5;

    /// Drafts from every head whatever its confidence (tests, and measuring the heads).
    pub fn every_head() -> Self {
        Self { min_prob: 0.0 }
    }
}

impl Default for HeadDrafts {
    fn default() -> Self {
        Self {
            min_prob: Self::MIN_PROB,
        }
    }
}

/// How many leading heads' drafts are confident: the longest prefix of `head_logits` whose chain
/// probability (the product of each head's top softmax probability) stays at least `min_prob`.
pub fn confident_heads(head_logits: &[Vec<f32>], min_prob: f32) -> usize {
    let mut chain = 1f32;
    for (i, logits) in head_logits.iter().enumerate() {
        chain *= top_probability(logits);
        if chain < min_prob {
            return i;
        }
    }
    head_logits.len()
}

/// The largest softmax probability of a row of logits.
fn top_probability(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    1.0 / logits.iter().map(|l| (l - max).exp()).sum::<f32>()
}

impl DraftSource for HeadDrafts {
    fn uses_heads(&self) -> bool {
        true
    }
    fn more_heads(&mut self, _context: &[u32], computed: &[Vec<f32>]) -> bool {
        confident_heads(computed, self.min_prob) == computed.len()
    }
    fn propose(&mut self, req: &DraftRequest, mut rng: &mut dyn rand::RngCore) -> Draft {
        let n = confident_heads(req.head_logits, self.min_prob).min(req.max_len);
        let heads = &req.head_logits[..n];
        match req.sampling {
            None => Draft {
                tokens: heads.iter().map(|l| argmax(l)).collect(),
                dists: Vec::new(),
            },
            Some(s) => {
                let dists: Vec<Vec<f32>> = heads
                    .iter()
                    .map(|l| probs(l, s.temperature, s.top_p))
                    .collect();
                let tokens = dists.iter().map(|q| sample(q, &mut rng)).collect();
                Draft { tokens, dists }
            }
        }
    }
}

/// Prompt lookup: find the most recent earlier occurrence of the context's last n tokens
/// (longest n first) and propose what followed it. Code repeats itself, so this often hits.
pub struct PromptLookup {
    pub min_ngram: usize,
    pub max_ngram: usize,
}

impl Default for PromptLookup {
    fn default() -> Self {
        Self {
            min_ngram: 2,
            max_ngram: 8,
        }
    }
}

impl DraftSource for PromptLookup {
    fn propose(&mut self, req: &DraftRequest, _: &mut dyn rand::RngCore) -> Draft {
        Draft {
            tokens: prompt_lookup(req.context, self.min_ngram, self.max_ngram, req.max_len),
            dists: Vec::new(),
        }
    }
}

/// Prompt lookup first, the MTP heads where it finds nothing: a copy from the context costs no
/// head layer, and code repeats itself; the heads (confident ones only) cover new text. The
/// heads' logits are computed only for rounds where the lookup has no match.
pub struct LookupThenHeads {
    pub lookup: PromptLookup,
    pub heads: HeadDrafts,
    /// Rounds proposed so far from a copy, and from the heads (at least one head draft).
    pub copied_rounds: usize,
    pub head_rounds: usize,
}

impl Default for LookupThenHeads {
    fn default() -> Self {
        Self::new(PromptLookup::default(), HeadDrafts::default())
    }
}

impl LookupThenHeads {
    pub fn new(lookup: PromptLookup, heads: HeadDrafts) -> Self {
        Self {
            lookup,
            heads,
            copied_rounds: 0,
            head_rounds: 0,
        }
    }

    fn lookup(&self, context: &[u32], max_len: usize) -> Vec<u32> {
        let PromptLookup {
            min_ngram,
            max_ngram,
        } = self.lookup;
        prompt_lookup(context, min_ngram, max_ngram, max_len)
    }
}

impl DraftSource for LookupThenHeads {
    fn uses_heads(&self) -> bool {
        true
    }
    fn more_heads(&mut self, context: &[u32], computed: &[Vec<f32>]) -> bool {
        self.lookup(context, 1).is_empty() && self.heads.more_heads(context, computed)
    }
    fn propose(&mut self, req: &DraftRequest, rng: &mut dyn rand::RngCore) -> Draft {
        let copied = self.lookup(req.context, req.max_len);
        if copied.is_empty() {
            let draft = self.heads.propose(req, rng);
            self.head_rounds += usize::from(!draft.tokens.is_empty());
            return draft;
        }
        self.copied_rounds += 1;
        Draft {
            tokens: copied,
            dists: Vec::new(),
        }
    }
}

/// The continuation after the longest (then most recent) earlier match of the context's suffix.
pub fn prompt_lookup(
    context: &[u32],
    min_ngram: usize,
    max_ngram: usize,
    max_len: usize,
) -> Vec<u32> {
    let len = context.len();
    if max_len == 0 || min_ngram == 0 {
        return Vec::new();
    }
    for n in (min_ngram..=max_ngram.min(len.saturating_sub(1))).rev() {
        let suffix = &context[len - n..];
        // Latest start strictly before the suffix itself, so something follows the match.
        for start in (0..len - n).rev() {
            if &context[start..start + n] == suffix {
                let from = start + n;
                return context[from..(from + max_len).min(len)].to_vec();
            }
        }
    }
    Vec::new()
}

/// A fixed expected continuation of the prompt, proposed in full (tests use it to force full
/// acceptance: with the model's own greedy output, every draft is accepted).
pub struct OracleDrafts {
    pub prompt_len: usize,
    pub continuation: Vec<u32>,
}

impl DraftSource for OracleDrafts {
    fn propose(&mut self, req: &DraftRequest, _: &mut dyn rand::RngCore) -> Draft {
        let generated = req.context.len().saturating_sub(self.prompt_len);
        let rest = self.continuation.get(generated..).unwrap_or(&[]);
        Draft {
            tokens: rest[..rest.len().min(req.max_len)].to_vec(),
            dists: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_lookup_table() {
        let cases: [(&[u32], usize, Vec<u32>); 6] = [
            (&[1, 2, 3, 4, 1, 2], 3, vec![3, 4, 1]),
            (&[1, 2, 3, 4, 1, 2], 10, vec![3, 4, 1, 2]),
            // The longer match (2,3) wins over the more recent single token 3.
            (&[2, 3, 9, 3, 7, 2, 3], 2, vec![9, 3]),
            // Most recent occurrence of the same length.
            (&[5, 1, 5, 2, 5], 1, vec![2]),
            (&[1, 2, 3], 4, vec![]),
            (&[], 4, vec![]),
        ];
        for (ctx, max_len, want) in cases {
            assert_eq!(prompt_lookup(ctx, 1, 4, max_len), want, "{ctx:?}");
        }
    }

    #[test]
    fn oracle_proposes_the_rest_of_its_sequence() {
        let mut oracle = OracleDrafts {
            prompt_len: 2,
            continuation: vec![10, 11, 12, 13],
        };
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let req = |ctx: &'static [u32], max_len| DraftRequest {
            context: ctx,
            head_logits: &[],
            max_len,
            sampling: None,
        };
        assert_eq!(
            oracle.propose(&req(&[1, 2, 10], 2), &mut rng).tokens,
            vec![11, 12]
        );
        assert_eq!(
            oracle
                .propose(&req(&[1, 2, 10, 11, 12, 13], 2), &mut rng)
                .tokens,
            Vec::<u32>::new()
        );
    }

    #[test]
    fn greedy_head_drafts_are_argmaxes_capped_at_max_len() {
        let logits = vec![vec![0.0, 1.0], vec![2.0, 0.0], vec![0.0, 3.0]];
        let req = DraftRequest {
            context: &[0],
            head_logits: &logits,
            max_len: 2,
            sampling: None,
        };
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        assert_eq!(
            HeadDrafts::every_head().propose(&req, &mut rng).tokens,
            vec![1, 0]
        );
        // Head 2 is sure of token 0 (e^20 against 1); head 3 splits between two: a chain of 0.5.
        let logits = vec![vec![20.0, 0.0], vec![1.0, 1.0], vec![0.0, 9.0]];
        let req = DraftRequest {
            head_logits: &logits,
            max_len: 3,
            ..req
        };
        let mut confident = HeadDrafts { min_prob: 0.6 };
        assert_eq!(confident.propose(&req, &mut rng).tokens, vec![0]);
        assert!(confident.more_heads(&[0], &[]));
        assert!(confident.more_heads(&[0], &logits[..1]));
        assert!(!confident.more_heads(&[0], &logits[..2]));
    }

    #[test]
    fn lookup_then_heads_copies_where_the_context_matches_and_asks_for_heads_elsewhere() {
        let mut both = LookupThenHeads::new(
            PromptLookup {
                min_ngram: 2,
                max_ngram: 4,
            },
            HeadDrafts::every_head(),
        );
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let logits = vec![vec![0.0, 5.0, 0.0], vec![0.0, 0.0, 5.0]];
        // "1 2" occurred before, followed by 3 4: copied, and no head logits wanted.
        let repeating = [1, 2, 3, 4, 9, 1, 2];
        assert!(!both.more_heads(&repeating, &[]));
        let req = DraftRequest {
            context: &repeating,
            head_logits: &[],
            max_len: 2,
            sampling: None,
        };
        assert_eq!(both.propose(&req, &mut rng).tokens, vec![3, 4]);
        // No earlier match: the heads draft.
        let fresh = [1, 2, 3, 4, 9, 7];
        assert!(both.more_heads(&fresh, &[]));
        assert!(both.more_heads(&fresh, &logits[..1]));
        let req = DraftRequest {
            context: &fresh,
            head_logits: &logits,
            ..req
        };
        assert_eq!(both.propose(&req, &mut rng).tokens, vec![1, 2]);
        assert_eq!((both.copied_rounds, both.head_rounds), (1, 1));
    }

    #[test]
    fn confident_heads_table() {
        let sure = vec![30.0, 0.0, 0.0, 0.0]; // top probability ~1
        let half = vec![2.0, 2.0, -30.0, -30.0]; // 0.5
        let flat = vec![0.0; 4]; // 0.25
        let cases: [(Vec<Vec<f32>>, f32, usize); 8] = [
            (vec![], 0.5, 0),
            (vec![sure.clone(), sure.clone(), sure.clone()], 0.9, 3),
            (vec![half.clone(), sure.clone()], 0.5, 2),
            (vec![half.clone(), half.clone()], 0.3, 1), // 0.5, then 0.25
            (vec![flat.clone(), sure.clone()], 0.3, 0),
            (vec![flat.clone(), flat.clone(), flat.clone()], 0.0, 3),
            (vec![sure.clone(), flat.clone(), sure], 0.2, 3), // 1, 0.25, 0.25
            (vec![flat.clone(), half.clone()], 0.1, 2),       // 0.25, 0.125
        ];
        for (logits, min_prob, want) in cases {
            assert_eq!(
                confident_heads(&logits, min_prob),
                want,
                "{logits:?} at {min_prob}"
            );
        }
    }
}
