//! Whether speculative requests draft at all: a two-armed choice between drafting (prompt lookup,
//! then the MTP heads: `decode::LookupThenHeads`) and no drafts, made from measured decode time
//! per generated token. Speculation costs a wider verification step and the heads' layers; where
//! drafts are rarely right, or multi-row steps are expensive (small models on a CPU), plain steps
//! are faster, and the output is the same either way (greedy decoding is exact). Plain data and
//! pure decisions; no model, no clock.

/// One way to decode a speculative request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DraftArm {
    /// Drafts (copies from the context, else the confident MTP heads), up to the configured length.
    Drafts,
    /// One token per forward pass (the extra heads only keep their caches in step).
    NoDrafts,
}

/// Requests per exploration: every this many requests, the arm that is not winning runs once, so
/// the comparison follows changes (another model, another document, a busier machine).
pub const EXPLORE_EVERY: u64 = 16;

/// Weight of the past in the running sums: each new observation counts as one of ~1/(1-DECAY).
const DECAY: f64 = 0.9;

/// Fewest decode tokens a request must generate to count (shorter ones are mostly fixed cost).
const MIN_TOKENS: usize = 4;

/// Running, decayed sums of decode milliseconds and tokens for one arm.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Observed {
    ms: f64,
    tokens: f64,
}

impl Observed {
    fn ms_per_token(&self) -> Option<f64> {
        (self.tokens > 0.0).then(|| self.ms / self.tokens)
    }
}

/// The measurements and the request counter behind [`DraftPolicy::choose`].
#[derive(Debug, Clone, Default)]
pub struct DraftPolicy {
    drafts: Observed,
    no_drafts: Observed,
    requests: u64,
}

impl DraftPolicy {
    /// The arm for the next request, and counts it. Drafting runs until it has a measurement,
    /// then no drafts until they have one; from then on the faster arm runs, except that every
    /// [`EXPLORE_EVERY`]-th request tries the other.
    pub fn choose(&mut self) -> DraftArm {
        let n = self.requests;
        self.requests += 1;
        let (Some(drafts), Some(plain)) =
            (self.drafts.ms_per_token(), self.no_drafts.ms_per_token())
        else {
            return if self.drafts.tokens == 0.0 {
                DraftArm::Drafts
            } else {
                DraftArm::NoDrafts
            };
        };
        let best = if drafts <= plain {
            DraftArm::Drafts
        } else {
            DraftArm::NoDrafts
        };
        if n % EXPLORE_EVERY == EXPLORE_EVERY - 1 {
            match best {
                DraftArm::Drafts => DraftArm::NoDrafts,
                DraftArm::NoDrafts => DraftArm::Drafts,
            }
        } else {
            best
        }
    }

    /// Records what a request decoded with `arm` cost: `decode_ms` for `decode_tokens` tokens
    /// after its first forward pass. Requests with fewer than a handful of tokens are ignored.
    pub fn record(&mut self, arm: DraftArm, decode_ms: f64, decode_tokens: usize) {
        if decode_tokens < MIN_TOKENS || !decode_ms.is_finite() || decode_ms < 0.0 {
            return;
        }
        let o = match arm {
            DraftArm::Drafts => &mut self.drafts,
            DraftArm::NoDrafts => &mut self.no_drafts,
        };
        o.ms = o.ms * DECAY + decode_ms;
        o.tokens = o.tokens * DECAY + decode_tokens as f64;
    }

    /// Measured decode milliseconds per token of each arm, where known: (drafts, no drafts).
    pub fn ms_per_token(&self) -> (Option<f64>, Option<f64>) {
        (self.drafts.ms_per_token(), self.no_drafts.ms_per_token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DraftArm::*;

    #[test]
    fn arms_take_turns_until_both_are_measured_then_the_faster_wins() {
        let mut p = DraftPolicy::default();
        assert_eq!(p.choose(), Drafts);
        assert_eq!(p.choose(), Drafts, "nothing recorded yet");
        p.record(Drafts, 30.0, 10); // 3 ms/token
        assert_eq!(p.choose(), NoDrafts);
        p.record(NoDrafts, 2.0, 2); // too short to count
        assert_eq!(p.choose(), NoDrafts);
        p.record(NoDrafts, 20.0, 10); // 2 ms/token
        let picks: Vec<DraftArm> = (0..EXPLORE_EVERY).map(|_| p.choose()).collect();
        assert_eq!(
            picks.iter().filter(|&&a| a == NoDrafts).count() as u64,
            EXPLORE_EVERY - 1
        );
        assert_eq!(
            picks.iter().filter(|&&a| a == Drafts).count(),
            1,
            "one exploration of the slower arm"
        );
        assert_eq!(p.ms_per_token(), (Some(3.0), Some(2.0)));
    }

    #[test]
    fn new_measurements_outweigh_old_ones() {
        let mut p = DraftPolicy::default();
        p.record(Drafts, 10.0, 10); // 1 ms/token
        p.record(NoDrafts, 20.0, 10); // 2 ms/token
        assert_eq!(p.choose(), Drafts);
        // Drafting gets slow (say, the user switched to a file where drafts are rarely right).
        for _ in 0..20 {
            p.record(Drafts, 40.0, 10);
        }
        let (drafts, plain) = p.ms_per_token();
        assert!(
            drafts.unwrap() > 3.5 && plain == Some(2.0),
            "{drafts:?} {plain:?}"
        );
        assert_eq!(p.choose(), NoDrafts);
    }

    #[test]
    fn bad_measurements_are_ignored() {
        let mut p = DraftPolicy::default();
        p.record(Drafts, f64::NAN, 10);
        p.record(Drafts, -1.0, 10);
        assert_eq!(p.ms_per_token(), (None, None));
    }
}
