//! One training run end to end: preparing it (refusals first, then the corpus, tokenizer, weights,
//! optimizer and validation set, or all of it restored from a checkpoint), the step loop with
//! gradient accumulation, clipping, the schedule, validation, checkpoints, the JSONL metrics log
//! and the progress bar, and the final model directory. Not here: the math of the objective and
//! the optimizer, the token cache's format (`token_cache.rs`), or the command line.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

use super::bpe::train_bpe;
use super::checkpoint::{self, TrainState, STATE_VERSION};
use super::corpus::{collect, Corpus, WalkOptions};
use super::error::{io_err, Result, TrainError};
use super::fim::{text_tokenizer, Framing};
use super::objective::{batch_grads_with, validate, windows_tensor, Validation};
use super::optim::{clip_factor, global_norm, lr_at, lr_by_time, AdamW};
use super::options::{ModelInit, TrainOptions};
use super::packing::{
    encode_in_order, epoch_rng, validation_sequences, BatchStream, DataPosition, TokenSource,
};
use super::params::{add_heads, ParamSet, Trainable};
use super::presets::scratch_config;
use super::splice::Splicer;
use super::token_cache::{CacheStats, TokenCache};
use crate::model::mtp::MAX_ROPE_POSITIONS;
use crate::model::tokenizer::byte_level_tokenizer;
use crate::model::weights::{
    init_weights, load_dir, save_dir_with, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE,
};
use crate::model::{ModelConfig, MtpModel, SpecialTokens};

pub const METRICS_FILE: &str = "metrics.jsonl";

/// How a caller steers a run from outside.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Set (by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// Stop after this many optimizer steps as if interrupted (tests, benchmarks).
    pub stop_after: Option<u64>,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// Test hook, off by default (`foresight train` sets it from `FORESIGHT_TEST_HOLD=1`): after
    /// the first periodic checkpoint of this process, print `test hold: ...` on stderr and wait
    /// until `stop` is set, so a test can interrupt or kill the run at a known point however fast
    /// it trains. Without `stop` it does nothing; it gives up after 10 minutes and goes on.
    pub hold_after_checkpoint: bool,
}

/// How a run turns its documents into token ids. Both give the same ids, so the same batches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Tokenization {
    /// Encode every piece of every sample with the tokenizer, every epoch; nothing is stored.
    #[default]
    Direct,
    /// Tokenize each document once per (content, tokenizer), kept in this cache folder
    /// (`token_cache`), and splice FIM pieces from it (`splice`).
    Cached(PathBuf),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// All steps done; the model directory is `out`.
    Finished {
        out: PathBuf,
        steps: u64,
        last_validation: Option<Validation>,
    },
    /// Stopped early; continue with `--resume`.
    Interrupted { checkpoint: PathBuf, step: u64 },
}

/// Parses `--device` (auto, cpu, cuda, cuda:N) and opens the device, as every subcommand does.
pub fn parse_device(name: &str) -> Result<Device> {
    let choice: crate::model::DeviceChoice = name
        .parse()
        .map_err(|e: String| TrainError::Device(name.to_string(), e))?;
    choice
        .device()
        .map_err(|e| TrainError::Device(name.to_string(), e.to_string()))
}

fn compute_dtype(opts: &TrainOptions, device: &Device) -> DType {
    match opts.compute_dtype.as_deref() {
        Some("bf16") => DType::BF16,
        Some(_) => DType::F32,
        None if device.is_cuda() => DType::BF16,
        None => DType::F32,
    }
}

/// True when `dir` exists and holds anything.
fn non_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// A run ready to start or continue.
pub struct Prepared {
    pub options: TrainOptions,
    pub corpus: Corpus,
    pub tokenizer: Tokenizer,
    pub config: ModelConfig,
    params: ParamSet,
    names: Vec<String>,
    optimizer: AdamW,
    state: TrainState,
    device: Device,
    compute: DType,
    valid_batches: Vec<Tensor>,
    stream: Option<BatchStream>,
    pub resumed_from: Option<PathBuf>,
    /// What the token cache did while preparing (`None` without the cache).
    pub token_cache: Option<CacheStats>,
    /// When preparing began, for the time-to-first-step log line.
    started: Instant,
}

impl Prepared {
    pub fn trainable_params(&self) -> (usize, usize) {
        self.params.count()
    }

    pub fn total_steps(&self) -> u64 {
        self.options.total_steps()
    }

    pub fn step(&self) -> u64 {
        self.state.step
    }
}

/// The starting weights and tokenizer of a new run.
struct Start {
    config: ModelConfig,
    tensors: std::collections::HashMap<String, Tensor>,
    tokenizer: Tokenizer,
}

fn start_weights(opts: &TrainOptions, corpus: &Corpus, device: &Device) -> Result<Start> {
    match &opts.init {
        ModelInit::Base { dir } => {
            let loaded =
                load_dir(dir, device, DType::F32).map_err(|source| TrainError::BaseModel {
                    dir: dir.clone(),
                    source: Box::new(source),
                })?;
            let config = loaded.model.config().clone();
            let tensors = loaded.model.named_tensors().into_iter().collect();
            Ok(Start {
                config,
                tensors,
                tokenizer: loaded.tokenizer,
            })
        }
        ModelInit::Scratch { config, heads } => {
            let tokenizer = match (&opts.tokenizer_file, opts.new_tokenizer) {
                (Some(path), _) => crate::model::tokenizer::load_tokenizer(path)?,
                (None, Some(vocab)) => {
                    tracing::info!(
                        "training a {vocab}-token BPE on {} files",
                        corpus.train.len()
                    );
                    train_bpe(corpus.train.iter().map(|d| d.text.as_str()), vocab)?
                }
                (None, None) => byte_level_tokenizer(),
            };
            let vocab = match opts.new_tokenizer {
                // The trained vocabulary may fall short of the request on small corpora; the config
                // keeps the requested size so the model's shape is what the user asked for.
                Some(v) => v.max(tokenizer.get_vocab_size(true)),
                None => tokenizer.get_vocab_size(true),
            };
            let mut config = scratch_config(config, vocab, *heads)?;
            if opts.new_tokenizer.is_some() {
                config.vocab_size = vocab;
            }
            if let Some(eot) = tokenizer.token_to_id(crate::model::tokenizer::ENDOFTEXT) {
                config.eos_token_id = Some(crate::model::config::TokenIds::One(eot));
            }
            let tensors = init_weights(&config, opts.seed, opts.init_std, device)?;
            Ok(Start {
                config,
                tensors,
                tokenizer,
            })
        }
    }
}

fn framing_for(
    tokenizer: &Tokenizer,
    config: &ModelConfig,
    opts: &TrainOptions,
) -> Result<Framing> {
    let special = SpecialTokens::detect(tokenizer, config);
    let framing = Framing::from_special(&special).ok_or(TrainError::NoEndOfText)?;
    if framing.fim.is_none() && opts.fim.fim_rate > 0.0 {
        tracing::warn!("the tokenizer has no FIM tokens: training left-to-right only (FIM rate 0)");
    }
    Ok(framing)
}

fn check_context(opts: &TrainOptions, config: &ModelConfig) -> Result<()> {
    let context = config.max_position_embeddings.min(MAX_ROPE_POSITIONS);
    if opts.seq_len > context {
        return Err(TrainError::SeqLenOverContext {
            seq_len: opts.seq_len,
            context,
        });
    }
    if opts.seq_len <= config.n_heads() {
        return Err(TrainError::InvalidOptions(format!(
            "--seq-len {} must exceed the number of heads ({})",
            opts.seq_len,
            config.n_heads()
        )));
    }
    Ok(())
}

/// The token sources of the training and validation splits (`text_tok` is the text tokenizer),
/// and what the cache did.
fn token_sources(
    corpus: &Corpus,
    text_tok: &Tokenizer,
    tokenization: &Tokenization,
) -> (TokenSource, TokenSource, Option<CacheStats>) {
    let direct = || {
        (
            TokenSource::from(text_tok.clone()),
            TokenSource::from(text_tok.clone()),
            None,
        )
    };
    let Tokenization::Cached(root) = tokenization else {
        return direct();
    };
    let Some(cache) = TokenCache::new(root, text_tok) else {
        return direct();
    };
    let t0 = Instant::now();
    let splicer = Splicer::new(text_tok);
    if !splicer.splices() {
        tracing::info!("this tokenizer's FIM pieces cannot be spliced from cached documents; they are encoded in full every epoch");
    }
    let (train, mut stats) = cache.tokenize_all(&corpus.train, &splicer);
    let (valid, valid_stats) = cache.tokenize_all(&corpus.valid, &splicer);
    stats.add(valid_stats);
    tracing::info!(
        "tokens: {stats} in {:.1} s (cache {})",
        t0.elapsed().as_secs_f64(),
        cache.dir().display()
    );
    let source = |docs: Vec<super::splice::DocTokens>| TokenSource::Tokenized {
        splicer: Box::new(splicer.clone()),
        docs: docs.into(),
    };
    (source(train), source(valid), Some(stats))
}

fn valid_batches(
    corpus: &Corpus,
    source: &TokenSource,
    framing: &Framing,
    opts: &TrainOptions,
    n_heads: usize,
    device: &Device,
) -> Result<Vec<Tensor>> {
    let windows = validation_sequences(&corpus.valid, source, framing, opts.fim, opts.seq_len);
    let windows: Vec<Vec<u32>> = windows.into_iter().filter(|w| w.len() > n_heads).collect();
    windows
        .chunks(opts.batch_size)
        .take(opts.eval_batches)
        .map(|chunk| windows_tensor(chunk, device))
        .collect()
}

/// The training batch stream at `position`, refusing a training split shorter than one window.
fn train_stream(
    corpus: &Corpus,
    source: TokenSource,
    framing: &Framing,
    opts: &TrainOptions,
    position: DataPosition,
) -> Result<BatchStream> {
    let t0 = Instant::now();
    let mut stream = BatchStream::new(
        corpus.train.clone(),
        source.clone(),
        *framing,
        opts.fim,
        opts.seq_len,
        opts.seed,
        position,
    );
    let windows = stream.epoch_len();
    if windows == 0 {
        let order: Vec<usize> = (0..corpus.train.len()).collect();
        let tokens = encode_in_order(
            &corpus.train,
            &order,
            &source,
            framing,
            opts.fim,
            &mut epoch_rng(opts.seed, position.epoch),
        )
        .len();
        return Err(TrainError::TooLittleData {
            tokens,
            needed: opts.seq_len + 1,
        });
    }
    tracing::info!(
        "epoch {}: {windows} training windows in {:.1} s",
        position.epoch,
        t0.elapsed().as_secs_f64()
    );
    Ok(stream)
}

/// Prepares a new run: refuses bad options and an occupied output directory first, then walks
/// the repositories, sets up tokenizer and weights, and checks there is enough data.
pub fn prepare(opts: TrainOptions, force: bool) -> Result<Prepared> {
    prepare_with(opts, force, &Tokenization::Direct)
}

/// [`prepare`] with the corpus tokenized as `tokenization` says.
pub fn prepare_with(
    opts: TrainOptions,
    force: bool,
    tokenization: &Tokenization,
) -> Result<Prepared> {
    let started = Instant::now();
    opts.validate()?;
    if non_empty_dir(&opts.out) && !force {
        return Err(TrainError::OutputExists(opts.out.clone()));
    }
    if let ModelInit::Base { dir } = &opts.init {
        // Fail on a missing or broken base model before the (possibly long) walk.
        crate::model::weights::read_config(dir).map_err(|source| TrainError::BaseModel {
            dir: dir.clone(),
            source: Box::new(source),
        })?;
    }
    if let Some(path) = &opts.tokenizer_file {
        // Likewise a missing or broken tokenizer for a run from scratch.
        crate::model::tokenizer::load_tokenizer(path)?;
    }
    let device = parse_device(&opts.device)?;
    let corpus = walk(&opts)?;
    let start = start_weights(&opts, &corpus, &device)?;
    let (config, tensors) = if opts.add_heads > 0 {
        add_heads(&start.config, start.tensors, opts.add_heads)?
    } else {
        (start.config, start.tensors)
    };
    check_context(&opts, &config)?;
    opts.weights_for(config.n_heads())?;
    let state = TrainState {
        version: STATE_VERSION,
        step: 0,
        tokens_seen: 0,
        data: DataPosition::default(),
        options: opts.clone(),
        corpus_fingerprint: corpus.fingerprint(),
        finished: false,
        elapsed_secs: 0.0,
    };
    let start = RunStart {
        opts,
        device,
        corpus,
        config,
        tensors,
        tokenizer: start.tokenizer,
        state,
        resumed_from: None,
        started,
    };
    assemble(start, tokenization)
}

/// What a new run and a resumed one settle before the setup they share.
struct RunStart {
    opts: TrainOptions,
    device: Device,
    corpus: Corpus,
    config: ModelConfig,
    tensors: HashMap<String, Tensor>,
    tokenizer: Tokenizer,
    state: TrainState,
    /// The checkpoint a resumed run continues (its AdamW moments are restored).
    resumed_from: Option<PathBuf>,
    started: Instant,
}

/// The setup new and resumed runs share: framing, parameters and optimizer, the token sources,
/// the validation batches and the batch stream from the state's data position.
fn assemble(start: RunStart, tokenization: &Tokenization) -> Result<Prepared> {
    let RunStart {
        opts,
        device,
        corpus,
        config,
        tensors,
        tokenizer,
        state,
        resumed_from,
        started,
    } = start;
    let framing = framing_for(&tokenizer, &config, &opts)?;
    let trainable = if opts.freeze_trunk {
        Trainable::HeadsOnly
    } else {
        Trainable::All
    };
    let params = ParamSet::new(&config, tensors, trainable)?;
    let (names, vars): (Vec<String>, Vec<_>) = params.trainable().into_iter().unzip();
    let mut optimizer = AdamW::new(vars, opts.adamw)?;
    if let Some(dir) = &resumed_from {
        checkpoint::load_optimizer(dir, &mut optimizer, &names, state.step, &device)?;
    }
    let compute = compute_dtype(&opts, &device);
    let text_tok = text_tokenizer(&tokenizer);
    let (train_source, valid_source, token_cache) = token_sources(&corpus, &text_tok, tokenization);
    let valid_batches = timed_valid_batches(
        &corpus,
        &valid_source,
        &framing,
        &opts,
        config.n_heads(),
        &device,
    )?;
    let stream = Some(train_stream(
        &corpus,
        train_source,
        &framing,
        &opts,
        state.data,
    )?);
    Ok(Prepared {
        options: opts,
        corpus,
        tokenizer,
        config,
        params,
        names,
        optimizer,
        state,
        device,
        compute,
        valid_batches,
        stream,
        resumed_from,
        token_cache,
        started,
    })
}

/// The corpus of a run, with a log line on how long the walk took.
fn walk(opts: &TrainOptions) -> Result<Corpus> {
    let t0 = Instant::now();
    let corpus = collect(
        &opts.repos,
        &WalkOptions {
            max_file_bytes: opts.max_file_bytes,
            valid_fraction: opts.valid_fraction,
        },
    )?;
    tracing::info!(
        "corpus: {} files kept, {} skipped, in {:.1} s",
        corpus.train.len() + corpus.valid.len(),
        corpus.skipped_count(),
        t0.elapsed().as_secs_f64()
    );
    Ok(corpus)
}

fn timed_valid_batches(
    corpus: &Corpus,
    source: &TokenSource,
    framing: &Framing,
    opts: &TrainOptions,
    n_heads: usize,
    device: &Device,
) -> Result<Vec<Tensor>> {
    let t0 = Instant::now();
    let batches = valid_batches(corpus, source, framing, opts, n_heads, device)?;
    tracing::info!(
        "validation: {} batches in {:.1} s",
        batches.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(batches)
}

/// Prepares the continuation of the run in `out` from its latest checkpoint, with the options it
/// was started with.
pub fn prepare_resume(out: &Path) -> Result<Prepared> {
    prepare_resume_with(out, &Tokenization::Direct)
}

/// [`prepare_resume`] with the corpus tokenized as `tokenization` says (a run may resume with or
/// without the cache: the batches are the same).
pub fn prepare_resume_with(out: &Path, tokenization: &Tokenization) -> Result<Prepared> {
    let started = Instant::now();
    let dir = checkpoint::latest(out)?;
    let mut state = checkpoint::read_state(&dir)?;
    if state.finished {
        return Err(TrainError::InvalidOptions(format!(
            "the run in {} finished at step {}; there is nothing to resume",
            out.display(),
            state.step
        )));
    }
    state.options.out = out.to_path_buf();
    let opts = state.options.clone();
    let device = parse_device(&opts.device)?;
    let loaded = load_dir(&dir, &device, DType::F32).map_err(|e| TrainError::BadCheckpoint {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    let config = loaded.model.config().clone();
    let tensors = loaded.model.named_tensors().into_iter().collect();
    let tokenizer = loaded.tokenizer;
    let corpus = walk(&opts)?;
    if corpus.fingerprint() != state.corpus_fingerprint {
        tracing::warn!("the repositories changed since the run started: resuming on the new files, so the run will not reproduce an uninterrupted one exactly");
    }
    let start = RunStart {
        opts,
        device,
        corpus,
        config,
        tensors,
        tokenizer,
        state,
        resumed_from: Some(dir),
        started,
    };
    assemble(start, tokenization)
}

/// The JSONL metrics log. On resume, records after the checkpoint's step are dropped first, so the
/// log reads as if the run had never stopped.
struct MetricsLog {
    file: std::fs::File,
}

impl MetricsLog {
    fn open(out: &Path, keep_through_step: Option<u64>) -> Result<Self> {
        let path = out.join(METRICS_FILE);
        if let Some(step) = keep_through_step {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s <= step)
                })
                .collect();
            let mut body = kept.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            std::fs::write(&path, body).map_err(io_err(&path))?;
        } else {
            std::fs::write(&path, "").map_err(io_err(&path))?;
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Self { file })
    }

    fn write(&mut self, record: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{record}").map_err(io_err(METRICS_FILE))
    }
}

fn validation_record(step: u64, v: &Validation, weights: &[f32]) -> serde_json::Value {
    serde_json::json!({
        "kind": "valid",
        "step": step,
        "loss": v.loss(weights),
        "head_losses": v.head_losses,
        "head_top1": v.head_top1,
        "positions": v.positions,
    })
}

/// Removes what a previous run in `out` wrote (its checkpoints, metrics and model files).
fn clear_previous_run(out: &Path) -> Result<()> {
    let ckpt = checkpoint::checkpoints_dir(out);
    if ckpt.exists() {
        std::fs::remove_dir_all(&ckpt).map_err(io_err(&ckpt))?;
    }
    for f in [
        METRICS_FILE,
        CONFIG_FILE,
        WEIGHTS_FILE,
        TOKENIZER_FILE,
        crate::model::weights::WEIGHTS_INDEX_FILE,
    ] {
        let p = out.join(f);
        if p.exists() {
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    if out.is_dir() {
        crate::model::weights::remove_stale_shards(out, &[])?;
    }
    Ok(())
}

/// The progress bar: steps of `total`, or seconds of the budget for runs measured in time.
fn progress_bar(
    control: &Control,
    total: u64,
    at: u64,
    in_seconds: bool,
) -> indicatif::ProgressBar {
    if !control.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let template = if in_seconds {
        "{elapsed_precise} [{bar:30}] {pos}/{len} s of the time budget {msg}"
    } else {
        "{elapsed_precise} [{bar:30}] step {pos}/{len} {msg} ETA {eta}"
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(at);
    bar
}

impl Prepared {
    /// Runs (or continues) the loop until the last step or a stop request.
    pub fn run(mut self, control: &Control) -> Result<Outcome> {
        let opts = self.options.clone();
        let out = opts.out.clone();
        if self.resumed_from.is_none() {
            clear_previous_run(&out)?;
        }
        std::fs::create_dir_all(&out).map_err(io_err(&out))?;
        let total = opts.total_steps();
        let warmup = opts.warmup();
        let weights = opts.weights_for(self.config.n_heads())?;
        let mut stream = self
            .stream
            .take()
            .expect("a prepared run has its batch stream");
        let mut metrics =
            MetricsLog::open(&out, self.resumed_from.as_ref().map(|_| self.state.step))?;
        let eval_model = self.params.inference_model()?;
        let trainable: Vec<candle_core::Var> = self.optimizer.vars.clone();
        let trunk_trainable = self.params.trunk_trainable();
        let mut model = self.params.training_model(self.compute)?;
        let mut last_validation = None;
        if self.state.step == 0 {
            let v = validate(&eval_model, &self.valid_batches)?;
            metrics.write(validation_record(0, &v, &weights))?;
            last_validation = Some(v);
        }
        let budget = opts.time_budget();
        let bar = match budget {
            Some(b) => progress_bar(control, b as u64, self.state.elapsed_secs as u64, true),
            None => progress_bar(control, total, self.state.step, false),
        };
        let (run_start, elapsed_before) = (Instant::now(), self.state.elapsed_secs);
        let elapsed = || elapsed_before + run_start.elapsed().as_secs_f64();
        let mut first_step = true;
        let mut hold = control.hold_after_checkpoint;
        while self.state.step < total {
            let t0 = Instant::now();
            if std::mem::take(&mut first_step) {
                tracing::info!(
                    "step {} starts {:.1} s after preparing began",
                    self.state.step + 1,
                    self.started.elapsed().as_secs_f64()
                );
            }
            let step = self.state.step;
            let lr = match budget {
                Some(b) => lr_by_time(step, warmup, elapsed(), b, opts.lr, opts.min_lr_ratio),
                None => lr_at(step, warmup, total, opts.lr, opts.min_lr_ratio),
            };
            let (grads, head_losses) =
                self.accumulate_grads(&model, &trainable, trunk_trainable, &mut stream, &weights)?;
            let norm = self.clip_and_step(grads, lr)?;
            if self.compute != DType::F32 {
                model = self.params.training_model(self.compute)?;
            }
            self.state.step += 1;
            self.state.tokens_seen += opts.tokens_per_step();
            self.state.data = stream.position();
            let loss: f32 = head_losses.iter().zip(&weights).map(|(l, w)| l * w).sum();
            let secs = t0.elapsed().as_secs_f64();
            let tok_s = opts.tokens_per_step() as f64 / secs.max(1e-9);
            metrics.write(serde_json::json!({
                "kind": "train",
                "step": self.state.step,
                "loss": loss,
                "head_losses": head_losses,
                "lr": lr,
                "grad_norm": norm,
                "tokens": self.state.tokens_seen,
                "epoch": self.state.data.epoch,
                "tokens_per_s": tok_s,
            }))?;
            if !loss.is_finite() {
                tracing::warn!("step {}: loss is {loss}", self.state.step);
            }
            self.state.elapsed_secs = elapsed();
            bar.set_position(if budget.is_some() {
                self.state.elapsed_secs as u64
            } else {
                self.state.step
            });
            bar.set_message(format!(
                "step {} | loss {loss:.3} | {tok_s:.0} tok/s",
                self.state.step
            ));
            let done =
                self.state.step == total || budget.is_some_and(|b| self.state.elapsed_secs >= b);
            if done || (opts.eval_every > 0 && self.state.step.is_multiple_of(opts.eval_every)) {
                let v = validate(&eval_model, &self.valid_batches)?;
                metrics.write(validation_record(self.state.step, &v, &weights))?;
                bar.println(validation_line(self.state.step, &v, &weights));
                last_validation = Some(v);
            }
            if done {
                break;
            }
            if stop_requested(control, self.state.step) {
                let dir = self.checkpoint()?;
                bar.abandon();
                tracing::info!(
                    "stopped at step {}; checkpoint {}",
                    self.state.step,
                    dir.display()
                );
                return Ok(Outcome::Interrupted {
                    checkpoint: dir,
                    step: self.state.step,
                });
            }
            if opts.checkpoint_every > 0 && self.state.step.is_multiple_of(opts.checkpoint_every) {
                self.checkpoint()?;
                if std::mem::take(&mut hold) {
                    hold_for_interrupt(control, self.state.step);
                }
            }
        }
        bar.finish();
        self.state.finished = true;
        self.checkpoint()?;
        save_dir_with(&eval_model, &self.tokenizer, &out, opts.save)?;
        Ok(Outcome::Finished {
            out,
            steps: self.state.step,
            last_validation,
        })
    }

    /// Gradients of one optimizer step, averaged over `grad_accum` batches from `stream`, and
    /// the per-head losses averaged the same way.
    fn accumulate_grads(
        &self,
        model: &MtpModel,
        trainable: &[candle_core::Var],
        trunk_trainable: bool,
        stream: &mut BatchStream,
        weights: &[f32],
    ) -> Result<(Vec<Option<Tensor>>, Vec<f32>)> {
        let opts = &self.options;
        let mut grads: Vec<Option<Tensor>> = vec![None; trainable.len()];
        let mut head_losses = vec![0f32; self.config.n_heads()];
        for _ in 0..opts.grad_accum {
            let batch = stream
                .next_batch(opts.batch_size)
                .expect("the epoch has windows (checked above)");
            let windows = windows_tensor(&batch, &self.device)?;
            let out = batch_grads_with(
                model,
                trainable,
                trunk_trainable,
                &windows,
                weights,
                opts.loss_order,
                opts.head_targets,
            )?;
            for (acc, g) in grads.iter_mut().zip(out.grads) {
                if let Some(g) = g {
                    *acc = Some(match acc.take() {
                        Some(a) => (a + g)?,
                        None => g,
                    });
                }
            }
            for (h, l) in head_losses.iter_mut().zip(&out.head_losses) {
                *h += l / opts.grad_accum as f32;
            }
        }
        if opts.grad_accum > 1 {
            let scale = 1.0 / opts.grad_accum as f64;
            for g in grads.iter_mut().flatten() {
                *g = (&*g * scale)?;
            }
        }
        Ok((grads, head_losses))
    }

    /// Clips `grads` to the global norm `clip_norm` and takes the optimizer step; returns the
    /// norm before clipping.
    fn clip_and_step(&mut self, mut grads: Vec<Option<Tensor>>, lr: f64) -> Result<f64> {
        let norm = global_norm(&grads)?;
        let factor = clip_factor(norm, self.options.clip_norm);
        if factor < 1.0 {
            for g in grads.iter_mut().flatten() {
                *g = (&*g * factor)?;
            }
        }
        self.optimizer.step(&grads, lr)?;
        Ok(norm)
    }

    fn checkpoint(&self) -> Result<PathBuf> {
        checkpoint::save(
            &self.options.out,
            &self.params,
            &self.tokenizer,
            &self.optimizer,
            &self.names,
            &self.state,
            self.options.keep_checkpoints,
        )
    }
}

/// Whether the user interrupted the run (Ctrl-C) or it reached `stop_after`, at step `step`.
fn stop_requested(control: &Control, step: u64) -> bool {
    let interrupted = control
        .stop
        .as_ref()
        .is_some_and(|s| s.load(Ordering::SeqCst));
    interrupted || control.stop_after.is_some_and(|n| step >= n)
}

/// The progress line of a validation: loss, per-head losses and top-1 accuracies.
fn validation_line(step: u64, v: &Validation, weights: &[f32]) -> String {
    let round = |xs: &[f64]| {
        xs.iter()
            .map(|x| (x * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    };
    format!(
        "step {step}: valid loss {:.4}, per head {:?}, top-1 {:?}",
        v.loss(weights),
        round(&v.head_losses),
        round(&v.head_top1)
    )
}

/// The test hold of [`Control::hold_after_checkpoint`]: waits for `stop` (at most 10 minutes).
fn hold_for_interrupt(control: &Control, step: u64) {
    const GIVE_UP: Duration = Duration::from_secs(600);
    let Some(stop) = &control.stop else {
        return;
    };
    eprintln!("test hold: checkpoint of step {step} written; waiting for an interrupt");
    let t0 = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if t0.elapsed() > GIVE_UP {
            tracing::warn!("test hold: no interrupt in {GIVE_UP:?}; going on");
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
