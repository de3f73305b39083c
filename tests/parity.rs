//! Numerics: with n=1 the model's logits match candle-transformers' Llama and Qwen2 on identical
//! weights, and Meta's interleaved RoPE layout gives the same logits as Hugging Face's half layout
//! once q/k rows are permuted the way the HF converter does.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::max_abs_diff;
use foresight::model::tiny::TinySpec;
use foresight::model::weights::{init_weights, model_from_tensors};
use foresight::model::{Logits, ModelConfig};

const TOL: f32 = 1e-4;

fn spec(model_type: &'static str, tie: bool) -> TinySpec {
    TinySpec {
        n_future_tokens: 1,
        model_type,
        tie_word_embeddings: tie,
        weight_std: 0.1,
        ..Default::default()
    }
}

fn ours_last_logits(
    cfg: &ModelConfig,
    tensors: HashMap<String, Tensor>,
    seqs: &[&[u32]],
) -> Vec<Tensor> {
    let model = model_from_tensors(cfg, tensors, DType::F32, &Device::Cpu).unwrap();
    let mut cache = model.new_cache(128, 1).unwrap();
    seqs.iter()
        .map(|s| {
            model
                .forward(&mut cache, s, Logits::Last)
                .unwrap()
                .logits
                .squeeze(0)
                .unwrap()
        })
        .collect()
}

const PROMPT: &[u32] = &[3, 17, 200, 45, 45, 9, 128, 255, 0, 77, 31, 4];
const STEP: &[u32] = &[99];

#[test]
fn llama_matches_candle_transformers() {
    for tie in [false, true] {
        let cfg = spec("llama", tie).config();
        let tensors = init_weights(&cfg, 11, 0.1, &Device::Cpu).unwrap();
        let ours = ours_last_logits(&cfg, tensors.clone(), &[PROMPT, STEP]);

        let json = serde_json::to_string(&cfg).unwrap();
        let llama_cfg: candle_transformers::models::llama::LlamaConfig =
            serde_json::from_str(&json).unwrap();
        let llama_cfg = llama_cfg.into_config(false);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let reference = candle_transformers::models::llama::Llama::load(vb, &llama_cfg).unwrap();
        let mut cache = candle_transformers::models::llama::Cache::new(
            true,
            DType::F32,
            &llama_cfg,
            &Device::Cpu,
        )
        .unwrap();
        let mut pos = 0;
        for (seq, ours) in [PROMPT, STEP].iter().zip(&ours) {
            let ids = Tensor::new(*seq, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let want = reference
                .forward(&ids, pos, &mut cache)
                .unwrap()
                .squeeze(0)
                .unwrap();
            pos += seq.len();
            let diff = max_abs_diff(ours, &want);
            assert!(diff < TOL, "tie={tie}: {diff}");
        }
    }
}

#[test]
fn qwen2_with_qkv_bias_matches_candle_transformers() {
    let cfg = spec("qwen2", false).config();
    assert!(cfg.qkv_bias());
    let tensors = init_weights(&cfg, 12, 0.1, &Device::Cpu).unwrap();
    assert!(tensors.contains_key("model.layers.0.self_attn.q_proj.bias"));
    let ours = ours_last_logits(&cfg, tensors.clone(), &[PROMPT, STEP]);

    let mut json = serde_json::to_value(&cfg).unwrap();
    json["sliding_window"] = 4096.into();
    json["max_window_layers"] = 0.into();
    json["use_sliding_window"] = false.into();
    json["hidden_act"] = "silu".into();
    let qcfg: candle_transformers::models::qwen2::Config = serde_json::from_value(json).unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let mut reference =
        candle_transformers::models::qwen2::ModelForCausalLM::new(&qcfg, vb).unwrap();
    let mut pos = 0;
    for (seq, ours) in [PROMPT, STEP].iter().zip(&ours) {
        let ids = Tensor::new(*seq, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want = reference
            .forward(&ids, pos)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap();
        pos += seq.len();
        assert!(max_abs_diff(ours, &want) < TOL);
    }
}

/// Inverse of Hugging Face's `permute` in convert_llama_weights_to_hf: HF (half-rotation) rows
/// back to Meta (interleaved) rows. Within each head, Meta row 2i is HF row i, and 2i+1 is i + hd/2.
fn hf_to_meta_rows(w: &Tensor, n_heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    let hd = rows / n_heads;
    w.reshape((n_heads, 2, hd / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

#[test]
fn interleaved_rope_on_meta_layout_equals_half_rope_on_hf_layout() {
    let mut s = TinySpec {
        n_future_tokens: 4,
        weight_std: 0.1,
        ..Default::default()
    };
    let hf_cfg = s.config();
    let hf = init_weights(&hf_cfg, 13, 0.1, &Device::Cpu).unwrap();
    s.rope_interleaved = true;
    let meta_cfg = s.config();
    let meta: HashMap<String, Tensor> = hf
        .iter()
        .map(|(name, t)| {
            let t = if name.ends_with("q_proj.weight") {
                hf_to_meta_rows(t, hf_cfg.num_attention_heads)
            } else if name.ends_with("k_proj.weight") {
                hf_to_meta_rows(t, hf_cfg.n_kv_heads())
            } else {
                t.clone()
            };
            (name.clone(), t)
        })
        .collect();
    let a = model_from_tensors(&hf_cfg, hf, DType::F32, &Device::Cpu).unwrap();
    let b = model_from_tensors(&meta_cfg, meta, DType::F32, &Device::Cpu).unwrap();
    let out_a = a
        .forward(&mut a.new_cache(64, 4).unwrap(), PROMPT, Logits::All)
        .unwrap();
    let out_b = b
        .forward(&mut b.new_cache(64, 4).unwrap(), PROMPT, Logits::All)
        .unwrap();
    assert!(max_abs_diff(&out_a.logits, &out_b.logits) < TOL);
    let (ea, eb) = (
        a.extra_head_logits(&out_a, 5).unwrap(),
        b.extra_head_logits(&out_b, 5).unwrap(),
    );
    for (x, y) in ea.iter().zip(&eb) {
        let d = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(d < TOL, "{d}");
    }
    // And the permutation matters: the HF weights under interleaved RoPE give other logits.
    let hf_again = init_weights(&hf_cfg, 13, 0.1, &Device::Cpu).unwrap();
    let c = model_from_tensors(&meta_cfg, hf_again, DType::F32, &Device::Cpu).unwrap();
    let out_c = c
        .forward(&mut c.new_cache(64, 4).unwrap(), PROMPT, Logits::All)
        .unwrap();
    assert!(max_abs_diff(&out_a.logits, &out_c.logits) > 1e-2);
}
