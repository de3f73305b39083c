//! Pure acceptance rules for verifying drafts: the greedy longest-matching-prefix rule, and
//! speculative sampling's accept/reject rule (Leviathan et al. 2023; Chen et al. 2023) that keeps
//! the output distribution equal to the model's. No tensors, no model.

/// Greedy verification. `targets[i]` is head 1's argmax after feeding `[pending, drafts[..i]]`
/// (so `targets.len() == drafts.len() + 1`). Returns how many drafts are accepted; the tokens
/// emitted are `drafts[..k]` followed by `targets[k]`.
pub fn accept_greedy(drafts: &[u32], targets: &[u32]) -> usize {
    debug_assert_eq!(targets.len(), drafts.len() + 1);
    drafts
        .iter()
        .zip(targets)
        .take_while(|(d, t)| d == t)
        .count()
}

/// Probability of accepting `draft` drawn from `q` when the model's distribution is `p`:
/// min(1, p(d) / q(d)). A deterministic draft (`q = None`) has q(d) = 1.
pub fn acceptance_probability(p: &[f32], q: Option<&[f32]>, draft: u32) -> f32 {
    let d = draft as usize;
    let qd = q.map_or(1.0, |q| q[d]);
    if qd <= 0.0 {
        // A draft the proposal could not have produced: accept only if the model likes it at all.
        return if p[d] > 0.0 { 1.0 } else { 0.0 };
    }
    (p[d] / qd).min(1.0)
}

/// The distribution to sample from after rejecting `draft`: normalize(max(0, p - q)).
/// For a deterministic draft, q is one-hot at the draft.
pub fn residual(p: &[f32], q: Option<&[f32]>, draft: u32) -> Vec<f32> {
    let mut r: Vec<f32> = match q {
        Some(q) => p.iter().zip(q).map(|(a, b)| (a - b).max(0.0)).collect(),
        None => {
            let mut r = p.to_vec();
            r[draft as usize] = 0.0;
            r
        }
    };
    let sum: f32 = r.iter().sum();
    if sum <= 0.0 {
        // Only possible when p == q, where rejection has probability 0; fall back to p.
        return p.to_vec();
    }
    r.iter_mut().for_each(|x| *x /= sum);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_acceptance_table() {
        let cases: [(&[u32], &[u32], usize); 5] = [
            (&[], &[7], 0),
            (&[1, 2, 3], &[1, 2, 3, 4], 3),
            (&[1, 2, 3], &[1, 9, 3, 4], 1),
            (&[1, 2, 3], &[9, 2, 3, 4], 0),
            (&[5, 5], &[5, 5, 5], 2),
        ];
        for (drafts, targets, want) in cases {
            assert_eq!(
                accept_greedy(drafts, targets),
                want,
                "{drafts:?} vs {targets:?}"
            );
        }
    }

    #[test]
    fn acceptance_probability_table() {
        let p = [0.5, 0.3, 0.2];
        let q = [0.25, 0.6, 0.15];
        let cases: [(Option<&[f32]>, u32, f32); 4] = [
            (Some(&q), 0, 1.0),
            (Some(&q), 1, 0.5),
            (None, 1, 0.3),
            (None, 2, 0.2),
        ];
        for (q, d, want) in cases {
            assert!(
                (acceptance_probability(&p, q, d) - want).abs() < 1e-6,
                "{q:?} {d}"
            );
        }
    }

    #[test]
    fn residual_table() {
        let p = [0.5, 0.3, 0.2];
        let q = [0.25, 0.6, 0.15];
        let r = residual(&p, Some(&q), 1);
        let want = [0.25 / 0.3, 0.0, 0.05 / 0.3];
        r.iter()
            .zip(want)
            .for_each(|(a, b)| assert!((a - b).abs() < 1e-6, "{r:?}"));
        let r = residual(&p, None, 0);
        let want = [0.0, 0.6, 0.4];
        r.iter()
            .zip(want)
            .for_each(|(a, b)| assert!((a - b).abs() < 1e-6, "{r:?}"));
    }

    /// The rule's defining property: P(accept d) q(d) + P(reject) residual(d) = p(d) for every d.
    #[test]
    fn accept_then_residual_reproduces_p() {
        let p = [0.1f32, 0.4, 0.3, 0.2];
        for q in [[0.25f32; 4], [0.7, 0.1, 0.1, 0.1], [0.0, 0.0, 0.5, 0.5]] {
            let reject_mass: f32 = (0..4)
                .map(|d| q[d] * (1.0 - acceptance_probability(&p, Some(&q), d as u32)))
                .sum();
            for d in 0..4 {
                // Whichever draft was rejected, the residual is the same distribution.
                let res = residual(&p, Some(&q), 0);
                let total =
                    q[d] * acceptance_probability(&p, Some(&q), d as u32) + reject_mass * res[d];
                assert!(
                    (total - p[d]).abs() < 1e-5,
                    "q={q:?} d={d}: {total} vs {}",
                    p[d]
                );
            }
        }
    }
}
