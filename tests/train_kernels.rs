//! The fused CPU training kernels (src/model/train_kernels.rs) against the plain differentiable
//! ops they replace: the same outputs and the same gradients, op by op (attention across several
//! blocks, with grouped queries) and for whole training steps of tiny models (every weight's
//! gradient, both loss orders, tied embeddings, Qwen2 biases, interleaved RoPE).

mod common;

use common::max_abs_diff;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use foresight::model::layers::causal_mask;
use foresight::model::rope::Rope;
use foresight::model::tiny::TinySpec;
use foresight::model::train_kernels::{
    linear_cross_entropy, AttentionLinearOp, CausalAttentionOp, LinearOp, MlpOp, RmsNormOp,
};
use foresight::model::weights::init_weights;
use foresight::model::Kernels;
use foresight::train::objective::{batch_grads, windows_tensor, BatchGrads};
use foresight::train::params::{ParamSet, Trainable};
use foresight::train::LossOrder;

fn randn(shape: &[usize], seed: u64) -> Var {
    let n: usize = shape.iter().product();
    // A fixed, seed-dependent pseudo-random fill (no RNG state shared between tests).
    let data: Vec<f32> = (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 10007) as f32 / 10007.0 - 0.5) * 2.0)
        .collect();
    Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu).unwrap()).unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Outputs of `fused` and `plain` on `inputs`, and the gradients of `sum(out * r)` for a fixed
/// random `r`, agree within `tol` (relative to the larger magnitude).
fn check(
    inputs: &[Var],
    fused: impl Fn(&[Tensor]) -> Tensor,
    plain: impl Fn(&[Tensor]) -> Tensor,
    tol: f32,
) {
    let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let (a, b) = (fused(&ts), plain(&ts));
    assert_eq!(a.dims(), b.dims());
    let scale = max_abs(&b).max(1e-3);
    let d = max_abs_diff(&a, &b);
    assert!(d <= tol * scale, "outputs differ by {d} (scale {scale})");
    let r = randn(a.dims(), 99);
    let ga = (a * r.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gb = (b * r.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (i, v) in inputs.iter().enumerate() {
        let (x, y) = (
            ga.get(v)
                .unwrap_or_else(|| panic!("fused: no gradient for input {i}")),
            gb.get(v).expect("plain gradient"),
        );
        let scale = max_abs(y).max(1e-3);
        let d = max_abs_diff(x, y);
        assert!(
            d <= tol * scale,
            "input {i}: gradients differ by {d} (scale {scale})"
        );
        assert!(max_abs(x) > 0.0, "input {i}: zero gradient");
    }
}

#[test]
fn rms_norm_matches_plain_ops() {
    let inputs = [randn(&[3, 7, 48], 1), randn(&[48], 2)];
    check(
        &inputs,
        |t| t[0].apply_op2(&t[1], RmsNormOp { eps: 1e-5 }).unwrap(),
        |t| candle_nn::ops::rms_norm_slow(&t[0], &t[1], 1e-5).unwrap(),
        1e-5,
    );
}

#[test]
fn linear_matches_plain_ops() {
    // Three leading dimensions collapse into one matmul; the weight is (out, in).
    let inputs = [randn(&[2, 3, 5, 24], 4), randn(&[40, 24], 5)];
    check(
        &inputs,
        |t| t[0].apply_op2(&t[1], LinearOp).unwrap(),
        |t| t[0].broadcast_matmul(&t[1].t().unwrap()).unwrap(),
        1e-5,
    );
    let bad = randn(&[7, 23], 6);
    assert!(inputs[0].apply_op2(bad.as_tensor(), LinearOp).is_err());
}

#[test]
fn mlp_matches_plain_ops() {
    // The gate-and-up weight: 40 gate rows, then 40 up rows, of 24 inputs; down: 24 x 40.
    let inputs = [
        randn(&[2, 9, 24], 3),
        randn(&[80, 24], 7),
        randn(&[24, 40], 8),
    ];
    check(
        &inputs,
        |t| t[0].apply_op3(&t[1], &t[2], MlpOp::new(40)).unwrap(),
        |t| {
            let gu = t[0].broadcast_matmul(&t[1].t().unwrap()).unwrap();
            let hidden = (gu.narrow(2, 0, 40).unwrap().silu().unwrap()
                * gu.narrow(2, 40, 40).unwrap())
            .unwrap();
            hidden.broadcast_matmul(&t[2].t().unwrap()).unwrap()
        },
        1e-5,
    );
    let err = inputs[0]
        .apply_op3(
            randn(&[80, 24], 9).as_tensor(),
            randn(&[24, 41], 10).as_tensor(),
            MlpOp::new(40),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("are not (2 x 40, ..) and (.., 40)"), "{err}");
}

/// The plain differentiable path over the fused projection's output `(b * t, (h + 2kv) * hd)`:
/// split, to `(b, heads, t, hd)`, RoPE, scores, causal mask, softmax, weighted values, back.
fn plain_attention(qkv: &Tensor, b: usize, h: usize, kv: usize, hd: usize, rope: &Rope) -> Tensor {
    let t = qkv.dim(0).unwrap() / b;
    let part = |start: usize, n: usize| {
        qkv.narrow(1, start * hd, n * hd)
            .unwrap()
            .reshape((b, t, n, hd))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
    };
    let q = rope.apply(&part(0, h), 0, true).unwrap();
    let k = rope.apply(&part(h, kv), 0, true).unwrap();
    let v = part(h + kv, kv).contiguous().unwrap();
    let group = h / kv;
    let q = q
        .contiguous()
        .unwrap()
        .reshape((b, kv, group * t, hd))
        .unwrap();
    let scale = 1.0 / (hd as f64).sqrt();
    let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
    let mask = causal_mask(t, t, 0, DType::F32, &Device::Cpu).unwrap();
    let scores = scores
        .reshape((b, kv, group, t, t))
        .unwrap()
        .broadcast_add(&mask)
        .unwrap()
        .reshape((b, kv, group * t, t))
        .unwrap();
    let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
    let out = probs.matmul(&v).unwrap().reshape((b, h, t, hd)).unwrap();
    out.transpose(1, 2)
        .unwrap()
        .reshape((b * t, h * hd))
        .unwrap()
}

#[test]
fn causal_attention_and_its_projection_match_plain_ops_across_blocks_with_grouped_queries_and_rope()
{
    // t = 150 spans three 64-row blocks, the last one partial; 4 query heads share 2 kv heads.
    for (h, kv, t, interleaved) in [(4, 2, 150, false), (2, 2, 64, true), (3, 1, 5, false)] {
        let (b, hd) = (2, 8);
        let rope = Rope::new(hd, 256, 10_000.0, interleaved, DType::F32, &Device::Cpu).unwrap();
        let inputs = [randn(&[b * t, (h + 2 * kv) * hd], 5)];
        let op = || CausalAttentionOp {
            batch: b,
            heads: h,
            kv_heads: kv,
            head_dim: hd,
            scale: (1.0 / (hd as f64).sqrt()) as f32,
            rope: rope.tables(t).unwrap(),
        };
        check(
            &inputs,
            |x| x[0].apply_op1(op()).unwrap(),
            |x| plain_attention(&x[0], b, h, kv, hd, &rope),
            1e-4,
        );
        // The same with the q/k/v projection of 12-wide rows in the node.
        let inputs = [randn(&[b * t, 12], 6), randn(&[(h + 2 * kv) * hd, 12], 7)];
        check(
            &inputs,
            |x| x[0].apply_op2(&x[1], AttentionLinearOp::new(op())).unwrap(),
            |x| {
                let qkv = x[0].matmul(&x[1].t().unwrap()).unwrap();
                plain_attention(&qkv, b, h, kv, hd, &rope)
            },
            1e-4,
        );
    }
}

#[test]
fn linear_cross_entropy_matches_plain_ops_over_several_chunks() {
    // 600 rows: three 256-row chunks, the last one partial.
    let (n, d, vocab) = (600, 16, 70);
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 31 + 7) % vocab as u32).collect();
    let targets = Tensor::from_vec(targets, n, &Device::Cpu).unwrap();
    let inputs = [randn(&[n, d], 8), randn(&[vocab, d], 9)];
    let fused =
        |t: &[Tensor]| (linear_cross_entropy(&t[0], &t[1], &targets).unwrap() * 0.75).unwrap();
    let plain = |t: &[Tensor]| {
        let logits = t[0].matmul(&t[1].t().unwrap()).unwrap();
        (candle_nn::loss::cross_entropy(&logits, &targets).unwrap() * 0.75).unwrap()
    };
    check(&inputs, fused, plain, 1e-5);
}

#[test]
fn linear_cross_entropy_refuses_targets_outside_the_vocabulary() {
    let x = randn(&[4, 8], 1);
    let w = randn(&[10, 8], 2);
    let targets = Tensor::from_vec(vec![1u32, 2, 10, 3], 4, &Device::Cpu).unwrap();
    let err = linear_cross_entropy(x.as_tensor(), w.as_tensor(), &targets)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("target 10 outside the vocabulary of 10"),
        "{err}"
    );
}

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

fn step_grads(
    set: &ParamSet,
    kernels: Kernels,
    order: LossOrder,
    weights: &[f32],
    w: &Tensor,
) -> BatchGrads {
    let mut model = set.training_model(DType::F32).unwrap();
    model.set_kernels(kernels);
    let vars: Vec<_> = set.trainable().into_iter().map(|(_, v)| v).collect();
    batch_grads(&model, &vars, set.trunk_trainable(), w, weights, order).unwrap()
}

fn check_training_step(spec: TinySpec, weights: &[f32]) {
    let cfg = spec.config();
    let tensors: HashMap<String, Tensor> = init_weights(&cfg, 11, 0.1, &Device::Cpu).unwrap();
    let set = ParamSet::new(&cfg, tensors, Trainable::All).unwrap();
    let names: Vec<String> = set.trainable().into_iter().map(|(n, _)| n).collect();
    // 2 x 100 inputs: attention spans two blocks.
    let w = windows(2, 101, 3);
    for order in [LossOrder::Sequential, LossOrder::Joint] {
        let fused = step_grads(&set, Kernels::Training, order, weights, &w);
        let plain = step_grads(&set, Kernels::Differentiable, order, weights, &w);
        for (h, (a, b)) in fused.head_losses.iter().zip(&plain.head_losses).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs(),
                "{order:?} head {h} loss {a} vs {b}"
            );
        }
        for (i, name) in names.iter().enumerate() {
            let a = fused.grads[i]
                .as_ref()
                .unwrap_or_else(|| panic!("fused: no gradient for {name}"));
            let b = plain.grads[i].as_ref().unwrap();
            let scale = max_abs(b);
            let d = max_abs_diff(a, b);
            assert!(
                scale > 0.0 && d <= 1e-4 * scale,
                "{order:?} {name}: gradients differ by {d} (scale {scale})"
            );
        }
    }
}

#[test]
fn training_step_with_fused_kernels_matches_plain_ops() {
    check_training_step(TinySpec::default(), &[1.0; 4]);
}

#[test]
fn training_step_matches_with_tied_embeddings_qwen2_biases_interleaved_rope_and_head_weights() {
    let spec = TinySpec {
        tie_word_embeddings: true,
        model_type: "qwen2",
        rope_interleaved: true,
        ..Default::default()
    };
    check_training_step(spec, &[1.0, 0.5, 0.25, 2.0]);
}

#[test]
fn training_model_takes_the_fused_kernels_on_the_cpu_in_f32_only() {
    let cfg = TinySpec::default().config();
    let set = ParamSet::new(
        &cfg,
        init_weights(&cfg, 1, 0.1, &Device::Cpu).unwrap(),
        Trainable::All,
    )
    .unwrap();
    let model = set.training_model(DType::F32).unwrap();
    assert_eq!(model.kernels(), Kernels::Training);
    let x = Tensor::zeros((1, 2, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(model.kernels().fused_training(&x));
    assert!(!model
        .kernels()
        .fused_training(&x.to_dtype(DType::BF16).unwrap()));
    assert!(!Kernels::Differentiable.fused_training(&x));
}
