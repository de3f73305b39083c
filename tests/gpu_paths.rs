//! The GPU code paths, checked on the CPU: the fused attention op (through its CPU side, the one
//! CPU attention over a cache) gives the plain attention's logits in prefill, decode and multi-row
//! verification chunks, over grouped-query and interleaved-RoPE models, in f32 and bf16; and the
//! bf16 weight path returns f32 logits. The CUDA kernels themselves run in scripts/gpu_check.sh.

mod common;

use candle_core::{DType, Device, Tensor};
use common::max_abs_diff;
use foresight::model::tiny::TinySpec;
use foresight::model::{Kernels, Logits, MtpModel};

/// Logits of every step of: prefill 9 tokens, then chunks of 1, 4 (a verification) and 1.
fn steps(model: &MtpModel) -> Vec<Tensor> {
    let tokens: Vec<u32> = (0..15).map(|i| (i * 37 + 11) % 250).collect();
    let mut cache = model.new_cache(32, model.n_heads()).unwrap();
    let mut out = Vec::new();
    for chunk in [&tokens[..9], &tokens[9..10], &tokens[10..14], &tokens[14..]] {
        let f = model.forward(&mut cache, chunk, Logits::All).unwrap();
        assert_eq!(f.logits.dtype(), DType::F32);
        out.push(f.logits);
        for h in &f.extra_hidden {
            out.push(model.project(&h.to_dtype(model.dtype()).unwrap()).unwrap());
        }
    }
    out
}

fn model(spec: &TinySpec, dtype: DType, kernels: Kernels) -> MtpModel {
    let mut m = spec.model().unwrap();
    if dtype != DType::F32 {
        let tensors = m.named_tensors().into_iter().collect();
        m = foresight::model::weights::model_from_tensors(m.config(), tensors, dtype, &Device::Cpu)
            .unwrap();
    }
    m.set_kernels(kernels);
    m
}

#[test]
fn fused_attention_equals_plain_attention_in_f32() {
    for spec in [
        TinySpec::default(),
        TinySpec {
            rope_interleaved: true,
            num_key_value_heads: 1,
            ..Default::default()
        },
        TinySpec {
            model_type: "qwen2",
            num_key_value_heads: 4,
            tie_word_embeddings: true,
            ..Default::default()
        },
    ] {
        let plain = steps(&model(&spec, DType::F32, Kernels::PlainAttention));
        let fused = steps(&model(&spec, DType::F32, Kernels::FusedAttention));
        let cpu_default = steps(&model(&spec, DType::F32, Kernels::Fused));
        for ((p, f), c) in plain.iter().zip(&fused).zip(&cpu_default) {
            assert!(
                max_abs_diff(p, f) < 1e-4,
                "{spec:?}: fused vs plain {}",
                max_abs_diff(p, f)
            );
            assert!(
                max_abs_diff(p, c) < 1e-4,
                "{spec:?}: small-chunk vs plain {}",
                max_abs_diff(p, c)
            );
        }
    }
}

#[test]
fn bf16_paths_agree_with_f32_within_bf16_tolerance() {
    let spec = TinySpec::default();
    let reference = steps(&model(&spec, DType::F32, Kernels::PlainAttention));
    let plain = steps(&model(&spec, DType::BF16, Kernels::PlainAttention));
    let fused = steps(&model(&spec, DType::BF16, Kernels::FusedAttention));
    for ((r, p), f) in reference.iter().zip(&plain).zip(&fused) {
        let scale = r
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let (ep, ef) = (max_abs_diff(r, p), max_abs_diff(r, f));
        // bf16 weights and activations through a few random layers: within 10% of the logit range,
        // and the fused path (f32 inside the kernel) no worse than the plain one beyond noise.
        assert!(
            ep < 0.1 * scale && ef < 0.1 * scale,
            "bf16 vs f32: plain {ep}, fused {ef} (scale {scale})"
        );
        assert!(
            ef < 1.5 * ep + 0.01 * scale,
            "fused bf16 error {ef} vs plain bf16 error {ep}"
        );
        // Logits are computed in f32 from bf16 weights, not rounded to bf16: most are not bf16 values.
        let v = f.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let not_bf16 = v
            .iter()
            .filter(|x| half::bf16::from_f32(**x).to_f32() != **x)
            .count();
        assert!(
            not_bf16 * 2 > v.len(),
            "{not_bf16} of {} logits are off the bf16 grid",
            v.len()
        );
    }
}
