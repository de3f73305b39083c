//! Training benchmarks, each configuration in a fresh child process so that its peak RSS
//! (VmHWM from /proc/self/status) is its own:
//!   cargo bench --bench train -- memory       peak memory of the sequential and joint loss orders, n = 1 and 4, vocab 32k
//!   cargo bench --bench train -- throughput   tokens/s of a ~10M-parameter model (preset 10m, vocab 8192)
//! Data are random token ids: neither figure depends on the text.

use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use foresight::model::weights::{init_weights, param_counts};
use foresight::train::objective::{batch_grads, windows_tensor};
use foresight::train::optim::{AdamW, AdamWConfig};
use foresight::train::params::{ParamSet, Trainable};
use foresight::train::presets::scratch_config;
use foresight::train::LossOrder;
use rand::{Rng, SeedableRng};

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn random_windows(b: usize, len: usize, vocab: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let w: Vec<Vec<u32>> = (0..b)
        .map(|_| {
            (0..len)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect()
        })
        .collect();
    windows_tensor(&w, &Device::Cpu).unwrap()
}

/// One configuration: `steps` full training steps (gradients + AdamW); prints one result line.
fn child(args: &[String]) {
    let kind = args[0].as_str();
    let order: LossOrder = args[1].parse().unwrap();
    let heads: usize = args[2].parse().unwrap();
    let vocab: usize = args[3].parse().unwrap();
    let (batch, seq): (usize, usize) = (args[4].parse().unwrap(), args[5].parse().unwrap());
    let steps: usize = args[6].parse().unwrap();
    if args.get(7).map(String::as_str) == Some("tuned") {
        foresight::train::tune_allocator_for_training();
    }
    let cfg = scratch_config("10m", vocab, Some(heads)).unwrap();
    let params = param_counts(&cfg).total();
    let tensors = init_weights(&cfg, 0, 0.02, &Device::Cpu).unwrap();
    let set = ParamSet::new(&cfg, tensors, Trainable::All).unwrap();
    let (_, vars): (Vec<String>, Vec<_>) = set.trainable().into_iter().unzip();
    let mut opt = AdamW::new(vars.clone(), AdamWConfig::default()).unwrap();
    let model = set.training_model(DType::F32).unwrap();
    let weights = vec![1.0f32; heads];
    let before_kb = status_kb("VmRSS:");
    let mut times = Vec::new();
    for step in 0..steps {
        let windows = random_windows(batch, seq + 1, vocab, step as u64);
        let t0 = Instant::now();
        let g = batch_grads(&model, &vars, true, &windows, &weights, order).unwrap();
        opt.step(&g.grads, 1e-4).unwrap();
        times.push(t0.elapsed().as_secs_f64());
    }
    let peak_kb = status_kb("VmHWM:");
    match kind {
        "memory" => println!(
            "| {:?} | {heads} | {vocab} | {batch}x{seq} | {:.1}M | {:.0} | {:.0} | {:.0} |",
            order,
            params as f64 / 1e6,
            before_kb as f64 / 1024.0,
            peak_kb as f64 / 1024.0,
            (peak_kb - before_kb) as f64 / 1024.0
        ),
        _ => {
            // The first step warms caches and the allocator; report the rest.
            let measured = &times[1.min(times.len() - 1)..];
            let secs: f64 = measured.iter().sum::<f64>() / measured.len() as f64;
            println!(
                "| {:.1}M | {heads} | {vocab} | {batch}x{seq} | {:?} | {} | {:.2} | {:.0} |",
                params as f64 / 1e6,
                order,
                args.get(7).map_or("default", |s| s.as_str()),
                secs,
                (batch * seq) as f64 / secs
            );
        }
    }
}

fn spawn(args: &[&str]) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .arg("--child")
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "child {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--child") {
        child(&args[1..]);
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        // Under `cargo test` (no --bench flag): one small step keeps the harness working, fast.
        println!("smoke run; measure with `cargo bench --bench train -- memory|throughput`");
        spawn(&[
            "throughput",
            "sequential",
            "4",
            "512",
            "1",
            "64",
            "1",
            "default",
        ]);
        return;
    }
    let what = args.first().map(String::as_str).unwrap_or("all");
    if what == "memory" || what == "all" {
        println!(
            "peak memory of one training step (gradients + AdamW), f32 on CPU, model preset 10m:"
        );
        println!("| loss order | heads | vocab | batch x seq | params | RSS before step (MiB) | peak RSS (MiB) | step peak over baseline (MiB) |");
        println!("|---|---|---|---|---|---|---|---|");
        for heads in ["1", "4"] {
            for order in ["sequential", "joint"] {
                spawn(&["memory", order, heads, "32000", "4", "512", "1", "default"]);
            }
        }
    }
    if what == "throughput" || what == "all" {
        println!(
            "training throughput, f32 on CPU ({} threads):",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        println!(
            "| params | heads | vocab | batch x seq | loss order | allocator | s/step | tokens/s |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        spawn(&[
            "throughput",
            "sequential",
            "4",
            "8192",
            "8",
            "512",
            "4",
            "tuned",
        ]);
        spawn(&[
            "throughput",
            "sequential",
            "1",
            "8192",
            "8",
            "512",
            "4",
            "tuned",
        ]);
        spawn(&["throughput", "joint", "4", "8192", "8", "512", "4", "tuned"]);
        spawn(&[
            "throughput",
            "sequential",
            "4",
            "8192",
            "8",
            "512",
            "4",
            "default",
        ]);
    }
}
