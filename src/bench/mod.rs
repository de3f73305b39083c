//! Benchmark harnesses that drive Foresight from outside, as a user's editor or machine would:
//! `bench::lsp` replays typing against a `foresight serve` child process; `bench::gpu` measures
//! prefill, decode, completion and training on a device, with random-weight models and real ones.
//! Not part of the server, and no timing assertions: the figures go to docs/BENCHMARKS.md.

pub mod gpu;
pub mod lsp;
