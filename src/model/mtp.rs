//! The multi-token-prediction model: embeddings, shared trunk, n head layers, one final norm and
//! one unembedding (Gloeckle et al. 2024), plus `ModelCache`, the per-sequence KV state.
//! Not here: choosing tokens (`decode`), files on disk (`weights.rs`).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::gpu_ops::logits_f32;
use super::kv_cache::KvCache;
use super::layers::{small_chunk, DecoderLayer, Kernels, Proj, RmsNorm};
use super::rope::Rope;

/// RoPE tables are built for at most this many positions, whatever `max_position_embeddings` says.
pub const MAX_ROPE_POSITIONS: usize = 32_768;

/// Hugging Face name of the layer that is head `head_idx` (0 = head 1 = `layers[L-1]`).
pub fn head_layer_prefix(cfg: &ModelConfig, head_idx: usize) -> String {
    if head_idx == 0 {
        format!("model.layers.{}", cfg.num_hidden_layers - 1)
    } else {
        format!("model.extra_heads.{}", head_idx - 1)
    }
}

/// Which head-1 logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// One row per new token (verification needs them all).
    All,
    /// Only the last new token (prefill).
    Last,
}

/// What one forward pass over a chunk of new tokens gives back.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Head-1 logits, f32, shape `(rows, vocab)`: every new position, or the last one (see [`Logits`]).
    pub logits: Tensor,
    /// Output of each extra head (heads 2..=n the cache runs), shape `(t, hidden)`, before the final
    /// norm. Project a row with [`MtpModel::extra_head_logits`] only where a draft is needed.
    pub extra_hidden: Vec<Tensor>,
}

/// What [`MtpModel::forward_verify`] gives back: head-1 logits, and the trunk output that
/// [`MtpModel::extend_heads`] feeds to the extra heads once the kept rows are known.
#[derive(Debug)]
pub struct VerifyOutput {
    /// Head-1 logits, f32, `(rows, vocab)` as in [`ForwardOutput::logits`].
    pub logits: Tensor,
    /// Trunk output `(1, t, hidden)` for the new positions.
    trunk: Tensor,
}

/// Which extra heads' logits [`MtpModel::extend_heads`] computes at the last kept row: a head's
/// full layer and the unembedding cost about a third of a decoding step each on a small model, so
/// a drafter that will not use a head's draft spares it.
pub enum HeadLogits<'a> {
    /// None: keys and values only.
    None,
    /// Every extra head's.
    All,
    /// Each head's in order while the callback, given the logits computed so far (none before
    /// head 2), answers true.
    While(&'a mut dyn FnMut(&[Vec<f32>]) -> bool),
}

/// KV caches of one sequence (every trunk layer and every head layer in use) and its tokens.
#[derive(Debug, Clone)]
pub struct ModelCache {
    layers: Vec<KvCache>,
    n_trunk: usize,
    tokens: Vec<u32>,
}

impl ModelCache {
    /// Positions currently cached.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.layers[0].capacity()
    }

    /// The token ids whose keys and values are cached, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Heads this cache runs (1 = head 1 only, plain decoding).
    pub fn n_heads(&self) -> usize {
        self.layers.len() - self.n_trunk
    }

    /// Positions that every layer holds. The extra heads lag behind the trunk between
    /// [`MtpModel::forward_verify`] and [`MtpModel::extend_heads`], and stay behind if a failure
    /// came in between; a new generation reuses at most this much.
    pub fn synced_len(&self) -> usize {
        self.layers
            .iter()
            .map(KvCache::len)
            .min()
            .unwrap_or(0)
            .min(self.tokens.len())
    }

    /// Keeps positions `0..keep_len` in every layer. O(1) per layer.
    pub fn truncate(&mut self, keep_len: usize) {
        for layer in &mut self.layers {
            layer.truncate(keep_len);
        }
        self.tokens.truncate(keep_len);
    }
}

#[derive(Debug, Clone)]
pub struct MtpModel {
    config: ModelConfig,
    embed_tokens: Embedding,
    trunk: Vec<DecoderLayer>,
    /// `heads[0]` is head 1 (`layers[L-1]`); `heads[j]` is `extra_heads[j-1]`.
    heads: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Proj,
    rope: Rope,
    kernels: Kernels,
    device: Device,
    dtype: DType,
}

impl MtpModel {
    /// Builds the model from a `VarBuilder` holding Hugging Face tensor names (plus `model.extra_heads.*`).
    pub fn load(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let cfg = config;
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("model.embed_tokens"))?;
        let trunk = (0..cfg.n_trunk_layers())
            .map(|i| DecoderLayer::load(cfg, vb.pp(format!("model.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let heads = (0..cfg.n_heads())
            .map(|h| DecoderLayer::load(cfg, vb.pp(head_layer_prefix(cfg, h))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("model.norm"))?;
        let lm_head = Proj::new(if cfg.tie_word_embeddings {
            Linear::new(embed_tokens.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?
        });
        let rope_positions = cfg.max_position_embeddings.min(MAX_ROPE_POSITIONS);
        let rope = Rope::new(
            cfg.head_dim(),
            rope_positions,
            cfg.rope_theta,
            cfg.rope_interleaved,
            vb.dtype(),
            vb.device(),
        )?;
        Ok(Self {
            config: cfg.clone(),
            embed_tokens,
            trunk,
            heads,
            norm,
            lm_head,
            rope,
            kernels: Kernels::Fused,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of heads (n in the paper).
    pub fn n_heads(&self) -> usize {
        self.heads.len()
    }

    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// Longest sequence a cache may hold (the RoPE table length).
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions()
    }

    /// Gives every projection a bf16 copy for the CPU decode kernels where that is lossless (see
    /// [`Proj::compact`]); returns how many did. Inference only: the copies do not follow
    /// later changes to the weights.
    pub fn compact_for_decode(&mut self) -> Result<usize> {
        let mut compacted = usize::from(self.lm_head.compact()?);
        for layer in self.trunk.iter_mut().chain(self.heads.iter_mut()) {
            for proj in layer.projections_mut() {
                compacted += usize::from(proj.compact()?);
            }
        }
        Ok(compacted)
    }

    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// A cache for `capacity` positions that runs heads `1..=n_heads_used` (clamped to what exists).
    pub fn new_cache(&self, capacity: usize, n_heads_used: usize) -> Result<ModelCache> {
        let capacity = capacity.min(self.max_positions()).max(1);
        let n_heads_used = n_heads_used.clamp(1, self.n_heads());
        let (kv, hd) = (self.config.n_kv_heads(), self.config.head_dim());
        let layers = (0..self.trunk.len() + n_heads_used)
            .map(|_| KvCache::new(kv, hd, capacity, self.dtype, &self.device))
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelCache {
            layers,
            n_trunk: self.trunk.len(),
            tokens: Vec::new(),
        })
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        match tokens
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            Some(&id) => Err(ModelError::TokenOutOfRange {
                id,
                vocab_size: self.config.vocab_size,
            }),
            None => Ok(()),
        }
    }

    /// Feeds `tokens` at positions `cache.len()..` through the trunk and the first `n_run` heads the
    /// cache holds, appending to their caches; returns those heads' outputs `(t, hidden)` and the
    /// trunk output `(1, t, hidden)`.
    fn run_chunk(
        &self,
        cache: &mut ModelCache,
        tokens: &[u32],
        n_run: usize,
    ) -> Result<(Vec<Tensor>, Tensor)> {
        if tokens.is_empty() {
            return Err(ModelError::Misuse {
                reason: "forward needs at least one token".into(),
            });
        }
        self.check_tokens(tokens)?;
        let offset = cache.len();
        let needed = offset + tokens.len();
        if needed > cache.capacity() {
            return Err(ModelError::CacheFull {
                capacity: cache.capacity(),
                needed,
            });
        }
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let mut z = self.embed_tokens.forward(&ids)?;
        let (trunk_caches, head_caches) = cache.layers.split_at_mut(cache.n_trunk);
        // A layer behind the others (an extra head that missed extend_heads) would store keys at
        // the wrong positions: refuse rather than corrupt the cache.
        if let Some(kv) = trunk_caches
            .iter()
            .chain(head_caches.iter().take(n_run))
            .find(|kv| kv.len() != offset)
        {
            return Err(ModelError::Misuse {
                reason: format!(
                    "a layer holds {} positions, not {offset}: truncate to synced_len() first",
                    kv.len()
                ),
            });
        }
        for (layer, kv) in self.trunk.iter().zip(trunk_caches.iter_mut()) {
            z = layer.forward(&z, offset, &self.rope, Some(kv), self.kernels)?;
        }
        let mut outs = Vec::with_capacity(n_run);
        for (layer, kv) in self.heads.iter().zip(head_caches.iter_mut()).take(n_run) {
            outs.push(
                layer
                    .forward(&z, offset, &self.rope, Some(kv), self.kernels)?
                    .squeeze(0)?,
            );
        }
        cache.tokens.extend_from_slice(tokens);
        Ok((outs, z))
    }

    /// Head-1 logits of the rows `logits` asks for.
    fn head1_logits(&self, head1: Tensor, logits: Logits) -> Result<Tensor> {
        let rows = head1.dim(0)?;
        match logits {
            Logits::All => self.project(&head1),
            Logits::Last => self.project(&head1.narrow(0, rows - 1, 1)?),
        }
    }

    /// Feeds `tokens` at positions `cache.len()..`, appending to every cached layer, and returns
    /// head-1 logits plus the extra heads' hidden states for the new positions.
    pub fn forward(
        &self,
        cache: &mut ModelCache,
        tokens: &[u32],
        logits: Logits,
    ) -> Result<ForwardOutput> {
        let (mut outs, _) = self.run_chunk(cache, tokens, cache.n_heads())?;
        let head1 = outs.remove(0);
        Ok(ForwardOutput {
            logits: self.head1_logits(head1, logits)?,
            extra_hidden: outs,
        })
    }

    /// Decoding's first half: feeds `tokens` through the trunk and head 1 only, and returns head-1
    /// logits. The cache's tokens and trunk/head-1 layers advance; the extra heads wait for
    /// [`Self::extend_heads`], which runs them only on the rows that are kept.
    pub fn forward_verify(
        &self,
        cache: &mut ModelCache,
        tokens: &[u32],
        logits: Logits,
    ) -> Result<VerifyOutput> {
        let (mut outs, trunk) = self.run_chunk(cache, tokens, 1)?;
        Ok(VerifyOutput {
            logits: self.head1_logits(outs.remove(0), logits)?,
            trunk,
        })
    }

    /// Decoding's second half: after the cache was cut back to keep the first `keep` rows of the
    /// chunk `out` came from, appends those rows to every extra head's cache. Only keys and
    /// values are computed, except for the last kept row of the heads `logits` asks for: their
    /// full head layers give each one's logits there (the drafts for the next round), as
    /// [`Self::extra_head_logits`] would. Returns those logits, head 2's first.
    pub fn extend_heads(
        &self,
        cache: &mut ModelCache,
        out: &VerifyOutput,
        keep: usize,
        mut logits: HeadLogits,
    ) -> Result<Vec<Vec<f32>>> {
        let t = out.trunk.dim(1)?;
        let end = cache.len();
        if keep == 0 || keep > t || keep > end {
            return Err(ModelError::Misuse {
                reason: format!("extend_heads: keep {keep} of {t} rows with {end} cached"),
            });
        }
        let start = end - keep;
        let (_, head_caches) = cache.layers.split_at_mut(cache.n_trunk);
        let mut rows: Vec<Vec<f32>> = Vec::with_capacity(head_caches.len().saturating_sub(1));
        for (layer, kv) in self.heads.iter().zip(head_caches.iter_mut()).skip(1) {
            if kv.len() != start {
                return Err(ModelError::Misuse {
                    reason: format!(
                        "extend_heads: an extra head holds {} positions, not {start}",
                        kv.len()
                    ),
                });
            }
            let wanted = match &mut logits {
                HeadLogits::None => false,
                HeadLogits::All => true,
                HeadLogits::While(more) => more(&rows),
            };
            if !wanted {
                // Later heads are not wanted either: keys and values only, from here on.
                logits = HeadLogits::None;
            }
            let kv_rows = if wanted { keep - 1 } else { keep };
            if kv_rows > 0 {
                layer.append_keys_values(
                    &out.trunk.narrow(1, 0, kv_rows)?,
                    start,
                    &self.rope,
                    kv,
                    self.kernels,
                )?;
            }
            if wanted {
                let last = out.trunk.narrow(1, keep - 1, 1)?;
                let hidden = layer.forward(&last, end - 1, &self.rope, Some(kv), self.kernels)?;
                rows.push(
                    self.project(&hidden.squeeze(0)?)?
                        .squeeze(0)?
                        .to_vec1::<f32>()?,
                );
            }
        }
        Ok(rows)
    }

    /// Final norm and unembedding of hidden states `(..., hidden)`, as f32 logits `(..., vocab)`.
    /// With bf16 weights (GPU) the logits are computed in f32 (accumulated and written), never
    /// rounded to bf16: acceptance compares them, and bf16 would make near-ties.
    pub fn project(&self, hidden: &Tensor) -> Result<Tensor> {
        let normed = self.norm.forward(hidden, self.kernels)?;
        let rows = hidden.elem_count() / self.config.hidden_size;
        let small = small_chunk(&normed, rows, self.kernels);
        if self.dtype == DType::F32 || self.kernels.differentiable() {
            return Ok(self.lm_head.apply(&normed, small)?.to_dtype(DType::F32)?);
        }
        let mut dims = hidden.dims().to_vec();
        let logits = logits_f32(
            &normed.reshape((rows, self.config.hidden_size))?,
            self.lm_head.weight(),
        )?;
        *dims.last_mut().expect("hidden has a last dim") = self.config.vocab_size;
        Ok(logits.reshape(dims)?)
    }

    /// Logits of every extra head at row `pos` of a forward's output, as one `(n_extra, vocab)` matmul.
    pub fn extra_head_logits(&self, out: &ForwardOutput, pos: usize) -> Result<Vec<Vec<f32>>> {
        if out.extra_hidden.is_empty() {
            return Ok(Vec::new());
        }
        let rows = out
            .extra_hidden
            .iter()
            .map(|h| h.narrow(0, pos, 1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(self.project(&Tensor::cat(&rows, 0)?)?.to_vec2::<f32>()?)
    }

    /// Training: the trunk over a batch of token ids `(b, t)` without a cache; returns `(b, t, hidden)`.
    pub fn forward_trunk(&self, ids: &Tensor) -> Result<Tensor> {
        let mut z = self.embed_tokens.forward(ids)?;
        for layer in &self.trunk {
            z = layer.forward(&z, 0, &self.rope, None, self.kernels)?;
        }
        Ok(z)
    }

    /// Training: head `head_idx` (0 = next token) on trunk output `z`; returns logits `(b, t, vocab)`.
    pub fn forward_head(&self, head_idx: usize, z: &Tensor) -> Result<Tensor> {
        self.lm_head
            .forward(&self.forward_head_normed(head_idx, z)?)
    }

    /// Training: head `head_idx` on trunk output `z` through the final norm, before the
    /// unembedding: `(b, t, hidden)`.
    pub fn forward_head_normed(&self, head_idx: usize, z: &Tensor) -> Result<Tensor> {
        let h = self.heads[head_idx].forward(z, 0, &self.rope, None, self.kernels)?;
        self.norm.forward(&h, self.kernels)
    }

    /// The unembedding `(vocab, hidden)` (the input embedding when tied).
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.weight()
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Every weight under its Hugging Face name (tied `lm_head` is not repeated).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.embeddings().clone(),
        )];
        let mut push_layer = |prefix: String, layer: &DecoderLayer| {
            let a = &layer.self_attn;
            for (name, lin) in [
                ("q_proj", &a.q_proj),
                ("k_proj", &a.k_proj),
                ("v_proj", &a.v_proj),
                ("o_proj", &a.o_proj),
            ] {
                out.push((
                    format!("{prefix}.self_attn.{name}.weight"),
                    lin.weight().clone(),
                ));
                if let Some(b) = lin.bias() {
                    out.push((format!("{prefix}.self_attn.{name}.bias"), b.clone()));
                }
            }
            let m = &layer.mlp;
            for (name, lin) in [
                ("gate_proj", &m.gate_proj),
                ("up_proj", &m.up_proj),
                ("down_proj", &m.down_proj),
            ] {
                out.push((format!("{prefix}.mlp.{name}.weight"), lin.weight().clone()));
            }
            out.push((
                format!("{prefix}.input_layernorm.weight"),
                layer.input_layernorm.weight.clone(),
            ));
            out.push((
                format!("{prefix}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.weight.clone(),
            ));
        };
        for (i, layer) in self.trunk.iter().enumerate() {
            push_layer(format!("model.layers.{i}"), layer);
        }
        for (h, layer) in self.heads.iter().enumerate() {
            push_layer(head_layer_prefix(&self.config, h), layer);
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.clone()));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.weight().clone()));
        }
        out
    }
}
