//! The transformer blocks: RMSNorm, grouped-query attention with RoPE and a KV cache, SwiGLU MLP,
//! and the decoder layer that combines them. Field names follow the Hugging Face tensor names.
//! Not here: embeddings, heads and the final projection (`mtp.rs`).

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::config::ModelConfig;
use super::cpu_kernels::{exactly_bf16, SmallMatmul, MAX_ROWS};
use super::error::Result;
use super::gpu_ops::{FusedAttention, MAX_HEAD_DIM};
use super::kv_cache::KvCache;
use super::rope::Rope;
use super::train_kernels::{
    self, AttentionLinearOp, CausalAttentionOp, LinearOp, MlpOp, RmsNormOp,
};

/// Which kernels a forward pass uses. Several fused candle kernels silently drop gradients,
/// so training must use the plain-op forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Fused kernels: fast inference, no gradients. Attention over a cache takes the
    /// `FusedAttention` op for decode-sized chunks (one launch on a GPU, the CPU attention over a
    /// cache on the CPU) and plain ops for long prefills (see [`attention_path`]).
    Fused,
    /// Fused kernels, but attention as plain candle ops (QK^T, mask, softmax in f32, PV): the
    /// reference the fused attention is tested against, on the GPU too.
    PlainAttention,
    /// Fused kernels with `FusedAttention` wherever a cache is used, whatever the chunk length:
    /// tests the op's contract on the CPU, and on a GPU against `PlainAttention`.
    FusedAttention,
    /// Plain differentiable ops: training anywhere, and the reference the training kernels are
    /// tested against.
    Differentiable,
    /// Differentiable, with the fused training kernels of `train_kernels.rs` (RMSNorm, SwiGLU,
    /// causal attention, and the unembedding with cross-entropy in `train::objective`) wherever
    /// tensors are f32 on the CPU; plain differentiable ops elsewhere. Training on the CPU.
    Training,
}

impl Kernels {
    pub fn differentiable(self) -> bool {
        matches!(self, Kernels::Differentiable | Kernels::Training)
    }

    /// Whether `x` takes the fused training kernels under these kernels.
    pub fn fused_training(self, x: &Tensor) -> bool {
        self == Kernels::Training && train_kernels::supported(x.device(), x.dtype())
    }
}

/// How one attention call is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPath {
    /// Candle ops: QK^T, scale, causal mask, softmax (f32 statistics), PV.
    Plain,
    /// One `FusedAttention` op over the cache: one CUDA launch on a GPU, the CPU attention over a
    /// cache on the CPU (bit-identical rows whatever the chunk length).
    OverCache,
    /// The training kernel `CausalAttentionOp` over the whole sequence (no cache; f32 CPU tensors).
    CpuTraining,
}

/// Most new rows for which `Kernels::Fused` takes the fused kernel on a GPU. The kernel runs on CUDA
/// cores, one (row, head) per block: ideal for decode and verification chunks, where it replaces
/// ~8 launches with one, but a long prefill is faster through cuBLAS's tensor-core matmuls.
pub const FUSED_MAX_ROWS: usize = 16;

/// Picks the attention path: a pure decision on the kernels wanted and where the call runs.
pub fn attention_path(
    kernels: Kernels,
    on_gpu: bool,
    has_cache: bool,
    small: bool,
    rows: usize,
    head_dim: usize,
) -> AttentionPath {
    match kernels {
        Kernels::Training if !on_gpu && !has_cache => AttentionPath::CpuTraining,
        Kernels::Differentiable | Kernels::PlainAttention | Kernels::Training => {
            AttentionPath::Plain
        }
        _ if !has_cache => AttentionPath::Plain,
        Kernels::Fused if small => AttentionPath::OverCache,
        Kernels::Fused if on_gpu && rows <= FUSED_MAX_ROWS && head_dim <= MAX_HEAD_DIM => {
            AttentionPath::OverCache
        }
        Kernels::Fused => AttentionPath::Plain,
        Kernels::FusedAttention if !on_gpu || head_dim <= MAX_HEAD_DIM => AttentionPath::OverCache,
        Kernels::FusedAttention => AttentionPath::Plain,
    }
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        // The fused kernel keeps the mean of squares and the scaling in f32 for bf16 inputs too.
        Ok(if kernels.fused_training(x) {
            x.contiguous()?.apply_op2(
                &self.weight,
                RmsNormOp {
                    eps: self.eps as f32,
                },
            )?
        } else if kernels.differentiable() {
            candle_nn::ops::rms_norm_slow(x, &self.weight, self.eps as f32)?
        } else {
            candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)?
        })
    }
}

/// Whether a forward over `rows` positions of `x` takes the small-chunk CPU kernels.
pub fn small_chunk(x: &Tensor, rows: usize, kernels: Kernels) -> bool {
    kernels == Kernels::Fused && rows <= MAX_ROWS && x.device().is_cpu() && x.dtype() == DType::F32
}

/// A linear layer. On the CPU it may also keep a bf16 copy of its f32 weight for the small-chunk
/// kernel, which then streams half the bytes per decode step (see [`Proj::compact`]).
#[derive(Debug, Clone)]
pub struct Proj {
    lin: Linear,
    compact: Option<Tensor>,
}

impl Proj {
    pub fn new(lin: Linear) -> Self {
        Self { lin, compact: None }
    }

    pub fn weight(&self) -> &Tensor {
        self.lin.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.lin.bias()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.lin.forward(x)?)
    }

    /// `self(x)` in training on f32 CPU tensors: the training kernel `LinearOp` (one node for
    /// autograd, no transpose or broadcast), plus the bias when there is one.
    pub fn forward_training(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.contiguous()?.apply_op2(self.weight(), LinearOp)?;
        Ok(match self.bias() {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// `self(x)`, through the small-chunk kernel when `small` (reading the bf16 copy when there is one).
    pub fn apply(&self, x: &Tensor, small: bool) -> Result<Tensor> {
        if !small {
            return self.forward(x);
        }
        let w = self.compact.as_ref().unwrap_or(self.weight());
        let y = x.contiguous()?.apply_op2_no_bwd(w, &SmallMatmul)?;
        Ok(match self.bias() {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// Keeps a bf16 copy of the weight for the small-chunk kernel when the weight is an f32 CPU
    /// tensor whose every value is a bf16 value (a model stored as bf16): lossless, so decoding
    /// gives the same bits. Returns whether it did. The copy is not updated if the weight
    /// changes later, so only inference calls this (never training).
    pub fn compact(&mut self) -> Result<bool> {
        let w = self.lin.weight();
        if !w.device().is_cpu() || w.dtype() != DType::F32 {
            return Ok(false);
        }
        let values = w.flatten_all()?.to_vec1::<f32>()?;
        if !exactly_bf16(&values) {
            return Ok(false);
        }
        self.compact = Some(w.to_dtype(DType::BF16)?);
        Ok(true)
    }
}

fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Proj> {
    Ok(Proj::new(if bias {
        candle_nn::linear(in_dim, out_dim, vb)?
    } else {
        candle_nn::linear_no_bias(in_dim, out_dim, vb)?
    }))
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Proj,
    pub up_proj: Proj,
    pub down_proj: Proj,
}

impl Mlp {
    pub fn load(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: linear(d, f, false, vb.pp("gate_proj"))?,
            up_proj: linear(d, f, false, vb.pp("up_proj"))?,
            down_proj: linear(f, d, false, vb.pp("down_proj"))?,
        })
    }

    /// `fused_training` (f32 CPU tensors; these MLPs have no biases): the training kernel `MlpOp`,
    /// both projections and SwiGLU in one node (gate and up weights concatenated).
    pub fn forward(&self, x: &Tensor, small: bool, fused_training: bool) -> Result<Tensor> {
        let projs = [&self.gate_proj, &self.up_proj, &self.down_proj];
        if fused_training && projs.iter().all(|p| p.bias().is_none()) {
            let ff = self.gate_proj.weight().dim(0)?;
            let w = Tensor::cat(&[self.gate_proj.weight(), self.up_proj.weight()], 0)?;
            let down = self.down_proj.weight();
            return Ok(x.contiguous()?.apply_op3(&w, down, MlpOp::new(ff))?);
        }
        let gate = self.gate_proj.apply(x, small)?.silu()?;
        let up = self.up_proj.apply(x, small)?;
        self.down_proj.apply(&(gate * up)?, small)
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Proj,
    pub k_proj: Proj,
    pub v_proj: Proj,
    pub o_proj: Proj,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    pub fn load(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (d, h, kv, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.n_kv_heads(),
            cfg.head_dim(),
        );
        Ok(Self {
            q_proj: linear(d, h * hd, cfg.qkv_bias(), vb.pp("q_proj"))?,
            k_proj: linear(d, kv * hd, cfg.qkv_bias(), vb.pp("k_proj"))?,
            v_proj: linear(d, kv * hd, cfg.qkv_bias(), vb.pp("v_proj"))?,
            o_proj: linear(h * hd, d, cfg.o_bias(), vb.pp("o_proj"))?,
            n_heads: h,
            n_kv_heads: kv,
            head_dim: hd,
        })
    }

    /// Keys (with RoPE) and values `(b, kv_heads, t, head_dim)` of normed input `x` at positions
    /// `offset..offset+t`.
    fn keys_values(
        &self,
        x: &Tensor,
        offset: usize,
        rope: &Rope,
        small: bool,
        differentiable: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (kv, hd) = (self.n_kv_heads, self.head_dim);
        let k = self
            .k_proj
            .apply(x, small)?
            .reshape((b, t, kv, hd))?
            .transpose(1, 2)?;
        let v = self
            .v_proj
            .apply(x, small)?
            .reshape((b, t, kv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        Ok((rope.apply(&k, offset, differentiable)?, v))
    }

    /// Training on f32 CPU tensors: one matmul for q, k and v (their weights concatenated) and the
    /// causal attention (RoPE inside, no transposes) in one node, `AttentionLinearOp` (with biases:
    /// `LinearOp`, the bias, then `CausalAttentionOp`), then the output projection. `None` when
    /// only some of q, k, v have a bias (the plain path handles that).
    fn forward_training(&self, x: &Tensor, rope: &Rope) -> Result<Option<Tensor>> {
        let (b, t, d) = x.dims3()?;
        let projs = [&self.q_proj, &self.k_proj, &self.v_proj];
        let weights: Vec<Tensor> = projs.iter().map(|p| p.weight().clone()).collect();
        let w = Tensor::cat(&weights, 0)?;
        let x = x.contiguous()?.reshape((b * t, d))?;
        let op = CausalAttentionOp {
            batch: b,
            heads: self.n_heads,
            kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            scale: (1.0 / (self.head_dim as f64).sqrt()) as f32,
            rope: rope.tables(t)?,
        };
        let out = match projs.map(|p| p.bias()) {
            // Without biases, projection and attention are one node.
            [None, None, None] => x.apply_op2(&w, AttentionLinearOp::new(op))?,
            [Some(bq), Some(bk), Some(bv)] => x
                .apply_op2(&w, LinearOp)?
                .broadcast_add(&Tensor::cat(&[bq, bk, bv], 0)?)?
                .apply_op1(op)?,
            _ => return Ok(None),
        };
        let out = out.reshape((b, t, self.n_heads * self.head_dim))?;
        Ok(Some(self.o_proj.forward_training(&out)?))
    }

    /// `x`: `(b, t, hidden)` at positions `offset..offset+t`. With a cache (b must be 1), the new
    /// keys and values are appended and attention covers every cached position.
    pub fn forward(
        &self,
        x: &Tensor,
        offset: usize,
        rope: &Rope,
        cache: Option<&mut KvCache>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let differentiable = kernels.differentiable();
        let small = small_chunk(x, b * t, kernels);
        let path = attention_path(
            kernels,
            x.device().is_cuda(),
            cache.is_some() && b == 1,
            small,
            t,
            hd,
        );
        if path == AttentionPath::CpuTraining
            && cache.is_none()
            && offset == 0
            && kernels.fused_training(x)
        {
            if let Some(out) = self.forward_training(x, rope)? {
                return Ok(out);
            }
        }
        let q = self
            .q_proj
            .apply(x, small)?
            .reshape((b, t, h, hd))?
            .transpose(1, 2)?;
        let q = rope.apply(&q, offset, differentiable)?;
        let (k, v) = self.keys_values(x, offset, rope, small, differentiable)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let (k, v) = match (cache, path) {
            (Some(cache), AttentionPath::OverCache) => {
                cache.append(&k, &v)?;
                let (k_all, v_all) = cache.buffers();
                // One op over the cache; q is read in place and the output is already (1, t, h, hd).
                let out = q.apply_op3_no_bwd(
                    k_all,
                    v_all,
                    &FusedAttention {
                        len: cache.len(),
                        scale: scale as f32,
                    },
                )?;
                return self.o_proj.apply(&out.reshape((b, t, h * hd))?, small);
            }
            (Some(cache), _) => cache.append(&k, &v)?,
            (None, _) => (k, v),
        };
        let n_keys = k.dim(2)?;
        // Grouped-query attention without copying keys: fold each kv head's query group into rows.
        let group = h / kv;
        let q = q.contiguous()?.reshape((b, kv, group * t, hd))?;
        let scores = (q.matmul(&k.t()?)? * scale)?;
        // Softmax statistics in f32 whatever the weight dtype (bf16 on a GPU); back to it for PV.
        let scores = if differentiable {
            scores
        } else {
            scores.to_dtype(DType::F32)?
        };
        let scores = if t > 1 {
            let mask = causal_mask(t, n_keys, offset, scores.dtype(), scores.device())?;
            scores
                .reshape((b, kv, group, t, n_keys))?
                .broadcast_add(&mask)?
                .reshape((b, kv, group * t, n_keys))?
        } else {
            scores
        };
        let probs = if differentiable {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?
        };
        let out = probs
            .matmul(&v)?
            .reshape((b, h, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, h * hd))?;
        self.o_proj.forward(&out)
    }
}

/// Additive mask `(t, n_keys)`: query `i` (at position `offset + i`) sees keys `0..=offset + i`.
pub fn causal_mask(
    t: usize,
    n_keys: usize,
    offset: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..n_keys).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, n_keys), device)?.to_dtype(dtype)?)
}

/// One pre-norm transformer layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    pub fn load(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::load(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            self_attn: Attention::load(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::load(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::load(cfg, vb.pp("mlp"))?,
        })
    }

    /// Every projection of the layer, for [`Proj::compact`].
    pub fn projections_mut(&mut self) -> [&mut Proj; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }

    /// Appends the keys and values of `x` `(1, t, hidden)` at positions `offset..offset+t` to
    /// `cache` without computing the layer's output: what later positions attend to, at about a
    /// sixth of the layer's cost. The MTP heads need their output only where a draft is made.
    pub fn append_keys_values(
        &self,
        x: &Tensor,
        offset: usize,
        rope: &Rope,
        cache: &mut KvCache,
        kernels: Kernels,
    ) -> Result<()> {
        let (b, t, _) = x.dims3()?;
        let normed = self.input_layernorm.forward(x, kernels)?;
        let (k, v) = self.self_attn.keys_values(
            &normed,
            offset,
            rope,
            small_chunk(x, b * t, kernels),
            kernels.differentiable(),
        )?;
        cache.append(&k, &v)?;
        Ok(())
    }

    pub fn forward(
        &self,
        x: &Tensor,
        offset: usize,
        rope: &Rope,
        cache: Option<&mut KvCache>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let attn = self.self_attn.forward(
            &self.input_layernorm.forward(x, kernels)?,
            offset,
            rope,
            cache,
            kernels,
        )?;
        let x = (x + attn)?;
        let (b, t, _) = x.dims3()?;
        let mlp = self.mlp.forward(
            &self.post_attention_layernorm.forward(&x, kernels)?,
            small_chunk(&x, b * t, kernels),
            kernels.fused_training(&x),
        )?;
        Ok((x + mlp)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_path_table() {
        use AttentionPath::*;
        let k = Kernels::Fused;
        // (kernels, on_gpu, has_cache, small, rows, head_dim) -> path
        let cases = [
            ((k, false, true, true, 1, 64), OverCache),
            ((k, false, true, true, 1, 512), OverCache), // no head_dim limit on the CPU
            ((k, false, true, false, 100, 64), Plain),
            ((k, true, true, false, 1, 64), OverCache),
            ((k, true, true, false, FUSED_MAX_ROWS, 128), OverCache),
            ((k, true, true, false, FUSED_MAX_ROWS + 1, 128), Plain), // prefill: tensor-core matmuls
            ((k, true, true, false, 1, 512), Plain),
            ((k, true, false, false, 1, 64), Plain),
            ((Kernels::PlainAttention, true, true, false, 1, 64), Plain),
            (
                (Kernels::FusedAttention, false, true, true, 1, 64),
                OverCache,
            ),
            (
                (Kernels::FusedAttention, true, true, false, 2048, 64),
                OverCache,
            ),
            ((Kernels::FusedAttention, true, true, false, 1, 512), Plain),
            ((Kernels::FusedAttention, false, false, false, 1, 64), Plain),
            ((Kernels::Differentiable, true, true, false, 1, 64), Plain),
            (
                (Kernels::Differentiable, false, false, false, 512, 64),
                Plain,
            ),
            (
                (Kernels::Training, false, false, false, 512, 64),
                CpuTraining,
            ),
            ((Kernels::Training, true, false, false, 512, 64), Plain),
            ((Kernels::Training, false, true, false, 512, 64), Plain),
        ];
        for ((kernels, gpu, cache, small, rows, hd), want) in cases {
            assert_eq!(
                attention_path(kernels, gpu, cache, small, rows, hd),
                want,
                "{kernels:?} gpu={gpu} cache={cache} small={small} rows={rows} hd={hd}"
            );
        }
    }

    #[test]
    fn causal_mask_table() {
        // t=2 new queries at offset 1 over 3 keys: row 0 sees keys 0..=1, row 1 sees 0..=2.
        let m = causal_mask(2, 3, 1, DType::F32, &candle_core::Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0], vec![0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[1], vec![0.0, 0.0, 0.0]);
    }
}
