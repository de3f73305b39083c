//! The language server: the only module that knows LSP and JSON. Documents (ropey), position
//! conversion, configuration, the stdio guard (and its `Content-Length` framing, which the
//! benchmark client shares), the tower-lsp handlers and the model worker thread. Completion logic
//! itself lives in `complete`; the typing-replay benchmark client in `bench::lsp`.

pub mod config;
pub mod document;
pub mod guard;
pub mod position;
pub mod server;
pub mod worker;

pub use server::{serve, serve_stdio, ServeOptions};
