//! Checkpoints on disk: `OUT/checkpoints/step-NNNNNNNN/` holds a loadable model directory
//! (config.json, model.safetensors, tokenizer.json), `optimizer.safetensors` (AdamW moments) and
//! `state.json` (step, data position, seed and the run's options). A checkpoint is written into a
//! `.tmp` folder and renamed into place, then `checkpoints/latest` is replaced atomically, so a
//! kill at any moment leaves the previous checkpoint intact. Not here: the training loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::error::{io_err, Result, TrainError};
use super::optim::AdamW;
use super::options::TrainOptions;
use super::packing::DataPosition;
use super::params::ParamSet;
use crate::model::weights::{save_dir, write_atomic};

pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const LATEST_FILE: &str = "latest";
pub const STATE_FILE: &str = "state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_VERSION: u32 = 1;

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub version: u32,
    /// Optimizer steps taken.
    pub step: u64,
    pub tokens_seen: u64,
    /// Where the next batch starts.
    pub data: DataPosition,
    /// All randomness of the data (document order, FIM draws, window order) is derived from
    /// `options.seed` and the epoch, so this position is the whole RNG state; the model itself
    /// draws no random numbers after initialization (no dropout).
    pub options: TrainOptions,
    /// Fingerprint of the corpus the run started on (see `Corpus::fingerprint`).
    pub corpus_fingerprint: u64,
    pub finished: bool,
    /// Wall-clock seconds the run has trained so far (what a `--time-budget` counts down).
    #[serde(default)]
    pub elapsed_secs: f64,
}

pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join(CHECKPOINTS_DIR)
}

pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Writes a checkpoint of `step` and points `latest` at it; keeps the newest `keep` checkpoints.
pub fn save(
    out: &Path,
    params: &ParamSet,
    tokenizer: &Tokenizer,
    opt: &AdamW,
    names: &[String],
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(out);
    std::fs::create_dir_all(&root).map_err(io_err(&root))?;
    let name = step_dir_name(state.step);
    let final_dir = root.join(&name);
    let tmp = root.join(format!("{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    save_dir(&params.inference_model()?, tokenizer, &tmp)?;
    let mut moments: HashMap<String, Tensor> = HashMap::new();
    for (i, n) in names.iter().enumerate() {
        moments.insert(format!("m.{n}"), opt.m[i].to_device(&Device::Cpu)?);
        moments.insert(format!("v.{n}"), opt.v[i].to_device(&Device::Cpu)?);
    }
    candle_core::safetensors::save(&moments, tmp.join(OPTIMIZER_FILE))?;
    let json = serde_json::to_string_pretty(state).expect("state serializes");
    std::fs::write(tmp.join(STATE_FILE), json).map_err(io_err(tmp.join(STATE_FILE)))?;
    sync_dir(&tmp);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io_err(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
    let latest = root.join(LATEST_FILE);
    write_atomic(&latest, |p| {
        std::fs::write(p, &name).map_err(|source| crate::model::ModelError::Io {
            path: p.to_path_buf(),
            source,
        })
    })?;
    sync_dir(&root);
    prune(&root, keep.max(1))?;
    Ok(final_dir)
}

/// Flushes a directory's files to disk (best effort: not every platform can open a directory).
fn sync_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(f) = std::fs::File::open(e.path()) {
                let _ = f.sync_all();
            }
        }
    }
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Removes all but the newest `keep` finished checkpoints and any stale `.tmp` folders.
fn prune(root: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<String> = Vec::new();
    for e in std::fs::read_dir(root).map_err(io_err(root))?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("step-") && name.ends_with(".tmp") {
            let _ = std::fs::remove_dir_all(e.path());
        } else if name.starts_with("step-") {
            steps.push(name);
        }
    }
    steps.sort();
    let n = steps.len();
    for name in steps.into_iter().take(n.saturating_sub(keep)) {
        let p = root.join(name);
        std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
    }
    Ok(())
}

/// The directory `checkpoints/latest` points at.
pub fn latest(out: &Path) -> Result<PathBuf> {
    let root = checkpoints_dir(out);
    let pointer = root.join(LATEST_FILE);
    let name = std::fs::read_to_string(&pointer)
        .map_err(|_| TrainError::NoCheckpoint(out.to_path_buf()))?;
    let dir = root.join(name.trim());
    if !dir.is_dir() {
        return Err(TrainError::BadCheckpoint {
            path: dir,
            reason: "checkpoints/latest names a missing folder".into(),
        });
    }
    Ok(dir)
}

pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| TrainError::BadCheckpoint {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if state.version != STATE_VERSION {
        return Err(TrainError::BadCheckpoint {
            path,
            reason: format!(
                "state version {} (this build reads {STATE_VERSION})",
                state.version
            ),
        });
    }
    Ok(state)
}

/// Restores AdamW moments saved for `names` into `opt` (whose vars follow the same order).
pub fn load_optimizer(
    dir: &Path,
    opt: &mut AdamW,
    names: &[String],
    step: u64,
    device: &Device,
) -> Result<()> {
    let path = dir.join(OPTIMIZER_FILE);
    let mut tensors =
        candle_core::safetensors::load(&path, device).map_err(|e| TrainError::BadCheckpoint {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    for (i, n) in names.iter().enumerate() {
        for (key, slot) in [
            (format!("m.{n}"), &mut opt.m[i]),
            (format!("v.{n}"), &mut opt.v[i]),
        ] {
            let t = tensors.remove(&key).ok_or_else(|| TrainError::BadCheckpoint {
                path: path.clone(),
                reason: format!("no optimizer state for {n} (was the run started with other trainable weights?)"),
            })?;
            if t.dims() != slot.dims() {
                return Err(TrainError::BadCheckpoint {
                    path: path.clone(),
                    reason: format!("{key} has shape {:?}, expected {:?}", t.dims(), slot.dims()),
                });
            }
            *slot = t;
        }
    }
    opt.step = step;
    Ok(())
}
