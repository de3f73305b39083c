//! The memory-efficient (sequential) order of the MTP objective gives the same gradients as the
//! naive joint backward, every trainable weight receives a non-zero gradient, and the fused
//! inference kernels would have cut some of them (so the check can fail).

mod common;

use common::max_abs_diff;
use std::collections::HashMap;

use candle_core::{Device, Tensor};
use foresight::model::tiny::TinySpec;
use foresight::model::weights::init_weights;
use foresight::model::Kernels;
use foresight::train::objective::{batch_grads, windows_tensor, BatchGrads};
use foresight::train::params::{ParamSet, Trainable};
use foresight::train::LossOrder;

fn windows(b: usize, len: usize, seed: u32) -> Tensor {
    let w: Vec<Vec<u32>> = (0..b)
        .map(|i| {
            (0..len)
                .map(|j| (seed * 31 + (i * 17 + j * 7) as u32 * 13) % 260)
                .collect()
        })
        .collect();
    windows_tensor(&w, &Device::Cpu).unwrap()
}

fn grads(set: &ParamSet, order: LossOrder, weights: &[f32], kernels: Kernels) -> BatchGrads {
    let mut model = set.training_model(candle_core::DType::F32).unwrap();
    model.set_kernels(kernels);
    let vars: Vec<_> = set.trainable().into_iter().map(|(_, v)| v).collect();
    batch_grads(
        &model,
        &vars,
        set.trunk_trainable(),
        &windows(3, 13, 1),
        weights,
        order,
    )
    .unwrap()
}

fn check_equal_and_nonzero(spec: TinySpec, trainable: Trainable, weights: &[f32]) {
    let cfg = spec.config();
    let tensors: HashMap<String, Tensor> = init_weights(&cfg, 11, 0.1, &Device::Cpu).unwrap();
    let set = ParamSet::new(&cfg, tensors, trainable).unwrap();
    let names: Vec<String> = set.trainable().into_iter().map(|(n, _)| n).collect();
    assert!(!names.is_empty());
    let seq = grads(
        &set,
        LossOrder::Sequential,
        weights,
        Kernels::Differentiable,
    );
    let joint = grads(&set, LossOrder::Joint, weights, Kernels::Differentiable);
    for (h, (a, b)) in seq.head_losses.iter().zip(&joint.head_losses).enumerate() {
        assert!((a - b).abs() < 1e-6, "head {h} loss {a} vs {b}");
    }
    for (i, name) in names.iter().enumerate() {
        let a = seq.grads[i]
            .as_ref()
            .unwrap_or_else(|| panic!("sequential: no gradient for {name}"));
        let b = joint.grads[i]
            .as_ref()
            .unwrap_or_else(|| panic!("joint: no gradient for {name}"));
        let diff = max_abs_diff(a, b);
        assert!(
            diff <= 1e-5,
            "{name}: sequential and joint gradients differ by {diff}"
        );
        let size = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(size > 0.0, "{name}: gradient is all zeros");
    }
}

#[test]
fn sequential_equals_joint_for_four_heads() {
    check_equal_and_nonzero(TinySpec::default(), Trainable::All, &[1.0; 4]);
}

#[test]
fn sequential_equals_joint_with_head_weights_tied_embeddings_and_qwen2_biases() {
    let spec = TinySpec {
        tie_word_embeddings: true,
        model_type: "qwen2",
        rope_interleaved: true,
        ..Default::default()
    };
    check_equal_and_nonzero(spec, Trainable::All, &[1.0, 0.5, 0.25, 2.0]);
}

#[test]
fn sequential_equals_joint_for_one_head_and_for_frozen_trunk() {
    check_equal_and_nonzero(
        TinySpec {
            n_future_tokens: 1,
            ..Default::default()
        },
        Trainable::All,
        &[1.0],
    );
    check_equal_and_nonzero(TinySpec::default(), Trainable::HeadsOnly, &[1.0; 4]);
}

#[test]
fn fused_kernels_would_cut_gradients() {
    // The same check on the inference kernels finds weights without a gradient (or with a
    // different one): the reason training must use Kernels::Differentiable.
    let cfg = TinySpec::default().config();
    let tensors = init_weights(&cfg, 11, 0.1, &Device::Cpu).unwrap();
    let set = ParamSet::new(&cfg, tensors, Trainable::All).unwrap();
    let good = grads(&set, LossOrder::Joint, &[1.0; 4], Kernels::Differentiable);
    let fused = grads(&set, LossOrder::Joint, &[1.0; 4], Kernels::Fused);
    let broken = good
        .grads
        .iter()
        .zip(&fused.grads)
        .filter(|(g, f)| match (g, f) {
            (Some(g), Some(f)) => max_abs_diff(g, f) > 1e-4,
            _ => true,
        });
    assert!(
        broken.count() > 0,
        "fused kernels were expected to lose gradients"
    );
}

#[test]
fn bf16_compute_sends_f32_gradients_back_to_the_master_weights() {
    // The --dtype bf16 path (default on CUDA), run here on the CPU: the model computes in bf16 on
    // casts of the f32 masters, and each master receives an f32 gradient close to the f32 one.
    let cfg = TinySpec::default().config();
    let tensors = init_weights(&cfg, 11, 0.1, &Device::Cpu).unwrap();
    let set = ParamSet::new(&cfg, tensors, Trainable::All).unwrap();
    let vars: Vec<_> = set.trainable().into_iter().map(|(_, v)| v).collect();
    let w = windows(3, 13, 1);
    let f32_model = set.training_model(candle_core::DType::F32).unwrap();
    let bf16_model = set.training_model(candle_core::DType::BF16).unwrap();
    let exact = batch_grads(
        &f32_model,
        &vars,
        true,
        &w,
        &[1.0; 4],
        LossOrder::Sequential,
    )
    .unwrap();
    let low = batch_grads(
        &bf16_model,
        &vars,
        true,
        &w,
        &[1.0; 4],
        LossOrder::Sequential,
    )
    .unwrap();
    for (h, (a, b)) in exact.head_losses.iter().zip(&low.head_losses).enumerate() {
        assert!((a - b).abs() < 0.05 * a.abs(), "head {h}: {a} vs {b}");
    }
    let mut cos_min = 1.0f32;
    for (a, b) in exact.grads.iter().zip(&low.grads) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(
            b.dtype(),
            candle_core::DType::F32,
            "gradients reach the f32 masters"
        );
        let dot = (a * b)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let na = a
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        let nb = b
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        cos_min = cos_min.min(dot / (na * nb));
    }
    assert!(
        cos_min > 0.95,
        "bf16 gradients point where the f32 ones do (min cosine {cos_min})"
    );
}

/// Self-distilled heads (`--head-targets self`): head 1 keeps the data's loss; each extra head is
/// scored against head 1's own argmax one position before its target (computed here by hand from
/// head 1's logits), in both loss orders and with the fused training kernels.
#[test]
fn self_distilled_heads_are_scored_against_head_ones_predictions() {
    use foresight::train::objective::{batch_grads_with, self_distill_windows};
    use foresight::train::HeadTargets;
    let spec = TinySpec::default();
    let cfg = spec.config();
    let tensors: HashMap<String, Tensor> = init_weights(&cfg, 11, 0.1, &Device::Cpu).unwrap();
    let set = ParamSet::new(&cfg, tensors, Trainable::All).unwrap();
    let model = set.training_model(candle_core::DType::F32).unwrap();
    let vars: Vec<_> = set.trainable().into_iter().map(|(_, v)| v).collect();
    let w = windows(3, 13, 1);
    let t = w.dim(1).unwrap() - 1;
    let z = model.forward_trunk(&w.narrow(1, 0, t).unwrap()).unwrap();
    let teacher = self_distill_windows(&model, &z, &w).unwrap();
    // By hand: position j + 1 holds head 1's argmax at input position j.
    let logits = model.forward_head(0, &z).unwrap().to_vec3::<f32>().unwrap();
    let teacher_rows = teacher.to_vec2::<u32>().unwrap();
    let data_rows = w.to_vec2::<u32>().unwrap();
    for (b, row) in teacher_rows.iter().enumerate() {
        assert_eq!(row[0], data_rows[b][0]);
        for j in 0..t {
            let best = logits[b][j]
                .iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .unwrap()
                .0 as u32;
            assert_eq!(row[j + 1], best, "row {b} position {j}");
        }
    }
    assert_ne!(teacher_rows, data_rows, "the teacher differs from the data");
    let weights = [1.0f32; 4];
    for order in [LossOrder::Sequential, LossOrder::Joint] {
        let run = |targets, windows: &Tensor| {
            batch_grads_with(&model, &vars, true, windows, &weights, order, targets).unwrap()
        };
        let data = run(HeadTargets::Data, &w);
        let distilled = run(HeadTargets::SelfDistill, &w);
        assert_eq!(
            distilled.head_losses[0], data.head_losses[0],
            "{order:?}: head 1"
        );
        for i in 1..4 {
            // By hand: head i's logits on the data against the teacher, i + 1 positions ahead.
            let keep = t - i;
            let logits = model
                .forward_head(i, &z.narrow(1, 0, keep).unwrap())
                .unwrap()
                .reshape((3 * keep, cfg.vocab_size))
                .unwrap();
            let targets = teacher
                .narrow(1, i + 1, keep)
                .unwrap()
                .reshape(3 * keep)
                .unwrap();
            let want = candle_nn::loss::cross_entropy(&logits, &targets)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                (distilled.head_losses[i] - want).abs() < 1e-4,
                "{order:?}: head {}: {} vs {want}",
                i + 1,
                distilled.head_losses[i]
            );
            assert!(
                (distilled.head_losses[i] - data.head_losses[i]).abs() > 1e-3,
                "{order:?}: head {} changed target",
                i + 1
            );
        }
    }
}
