//! The `train` subcommand: its flags, the mapping to `TrainOptions`, the skip report and the
//! Ctrl-C handler. The training itself is `foresight::train`; nothing here touches tensors.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use foresight::train::corpus::{kept_report, skip_report};
use foresight::train::fim::{FimRates, FimSpans};
use foresight::train::optim::AdamWConfig;
use foresight::train::{
    self as tr, Control, HeadTargets, LossOrder, ModelInit, Outcome, RunLength, TrainOptions,
};

/// `foresight train`. Run options are optional here so that `--resume` can refuse them: a resumed
/// run keeps the options it started with. Defaults are applied in `options()`.
#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// Repository to train on (repeatable). .gitignore, .ignore and hidden files are respected.
    #[arg(long = "repo", value_name = "PATH")]
    pub repos: Vec<PathBuf>,
    /// Output directory: the final model directory, checkpoints/ and metrics.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Finetune this model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, conflicts_with = "config")]
    pub base: Option<PathBuf>,
    /// Train from scratch: a size preset (tiny, 10m, 20m, 60m) or a config.json file.
    #[arg(long)]
    pub config: Option<String>,
    /// Heads for a model trained from scratch [default: 4, fewer if the preset is too shallow].
    #[arg(long)]
    pub heads: Option<usize>,
    /// From scratch: train a byte-level BPE of this many tokens on the training split
    /// [default: the 260-token byte-level vocabulary].
    #[arg(long, value_name = "VOCAB_SIZE")]
    pub new_tokenizer: Option<usize>,
    /// From scratch: use this tokenizer.json (another model's, e.g. models/default/tokenizer.json),
    /// so models trained for a comparison share a vocabulary and the token cache. The new model's
    /// vocabulary is the tokenizer's size (with its added tokens).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Train only the head layers (trunk, embeddings, final norm and unembedding frozen).
    #[arg(long)]
    pub freeze_trunk: bool,
    /// Add N heads to the base model, each a copy of its last layer.
    #[arg(long, value_name = "N")]
    pub add_heads: Option<usize>,
    /// Tokens per training sequence [default: 512].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Sequences per micro-batch [default: 8].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Optimizer steps [default: 1000].
    #[arg(long, conflicts_with_all = ["tokens", "time_budget"])]
    pub steps: Option<u64>,
    /// Training tokens instead of --steps (rounded up to whole steps).
    #[arg(long, conflicts_with = "time_budget")]
    pub tokens: Option<u64>,
    /// Train for this many wall-clock seconds instead of --steps: warmup, then a constant learning
    /// rate, then a linear decay to the floor over the last fifth of the budget, by elapsed time.
    #[arg(long, value_name = "SECS")]
    pub time_budget: Option<u64>,
    /// Store the final model's weights as bf16 (checkpoints stay f32).
    #[arg(long)]
    pub save_bf16: bool,
    /// Split the final model's weights into files of at most this many MiB (with an index).
    #[arg(long, value_name = "MIB")]
    pub shard_mib: Option<u64>,
    /// Peak learning rate [default: 3e-4 from scratch, 1e-4 finetuning].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Cosine decay floor as a fraction of --lr [default: 0.1].
    #[arg(long)]
    pub min_lr_ratio: Option<f64>,
    /// Linear warmup steps [default: 10% of the run, at most 100].
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// AdamW decoupled weight decay on matrices [default: 0.1].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// AdamW beta1 [default: 0.9].
    #[arg(long)]
    pub beta1: Option<f64>,
    /// AdamW beta2 [default: 0.95].
    #[arg(long)]
    pub beta2: Option<f64>,
    /// Global gradient-norm clipping, 0 disables [default: 1.0].
    #[arg(long)]
    pub clip_norm: Option<f64>,
    /// Seed of initialization and data order [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share of documents (with --fim-spans lines: of chunks) in a fill-in-the-middle frame
    /// [default: 0.5].
    #[arg(long)]
    pub fim_rate: Option<f64>,
    /// Share of FIM samples in SPM order, the rest PSM [default: 0.5].
    #[arg(long)]
    pub spm_rate: Option<f64>,
    /// Where FIM middles come from: random (two random points over the whole document) or lines
    /// (the rest of 1-4 lines after a cursor, with a short prefix and suffix, chunk after chunk
    /// through the document: what the server asks for) [default: random].
    #[arg(long)]
    pub fim_spans: Option<FimSpans>,
    /// Loss weight of each head, comma separated (e.g. 1,0.5,0.5,0.5) [default: 1 each].
    #[arg(long, value_delimiter = ',')]
    pub head_weights: Option<Vec<f32>>,
    /// sequential (memory-efficient, the paper's Fig. 2) or joint (naive) [default: sequential].
    #[arg(long)]
    pub loss_order: Option<LossOrder>,
    /// What heads 2..n learn: data (the true tokens ahead) or self (head 1's own predictions,
    /// self-distillation: what drafts must match to be accepted) [default: data].
    #[arg(long)]
    pub head_targets: Option<HeadTargets>,
    /// Checkpoint every N steps, 0 only at the end and on Ctrl-C [default: 100].
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Validate every N steps [default: 100].
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// At most this many validation batches [default: 8].
    #[arg(long)]
    pub eval_batches: Option<usize>,
    /// Share of files held out for validation, by path hash [default: 0.05].
    #[arg(long)]
    pub valid_fraction: Option<f64>,
    /// Skip files larger than this many bytes [default: 1000000].
    #[arg(long)]
    pub max_file_bytes: Option<u64>,
    /// Checkpoints to keep [default: 2].
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
    /// auto, cpu, cuda or cuda:N [default: cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Matmul dtype, f32 or bf16; weights and optimizer state stay f32 [default: f32 on CPU, bf16 on CUDA].
    #[arg(long)]
    pub dtype: Option<String>,
    /// Continue the run in --out from its latest checkpoint, with the options it started with.
    #[arg(long)]
    pub resume: bool,
    /// Start a new run in a non-empty --out, replacing a previous run's checkpoints, metrics and model files.
    #[arg(long)]
    pub force: bool,
    /// List every kept and skipped file.
    #[arg(long)]
    pub verbose: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Folder of the tokenized-corpus cache (also FORESIGHT_TOKEN_CACHE) [default:
    /// $XDG_CACHE_HOME/foresight/tokens or ~/.cache/foresight/tokens]. Allowed with --resume.
    #[arg(long, value_name = "DIR", conflicts_with = "no_token_cache")]
    pub token_cache: Option<PathBuf>,
    /// Tokenize every piece of every sample each epoch, without the cache (same batches, slower).
    #[arg(long)]
    pub no_token_cache: bool,
    /// Stop with a checkpoint after this many steps, as Ctrl-C would (for tests).
    #[arg(long, hide = true)]
    pub stop_after: Option<u64>,
    /// The run options given on the command line, read from clap's matches by
    /// [`given_run_options`] (not a flag).
    #[arg(skip)]
    pub given: Vec<String>,
}

/// The flags a resumed run may take: where the run is and how to show it, not what it trains.
const ALLOWED_WITH_RESUME: &[&str] = &[
    "out",
    "resume",
    "verbose",
    "no_progress",
    "token_cache",
    "no_token_cache",
    "stop_after",
];

/// The run options given on the command line of `foresight train` (`matches` are its own), as
/// `--flag` names: every flag of [`TrainArgs`] but [`ALLOWED_WITH_RESUME`], read from clap's
/// definition, so a new flag is refused with `--resume` without being listed anywhere.
pub fn given_run_options(matches: &clap::ArgMatches) -> Vec<String> {
    let cmd = <TrainArgs as Args>::augment_args(clap::Command::new("train"));
    cmd.get_arguments()
        .filter(|a| !ALLOWED_WITH_RESUME.contains(&a.get_id().as_str()))
        .filter(|a| {
            matches.value_source(a.get_id().as_str())
                == Some(clap::parser::ValueSource::CommandLine)
        })
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect()
}

impl TrainArgs {
    /// How the corpus is tokenized: through the cache unless it is disabled or has no home.
    fn tokenization(&self) -> tr::Tokenization {
        match tr::token_cache::resolve_dir(self.token_cache.as_deref(), self.no_token_cache, |k| {
            std::env::var_os(k)
        }) {
            Some(dir) => tr::Tokenization::Cached(dir),
            None => tr::Tokenization::Direct,
        }
    }

    /// The run options, with defaults for what was not given.
    fn options(&self) -> Result<TrainOptions> {
        if self.repos.is_empty() {
            bail!("give at least one --repo PATH to train on");
        }
        let init = match (&self.base, &self.config) {
            (Some(dir), None) => ModelInit::Base { dir: dir.clone() },
            (None, Some(config)) => ModelInit::Scratch { config: config.clone(), heads: self.heads },
            _ => bail!("give --base DIR to finetune a model, or --config PRESET|FILE to train one from scratch"),
        };
        if self.heads.is_some() && self.base.is_some() {
            bail!("--heads applies to --config; to add heads to a base model use --add-heads N");
        }
        let finetune = self.base.is_some();
        let mut o = TrainOptions::new(self.repos.clone(), self.out.clone(), init);
        let d = AdamWConfig::default();
        o.new_tokenizer = self.new_tokenizer;
        o.tokenizer_file = self.tokenizer.clone();
        o.freeze_trunk = self.freeze_trunk;
        o.add_heads = self.add_heads.unwrap_or(0);
        o.seq_len = self.seq_len.unwrap_or(o.seq_len);
        o.batch_size = self.batch_size.unwrap_or(o.batch_size);
        o.grad_accum = self.grad_accum.unwrap_or(o.grad_accum);
        o.length = match (self.steps, self.tokens, self.time_budget) {
            (_, _, Some(secs)) => RunLength::Seconds(secs),
            (_, Some(t), None) => RunLength::Tokens(t),
            (Some(s), None, None) => RunLength::Steps(s),
            (None, None, None) => o.length,
        };
        if self.shard_mib == Some(0) {
            bail!("--shard-mib must be at least 1");
        }
        o.save = foresight::model::weights::SaveOptions {
            bf16: self.save_bf16,
            max_shard_bytes: self.shard_mib.map(|m| m << 20),
        };
        o.lr = self.lr.unwrap_or(if finetune { 1e-4 } else { 3e-4 });
        o.min_lr_ratio = self.min_lr_ratio.unwrap_or(o.min_lr_ratio);
        o.warmup_steps = self.warmup_steps;
        o.adamw = AdamWConfig {
            beta1: self.beta1.unwrap_or(d.beta1),
            beta2: self.beta2.unwrap_or(d.beta2),
            eps: d.eps,
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
        };
        o.clip_norm = self.clip_norm.unwrap_or(o.clip_norm);
        o.seed = self.seed.unwrap_or(o.seed);
        o.fim = FimRates {
            fim_rate: self.fim_rate.unwrap_or(o.fim.fim_rate),
            spm_rate: self.spm_rate.unwrap_or(o.fim.spm_rate),
            spans: self.fim_spans.unwrap_or(o.fim.spans),
        };
        o.head_weights = self.head_weights.clone().unwrap_or_default();
        o.loss_order = self.loss_order.unwrap_or_default();
        o.head_targets = self.head_targets.unwrap_or_default();
        o.checkpoint_every = self.checkpoint_every.unwrap_or(o.checkpoint_every);
        o.eval_every = self.eval_every.unwrap_or(o.eval_every);
        o.eval_batches = self.eval_batches.unwrap_or(o.eval_batches);
        o.valid_fraction = self.valid_fraction.unwrap_or(o.valid_fraction);
        o.max_file_bytes = self.max_file_bytes.unwrap_or(o.max_file_bytes);
        o.keep_checkpoints = self.keep_checkpoints.unwrap_or(o.keep_checkpoints);
        o.device = self.device.clone().unwrap_or(o.device);
        o.compute_dtype = self.dtype.clone();
        Ok(o)
    }
}

fn report(prepared: &tr::Prepared, verbose: bool) {
    let c = &prepared.corpus;
    let kept = c.train.len() + c.valid.len();
    let langs: Vec<String> = c
        .languages()
        .iter()
        .map(|(l, n)| format!("{l} {n}"))
        .collect();
    eprintln!(
        "files: {kept} kept ({} train, {} validation; {}), {} skipped",
        c.train.len(),
        c.valid.len(),
        langs.join(", "),
        c.skipped_count()
    );
    for line in skip_report(c, verbose) {
        eprintln!("{line}");
    }
    if verbose {
        for line in kept_report(c) {
            eprintln!("{line}");
        }
    }
    if let Some(stats) = prepared.token_cache {
        eprintln!("tokens: {stats}");
    }
    let (trainable, total) = prepared.trainable_params();
    let cfg = &prepared.config;
    eprintln!(
        "model: {} heads, {} trunk layers, d {}, vocab {}; {:.2}M parameters, {:.2}M trainable",
        cfg.n_heads(),
        cfg.n_trunk_layers(),
        cfg.hidden_size,
        cfg.vocab_size,
        total as f64 / 1e6,
        trainable as f64 / 1e6
    );
    let o = &prepared.options;
    let length = match o.time_budget() {
        Some(secs) => format!("{secs:.0} s of steps (--time-budget)"),
        None => format!("{} steps", prepared.total_steps()),
    };
    eprintln!(
        "run: {length} of {} tokens ({} x {} x {} accum), lr {:e}, {:?} loss order{}",
        o.tokens_per_step(),
        o.batch_size,
        o.seq_len,
        o.grad_accum,
        o.lr,
        o.loss_order,
        match &prepared.resumed_from {
            Some(dir) => format!(
                ", resuming at step {} from {}",
                prepared.step(),
                dir.display()
            ),
            None => String::new(),
        }
    );
}

pub fn train(args: TrainArgs) -> Result<()> {
    tr::tune_allocator_for_training();
    let prepared = if args.resume {
        let given = &args.given;
        if !given.is_empty() {
            bail!(
                "--resume continues the run in {} with the options it started with; remove {}",
                args.out.display(),
                given.join(", ")
            );
        }
        tr::prepare_resume_with(&args.out, &args.tokenization())
            .with_context(|| format!("cannot resume the run in {}", args.out.display()))?
    } else {
        let options = args.options()?;
        tr::prepare_with(options, args.force, &args.tokenization())
            .context("cannot start training")?
    };
    report(&prepared, args.verbose);
    let stop = Arc::new(AtomicBool::new(false));
    let handler_flag = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: writing a checkpoint after this step (Ctrl-C again to quit at once)"
        );
    })
    .context("cannot install the Ctrl-C handler")?;
    let control = Control {
        stop: Some(Arc::clone(&stop)),
        stop_after: args.stop_after,
        progress: !args.no_progress,
        // Test hook (tests/train_cli.rs): hold after the first checkpoint until Ctrl-C.
        hold_after_checkpoint: std::env::var("FORESIGHT_TEST_HOLD")
            .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes")),
    };
    let out = args.out.clone();
    match prepared.run(&control).context("training failed")? {
        Outcome::Finished {
            out,
            steps,
            last_validation,
        } => {
            if let Some(v) = last_validation {
                let top1: Vec<String> = v.head_top1.iter().map(|a| format!("{a:.3}")).collect();
                let losses: Vec<String> = v.head_losses.iter().map(|l| format!("{l:.3}")).collect();
                eprintln!(
                    "validation: loss per head [{}], top-1 agreement per head [{}]",
                    losses.join(", "),
                    top1.join(", ")
                );
            }
            eprintln!(
                "done: {steps} steps; model written to {} (use it with --model {})",
                out.display(),
                out.display()
            );
        }
        Outcome::Interrupted { checkpoint, step } => {
            eprintln!("stopped at step {step}; checkpoint {}. Continue with: foresight train --resume --out {}", checkpoint.display(), out.display());
            if stop.load(Ordering::SeqCst) {
                std::process::exit(130);
            }
        }
    }
    Ok(())
}
