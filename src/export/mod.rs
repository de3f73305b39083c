//! `foresight export`: a model directory rewritten for other engines. Hugging Face
//! (`hf`: config.json, safetensors and tokenizer files that transformers loads as
//! `LlamaForCausalLM` / `Qwen2ForCausalLM`, the extra heads kept under `model.extra_heads.*`) and
//! GGUF (`gguf`: the trunk with head 1 as a standard llama.cpp model, tokenizer and FIM tokens in
//! its metadata). Not the local format (`model::weights::save_dir`) and nothing about training.

pub mod gguf;
pub mod hf;

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use crate::model::{LoadedModel, ModelConfig, ModelError};

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Unsupported(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(Box<ModelError>),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl From<ModelError> for ExportError {
    fn from(e: ModelError) -> Self {
        ExportError::Model(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, ExportError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The model's tensors in f32, under their Hugging Face names, with the query and key
/// projections in Hugging Face's half-rotation RoPE layout (a model loaded from Meta's
/// interleaved layout has its rows permuted), and its config saying so.
pub fn half_rotation_tensors(loaded: &LoadedModel) -> Result<(ModelConfig, Vec<(String, Tensor)>)> {
    let mut cfg = loaded.model.config().clone();
    let head_dim = cfg.head_dim();
    let interleaved = cfg.rope_interleaved;
    let mut out = Vec::new();
    for (name, t) in loaded.model.named_tensors() {
        let t = t.to_dtype(DType::F32)?;
        let rotary = name.ends_with("self_attn.q_proj.weight")
            || name.ends_with("self_attn.k_proj.weight")
            || name.ends_with("self_attn.q_proj.bias")
            || name.ends_with("self_attn.k_proj.bias");
        let t = if interleaved && rotary {
            permute_rows(&t, head_dim, &interleaved_to_half(head_dim))?
        } else {
            t
        };
        out.push((name, t));
    }
    cfg.rope_interleaved = false;
    Ok((cfg, out))
}

/// Row order that turns one head's interleaved RoPE rows (pairs (0,1), (2,3), ...) into the
/// half-rotation layout (pairs (i, i + d/2)): new row i is old row `order[i]`.
pub fn interleaved_to_half(head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..head_dim)
        .map(|i| if i < half { 2 * i } else { 2 * (i - half) + 1 })
        .collect()
}

/// The inverse: half-rotation rows into interleaved ones (what llama.cpp's LLaMA RoPE expects).
pub fn half_to_interleaved(head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..head_dim)
        .map(|i| if i % 2 == 0 { i / 2 } else { half + i / 2 })
        .collect()
}

/// Reorders the rows of `t` (a weight `(heads * head_dim, d)` or a bias `(heads * head_dim)`)
/// within each head by `order`.
pub fn permute_rows(t: &Tensor, head_dim: usize, order: &[usize]) -> Result<Tensor> {
    let rows = t.dim(0)?;
    if rows % head_dim != 0 {
        return Err(ExportError::Unsupported(format!(
            "{rows} rows are not whole heads of {head_dim}"
        )));
    }
    let index: Vec<u32> = (0..rows / head_dim)
        .flat_map(|h| order.iter().map(move |&r| (h * head_dim + r) as u32))
        .collect();
    let index = Tensor::new(index.as_slice(), t.device())?;
    Ok(t.index_select(&index, 0)?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_row_orders_are_inverse_permutations() {
        for hd in [2, 4, 8, 64] {
            let a = interleaved_to_half(hd);
            let b = half_to_interleaved(hd);
            let mut sorted = a.clone();
            sorted.sort();
            assert_eq!(sorted, (0..hd).collect::<Vec<_>>(), "a permutation");
            for i in 0..hd {
                assert_eq!(
                    a[b[i]], i,
                    "{hd}: half_to_interleaved undoes interleaved_to_half"
                );
            }
        }
        assert_eq!(interleaved_to_half(4), [0, 2, 1, 3]);
        assert_eq!(half_to_interleaved(8), [0, 4, 1, 5, 2, 6, 3, 7]);
    }

    #[test]
    fn permute_rows_moves_rows_within_each_head() {
        let t = Tensor::arange(0f32, 8.0, &candle_core::Device::Cpu)
            .unwrap()
            .reshape((8, 1))
            .unwrap();
        let p = permute_rows(&t, 4, &interleaved_to_half(4)).unwrap();
        let got: Vec<f32> = p.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, [0., 2., 1., 3., 4., 6., 5., 7.]);
        assert!(permute_rows(&t, 3, &[0, 1, 2]).is_err());
    }
}
