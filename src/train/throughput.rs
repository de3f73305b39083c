//! Training throughput at given shapes: tokens/s of whole optimizer steps (gradients in the
//! memory-efficient order, then AdamW) on random token ids, with the fused training kernels or
//! the plain differentiable ops. What `foresight bench train` measures and compares with the
//! PyTorch reference. Not a measure of learning: the data are random.

use std::time::Instant;

use candle_core::{DType, Device};
use rand::{Rng, SeedableRng};

use super::error::Result;
use super::objective::{batch_grads, windows_tensor};
use super::optim::{AdamW, AdamWConfig};
use super::params::{ParamSet, Trainable};
use crate::model::weights::{init_weights, param_counts};
use crate::model::{Kernels, ModelConfig};

/// The shapes of one measurement: a Llama-style MTP model like the default model's.
#[derive(Debug, Clone, PartialEq)]
pub struct Shapes {
    pub hidden: usize,
    pub intermediate: usize,
    pub attention_heads: usize,
    pub vocab: usize,
    pub trunk_layers: usize,
    /// Output heads n (one transformer layer each).
    pub heads: usize,
    pub seq_len: usize,
    pub batch: usize,
}

impl Shapes {
    /// The default model's shapes (d 256, SwiGLU 704, 4 x 64 attention, vocab 4096, 512 x 4) with
    /// `trunk_layers` and `heads`, widened by `scale` (hidden, FFN and attention heads times `scale`).
    pub fn default_model(trunk_layers: usize, heads: usize, scale: usize) -> Self {
        Self {
            hidden: 256 * scale,
            intermediate: 704 * scale,
            attention_heads: 4 * scale,
            vocab: 4096,
            trunk_layers,
            heads,
            seq_len: 512,
            batch: 4,
        }
    }

    pub fn config(&self) -> ModelConfig {
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.trunk_layers + 1,
            "num_attention_heads": self.attention_heads,
            "num_key_value_heads": self.attention_heads,
            "max_position_embeddings": self.seq_len,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "hidden_act": "silu",
            "n_future_tokens": self.heads,
        });
        serde_json::from_value(json).expect("the throughput config is valid")
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    pub params: usize,
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
}

/// Runs one warm-up step, then `steps` timed steps, on random tokens with `kernels`
/// (`Kernels::Training` or `Kernels::Differentiable`), f32 on the CPU.
pub fn measure(shapes: &Shapes, kernels: Kernels, steps: usize) -> Result<Throughput> {
    let cfg = shapes.config();
    cfg.validate()?;
    let tensors = init_weights(&cfg, 0, 0.02, &Device::Cpu)?;
    let set = ParamSet::new(&cfg, tensors, Trainable::All)?;
    let vars: Vec<_> = set.trainable().into_iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(vars.clone(), AdamWConfig::default())?;
    let mut model = set.training_model(DType::F32)?;
    model.set_kernels(kernels);
    let weights = vec![1.0f32; shapes.heads];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut total = 0.0;
    for step in 0..=steps {
        let w: Vec<Vec<u32>> = (0..shapes.batch)
            .map(|_| {
                (0..=shapes.seq_len)
                    .map(|_| rng.random_range(0..shapes.vocab as u32))
                    .collect()
            })
            .collect();
        let windows = windows_tensor(&w, &Device::Cpu)?;
        let t0 = Instant::now();
        let g = batch_grads(
            &model,
            &vars,
            true,
            &windows,
            &weights,
            super::LossOrder::Sequential,
        )?;
        opt.step(&g.grads, 1e-4)?;
        if step > 0 {
            total += t0.elapsed().as_secs_f64();
        }
    }
    let per_step = total / steps.max(1) as f64;
    Ok(Throughput {
        params: param_counts(&cfg).total(),
        ms_per_step: per_step * 1e3,
        tokens_per_s: (shapes.batch * shapes.seq_len) as f64 / per_step,
    })
}
