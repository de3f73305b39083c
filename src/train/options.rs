//! The options of one training run, as plain serializable data (a checkpoint stores them so that
//! `--resume` continues the same run), their validation, and the numbers derived from them.
//! Not here: parsing the command line (`cli.rs`) or running anything (`run.rs`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::{Result, TrainError};
use super::fim::{FimRates, FimSpans};
use super::objective::{HeadTargets, LossOrder};
use super::optim::AdamWConfig;

/// Where the starting weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelInit {
    /// Finetune an existing model directory.
    Base { dir: PathBuf },
    /// Random weights shaped by a preset name or a config.json path; `heads` overrides n.
    Scratch {
        config: String,
        heads: Option<usize>,
    },
}

/// How long the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunLength {
    Steps(u64),
    /// Training tokens (inputs); rounded up to whole optimizer steps.
    Tokens(u64),
    /// Wall-clock seconds: the run stops at the first step boundary past the budget, and the
    /// learning rate follows `optim::lr_by_time`.
    Seconds(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub repos: Vec<PathBuf>,
    pub out: PathBuf,
    pub init: ModelInit,
    /// Train a byte-level BPE of this size on the training split (scratch only).
    pub new_tokenizer: Option<usize>,
    /// Use this tokenizer.json (scratch only): another model's vocabulary, so twin models compare
    /// like for like and share the token cache.
    #[serde(default)]
    pub tokenizer_file: Option<PathBuf>,
    pub freeze_trunk: bool,
    pub add_heads: usize,
    pub seq_len: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub length: RunLength,
    pub lr: f64,
    /// The cosine decays to `lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
    /// Warmup steps; `None`: 10% of the run, at most 100.
    pub warmup_steps: Option<u64>,
    pub adamw: AdamWConfig,
    /// Global-norm clipping threshold (0 disables).
    pub clip_norm: f64,
    pub seed: u64,
    pub fim: FimRates,
    /// Weight of each head's loss; empty: 1 for every head.
    pub head_weights: Vec<f32>,
    pub loss_order: LossOrder,
    /// What heads 2..n learn: the data, or head 1's own predictions (runs from before this option
    /// read as `data`).
    #[serde(default)]
    pub head_targets: HeadTargets,
    /// Checkpoint every N steps (0: only on interruption and at the end).
    pub checkpoint_every: u64,
    /// Validate every N steps (0: only at the start and the end).
    pub eval_every: u64,
    /// At most this many validation batches.
    pub eval_batches: usize,
    pub valid_fraction: f64,
    pub max_file_bytes: u64,
    pub keep_checkpoints: usize,
    /// "cpu", "cuda" or "cuda:N".
    pub device: String,
    /// Matmul dtype: "f32" or "bf16" (master weights and optimizer state stay f32).
    /// `None`: f32 on the CPU, bf16 on CUDA.
    pub compute_dtype: Option<String>,
    /// Standard deviation of random initial weights (scratch).
    pub init_std: f32,
    /// How the final model directory stores its weights (checkpoints stay f32, single file).
    #[serde(default)]
    pub save: crate::model::weights::SaveOptions,
}

impl TrainOptions {
    /// Defaults for everything but the repositories, output and starting point.
    pub fn new(repos: Vec<PathBuf>, out: PathBuf, init: ModelInit) -> Self {
        Self {
            repos,
            out,
            init,
            new_tokenizer: None,
            tokenizer_file: None,
            freeze_trunk: false,
            add_heads: 0,
            seq_len: 512,
            batch_size: 8,
            grad_accum: 1,
            length: RunLength::Steps(1000),
            lr: 3e-4,
            min_lr_ratio: 0.1,
            warmup_steps: None,
            adamw: AdamWConfig::default(),
            clip_norm: 1.0,
            seed: 0,
            fim: FimRates {
                fim_rate: 0.5,
                spm_rate: 0.5,
                spans: FimSpans::Random,
            },
            head_weights: Vec::new(),
            loss_order: LossOrder::Sequential,
            head_targets: HeadTargets::Data,
            checkpoint_every: 100,
            eval_every: 100,
            eval_batches: 8,
            valid_fraction: 0.05,
            max_file_bytes: super::files::MAX_FILE_BYTES,
            keep_checkpoints: 2,
            device: "cpu".into(),
            compute_dtype: None,
            init_std: 0.02,
            save: crate::model::weights::SaveOptions::default(),
        }
    }

    /// Input tokens one optimizer step consumes.
    pub fn tokens_per_step(&self) -> u64 {
        (self.seq_len * self.batch_size * self.grad_accum) as u64
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> u64 {
        match self.length {
            RunLength::Steps(s) => s,
            RunLength::Tokens(t) => t.div_ceil(self.tokens_per_step().max(1)),
            RunLength::Seconds(_) => u64::MAX,
        }
    }

    /// The wall-clock budget in seconds, for runs measured in time.
    pub fn time_budget(&self) -> Option<f64> {
        match self.length {
            RunLength::Seconds(s) => Some(s as f64),
            _ => None,
        }
    }

    pub fn warmup(&self) -> u64 {
        self.warmup_steps
            .unwrap_or_else(|| (self.total_steps() / 10).min(100))
    }

    /// Per-head loss weights for `n` heads.
    pub fn weights_for(&self, n: usize) -> Result<Vec<f32>> {
        if self.head_weights.is_empty() {
            return Ok(vec![1.0; n]);
        }
        if self.head_weights.len() != n {
            return Err(TrainError::InvalidOptions(format!(
                "--head-weights has {} values but the model has {n} heads",
                self.head_weights.len()
            )));
        }
        Ok(self.head_weights.clone())
    }

    /// Checks what can be checked without touching the disk or the model.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::InvalidOptions(m));
        if self.repos.is_empty() {
            return bad("give at least one --repo".into());
        }
        if self.seq_len < 2 || self.batch_size == 0 || self.grad_accum == 0 {
            return bad(
                "--seq-len must be at least 2, --batch-size and --grad-accum at least 1".into(),
            );
        }
        if self.total_steps() == 0 || self.length == RunLength::Seconds(0) {
            return bad(
                "the run has no steps: --steps, --tokens or --time-budget must be positive".into(),
            );
        }
        if !(self.lr > 0.0 && self.lr.is_finite() && (0.0..=1.0).contains(&self.min_lr_ratio)) {
            return bad("--lr must be positive and --min-lr-ratio within 0..=1".into());
        }
        let a = &self.adamw;
        if !(0.0..1.0).contains(&a.beta1)
            || !(0.0..1.0).contains(&a.beta2)
            || a.weight_decay < 0.0
            || a.eps <= 0.0
        {
            return bad("betas must be in [0, 1), weight decay non-negative, eps positive".into());
        }
        if !(0.0..=1.0).contains(&self.fim.fim_rate) || !(0.0..=1.0).contains(&self.fim.spm_rate) {
            return bad("--fim-rate and --spm-rate must be within 0..=1".into());
        }
        if !(0.0..1.0).contains(&self.valid_fraction) {
            return bad("--valid-fraction must be within 0..1".into());
        }
        if self.head_weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return bad("--head-weights must be non-negative numbers".into());
        }
        if self.eval_batches == 0 {
            return bad("--eval-batches must be at least 1".into());
        }
        match (&self.init, self.new_tokenizer) {
            (ModelInit::Base { .. }, Some(_)) => {
                return bad(
                    "--new-tokenizer trains from scratch; a base model keeps its own tokenizer"
                        .into(),
                )
            }
            (ModelInit::Base { .. }, None) if self.tokenizer_file.is_some() => {
                return bad("--tokenizer applies to a model trained from scratch; \
                     a base model keeps its own tokenizer"
                    .into())
            }
            (ModelInit::Scratch { .. }, Some(_)) if self.tokenizer_file.is_some() => {
                return bad("give --new-tokenizer N or --tokenizer FILE, not both".into())
            }
            (ModelInit::Scratch { .. }, _) if self.freeze_trunk => {
                return bad("--freeze-trunk needs a trained trunk: give --base".into())
            }
            _ => {}
        }
        if let Some(d) = &self.compute_dtype {
            if d != "f32" && d != "bf16" {
                return bad(format!("--dtype {d:?}: use f32 or bf16"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> TrainOptions {
        TrainOptions::new(
            vec!["r".into()],
            "o".into(),
            ModelInit::Scratch {
                config: "tiny".into(),
                heads: None,
            },
        )
    }

    #[test]
    fn derived_numbers() {
        let mut o = opts();
        o.seq_len = 100;
        o.batch_size = 4;
        o.grad_accum = 2;
        o.length = RunLength::Tokens(1000);
        assert_eq!(o.tokens_per_step(), 800);
        assert_eq!(o.total_steps(), 2);
        assert_eq!(o.warmup(), 0);
        o.length = RunLength::Steps(5000);
        assert_eq!(o.warmup(), 100);
        o.length = RunLength::Steps(50);
        assert_eq!(o.warmup(), 5);
        assert_eq!(o.weights_for(3).unwrap(), vec![1.0; 3]);
        o.head_weights = vec![1.0, 0.5];
        assert!(o.weights_for(3).is_err());
    }

    #[test]
    #[allow(clippy::type_complexity)] // a table of cases: its row type is spelled out once
    fn validation_table() {
        let cases: Vec<(Box<dyn Fn(&mut TrainOptions)>, Option<&str>)> = vec![
            (Box::new(|_| {}), None),
            (Box::new(|o| o.repos.clear()), Some("--repo")),
            (
                Box::new(|o| o.length = RunLength::Steps(0)),
                Some("no steps"),
            ),
            (Box::new(|o| o.fim.fim_rate = 1.5), Some("--fim-rate")),
            (Box::new(|o| o.freeze_trunk = true), Some("--freeze-trunk")),
            (
                Box::new(|o| o.compute_dtype = Some("f16".into())),
                Some("--dtype"),
            ),
            (
                Box::new(|o| {
                    o.init = ModelInit::Base { dir: "m".into() };
                    o.new_tokenizer = Some(1000);
                }),
                Some("--new-tokenizer"),
            ),
            (
                Box::new(|o| {
                    o.init = ModelInit::Base { dir: "m".into() };
                    o.tokenizer_file = Some("t.json".into());
                }),
                Some("--tokenizer applies"),
            ),
            (
                Box::new(|o| {
                    o.new_tokenizer = Some(1000);
                    o.tokenizer_file = Some("t.json".into());
                }),
                Some("not both"),
            ),
            (Box::new(|o| o.tokenizer_file = Some("t.json".into())), None),
        ];
        for (patch, want) in cases {
            let mut o = opts();
            patch(&mut o);
            match (o.validate(), want) {
                (Ok(()), None) => {}
                (Err(e), Some(needle)) => assert!(e.to_string().contains(needle), "{e}"),
                (got, want) => panic!("{got:?} vs {want:?}"),
            }
        }
    }
}
