//! Whether speculative requests draft at all: a two-armed choice between drafting (prompt lookup,
//! then the MTP heads: `decode::LookupThenHeads`) and no drafts, made from the measured cost per
//! token of decoding rounds that verified a draft against rounds that did not. Speculation costs a
//! wider verification step and the heads' logits; where drafts are rarely right, or multi-row steps
//! are expensive (small models on a CPU), plain steps are faster, and the output is the same either
//! way (greedy decoding is exact). Plain data and pure decisions; no model, no clock.

use crate::decode::{GenerationStats, RoundCost};

/// One way to decode a speculative request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DraftArm {
    /// Drafts (copies from the context, else the confident MTP heads), up to the configured length.
    Drafts,
    /// One token per forward pass (the extra heads only keep their caches in step).
    NoDrafts,
}

/// Requests per exploration: while not drafting wins, every this many requests drafts once, so the
/// comparison follows changes (another model, another document, a busier machine). While drafting
/// wins no exploration is needed: a drafting request also has rounds without a draft (where the
/// drafter had nothing confident to offer), which stand in for the other arm. They cost a little
/// more than a request without drafts does per round (the lookup and head 2's logits: 1.02 against
/// 0.93 ms per token in `bench lsp`), which leans the comparison towards drafting by that much.
pub const EXPLORE_EVERY: u64 = 16;

/// Weight of the past in the running sums: each new request counts as one of ~1/(1-DECAY).
const DECAY: f64 = 0.9;

/// Tokens a kind of round must have produced before its cost counts as measured. The first
/// rounds of a process are cold (page faults, first use of the multi-row kernels: a first drafted
/// round measured 3.3 ms per token where later ones take 0.6), and a handful of them would decide
/// the choice for a long time; 32 tokens dilute them.
const MIN_TOKENS: usize = 32;

/// Running, decayed sums of round milliseconds and tokens for one kind of round.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Observed {
    ms: f64,
    tokens: f64,
    /// Tokens recorded in all, not decayed.
    seen: usize,
}

impl Observed {
    fn ms_per_token(&self) -> Option<f64> {
        (self.seen >= MIN_TOKENS && self.tokens > 0.0).then(|| self.ms / self.tokens)
    }

    fn add(&mut self, cost: RoundCost) {
        if cost.tokens == 0 || !cost.ms.is_finite() || cost.ms < 0.0 {
            return;
        }
        self.ms = self.ms * DECAY + cost.ms;
        self.tokens = self.tokens * DECAY + cost.tokens as f64;
        self.seen += cost.tokens;
    }
}

/// The measurements and the request counter behind [`DraftPolicy::choose`].
///
/// Why rounds and not requests: requests differ (how repetitive the text is, how long the prompt,
/// whether the process is still cold), and an arm measured on other requests than its rival, one
/// request in sixteen, let a single slow early request decide for hundreds (measured:
/// docs/BENCHMARKS.md, "Adaptive drafts: matched measurements"). Rounds with and without a draft
/// of the same requests are measured under the same conditions.
#[derive(Debug, Clone, Default)]
pub struct DraftPolicy {
    with_draft: Observed,
    without_draft: Observed,
    requests: u64,
}

impl DraftPolicy {
    /// The arm for the next request, and counts it. Drafting runs until rounds with a draft have
    /// been measured (over [`MIN_TOKENS`] tokens), then no drafts until rounds without one have;
    /// from then on drafting runs while its rounds cost no more per token than rounds without a
    /// draft, and otherwise once every [`EXPLORE_EVERY`] requests (also when drafts are so rare
    /// that rounds with one are never measured).
    pub fn choose(&mut self) -> DraftArm {
        let n = self.requests;
        self.requests += 1;
        let explore = n % EXPLORE_EVERY == EXPLORE_EVERY - 1;
        match (
            self.with_draft.ms_per_token(),
            self.without_draft.ms_per_token(),
        ) {
            (None, None) => DraftArm::Drafts,
            // Drafting ran long enough to measure rounds without a draft but drafted too rarely to
            // measure its own: its lookups and head checks are pure cost. Try it now and then.
            (None, Some(_)) if !explore => DraftArm::NoDrafts,
            (None, Some(_)) => DraftArm::Drafts,
            (Some(_), None) => DraftArm::NoDrafts,
            (Some(with), Some(without)) => {
                if with <= without || explore {
                    DraftArm::Drafts
                } else {
                    DraftArm::NoDrafts
                }
            }
        }
    }

    /// Records a finished request's decoding rounds (whichever arm it ran).
    pub fn record(&mut self, stats: &GenerationStats) {
        self.with_draft.add(stats.rounds_with_draft);
        self.without_draft.add(stats.rounds_without_draft);
    }

    /// Measured milliseconds per token of rounds with a draft and of rounds without, where
    /// measured over at least [`MIN_TOKENS`] tokens.
    pub fn ms_per_token(&self) -> (Option<f64>, Option<f64>) {
        (
            self.with_draft.ms_per_token(),
            self.without_draft.ms_per_token(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DraftArm::*;

    fn request(with: (f64, usize), without: (f64, usize)) -> GenerationStats {
        GenerationStats {
            rounds_with_draft: RoundCost {
                ms: with.0,
                tokens: with.1,
            },
            rounds_without_draft: RoundCost {
                ms: without.0,
                tokens: without.1,
            },
            ..Default::default()
        }
    }

    #[test]
    fn draft_until_both_kinds_of_round_are_measured_then_the_cheaper_per_token_wins() {
        let mut p = DraftPolicy::default();
        assert_eq!(p.choose(), Drafts);
        p.record(&request((0.0, 0), (0.0, 0))); // nothing decoded
        assert_eq!(p.choose(), Drafts, "nothing measured yet");
        p.record(&request((30.0, 10), (0.0, 0))); // every round drafted: 3 ms/token
        assert_eq!(
            p.ms_per_token(),
            (None, None),
            "10 tokens are too few to count"
        );
        assert_eq!(p.choose(), Drafts);
        p.record(&request((66.0, 22), (0.0, 0)));
        assert_eq!(p.ms_per_token(), (Some(3.0), None));
        assert_eq!(
            p.choose(),
            NoDrafts,
            "rounds without a draft are not measured yet"
        );
        p.record(&request((0.0, 0), (64.0, 32))); // 2 ms/token
        assert_eq!(p.ms_per_token(), (Some(3.0), Some(2.0)));
        let picks: Vec<DraftArm> = (0..EXPLORE_EVERY).map(|_| p.choose()).collect();
        assert_eq!(
            picks.iter().filter(|&&a| a == Drafts).count(),
            1,
            "one exploration of drafting while it is slower: {picks:?}"
        );
        // Drafting requests where drafted rounds were cheap per token turn the choice.
        for _ in 0..3 {
            p.record(&request((10.0, 10), (2.0, 1)));
        }
        let (with, without) = p.ms_per_token();
        assert!(with.unwrap() < without.unwrap(), "{with:?} {without:?}");
        let picks: Vec<DraftArm> = (0..2 * EXPLORE_EVERY).map(|_| p.choose()).collect();
        assert!(
            picks.iter().all(|&a| a == Drafts),
            "no exploration needed while drafting wins: {picks:?}"
        );
    }

    #[test]
    fn a_cold_first_round_does_not_decide() {
        // As measured in `bench lsp`: the process's first drafted rounds cost 3.3 ms per token,
        // later ones 0.6, while rounds without a draft cost 0.9-1.0 throughout.
        let mut p = DraftPolicy::default();
        p.record(&request((6.5, 2), (2.0, 1)));
        p.record(&request((0.6 * 8.0, 8), (1.0 * 4.0, 4)));
        assert_eq!(
            p.ms_per_token(),
            (None, None),
            "a handful of tokens, cold ones among them, decides nothing"
        );
        for _ in 0..7 {
            p.record(&request((0.6 * 8.0, 8), (1.0 * 4.0, 4)));
        }
        let (with, without) = p.ms_per_token();
        assert!(
            with.unwrap() < 0.9 && without.unwrap() > 0.95,
            "{with:?} {without:?}"
        );
        assert_eq!(p.choose(), Drafts);
    }

    #[test]
    fn drafting_that_never_drafts_gives_way_and_is_retried_now_and_then() {
        // Heads never confident and nothing to copy: drafting requests have only rounds without a
        // draft, which pay for the lookups and head checks.
        let mut p = DraftPolicy::default();
        for _ in 0..3 {
            assert_eq!(p.choose(), Drafts);
            p.record(&request((0.0, 0), (12.0, 12)));
        }
        assert_eq!(p.ms_per_token(), (None, Some(1.0)));
        let picks: Vec<DraftArm> = (0..EXPLORE_EVERY).map(|_| p.choose()).collect();
        assert_eq!(
            picks.iter().filter(|&&a| a == Drafts).count(),
            1,
            "{picks:?}"
        );
    }

    #[test]
    fn new_measurements_outweigh_old_ones() {
        let mut p = DraftPolicy::default();
        p.record(&request((40.0, 40), (80.0, 40))); // 1 vs 2 ms/token
        assert_eq!(p.choose(), Drafts);
        // Drafts get rarely right (say, the user switched to a file where they miss).
        for _ in 0..20 {
            p.record(&request((40.0, 10), (20.0, 10)));
        }
        let (with, without) = p.ms_per_token();
        assert!(
            with.unwrap() > 3.5 && (without.unwrap() - 2.0).abs() < 1e-9,
            "{with:?} {without:?}"
        );
        assert_eq!(p.choose(), NoDrafts);
    }

    #[test]
    fn bad_measurements_are_ignored() {
        let mut p = DraftPolicy::default();
        p.record(&request((f64::NAN, 40), (-1.0, 40)));
        p.record(&request((f64::INFINITY, 40), (5.0, 0)));
        assert_eq!(p.ms_per_token(), (None, None));
    }
}
