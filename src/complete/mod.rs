//! The completion pipeline on plain data: document text and cursor → FIM prompt → decode →
//! cleaned text. Owns a loaded model and its KV cache. No LSP types, no files.

pub mod block;
pub mod drafts;
pub mod framer;
pub mod location;
pub mod overlap;
pub mod policy;
pub mod postprocess;
pub mod prompt;
pub mod remote;
pub mod result_cache;
pub mod service;
pub mod settings;
pub mod snippets;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use crate::decode::{
    self, Control, DraftSource, GenerateParams, GenerationStats, LookupThenHeads, NoDrafts,
    PromptLookup, StopReason,
};
use crate::model::mtp::MAX_ROPE_POSITIONS;
use crate::model::weights::{load_dir, load_tokenizer_dir};
use crate::model::{weight_dtype, LoadedModel, ModelCache, Result};

pub use block::BlockRule;
use drafts::DraftArm;
pub use framer::{serving_capacity, Framer};
pub use policy::{LinePolicy, Lines};
pub use prompt::{FimOrder, Prompt, PromptBudget, PromptOptions};
pub use remote::{EngineTarget, RemoteEngine};
pub use settings::{Settings, SettingsArgs};

/// How tokens are produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One token per forward pass.
    Plain,
    /// Speculative: drafts copied from the context, else from the confident MTP heads, verified
    /// by head 1 (`decode::LookupThenHeads`).
    #[default]
    Spec,
    /// Speculative with prompt-lookup drafts (works for n=1 models too).
    Lookup,
}

impl std::fmt::Display for Mode {
    /// The name `FromStr` reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Plain => "plain",
            Mode::Spec => "spec",
            Mode::Lookup => "lookup",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "plain" => Ok(Mode::Plain),
            "spec" => Ok(Mode::Spec),
            "lookup" => Ok(Mode::Lookup),
            other => Err(format!("unknown mode {other:?}: use plain, spec or lookup")),
        }
    }
}

/// Settings of one completion.
#[derive(Debug, Clone)]
pub struct CompletionParams {
    pub mode: Mode,
    pub max_tokens: usize,
    pub budget: PromptBudget,
    pub order: FimOrder,
    /// Extra stop strings (for example "\n" for single-line completions).
    pub stop_strings: Vec<String>,
    pub sampling: Option<decode::SamplingParams>,
    pub max_draft_len: usize,
    /// Speculative mode only: let [`drafts::DraftPolicy`] turn drafting off while plain steps
    /// measure faster (false: always draft, to measure speculation itself).
    pub adaptive_drafts: bool,
    /// Set from another thread to stop the generation between forward passes.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Time cap: the generation stops at the first forward pass boundary after it.
    pub deadline: Option<Instant>,
    /// Prefix-clipping hysteresis: see [`PromptOptions`].
    pub prefix_start_hint: Option<usize>,
    pub prefix_slack_tokens: usize,
    /// Context placed before the prefix (snippets from other documents).
    pub preamble: String,
    /// Tokens kept for the preamble whatever its length: the server reserves its snippet budget,
    /// so the prefix budget stays the same from keystroke to keystroke (and the KV prefix with it).
    pub preamble_reserve: usize,
    /// Stop at the end of the line or block (checked while decoding).
    pub block: Option<BlockRule>,
    /// Token healing of the prefix's whitespace tail (`prompt::heal_start`).
    pub heal: bool,
}

impl CompletionParams {
    /// The parameters `settings` give a completion that has no request context yet (no
    /// preamble, cancel flag, deadline, hysteresis hint or block rule).
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            mode: settings.mode,
            max_tokens: settings.max_tokens,
            budget: settings.budget(),
            order: settings.fim_order,
            stop_strings: Vec::new(),
            sampling: settings.sampling(),
            max_draft_len: settings.max_draft_len,
            adaptive_drafts: settings.adaptive_drafts,
            cancel: None,
            deadline: None,
            prefix_start_hint: None,
            prefix_slack_tokens: settings.prefix_slack_tokens(),
            preamble: String::new(),
            preamble_reserve: 0,
            block: None,
            heal: settings.token_healing,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub stats: GenerationStats,
    /// Prompt building time, not included in `stats`.
    pub prompt_ms: f64,
    /// Byte offset in the text where the prompt's prefix started (a hint for the next request).
    pub prefix_start: usize,
}

/// Fewest tokens of document text a prompt keeps: below this, the preamble is left out.
pub const MIN_TEXT_TOKENS: usize = 64;

/// What produces completions: the local model, or a remote engine serving a model whose tokenizer
/// and config are local.
pub enum Backend {
    Local(Box<Engine>),
    Remote(Box<RemoteEngine>),
}

impl Backend {
    /// Opens what `settings` ask for with the model directory `dir`: with `engineUrl` set, only
    /// its tokenizer and config (the remote engine serves the weights); otherwise the model, on
    /// `settings.device`.
    pub fn open(dir: &std::path::Path, settings: &Settings) -> Result<Self> {
        match settings.engine_target() {
            Some(target) => {
                let (cfg, tokenizer, special) = load_tokenizer_dir(dir)?;
                let positions = cfg.max_position_embeddings.min(MAX_ROPE_POSITIONS);
                let framer = Framer::new(tokenizer, special, serving_capacity(positions));
                Ok(Backend::Remote(Box::new(RemoteEngine::new(framer, target))))
            }
            None => {
                let device = settings.device.device()?;
                let loaded = load_dir(dir, &device, weight_dtype(&device))?;
                let capacity = serving_capacity(loaded.model.max_positions());
                Ok(Backend::Local(Box::new(Engine::new(loaded, capacity))))
            }
        }
    }

    /// What prompts are built with.
    pub fn framer(&self) -> &Framer {
        match self {
            Backend::Local(e) => e.framer(),
            Backend::Remote(r) => r.framer(),
        }
    }

    /// Empties the local KV caches (a remote engine keeps none here).
    pub fn clear_caches(&mut self) {
        if let Backend::Local(e) = self {
            e.clear_caches();
        }
    }

    /// Completes `text` at byte offset `cursor`.
    pub fn complete(
        &mut self,
        text: &str,
        cursor: usize,
        params: &CompletionParams,
    ) -> Result<Completion> {
        match self {
            Backend::Local(e) => e.complete(text, cursor, params),
            Backend::Remote(r) => r.complete(text, cursor, params),
        }
    }

    /// The local model's heads (0 for a remote engine).
    pub fn heads(&self) -> usize {
        match self {
            Backend::Local(e) => e.loaded().model.n_heads(),
            Backend::Remote(_) => 0,
        }
    }

    /// For a remote engine, why it may not serve (it does not answer now); `None` when it answers,
    /// and for the local model.
    pub fn engine_warning(&self) -> Option<String> {
        match self {
            Backend::Local(_) => None,
            Backend::Remote(r) => r.probe().err(),
        }
    }

    /// The remote engine's endpoint, if this is one.
    pub fn endpoint(&self) -> Option<String> {
        match self {
            Backend::Local(_) => None,
            Backend::Remote(r) => Some(r.target().endpoint()),
        }
    }
}

/// A loaded model plus the KV caches it keeps between completions.
pub struct Engine {
    loaded: LoadedModel,
    /// The prompt rule and the cache size (`Framer::capacity`).
    framer: Framer,
    plain_cache: Option<ModelCache>,
    spec_cache: Option<ModelCache>,
    /// Measured cost of drafting vs not, for speculative requests with `adaptive_drafts`.
    drafts: drafts::DraftPolicy,
    /// Each token id's text, for token healing (`decode::Forced`).
    token_texts: Vec<String>,
}

impl Engine {
    pub fn new(mut loaded: LoadedModel, cache_capacity: usize) -> Self {
        // Halves the bytes a CPU decode step reads when the weights are bf16 values (lossless).
        match loaded.model.compact_for_decode() {
            Ok(n) => tracing::debug!("{n} projections keep a bf16 copy for decoding"),
            Err(e) => {
                tracing::warn!("cannot keep bf16 copies of the weights, decoding reads f32: {e}")
            }
        }
        // No cache may outgrow the positions the model knows (its RoPE table / trained context).
        let cache_capacity = cache_capacity.min(loaded.model.max_positions());
        let token_texts = (0..loaded.model.config().vocab_size as u32)
            .map(|id| loaded.tokenizer.decode(&[id], false).unwrap_or_default())
            .collect();
        let framer = Framer::new(
            loaded.tokenizer.clone(),
            loaded.special.clone(),
            cache_capacity,
        );
        Self {
            loaded,
            framer,
            plain_cache: None,
            spec_cache: None,
            drafts: drafts::DraftPolicy::default(),
            token_texts,
        }
    }

    pub fn loaded(&self) -> &LoadedModel {
        &self.loaded
    }

    /// Most tokens a prompt plus its completion may take.
    pub fn cache_capacity(&self) -> usize {
        self.framer.capacity()
    }

    /// Empties the KV caches, so the next completion prefills its whole prompt.
    pub fn clear_caches(&mut self) {
        for cache in [&mut self.plain_cache, &mut self.spec_cache]
            .into_iter()
            .flatten()
        {
            cache.truncate(0);
        }
    }

    /// The prompt for a completion of `text` at byte offset `cursor` (see [`Framer::prompt`]).
    pub fn prompt(&self, text: &str, cursor: usize, params: &CompletionParams) -> Result<Prompt> {
        self.framer.prompt(text, cursor, params)
    }

    /// What prompts for this model are built with.
    pub fn framer(&self) -> &Framer {
        &self.framer
    }

    /// Completes `text` at byte offset `cursor`.
    pub fn complete(
        &mut self,
        text: &str,
        cursor: usize,
        params: &CompletionParams,
    ) -> Result<Completion> {
        let t0 = Instant::now();
        let prompt = self.prompt(text, cursor, params)?;
        let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
        let model = &self.loaded.model;
        let adaptive = params.adaptive_drafts && params.mode == Mode::Spec && model.n_heads() > 1;
        let arm = if adaptive {
            self.drafts.choose()
        } else {
            DraftArm::Drafts
        };
        let (cache_slot, n_heads, mut drafter): (_, _, Box<dyn DraftSource>) = match params.mode {
            Mode::Plain => (&mut self.plain_cache, 1, Box::new(NoDrafts)),
            // Without drafts the spec cache still works: its extra heads only take keys and values.
            Mode::Spec if model.n_heads() > 1 => match arm {
                DraftArm::Drafts => (
                    &mut self.spec_cache,
                    model.n_heads(),
                    Box::new(LookupThenHeads::default()),
                ),
                DraftArm::NoDrafts => (&mut self.spec_cache, model.n_heads(), Box::new(NoDrafts)),
            },
            Mode::Spec | Mode::Lookup => {
                (&mut self.plain_cache, 1, Box::new(PromptLookup::default()))
            }
        };
        if cache_slot.is_none() {
            *cache_slot = Some(model.new_cache(self.framer.capacity(), n_heads)?);
        }
        let cache = cache_slot.as_mut().expect("cache was just created");
        let ids = &prompt.ids;
        let gen_params = GenerateParams {
            max_tokens: params.max_tokens,
            sampling: params.sampling,
            stop_tokens: self.loaded.special.stop_tokens(),
            max_draft_len: params.max_draft_len,
        };
        let block_stop = params
            .block
            .map(|rule| move |t: &str| block::block_end(t, &rule));
        let control = Control {
            cancel: params.cancel.as_deref(),
            deadline: params.deadline,
            stop_strings: Some((&self.loaded.tokenizer, &params.stop_strings)),
            stop_fn: block_stop
                .as_ref()
                .map(|f| f as &dyn Fn(&str) -> Option<usize>),
            forced: (!prompt.heal.is_empty()).then_some(decode::Forced {
                text: &prompt.heal,
                token_texts: &self.token_texts,
            }),
        };
        let generation =
            decode::generate(model, cache, ids, &gen_params, drafter.as_mut(), &control)?;
        if adaptive {
            self.drafts.record(&generation.stats);
            let (with, without) = self.drafts.ms_per_token();
            tracing::debug!(
                "adaptive drafts: ran {arm:?}; rounds with a draft {:?}, without {:?}; ms per token now: with {with:?}, without {without:?}",
                generation.stats.rounds_with_draft,
                generation.stats.rounds_without_draft
            );
        }
        let raw = decode::Detokenize::detokenize(&self.loaded.tokenizer, &generation.tokens);
        // The healed tail of the prefix is already in the document.
        let raw = raw.strip_prefix(prompt.heal.as_str()).unwrap_or(&raw);
        Ok(Completion {
            text: postprocess::clean_completion(raw, &generation.stop),
            tokens: generation.tokens,
            stop: generation.stop,
            stats: generation.stats,
            prompt_ms,
            prefix_start: prompt.prefix_start,
        })
    }
}
