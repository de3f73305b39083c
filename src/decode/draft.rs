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
/// tempered distribution when sampling (so speculative sampling can correct for them).
pub struct HeadDrafts;

impl DraftSource for HeadDrafts {
    fn uses_heads(&self) -> bool {
        true
    }
    fn propose(&mut self, req: &DraftRequest, mut rng: &mut dyn rand::RngCore) -> Draft {
        let heads = &req.head_logits[..req.head_logits.len().min(req.max_len)];
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
        assert_eq!(HeadDrafts.propose(&req, &mut rng).tokens, vec![1, 0]);
    }
}
