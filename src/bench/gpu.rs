//! `foresight bench-gpu`: prefill tokens/s, decode ms/token (plain and speculative), completion
//! latency, and training tokens/s with peak GPU memory, for a 1B-class configuration with random
//! weights and for real model directories; optional correctness checks on the device (GPU vs CPU
//! logits, fused vs plain attention, greedy speculative == plain). Writes one JSON report.
//! Times are measured after a device synchronize; the figures are reported, never asserted. The
//! CLI only resolves the default model directory and calls [`run`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde::Serialize;

use crate::decode::{generate, Control, DraftSource, GenerateParams, HeadDrafts, NoDrafts};
use crate::model::tiny::TinySpec;
use crate::model::weights::{expected_tensors, load_dir, model_from_tensors, param_counts};
use crate::model::{
    weight_dtype, DeviceChoice, Kernels, Logits, ModelConfig, ModelError, MtpModel,
};
use crate::train::TrainError;

/// Why a GPU benchmark run stopped.
#[derive(Debug, thiserror::Error)]
pub enum GpuBenchError {
    /// A refusal with what to do about it (no GPU, a bad option, a model too small).
    #[error("{0}")]
    Refused(String),
    #[error("cannot load model {dir}: {source}")]
    Load {
        dir: String,
        source: Box<ModelError>,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("device checks failed: {0}")]
    ChecksFailed(String),
    #[error(transparent)]
    Model(Box<ModelError>),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Model errors are boxed: they are large, and every `Result` here would carry their size.
impl From<ModelError> for GpuBenchError {
    fn from(e: ModelError) -> Self {
        GpuBenchError::Model(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, GpuBenchError>;

/// H100/H200-class HBM3e bandwidth used for the floor (bytes per second).
pub const HBM_BYTES_PER_S: f64 = 4.3e12;

#[derive(Args, Debug)]
pub struct GpuBenchArgs {
    /// Where to run: cuda (default), cuda:N, auto or cpu (cpu only for smoke tests).
    #[arg(long, default_value = "cuda")]
    pub device: DeviceChoice,
    /// Random-weight configurations to measure: 1b (Llama-style, 1.1B parameters, 4 heads) and/or
    /// tiny (a smoke test). Comma-separated; "none" for none.
    #[arg(long, default_value = "1b")]
    pub preset: String,
    /// Model directories to measure as well (repeatable) [default: models/default, if present;
    /// the CLI fills it in].
    #[arg(long)]
    pub model: Vec<PathBuf>,
    /// Prompt length for decode and completion latency.
    #[arg(long, default_value_t = 1024)]
    pub prompt_tokens: usize,
    /// Tokens generated for decode ms/token.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Tokens of a completion, for completion latency.
    #[arg(long, default_value_t = 64)]
    pub completion_tokens: usize,
    /// Prefill lengths measured (comma-separated).
    #[arg(long, default_value = "512,2048")]
    pub prefill: String,
    /// Timed repetitions (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Training measurement: sequence length, batch size and timed steps (0 steps skips it).
    #[arg(long, default_value_t = 1024)]
    pub train_seq: usize,
    #[arg(long, default_value_t = 4)]
    pub train_batch: usize,
    #[arg(long, default_value_t = 3)]
    pub train_steps: usize,
    /// Also run the device checks (GPU vs CPU logits, fused vs plain attention, spec == plain).
    #[arg(long)]
    pub check: bool,
    /// Stop starting new measurements after this many seconds (what is done is still written).
    #[arg(long, default_value_t = 420)]
    pub budget_secs: u64,
    /// JSON report path.
    #[arg(long, default_value = "bench_gpu.json")]
    pub out: PathBuf,
}

/// A 1B-class MTP configuration: Llama-style d=2048, 32 heads (8 kv), SwiGLU 8192, vocab 32000,
/// 4 heads compute-matched (12 trunk layers + 4 head layers = 16 layers, 1.1B parameters).
pub fn preset_config(name: &str) -> Option<ModelConfig> {
    let json = match name {
        "1b" => serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
            "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 13,
            "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "max_position_embeddings": 4096, "tie_word_embeddings": false,
            "n_future_tokens": 4, "bos_token_id": 1, "eos_token_id": 2
        }),
        "tiny" => return Some(TinySpec::default().config()),
        _ => return None,
    };
    Some(serde_json::from_value(json).expect("preset config is valid"))
}

/// Bytes of weights one forward pass reads with `heads_used` heads: embedding row(s) aside, every
/// trunk layer, the used head layers, the final norm and the unembedding.
pub fn weight_bytes_per_step(
    cfg: &ModelConfig,
    heads_used: usize,
    bytes_per_param: usize,
) -> usize {
    let c = param_counts(cfg);
    let per_head = if cfg.n_heads() == 0 {
        0
    } else {
        c.heads / cfg.n_heads()
    };
    let unembed = cfg.vocab_size * cfg.hidden_size;
    (c.trunk + per_head * heads_used.min(cfg.n_heads()) + unembed + cfg.hidden_size)
        * bytes_per_param
}

/// Milliseconds to stream `bytes` once at `bytes_per_s`.
pub fn floor_ms(bytes: usize, bytes_per_s: f64) -> f64 {
    bytes as f64 / bytes_per_s * 1e3
}

/// Median of the samples (mean of the middle two for an even count); 0 for none.
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Slack kept free in the cache beyond prompt + new tokens (a verification chunk may overshoot).
pub const CACHE_SLACK: usize = 16;

/// The prompt length to use: the one asked for, shortened so that it, `new_tokens` and the slack
/// fit in `max_positions`; 0 when nothing fits.
pub fn fit_prompt(wanted: usize, new_tokens: usize, max_positions: usize) -> usize {
    wanted.min(max_positions.saturating_sub(new_tokens + CACHE_SLACK))
}

/// Comma-separated positive integers.
pub fn parse_list(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| GpuBenchError::Refused(format!("not a number: {x:?}")))
        })
        .collect()
}

/// Deterministic pseudo-code token ids in `3..vocab` (the prompt content does not matter for speed).
pub fn synthetic_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let span = (vocab.max(4) - 3) as u64;
    (0..n as u64)
        .map(|i| (3 + (i.wrapping_mul(2654435761).wrapping_add(seed * 40503) % span)) as u32)
        .collect()
}

#[derive(Debug, Serialize)]
struct PrefillRow {
    tokens: usize,
    ms: f64,
    tokens_per_s: f64,
}

#[derive(Debug, Serialize)]
struct DecodeRow {
    mode: &'static str,
    prompt_tokens: usize,
    tokens: usize,
    forwards: usize,
    tokens_per_forward: f64,
    ms_per_token: f64,
    ms_per_forward: f64,
}

#[derive(Debug, Serialize)]
struct CompletionRow {
    mode: &'static str,
    prompt_tokens: usize,
    new_tokens: usize,
    /// Prompt prefill plus generation, from token ids in to token ids out.
    latency_ms: f64,
}

#[derive(Debug, Serialize)]
struct TrainRow {
    seq: usize,
    batch: usize,
    steps: usize,
    compute_dtype: String,
    tokens_per_s: f64,
    ms_per_step: f64,
    /// Device memory in use (whole device, from the driver) after the steps: an upper bound on this
    /// process's peak, since freed blocks stay in candle's pool. None on the CPU.
    device_mem_used_bytes: Option<usize>,
}

#[derive(Debug, Serialize, Default)]
struct TargetReport {
    name: String,
    config: Option<ModelConfig>,
    parameters: usize,
    weight_dtype: String,
    /// Weight bytes a plain (head 1 only) forward reads, and its time at 4.3 TB/s.
    plain_step_weight_bytes: usize,
    plain_step_floor_ms: f64,
    spec_step_floor_ms: f64,
    prefill: Vec<PrefillRow>,
    decode: Vec<DecodeRow>,
    completion: Vec<CompletionRow>,
    train: Option<TrainRow>,
    checks: Vec<CheckRow>,
    skipped: Vec<String>,
}

#[derive(Debug, Serialize)]
struct CheckRow {
    name: String,
    passed: bool,
    detail: serde_json::Value,
}

struct Budget {
    start: Instant,
    secs: u64,
}

impl Budget {
    fn left(&self) -> bool {
        self.start.elapsed().as_secs() < self.secs
    }
}

fn sync(device: &Device) -> Result<()> {
    Ok(device.synchronize()?)
}

/// Random weights made on the device itself (fast for 1B parameters), in `dtype`.
fn random_model(cfg: &ModelConfig, device: &Device, dtype: DType, seed: u64) -> Result<MtpModel> {
    if device.is_cuda() {
        device.set_seed(seed)?;
    }
    let mut tensors = HashMap::new();
    for (name, shape) in expected_tensors(cfg) {
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape.as_slice(), DType::F32, device)?
        } else {
            Tensor::randn(0f32, 0.02, shape.as_slice(), device)?
        };
        tensors.insert(name, t.to_dtype(dtype)?);
    }
    Ok(model_from_tensors(cfg, tensors, dtype, device)?)
}

fn time_prefill(model: &MtpModel, n: usize, repeats: usize) -> Result<PrefillRow> {
    let tokens = synthetic_tokens(n, model.vocab_size(), 1);
    let mut samples = Vec::new();
    for r in 0..=repeats {
        let mut cache = model.new_cache(n, model.n_heads())?;
        sync(model.device())?;
        let t0 = Instant::now();
        let out = model.forward(&mut cache, &tokens, Logits::Last)?;
        let _ = out.logits.to_vec2::<f32>()?;
        sync(model.device())?;
        if r > 0 {
            samples.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let ms = median(samples);
    Ok(PrefillRow {
        tokens: n,
        ms,
        tokens_per_s: n as f64 / (ms / 1e3),
    })
}

fn run_generate(
    model: &MtpModel,
    prompt: &[u32],
    max_tokens: usize,
    spec: bool,
) -> Result<crate::decode::Generation> {
    let heads = if spec { model.n_heads() } else { 1 };
    let mut cache = model.new_cache(prompt.len() + max_tokens + CACHE_SLACK, heads)?;
    let params = GenerateParams {
        max_tokens,
        max_draft_len: model.n_heads().saturating_sub(1).max(1),
        sampling: None,
        stop_tokens: Vec::new(),
    };
    let mut drafter: Box<dyn DraftSource> = if spec {
        Box::new(HeadDrafts::default())
    } else {
        Box::new(NoDrafts)
    };
    let g = generate(
        model,
        &mut cache,
        prompt,
        &params,
        drafter.as_mut(),
        &Control::default(),
    )?;
    sync(model.device())?;
    Ok(g)
}

fn modes(model: &MtpModel) -> Vec<(&'static str, bool)> {
    if model.n_heads() > 1 {
        vec![("plain", false), ("spec", true)]
    } else {
        vec![("plain", false)]
    }
}

fn time_decode(model: &MtpModel, args: &GpuBenchArgs) -> Result<Vec<DecodeRow>> {
    let n = fit_prompt(
        args.prompt_tokens,
        args.new_tokens.max(args.completion_tokens),
        model.max_positions(),
    );
    let prompt = synthetic_tokens(n, model.vocab_size(), 2);
    let mut rows = Vec::new();
    for (mode, spec) in modes(model) {
        run_generate(model, &prompt[..prompt.len().min(64)], 8, spec)?; // warm-up
        let mut per_token = Vec::new();
        let mut last = None;
        for _ in 0..args.repeats.max(1) {
            let g = run_generate(model, &prompt, args.new_tokens, spec)?;
            per_token.push(g.stats.decode_ms / g.stats.decode_tokens.max(1) as f64);
            last = Some(g);
        }
        let g = last.expect("at least one repeat");
        let ms_per_token = median(per_token);
        rows.push(DecodeRow {
            mode,
            prompt_tokens: prompt.len(),
            tokens: g.stats.tokens,
            forwards: g.stats.forwards,
            tokens_per_forward: g.stats.tokens_per_forward(),
            ms_per_token,
            ms_per_forward: g.stats.decode_ms / g.stats.decode_forwards.max(1) as f64,
        });
    }
    Ok(rows)
}

fn time_completion(model: &MtpModel, args: &GpuBenchArgs) -> Result<Vec<CompletionRow>> {
    let n = fit_prompt(
        args.prompt_tokens,
        args.new_tokens.max(args.completion_tokens),
        model.max_positions(),
    );
    let prompt = synthetic_tokens(n, model.vocab_size(), 3);
    let mut rows = Vec::new();
    for (mode, spec) in modes(model) {
        let mut samples = Vec::new();
        for r in 0..=args.repeats {
            let t0 = Instant::now();
            run_generate(model, &prompt, args.completion_tokens, spec)?;
            if r > 0 {
                samples.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        rows.push(CompletionRow {
            mode,
            prompt_tokens: prompt.len(),
            new_tokens: args.completion_tokens,
            latency_ms: median(samples),
        });
    }
    Ok(rows)
}

fn device_mem_used(device: &Device) -> Option<usize> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        let ctx = dev.cuda_stream().context().clone();
        ctx.bind_to_thread().ok()?;
        let (free, total) = ctx.mem_get_info().ok()?;
        return Some(total - free);
    }
    let _ = device;
    None
}

/// Training steps as `foresight train` takes them: f32 master weights, compute in the device's
/// weight dtype, sequential per-head backward (the paper's memory-saving order), AdamW.
fn time_train(cfg: &ModelConfig, device: &Device, args: &GpuBenchArgs) -> Result<TrainRow> {
    use crate::train::objective::{batch_grads, windows_tensor};
    use crate::train::optim::{AdamW, AdamWConfig};
    use crate::train::params::{ParamSet, Trainable};
    use crate::train::LossOrder;

    let tensors = random_model(cfg, device, DType::F32, 11)?
        .named_tensors()
        .into_iter()
        .collect();
    let params = ParamSet::new(cfg, tensors, Trainable::All)?;
    let compute = weight_dtype(device);
    let vars: Vec<candle_core::Var> = params.trainable().into_iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(vars.clone(), AdamWConfig::default())?;
    let weights = vec![1.0f32; cfg.n_heads()];
    let windows: Vec<Vec<u32>> = (0..args.train_batch)
        .map(|b| synthetic_tokens(args.train_seq + 1, cfg.vocab_size, 100 + b as u64))
        .collect();
    let windows = windows_tensor(&windows, device)?;
    let mut samples = Vec::new();
    for step in 0..=args.train_steps {
        sync(device)?;
        let t0 = Instant::now();
        let model = params.training_model(compute)?;
        let out = batch_grads(
            &model,
            &vars,
            true,
            &windows,
            &weights,
            LossOrder::Sequential,
        )?;
        opt.step(&out.grads, 1e-4)?;
        sync(device)?;
        if step > 0 {
            samples.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let ms = median(samples);
    Ok(TrainRow {
        seq: args.train_seq,
        batch: args.train_batch,
        steps: args.train_steps,
        compute_dtype: format!("{compute:?}"),
        tokens_per_s: (args.train_seq * args.train_batch) as f64 / (ms / 1e3),
        ms_per_step: ms,
        device_mem_used_bytes: device_mem_used(device),
    })
}

fn max_abs(t: &Tensor) -> Result<f32> {
    Ok(t.abs()?.max_all()?.to_scalar::<f32>()?)
}

/// Logits of a prefill, two one-token steps and a 4-token verification chunk, on `model`.
fn check_logits(model: &MtpModel) -> Result<Vec<Tensor>> {
    let tokens = synthetic_tokens(70, model.vocab_size(), 5);
    let mut cache = model.new_cache(80, model.n_heads())?;
    let mut out = Vec::new();
    for chunk in [
        &tokens[..64],
        &tokens[64..65],
        &tokens[65..66],
        &tokens[66..70],
    ] {
        out.push(
            model
                .forward(&mut cache, chunk, Logits::All)?
                .logits
                .to_device(&Device::Cpu)?,
        );
    }
    Ok(out)
}

/// Compares two logit sets: max |diff| relative to the reference's largest logit, and how often the argmax agrees.
fn compare(reference: &[Tensor], got: &[Tensor]) -> Result<(f32, f32, f64)> {
    let (mut diff, mut scale, mut agree, mut rows) = (0f32, 0f32, 0usize, 0usize);
    for (r, g) in reference.iter().zip(got) {
        diff = diff.max(max_abs(&(r - g)?)?);
        scale = scale.max(max_abs(r)?);
        let (ra, ga) = (
            r.argmax(1)?.to_vec1::<u32>()?,
            g.argmax(1)?.to_vec1::<u32>()?,
        );
        agree += ra.iter().zip(&ga).filter(|(a, b)| a == b).count();
        rows += ra.len();
    }
    Ok((diff, scale, agree as f64 / rows.max(1) as f64))
}

/// Relative logit error accepted between bf16 on the GPU and f32 on the CPU (see tests/gpu_paths.rs).
pub const BF16_RELATIVE_TOLERANCE: f32 = 0.1;

fn device_checks(
    name: &str,
    cpu_model: &MtpModel,
    gpu_model: &mut MtpModel,
) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    let cpu = check_logits(cpu_model)?;
    let default = check_logits(gpu_model)?;
    gpu_model.set_kernels(Kernels::PlainAttention);
    let plain = check_logits(gpu_model)?;
    gpu_model.set_kernels(Kernels::FusedAttention);
    let forced = check_logits(gpu_model)?;
    gpu_model.set_kernels(Kernels::Fused);
    // Named after the device the "gpu" model really ran on: a CPU smoke run compares the CPU
    // with itself, and must not report a GPU check.
    let dev = if gpu_model.device().is_cuda() {
        "gpu"
    } else {
        "cpu_smoke"
    };
    for (check, reference, got) in [
        (format!("{dev}_vs_cpu_logits"), &cpu, &default),
        (format!("{dev}_plain_attention_vs_cpu_logits"), &cpu, &plain),
        (
            format!("default_vs_plain_attention_{dev}"),
            &plain,
            &default,
        ),
        (
            format!("fused_attention_everywhere_vs_plain_{dev}"),
            &plain,
            &forced,
        ),
    ] {
        let (diff, scale, agree) = compare(reference, got)?;
        let rel = diff / scale.max(1e-6);
        rows.push(CheckRow {
            name: format!("{name}: {check}"),
            passed: rel < BF16_RELATIVE_TOLERANCE,
            detail: serde_json::json!({ "max_abs_diff": diff, "max_abs_logit": scale, "relative": rel, "argmax_agreement": agree, "tolerance": BF16_RELATIVE_TOLERANCE }),
        });
    }
    // Greedy speculative decoding must give plain decoding's tokens.
    let (mut identical, mut total, mut first_mismatch) = (0, 0, Vec::new());
    let mut tokens_per_forward = Vec::new();
    if gpu_model.n_heads() > 1 {
        for seed in 0..4 {
            let prompt =
                synthetic_tokens(100 + 37 * seed as usize, gpu_model.vocab_size(), 20 + seed);
            let plain = run_generate(gpu_model, &prompt, 64, false)?;
            let spec = run_generate(gpu_model, &prompt, 64, true)?;
            total += 1;
            tokens_per_forward.push(spec.stats.tokens_per_forward());
            if plain.tokens == spec.tokens {
                identical += 1;
            } else {
                first_mismatch.push(
                    plain
                        .tokens
                        .iter()
                        .zip(&spec.tokens)
                        .take_while(|(a, b)| a == b)
                        .count(),
                );
            }
        }
        rows.push(CheckRow {
            name: format!("{name}: greedy_spec_equals_plain_{dev}"),
            passed: identical == total,
            detail: serde_json::json!({ "identical": identical, "prompts": total, "first_mismatch_at": first_mismatch, "tokens_per_forward": tokens_per_forward }),
        });
    }
    Ok(rows)
}

fn bench_target(
    name: &str,
    model: &mut MtpModel,
    cfg_for_train: Option<&ModelConfig>,
    args: &GpuBenchArgs,
    budget: &Budget,
) -> Result<TargetReport> {
    let cfg = model.config().clone();
    let bpp = if model.dtype() == DType::F32 { 4 } else { 2 };
    let plain_bytes = weight_bytes_per_step(&cfg, 1, bpp);
    let mut r = TargetReport {
        name: name.to_string(),
        parameters: param_counts(&cfg).total(),
        weight_dtype: format!("{:?}", model.dtype()),
        plain_step_weight_bytes: plain_bytes,
        plain_step_floor_ms: floor_ms(plain_bytes, HBM_BYTES_PER_S),
        spec_step_floor_ms: floor_ms(
            weight_bytes_per_step(&cfg, cfg.n_heads(), bpp),
            HBM_BYTES_PER_S,
        ),
        config: Some(cfg.clone()),
        ..Default::default()
    };
    let max_len = model.max_positions();
    for n in parse_list(&args.prefill)? {
        if n > max_len {
            r.skipped.push(format!(
                "prefill {n}: longer than the model's {max_len} positions"
            ));
        } else if budget.left() {
            eprintln!("[{name}] prefill {n}");
            r.prefill.push(time_prefill(model, n, args.repeats)?);
        } else {
            r.skipped.push(format!("prefill {n}: time budget"));
        }
    }
    let longest = args.new_tokens.max(args.completion_tokens);
    let prompt = fit_prompt(args.prompt_tokens, longest, max_len);
    if prompt == 0 {
        return Err(GpuBenchError::Refused(format!(
            "{name} holds {max_len} positions: too few for {longest} new tokens"
        )));
    }
    if prompt < args.prompt_tokens {
        r.skipped.push(format!(
            "prompt shortened to {prompt} tokens to fit {name}'s {max_len} positions"
        ));
    }
    if budget.left() {
        eprintln!("[{name}] decode");
        r.decode = time_decode(model, args)?;
    } else {
        r.skipped.push("decode: time budget".into());
    }
    if budget.left() {
        eprintln!("[{name}] completion latency");
        r.completion = time_completion(model, args)?;
    } else {
        r.skipped.push("completion: time budget".into());
    }
    match cfg_for_train {
        Some(_) if args.train_steps == 0 => r.skipped.push("train: --train-steps 0".into()),
        Some(cfg) if budget.left() => {
            eprintln!("[{name}] training");
            r.train = Some(time_train(cfg, model.device(), args)?);
        }
        Some(_) => r.skipped.push("train: time budget".into()),
        None => {}
    }
    Ok(r)
}

#[derive(Debug, Serialize)]
struct Report {
    device: String,
    foresight_version: &'static str,
    cuda_feature: bool,
    hbm_bytes_per_s: f64,
    targets: Vec<TargetReport>,
}

fn write_report(path: &Path, report: &Report) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").map_err(|source| GpuBenchError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Runs the benchmark as `args` say, writing the report to `args.out` after each target (so a run
/// cut short keeps what it measured). `args.model` empty: random-weight presets only.
pub fn run(args: GpuBenchArgs) -> Result<()> {
    let budget = Budget {
        start: Instant::now(),
        secs: args.budget_secs,
    };
    let device = args.device.device()?;
    if device.is_cpu() && !matches!(args.device, DeviceChoice::Cpu) {
        return Err(GpuBenchError::Refused("no GPU found (build with --features cuda on a machine with one), or pass --device cpu for a smoke run".into()));
    }
    let dtype = weight_dtype(&device);
    let mut report = Report {
        device: format!("{device:?}"),
        foresight_version: env!("CARGO_PKG_VERSION"),
        cuda_feature: cfg!(feature = "cuda"),
        hbm_bytes_per_s: HBM_BYTES_PER_S,
        targets: Vec::new(),
    };
    let presets: Vec<String> = args
        .preset
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s != "none")
        .collect();
    for p in &presets {
        let cfg = preset_config(p).ok_or_else(|| {
            GpuBenchError::Refused(format!("unknown preset {p:?}: use 1b, tiny or none"))
        })?;
        eprintln!(
            "[{p}] random weights, {} parameters, {dtype:?}",
            param_counts(&cfg).total()
        );
        let mut model = random_model(&cfg, &device, dtype, 7)?;
        let mut r = bench_target(p, &mut model, Some(&cfg), &args, &budget)?;
        if args.check && p == "tiny" {
            let spec = TinySpec::default();
            let cpu = spec.model()?;
            let mut gpu = model_from_tensors(
                &cfg,
                cpu.named_tensors()
                    .into_iter()
                    .map(|(n, t)| Ok((n, t.to_device(&device)?.to_dtype(dtype)?)))
                    .collect::<Result<_>>()?,
                dtype,
                &device,
            )?;
            r.checks = device_checks(p, &cpu, &mut gpu)?;
        }
        report.targets.push(r);
        write_report(&args.out, &report)?;
    }
    for dir in args.model.clone() {
        let name = dir.display().to_string();
        let loaded = load_dir(&dir, &device, dtype).map_err(|source| GpuBenchError::Load {
            dir: name.clone(),
            source: Box::new(source),
        })?;
        let mut model = loaded.model;
        let mut r = bench_target(&name, &mut model, None, &args, &budget)?;
        if args.check {
            let cpu = load_dir(&dir, &Device::Cpu, DType::F32)?.model;
            r.checks = device_checks(&name, &cpu, &mut model)?;
        }
        report.targets.push(r);
        write_report(&args.out, &report)?;
    }
    write_report(&args.out, &report)?;
    let failed: Vec<&str> = report
        .targets
        .iter()
        .flat_map(|t| &t.checks)
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    eprintln!(
        "wrote {} ({:.0} s)",
        args.out.display(),
        budget.start.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        return Err(GpuBenchError::ChecksFailed(failed.join(", ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_table() {
        let cases: [(Vec<f64>, f64); 4] = [
            (vec![], 0.0),
            (vec![3.0], 3.0),
            (vec![5.0, 1.0, 3.0], 3.0),
            (vec![4.0, 1.0, 2.0, 3.0], 2.5),
        ];
        for (xs, want) in cases {
            assert_eq!(median(xs.clone()), want, "{xs:?}");
        }
    }

    #[test]
    fn one_b_preset_is_1b_class_and_compute_matched() {
        let cfg = preset_config("1b").unwrap();
        let total = param_counts(&cfg).total();
        assert!((1.0e9..1.3e9).contains(&(total as f64)), "{total}");
        assert_eq!((cfg.n_trunk_layers(), cfg.n_heads()), (12, 4));
        assert!(preset_config("7b").is_none());
    }

    #[test]
    fn floor_table() {
        let cfg = preset_config("1b").unwrap();
        let plain = weight_bytes_per_step(&cfg, 1, 2);
        let spec = weight_bytes_per_step(&cfg, 4, 2);
        // 12 trunk layers + 1 head layer + unembedding, in bf16.
        let layer = param_counts(&cfg).heads / 4;
        assert_eq!(spec - plain, 3 * layer * 2);
        assert!(
            (0.3..0.6).contains(&floor_ms(plain, HBM_BYTES_PER_S)),
            "{}",
            floor_ms(plain, HBM_BYTES_PER_S)
        );
        assert_eq!(floor_ms(4_300_000_000, 4.3e12), 1.0);
    }

    #[test]
    fn fit_prompt_table() {
        // (wanted, new tokens, max positions) -> prompt length
        let cases = [
            ((1024, 128, 4096), 1024),
            ((1024, 128, 1024), 880),
            ((1024, 2000, 1024), 0),
            ((10, 5, 31), 10),
            ((10, 5, 30), 9),
        ];
        for ((wanted, new, max), want) in cases {
            assert_eq!(fit_prompt(wanted, new, max), want, "{wanted} {new} {max}");
        }
    }

    #[test]
    fn parse_list_and_tokens() {
        assert_eq!(parse_list("512, 2048,").unwrap(), vec![512, 2048]);
        assert!(parse_list("12x").is_err());
        let t = synthetic_tokens(1000, 260, 1);
        assert!(t.iter().all(|&x| (3..260).contains(&x)));
        assert_eq!(t, synthetic_tokens(1000, 260, 1));
    }
}
