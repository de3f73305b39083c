//! The memory-efficient (sequential) order of the MTP objective gives the same gradients as the
//! naive joint backward, every trainable weight receives a non-zero gradient, and the fused
//! inference kernels would have cut some of them (so the check can fail).

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

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
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
