//! `foresight train`: finetune or train MTP models on code repositories. The repository walk and
//! its filters, the BPE trainer, the FIM transform and packing, the tokenized-corpus cache, the MTP objective in the paper's
//! memory-efficient order, AdamW with its schedule, checkpoints, and the run loop. Imports `model`
//! only; the command line lives in `cli.rs`.

pub mod bpe;
pub mod checkpoint;
pub mod corpus;
pub mod error;
pub mod files;
pub mod fim;
pub mod objective;
pub mod optim;
pub mod options;
pub mod packing;
pub mod params;
pub mod presets;
pub mod run;
pub mod splice;
pub mod throughput;
pub mod token_cache;

pub use error::{Result, TrainError};
pub use objective::{HeadTargets, LossOrder};
pub use options::{ModelInit, RunLength, TrainOptions};
pub use run::{
    prepare, prepare_resume, prepare_resume_with, prepare_with, Control, Outcome, Prepared,
    Tokenization,
};

/// Tunes glibc malloc for training: never return memory to the OS between steps and serve large
/// tensors from the heap instead of fresh mmaps. Training allocates and frees the same large
/// buffers every step; with the defaults, page faults and trimming cost about half the CPU
/// throughput (measured in docs/BENCHMARKS.md). Equivalent to `MALLOC_MMAP_MAX_=0
/// MALLOC_TRIM_THRESHOLD_=2147483647 (2 GiB, the most `mallopt` takes) MALLOC_TOP_PAD_=1G`. A no-op on other C libraries.
pub fn tune_allocator_for_training() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before training allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 1 << 30);
    }
}
