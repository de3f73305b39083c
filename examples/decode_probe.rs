//! Times `generate` on a model directory: plain vs speculative (MTP heads), 64 greedy tokens from
//! the same prompt, caches reused as the server does (the prompt prefix stays cached).
//! Not a test. Run: `MODEL=models/default ITERS=50 cargo run --release --example decode_probe`
use std::time::Instant;

use candle_core::{DType, Device};
use foresight::decode::{generate, Control, DraftSource, GenerateParams, HeadDrafts, NoDrafts};

fn main() {
    // INSTALL=1: run everything on a rayon pool worker, so the decoding thread itself takes part in
    // the parallel kernels instead of handing each one to the pool and sleeping.
    if std::env::var_os("INSTALL").is_some() {
        foresight::model::cpu_kernels::run_on_kernel_pool(body);
    } else {
        body();
    }
}

fn body() {
    let dir = std::env::var("MODEL").unwrap_or_else(|_| "models/default".into());
    let iters: usize = std::env::var("ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut loaded =
        foresight::model::weights::load_dir(std::path::Path::new(&dir), &Device::Cpu, DType::F32)
            .unwrap();
    if std::env::var_os("F32").is_none() {
        loaded.model.compact_for_decode().unwrap();
    }
    let model = &loaded.model;
    let text = std::fs::read_to_string("src/complete/policy.rs").unwrap();
    let prompt: Vec<u32> = loaded
        .tokenizer
        .encode(&text[..3000], false)
        .unwrap()
        .get_ids()
        .iter()
        .take(300)
        .copied()
        .collect();
    let only: Option<usize> = std::env::var("HEADS").ok().and_then(|v| v.parse().ok());
    for (name, heads) in [("plain", 1usize), ("spec", model.n_heads())]
        .into_iter()
        .filter(|(_, h)| only.is_none_or(|o| o == *h))
    {
        let mut cache = model.new_cache(512, heads).unwrap();
        let params = GenerateParams {
            max_tokens: 64,
            max_draft_len: heads - 1,
            sampling: None,
            stop_tokens: Vec::new(),
        };
        let mut times = Vec::new();
        let mut last = None;
        for i in 0..iters {
            // A different last prompt token each time: the prefix is reused, as when typing.
            let mut p = prompt.clone();
            *p.last_mut().unwrap() = (i % 50) as u32 + 100;
            let mut drafter: Box<dyn DraftSource> = if heads > 1 {
                Box::new(HeadDrafts::default())
            } else {
                Box::new(NoDrafts)
            };
            let t = Instant::now();
            let g = generate(
                model,
                &mut cache,
                &p,
                &params,
                drafter.as_mut(),
                &Control::default(),
            )
            .unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            last = Some(g.stats);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let s = last.unwrap();
        println!(
            "{name}: p50 {:.1} ms, min {:.1} ms; {} tokens, {} forwards, reused {}",
            times[times.len() / 2],
            times[0],
            s.tokens,
            s.forwards,
            s.reused_tokens
        );
    }
}
