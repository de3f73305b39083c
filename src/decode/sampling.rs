//! Turning logits into a token: greedy argmax, and seeded sampling with temperature and top-p.
//! Pure functions over slices; no tensors.

use rand::Rng;

/// Sampling settings. `temperature == 0` means greedy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// Index of the largest logit; the lowest index wins ties, so the choice is deterministic.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The distribution sampling draws from: softmax(logits / temperature), restricted to the smallest
/// set of most likely tokens whose mass reaches `top_p`, renormalized.
pub fn probs(logits: &[f32], temperature: f32, top_p: f32) -> Vec<f32> {
    let t = temperature.max(1e-6);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = logits.iter().map(|&x| ((x - max) / t).exp()).collect();
    let sum: f32 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= sum);
    if top_p < 1.0 {
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let mut mass = 0.0;
        let mut keep = order.len();
        for (rank, &i) in order.iter().enumerate() {
            mass += p[i];
            if mass >= top_p {
                keep = rank + 1;
                break;
            }
        }
        for &i in &order[keep..] {
            p[i] = 0.0;
        }
        let sum: f32 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= sum);
    }
    p
}

/// Draws an index from `probs` (which sums to 1) with one uniform number from `rng`.
pub fn sample(probs: &[f32], rng: &mut impl Rng) -> u32 {
    sample_with(probs, rng.random::<f32>())
}

/// Inverse-CDF draw for a given uniform `u` in [0, 1). Never returns a zero-probability index.
pub fn sample_with(probs: &[f32], u: f32) -> u32 {
    let total: f32 = probs.iter().sum();
    let target = u * total;
    let mut acc = 0.0;
    let mut last_nonzero = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += p;
            last_nonzero = i;
            if target < acc {
                return i as u32;
            }
        }
    }
    last_nonzero as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_table() {
        let cases: [(&[f32], u32); 4] = [
            (&[1.0, 3.0, 2.0], 1),
            (&[5.0, 5.0, 1.0], 0),
            (&[-1.0, -0.5], 1),
            (&[f32::NEG_INFINITY, 0.0], 1),
        ];
        for (logits, want) in cases {
            assert_eq!(argmax(logits), want, "{logits:?}");
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_head_of_the_distribution() {
        let logits = [2.0f32.ln(), 1.0f32.ln(), 1.0f32.ln()]; // probs 0.5, 0.25, 0.25
        let cases = [
            (1.0, vec![0.5, 0.25, 0.25]),
            (0.5, vec![1.0, 0.0, 0.0]),
            (0.6, vec![2.0 / 3.0, 1.0 / 3.0, 0.0]),
        ];
        for (top_p, want) in cases {
            let got = probs(&logits, 1.0, top_p);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-6, "top_p {top_p}: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn temperature_sharpens() {
        let cold = probs(&[1.0, 0.0], 0.1, 1.0);
        let hot = probs(&[1.0, 0.0], 10.0, 1.0);
        assert!(cold[0] > 0.99 && hot[0] < 0.6);
    }

    #[test]
    fn sample_with_table() {
        let p = [0.0, 0.25, 0.0, 0.75];
        for (u, want) in [(0.0, 1), (0.2499, 1), (0.25, 3), (0.9999, 3)] {
            assert_eq!(sample_with(&p, u), want, "u={u}");
        }
    }
}
