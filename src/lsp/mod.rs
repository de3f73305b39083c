//! The language server: the only module that knows LSP and JSON. Documents (ropey), position
//! conversion, configuration, the stdio guard, the tower-lsp handlers, the model worker thread,
//! and the typing-replay benchmark client. Completion logic itself lives in `complete`.

pub mod bench;
pub mod config;
pub mod document;
pub mod guard;
pub mod position;
pub mod server;
pub mod worker;

pub use server::{serve, serve_stdio, ServeOptions};
