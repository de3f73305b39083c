//! Per-generation statistics: forward passes, tokens, drafts proposed and accepted per position, time.

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GenerationStats {
    /// Prompt tokens, of which `reused_tokens` were already in the KV cache.
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    /// Every forward pass, the prefill included.
    pub forwards: usize,
    /// Tokens returned (stop token excluded).
    pub tokens: usize,
    /// Tokens produced by the forwards after the prefill, and their number.
    pub decode_tokens: usize,
    pub decode_forwards: usize,
    /// `drafted[i]`: rounds with a draft at position i; `accepted[i]`: how many of those were accepted.
    pub drafted: Vec<usize>,
    pub accepted: Vec<usize>,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub total_ms: f64,
    /// Decoding rounds (a forward pass after the prefill, with the drafting and the extra heads'
    /// work around it) that verified a draft, and those that did not: the same request's places,
    /// so their costs per token compare drafting with not drafting on like terms.
    pub rounds_with_draft: RoundCost,
    pub rounds_without_draft: RoundCost,
}

/// Time spent in a kind of decoding round and the tokens those rounds produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RoundCost {
    pub ms: f64,
    pub tokens: usize,
}

impl RoundCost {
    pub(crate) fn add(&mut self, ms: f64, tokens: usize) {
        self.ms += ms;
        self.tokens += tokens;
    }
}

impl GenerationStats {
    /// Tokens per forward pass after the prefill (1.0 for plain decoding).
    pub fn tokens_per_forward(&self) -> f64 {
        if self.decode_forwards == 0 {
            return 0.0;
        }
        self.decode_tokens as f64 / self.decode_forwards as f64
    }

    /// Acceptance rate at each draft position.
    pub fn acceptance_rates(&self) -> Vec<f64> {
        self.drafted
            .iter()
            .zip(&self.accepted)
            .map(|(&d, &a)| if d == 0 { 0.0 } else { a as f64 / d as f64 })
            .collect()
    }

    pub fn ms_per_token(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            self.total_ms / self.tokens as f64
        }
    }

    pub(crate) fn record_round(&mut self, n_drafted: usize, n_accepted: usize) {
        if self.drafted.len() < n_drafted {
            self.drafted.resize(n_drafted, 0);
            self.accepted.resize(n_drafted, 0);
        }
        for i in 0..n_drafted {
            self.drafted[i] += 1;
            if i < n_accepted {
                self.accepted[i] += 1;
            }
        }
    }
}
