//! Benchmark harnesses that drive Foresight from outside, as a user's editor or machine would:
//! `bench::lsp` replays typing against a `foresight serve` child process. Not part of the server,
//! and no timing assertions: the figures go to docs/BENCHMARKS.md.

pub mod lsp;
