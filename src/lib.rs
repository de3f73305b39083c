//! Foresight: a local code-completion engine built around a multi-token-prediction model and
//! self-speculative decoding. This crate root only wires the modules together.

pub mod bench;
pub mod complete;
pub mod decode;
pub mod eval;
pub mod export;
pub mod lsp;
pub mod model;
pub mod train;
