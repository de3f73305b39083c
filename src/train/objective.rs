//! The multi-token-prediction objective: each head's cross-entropy against the token `i` positions
//! ahead, summed with optional per-head weights, and its gradients in two orders. `Sequential` is
//! the paper's memory-efficient order (Fig. 2): trunk forward once, each head's forward and backward
//! in turn with the gradient at the trunk output accumulated and the head's logits freed, then one
//! trunk backward. `Joint` is the naive backward of the summed loss, kept as the reference the
//! sequential order is tested against and for the memory benchmark. Also the validation metrics.
//! The model must run `Kernels::Differentiable` or `Kernels::Training` (then, on f32 CPU tensors,
//! each head's unembedding and cross-entropy are one fused op whose full logits never exist).
//! Not here: the optimizer (`optim.rs`).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, TensorId, Var, D};

use super::error::{Result, TrainError};
use crate::model::train_kernels::linear_cross_entropy;
use crate::model::MtpModel;

/// Which backward order computes the gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossOrder {
    /// Memory-efficient: peak memory O(V + d) in the number of heads.
    #[default]
    Sequential,
    /// The summed loss backward at once: peak memory O(nV + d).
    Joint,
}

/// What the extra heads (2..n) learn to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadTargets {
    /// The data: head i predicts the true token i positions ahead (the paper's objective).
    #[default]
    Data,
    /// Self-distillation: head i predicts what head 1 itself predicts at that position (its
    /// argmax given the true text before it), which is what a draft must match to be accepted
    /// (as in Medusa-2 and EAGLE). Head 1 still learns the data.
    #[serde(rename = "self")]
    SelfDistill,
}

impl std::str::FromStr for HeadTargets {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "data" => Ok(HeadTargets::Data),
            "self" => Ok(HeadTargets::SelfDistill),
            other => Err(format!("unknown head targets {other:?}: use data or self")),
        }
    }
}

/// The windows the extra heads are scored against under `SelfDistill`: the first token of each
/// window, then head 1's argmax at every input position (its prediction of the next token), as
/// ids of `windows`' dtype. Computed without gradients.
pub fn self_distill_windows(model: &MtpModel, z: &Tensor, windows: &Tensor) -> Result<Tensor> {
    let logits = model.forward_head(0, &z.detach())?;
    let predicted = logits
        .argmax(candle_core::D::Minus1)?
        .to_dtype(windows.dtype())?;
    Ok(Tensor::cat(&[&windows.narrow(1, 0, 1)?, &predicted], 1)?)
}

impl std::str::FromStr for LossOrder {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sequential" => Ok(LossOrder::Sequential),
            "joint" => Ok(LossOrder::Joint),
            other => Err(format!(
                "unknown loss order {other:?}: use sequential or joint"
            )),
        }
    }
}

/// Token windows `(b, t + 1)` as a u32 tensor: inputs are `[.., ..t]`, head `i`'s targets are
/// `[.., i + 1..]`. All windows must have the same length.
pub fn windows_tensor(windows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let len = windows.first().map_or(0, Vec::len);
    if len < 2 || windows.iter().any(|w| w.len() != len) {
        return Err(TrainError::InvalidOptions(
            "a batch needs windows of one length, at least 2 tokens".into(),
        ));
    }
    let flat: Vec<u32> = windows.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (windows.len(), len), device)?)
}

/// Positions head `head_idx` is scored on in a window of `t` inputs (the last `head_idx` have no target).
fn scored_positions(t: usize, head_idx: usize) -> usize {
    t.saturating_sub(head_idx)
}

/// Head `head_idx`'s logits `(b, keep, V)` in f32 and its targets `(b, keep)`. The head sees only
/// the positions it is scored on: attention is causal, so cutting the tail changes nothing before it.
fn head_logits_and_targets(
    model: &MtpModel,
    head_idx: usize,
    z: &Tensor,
    windows: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let t = z.dim(1)?;
    let keep = scored_positions(t, head_idx);
    let z = if keep == t {
        z.clone()
    } else {
        z.narrow(1, 0, keep)?
    };
    let logits = model.forward_head(head_idx, &z)?.to_dtype(DType::F32)?;
    let targets = windows.narrow(1, head_idx + 1, keep)?;
    Ok((logits, targets))
}

/// Mean cross-entropy of `logits (b, keep, V)` against `targets (b, keep)`, with plain
/// differentiable ops (log-softmax and gather).
fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (b, keep, v) = logits.dims3()?;
    let flat = logits.reshape((b * keep, v))?;
    Ok(candle_nn::loss::cross_entropy(
        &flat,
        &targets.reshape(b * keep)?,
    )?)
}

/// Head `head_idx`'s mean cross-entropy on trunk output `z` over `windows`: the fused unembedding
/// with cross-entropy under `Kernels::Training` on f32 CPU tensors, logits and plain ops otherwise.
fn head_loss(model: &MtpModel, head_idx: usize, z: &Tensor, windows: &Tensor) -> Result<Tensor> {
    if !model.kernels().fused_training(z) {
        let (logits, targets) = head_logits_and_targets(model, head_idx, z, windows)?;
        return cross_entropy(&logits, &targets);
    }
    let t = z.dim(1)?;
    let keep = scored_positions(t, head_idx);
    let z = if keep == t {
        z.clone()
    } else {
        z.narrow(1, 0, keep)?
    };
    let normed = model.forward_head_normed(head_idx, &z)?;
    let (b, keep, d) = normed.dims3()?;
    let targets = windows.narrow(1, head_idx + 1, keep)?;
    Ok(linear_cross_entropy(
        &normed.reshape((b * keep, d))?,
        model.lm_head_weight(),
        &targets,
    )?)
}

/// Result of one forward/backward on a batch.
#[derive(Debug)]
pub struct BatchGrads {
    /// One gradient per trainable variable, in the order given (`None`: no gradient reached it).
    pub grads: Vec<Option<Tensor>>,
    /// Unweighted cross-entropy of each head.
    pub head_losses: Vec<f32>,
}

impl BatchGrads {
    /// The weighted objective `sum_i w_i * CE_i`.
    pub fn loss(&self, weights: &[f32]) -> f32 {
        self.head_losses
            .iter()
            .zip(weights)
            .map(|(l, w)| l * w)
            .sum()
    }
}

/// Adds every trainable's gradient in `store` into `acc`.
fn accumulate(
    acc: &mut [Option<Tensor>],
    index: &HashMap<TensorId, usize>,
    store: &mut candle_core::backprop::GradStore,
    trainable: &[Var],
) -> Result<()> {
    for var in trainable {
        if let Some(g) = store.remove(var.as_tensor()) {
            let slot = &mut acc[index[&var.id()]];
            *slot = Some(match slot.take() {
                Some(prev) => (prev + g)?,
                None => g,
            });
        }
    }
    Ok(())
}

/// Gradients of `sum_i weights[i] * CE_i` for `trainable`, over windows `(b, t + 1)`.
/// `trunk_trainable` says whether any trainable variable sits in the embedding or trunk; when none
/// does, the sequential order skips the trunk backward.
pub fn batch_grads(
    model: &MtpModel,
    trainable: &[Var],
    trunk_trainable: bool,
    windows: &Tensor,
    weights: &[f32],
    order: LossOrder,
) -> Result<BatchGrads> {
    batch_grads_with(
        model,
        trainable,
        trunk_trainable,
        windows,
        weights,
        order,
        HeadTargets::Data,
    )
}

/// [`batch_grads`] with the extra heads' targets chosen by `targets`.
pub fn batch_grads_with(
    model: &MtpModel,
    trainable: &[Var],
    trunk_trainable: bool,
    windows: &Tensor,
    weights: &[f32],
    order: LossOrder,
    targets: HeadTargets,
) -> Result<BatchGrads> {
    let n = model.n_heads();
    if weights.len() != n {
        return Err(TrainError::InvalidOptions(format!(
            "{} head weights for {n} heads",
            weights.len()
        )));
    }
    let t = windows.dim(1)? - 1;
    if t < n {
        return Err(TrainError::InvalidOptions(format!(
            "windows of {t} inputs are too short for {n} heads"
        )));
    }
    let inputs = windows.narrow(1, 0, t)?;
    let index: HashMap<TensorId, usize> = trainable
        .iter()
        .enumerate()
        .map(|(i, v)| (v.id(), i))
        .collect();
    let mut grads: Vec<Option<Tensor>> = vec![None; trainable.len()];
    let mut head_losses = Vec::with_capacity(n);
    match order {
        LossOrder::Joint => {
            let z = model.forward_trunk(&inputs)?;
            let teacher = head_windows(model, &z, windows, targets)?;
            let mut total: Option<Tensor> = None;
            for (i, w) in weights.iter().enumerate() {
                let loss = head_loss(model, i, &z, if i == 0 { windows } else { &teacher })?;
                head_losses.push(loss.to_scalar::<f32>()?);
                let weighted = (loss * f64::from(*w))?;
                total = Some(match total {
                    Some(acc) => (acc + weighted)?,
                    None => weighted,
                });
            }
            let total = total.expect("at least one head");
            let mut store = total.backward()?;
            accumulate(&mut grads, &index, &mut store, trainable)?;
        }
        LossOrder::Sequential => {
            let z = model.forward_trunk(&inputs)?;
            let teacher = head_windows(model, &z, windows, targets)?;
            // The heads see a fresh leaf with z's values: their backward stops there.
            let z_leaf = Var::from_tensor(&z.detach())?;
            let mut dz: Option<Tensor> = None;
            for (i, w) in weights.iter().enumerate() {
                let mut store = {
                    let scored = if i == 0 { windows } else { &teacher };
                    let loss = head_loss(model, i, z_leaf.as_tensor(), scored)?;
                    head_losses.push(loss.to_scalar::<f32>()?);
                    (loss * f64::from(*w))?.backward()?
                    // logits, the loss and their graph are dropped here, before the next head.
                };
                if let Some(g) = store.remove(z_leaf.as_tensor()) {
                    dz = Some(match dz.take() {
                        Some(acc) => (acc + g)?,
                        None => g,
                    });
                }
                accumulate(&mut grads, &index, &mut store, trainable)?;
            }
            if trunk_trainable {
                if let Some(dz) = dz {
                    // d/dθ sum(z * dz) = (dz)ᵀ ∂z/∂θ: the chain rule through the trunk, run once.
                    let mut store = (z * dz.detach())?.sum_all()?.backward()?;
                    accumulate(&mut grads, &index, &mut store, trainable)?;
                }
            }
        }
    }
    Ok(BatchGrads { grads, head_losses })
}

/// The windows heads 2..n are scored against: the data, or head 1's own predictions.
fn head_windows(
    model: &MtpModel,
    z: &Tensor,
    windows: &Tensor,
    targets: HeadTargets,
) -> Result<Tensor> {
    match targets {
        HeadTargets::SelfDistill if model.n_heads() > 1 => self_distill_windows(model, z, windows),
        _ => Ok(windows.clone()),
    }
}

/// Validation metrics summed over batches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Validation {
    /// Mean cross-entropy of each head over all scored positions.
    pub head_losses: Vec<f64>,
    /// Share of positions where head `i`'s argmax equals the true token `i + 1` ahead: the draft
    /// acceptance rate a user will see (for head 1: plain next-token accuracy).
    pub head_top1: Vec<f64>,
    pub positions: Vec<usize>,
}

impl Validation {
    /// The weighted objective on the validation set.
    pub fn loss(&self, weights: &[f32]) -> f64 {
        self.head_losses
            .iter()
            .zip(weights)
            .map(|(l, w)| l * f64::from(*w))
            .sum()
    }
}

/// Runs every head over `batches` of windows without gradients and scores them.
pub fn validate(model: &MtpModel, batches: &[Tensor]) -> Result<Validation> {
    let n = model.n_heads();
    let mut loss_sum = vec![0f64; n];
    let mut correct = vec![0usize; n];
    let mut count = vec![0usize; n];
    for windows in batches {
        let t = windows.dim(1)? - 1;
        let z = model.forward_trunk(&windows.narrow(1, 0, t)?)?.detach();
        for i in 0..n.min(t) {
            let (logits, targets) = head_logits_and_targets(model, i, &z, windows)?;
            let positions = targets.elem_count();
            let ce = cross_entropy(&logits, &targets)?.to_scalar::<f32>()?;
            loss_sum[i] += f64::from(ce) * positions as f64;
            let hits = logits
                .argmax(D::Minus1)?
                .eq(&targets)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?;
            correct[i] += hits as usize;
            count[i] += positions;
        }
    }
    let div = |a: f64, b: usize| if b == 0 { f64::NAN } else { a / b as f64 };
    Ok(Validation {
        head_losses: (0..n).map(|i| div(loss_sum[i], count[i])).collect(),
        head_top1: (0..n).map(|i| div(correct[i] as f64, count[i])).collect(),
        positions: count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scored_positions_table() {
        assert_eq!(scored_positions(8, 0), 8);
        assert_eq!(scored_positions(8, 3), 5);
        assert_eq!(scored_positions(2, 5), 0);
    }

    #[test]
    fn loss_order_parses() {
        assert_eq!("sequential".parse::<LossOrder>(), Ok(LossOrder::Sequential));
        assert_eq!("joint".parse::<LossOrder>(), Ok(LossOrder::Joint));
        assert!("both".parse::<LossOrder>().is_err());
    }
}
