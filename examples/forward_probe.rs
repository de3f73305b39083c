//! Times forward passes of a random model of a given size: a 1,000-token prefill, then decode chunks
//! of 1, 4, ... tokens over that cache. Not a test; numbers go to docs/BENCHMARKS.md.
//! INSTALL=1 runs on the decode thread pool (as decoding does), HEADS=1 or HEADS=4 one cache only.
//! Run: `ITERS=100 CHUNKS=1,4,8 cargo run --release --example forward_probe -- 256 6 8192 4` (d, layers, vocab, heads),
//! or `MODEL=models/default PROMPT=200 cargo run --release --example forward_probe` for a model directory.
use candle_core::{DType, Device};
use foresight::model::weights::{init_weights, model_from_tensors};
use foresight::model::{Logits, ModelConfig};
use std::time::Instant;

fn main() {
    // INSTALL=1: run on a rayon pool worker, as decoding does (`run_on_kernel_pool`).
    if std::env::var_os("INSTALL").is_some() {
        foresight::model::cpu_kernels::run_on_kernel_pool(body);
    } else {
        body();
    }
}

fn body() {
    let model = match std::env::var("MODEL") {
        Ok(dir) => {
            foresight::model::weights::load_dir(
                std::path::Path::new(&dir),
                &Device::Cpu,
                DType::F32,
            )
            .unwrap()
            .model
        }
        Err(_) => {
            let args: Vec<usize> = std::env::args()
                .skip(1)
                .map(|a| a.parse().unwrap())
                .collect();
            let (d, layers, vocab, heads) = (args[0], args[1], args[2], args[3]);
            let cfg: ModelConfig = serde_json::from_value(serde_json::json!({
                "model_type": "llama", "vocab_size": vocab, "hidden_size": d, "intermediate_size": d * 8 / 3 / 64 * 64,
                "num_hidden_layers": layers, "num_attention_heads": d / 64, "num_key_value_heads": d / 64,
                "n_future_tokens": heads, "max_position_embeddings": 4096})).unwrap();
            let t = init_weights(&cfg, 1, 0.02, &Device::Cpu).unwrap();
            model_from_tensors(&cfg, t, DType::F32, &Device::Cpu).unwrap()
        }
    };
    let mut model = model;
    if std::env::var_os("F32").is_none() {
        eprintln!(
            "{} projections compacted to bf16 (F32=1 to keep f32)",
            model.compact_for_decode().unwrap()
        );
    }
    let vocab = model.vocab_size();
    let prompt_len: usize = std::env::var("PROMPT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let prompt: Vec<u32> = (0..prompt_len).map(|i| (i * 7 % vocab) as u32).collect();
    // HEADS=1 or HEADS=n: only that cache (the trunk and head 1, or every head).
    let only: Option<usize> = std::env::var("HEADS").ok().and_then(|v| v.parse().ok());
    for n_heads in [1, model.n_heads()]
        .into_iter()
        .filter(|h| only.is_none_or(|o| o == *h))
    {
        let mut cache = model.new_cache(prompt_len + 64, n_heads).unwrap();
        let t0 = Instant::now();
        model.forward(&mut cache, &prompt, Logits::Last).unwrap();
        let prefill = t0.elapsed().as_secs_f64() * 1e3;
        let mut times = vec![];
        let iters: usize = std::env::var("ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20);
        for chunk in std::env::var("CHUNKS")
            .unwrap_or("1,4".into())
            .split(',')
            .map(|c| c.parse::<usize>().unwrap())
        {
            let t0 = Instant::now();
            for i in 0..iters {
                let toks: Vec<u32> = (0..chunk).map(|j| ((i + j) % vocab) as u32).collect();
                let out = model.forward(&mut cache, &toks, Logits::All).unwrap();
                if n_heads > 1 {
                    model.extra_head_logits(&out, 0).unwrap();
                }
                let _ = out.logits.to_vec2::<f32>().unwrap();
                cache.truncate(prompt_len);
            }
            times.push(t0.elapsed().as_secs_f64() * 1e3 / iters as f64);
        }
        println!(
            "heads {n_heads}: prefill {prompt_len} tok {prefill:.1} ms; decode {:?} ms",
            times
        );
    }
}
