//! Generation: plain greedy and sampled decoding, self-speculative decoding with drafts from the
//! MTP heads (or prompt lookup, or an oracle), stop rules, cancellation and statistics.
//! Imports `model`; knows nothing about prompts, files or LSP.

pub mod accept;
pub mod draft;
pub mod generate;
pub mod sampling;
pub mod stats;
pub mod stop;

pub use draft::{
    confident_heads, Draft, DraftRequest, DraftSource, HeadDrafts, LookupThenHeads, NoDrafts,
    OracleDrafts, PromptLookup,
};
pub use generate::{generate, Control, Forced, GenerateParams, Generation, StopReason};
pub use sampling::SamplingParams;
pub use stats::{GenerationStats, RoundCost};
pub use stop::{find_stop_string, Detokenize};
