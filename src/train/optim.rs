//! Optimization: AdamW with state we can checkpoint (candle-nn's keeps its moments private), the
//! learning-rate schedule (linear warmup, then cosine decay to a floor) and global-norm gradient
//! clipping. The schedule and the clipping factor are plain functions. Not here: gradients.

use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::error::Result;

/// AdamW hyperparameters. Defaults follow the paper: betas 0.9/0.95, weight decay 0.1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// Learning rate at optimizer step `step` (0-based): linear warmup from `peak / warmup` to `peak`
/// over `warmup` steps, then cosine decay to `peak * min_ratio` at step `total - 1`.
pub fn lr_at(step: u64, warmup: u64, total: u64, peak: f64, min_ratio: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let floor = peak * min_ratio;
    let decay_steps = total.saturating_sub(warmup).saturating_sub(1);
    if decay_steps == 0 {
        return peak;
    }
    let progress = ((step - warmup) as f64 / decay_steps as f64).min(1.0);
    floor + 0.5 * (peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Share of a time budget over which [`lr_by_time`] decays: the last fifth.
pub const TIME_DECAY_SHARE: f64 = 0.2;

/// Learning rate of a run with a wall-clock budget of `budget` seconds, at optimizer step `step`
/// (0-based) when `elapsed` seconds of it have passed: linear warmup over `warmup` steps, then
/// constant at `peak`, then a linear decay to `peak * min_ratio` over the last fifth of the budget
/// (by elapsed time), so the schedule ends when the budget does, however fast the steps are.
pub fn lr_by_time(
    step: u64,
    warmup: u64,
    elapsed: f64,
    budget: f64,
    peak: f64,
    min_ratio: f64,
) -> f64 {
    let floor = peak * min_ratio;
    let decay_start = budget * (1.0 - TIME_DECAY_SHARE);
    let by_time = if elapsed <= decay_start || budget <= 0.0 {
        peak
    } else {
        let progress = ((elapsed - decay_start) / (budget * TIME_DECAY_SHARE)).min(1.0);
        peak - (peak - floor) * progress
    };
    if step < warmup {
        by_time.min(peak * (step + 1) as f64 / warmup as f64)
    } else {
        by_time
    }
}

/// Factor that brings a gradient of global norm `norm` down to `max_norm` (1 when already within).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// Global L2 norm of a set of gradients.
pub fn global_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut sum = 0f64;
    for g in grads.iter().flatten() {
        sum += f64::from(
            g.to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()?,
        );
    }
    Ok(sum.sqrt())
}

/// Decoupled weight decay applies to matrices only; norms and biases (1-D) are not decayed.
pub fn decays(var: &Var) -> bool {
    var.rank() >= 2
}

/// AdamW over a fixed, ordered list of variables. The moments are f32 tensors shaped like the
/// variables; `step` counts updates taken (for bias correction).
pub struct AdamW {
    pub config: AdamWConfig,
    pub vars: Vec<Var>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub step: u64,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        let m = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            config,
            vars,
            m,
            v,
            step: 0,
        })
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to `vars[i]`. A `None` gradient
    /// leaves that variable and its moments unchanged.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, var) in self.vars.iter().enumerate() {
            let Some(g) = &grads[i] else { continue };
            let g = g.to_dtype(var.dtype())?;
            if in_place(var, &g, &self.m[i], &self.v[i]) {
                // Three passes over the buffers, no allocation (the tensor form below makes
                // about fourteen temporaries the size of the variable).
                let wd = if decays(var) { c.weight_decay } else { 0.0 };
                let moment = |beta: f64, square: bool| Moment { beta, square };
                self.m[i].inplace_op2(&g, &moment(c.beta1, false))?;
                self.v[i].inplace_op2(&g, &moment(c.beta2, true))?;
                let update = Update {
                    lr,
                    decay: 1.0 - lr * wd,
                    bc1,
                    bc2,
                    eps: c.eps,
                };
                var.as_tensor()
                    .inplace_op3(&self.m[i], &self.v[i], &update)?;
                continue;
            }
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let mut theta = var.as_tensor().detach();
            if decays(var) && c.weight_decay > 0.0 {
                theta = (theta * (1.0 - lr * c.weight_decay))?;
            }
            var.set(&(theta - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

/// Whether a variable's AdamW step can run in place: f32 CPU tensors, all contiguous.
fn in_place(var: &Var, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    [var.as_tensor(), g, m, v]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
}

/// `dst <- beta * dst + (1 - beta) * g` (or `g^2`): an AdamW moment, in place.
struct Moment {
    beta: f64,
    square: bool,
}

/// `theta <- decay * theta - lr * (m / bc1) / (sqrt(v / bc2) + eps)`, in place.
struct Update {
    lr: f64,
    decay: f64,
    bc1: f64,
    bc2: f64,
    eps: f64,
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("adamw in place: f32 contiguous tensors only"),
    }
}

fn f32s_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("adamw in place: f32 contiguous tensors only"),
    }
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        g_l: &Layout,
    ) -> candle_core::Result<()> {
        let (m, g) = (f32s_mut(dst, dst_l)?, f32s(g, g_l)?);
        let (b, rest) = (self.beta as f32, (1.0 - self.beta) as f32);
        if self.square {
            m.iter_mut()
                .zip(g)
                .for_each(|(m, g)| *m = b * *m + rest * (g * g));
        } else {
            m.iter_mut()
                .zip(g)
                .for_each(|(m, g)| *m = b * *m + rest * g);
        }
        Ok(())
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        m_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> candle_core::Result<()> {
        let (theta, m, v) = (f32s_mut(dst, dst_l)?, f32s(m, m_l)?, f32s(v, v_l)?);
        let (lr, decay) = (self.lr as f32, self.decay as f32);
        let (bc1, bc2, eps) = (self.bc1 as f32, self.bc2 as f32, self.eps as f32);
        for ((t, m), v) in theta.iter_mut().zip(m).zip(v) {
            *t = *t * decay - lr * ((m / bc1) / ((v / bc2).sqrt() + eps));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn time_schedule_table() {
        // (step, warmup, elapsed, budget) -> lr, peak 1.0, floor 0.1
        let cases = [
            ((0, 10, 0.0, 100.0), 0.1), // warmup by steps
            ((4, 10, 1.0, 100.0), 0.5),
            ((10, 10, 50.0, 100.0), 1.0),  // constant
            ((500, 10, 80.0, 100.0), 1.0), // decay starts at 80%
            ((600, 10, 90.0, 100.0), 0.55),
            ((700, 10, 100.0, 100.0), 0.1),
            ((800, 10, 130.0, 100.0), 0.1), // past the budget: the floor
            ((2, 10, 95.0, 100.0), 0.3),    // warmup caps a late start (a resumed or very slow run)
        ];
        for ((step, warmup, elapsed, budget), want) in cases {
            let got = lr_by_time(step, warmup, elapsed, budget, 1.0, 0.1);
            assert!(
                (got - want).abs() < 1e-9,
                "step {step} at {elapsed}/{budget}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn schedule_table() {
        let (peak, min) = (1e-3, 0.1);
        let cases = [
            (0, 10, 110, 1e-4),
            (4, 10, 110, 5e-4),
            (9, 10, 110, 1e-3),
            (10, 10, 110, 1e-3),
            (
                59,
                10,
                110,
                1e-4 + 0.5 * 9e-4 * (1.0 + (std::f64::consts::PI * 49.0 / 99.0).cos()),
            ),
            (109, 10, 110, 1e-4),
            (500, 10, 110, 1e-4),
            (0, 0, 1, 1e-3),
            (3, 0, 4, 1e-4),
        ];
        for (step, warmup, total, want) in cases {
            let got = lr_at(step, warmup, total, peak, min);
            assert!(
                (got - want).abs() < 1e-12,
                "step {step} warmup {warmup} total {total}: {got} != {want}"
            );
        }
    }

    #[test]
    fn clip_factor_table() {
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        assert_eq!(clip_factor(1.0, 1.0), 1.0);
        assert!((clip_factor(4.0, 1.0) - 0.25).abs() < 1e-6);
        assert_eq!(clip_factor(4.0, 0.0), 1.0, "0 disables clipping");
    }

    #[test]
    fn adamw_matches_a_hand_computed_step() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[[1.0f32, -2.0]], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[0.5f32], &dev).unwrap()).unwrap();
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(vec![w.clone(), b.clone()], cfg).unwrap();
        let gw = Tensor::new(&[[0.2f32, -0.4]], &dev).unwrap();
        let gb = Tensor::new(&[3.0f32], &dev).unwrap();
        opt.step(&[Some(gw), Some(gb)], 0.01).unwrap();
        // Step 1: m̂ = g, v̂ = g², so the update is sign(g) (up to eps); decay only on the matrix.
        let got_w = w.as_tensor().to_vec2::<f32>().unwrap();
        let want_w = [
            1.0 * (1.0 - 0.01 * 0.1) - 0.01,
            -2.0 * (1.0 - 0.01 * 0.1) + 0.01,
        ];
        assert!(
            (got_w[0][0] - want_w[0] as f32).abs() < 1e-6
                && (got_w[0][1] - want_w[1] as f32).abs() < 1e-6,
            "{got_w:?}"
        );
        let got_b = b.as_tensor().to_vec1::<f32>().unwrap();
        assert!((got_b[0] - 0.49).abs() < 1e-6, "{got_b:?}");
        assert_eq!(opt.step, 1);
        let m = opt.m[1].to_vec1::<f32>().unwrap();
        assert!((m[0] - 0.3).abs() < 1e-6);
    }

    #[test]
    fn the_in_place_f32_step_follows_the_tensor_form_over_several_steps() {
        // f32 variables take the in-place kernels; f64 ones the tensor form: the reference.
        let dev = Device::Cpu;
        let init = |dtype| {
            let w = Tensor::new(&[[1.0f32, -2.0, 0.3], [0.7, 0.0, -1.1]], &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let b = Tensor::new(&[0.5f32, -0.25, 2.0], &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            vec![Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap()]
        };
        let (fast, slow) = (init(DType::F32), init(DType::F64));
        assert!(in_place(
            &fast[0],
            fast[0].as_tensor(),
            fast[0].as_tensor(),
            fast[0].as_tensor()
        ));
        assert!(!in_place(
            &slow[0],
            slow[0].as_tensor(),
            slow[0].as_tensor(),
            slow[0].as_tensor()
        ));
        let mut opt_fast = AdamW::new(fast.clone(), AdamWConfig::default()).unwrap();
        let mut opt_slow = AdamW::new(slow.clone(), AdamWConfig::default()).unwrap();
        for step in 0..6 {
            let s = step as f32;
            let gw = Tensor::new(&[[0.2f32 - s * 0.1, -0.4, 1.5], [s, -0.01, 0.3]], &dev).unwrap();
            let gb = Tensor::new(&[3.0f32, -s, 0.001], &dev).unwrap();
            let lr = 0.01 * (1.0 + step as f64);
            opt_fast
                .step(&[Some(gw.clone()), Some(gb.clone())], lr)
                .unwrap();
            opt_slow.step(&[Some(gw), Some(gb)], lr).unwrap();
        }
        for (a, b) in fast.iter().zip(&slow) {
            let a: Vec<f32> = a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let b = b.as_tensor().to_dtype(DType::F32).unwrap();
            let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
            }
        }
        let moved: f32 = fast[0].as_tensor().to_vec2::<f32>().unwrap()[0][0];
        assert!((moved - 1.0).abs() > 0.01, "the weights moved");
    }

    #[test]
    fn global_norm_of_two_tensors() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[3.0f32], &dev).unwrap();
        let b = Tensor::new(&[[4.0f32]], &dev).unwrap();
        assert!((global_norm(&[Some(a), None, Some(b)]).unwrap() - 5.0).abs() < 1e-9);
    }
}
