//! Fused inference ops as candle custom ops: causal attention over a KV cache (`FusedAttention`:
//! one CUDA launch, kernel in `cuda/attention.cu`, and on the CPU the one CPU attention over a
//! cache, head by head through `cpu_kernels::attend_rows`), and the unembedding with bf16 inputs and
//! f32 output (`LogitsF32`, one cuBLAS GemmEx, with a CPU implementation of the same contract).
//! Inference only: no gradients; training attention is in `train_kernels`.

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_kernels::{attend_rows, worth_parallel};

/// Attention of `t` new queries over the first `len` cached positions, causal, grouped-query.
/// Inputs: q `(1, n_heads, t, head_dim)` with any strides on dims 1 and 2 (last dim contiguous),
/// k and v the whole cache buffers `(1, n_kv_heads, capacity, head_dim)`, contiguous.
/// Output: `(1, t, n_heads, head_dim)`, contiguous, in q's dtype (f32 or bf16); statistics and
/// accumulators are f32 whatever the storage dtype.
#[derive(Debug, Clone, Copy)]
pub struct FusedAttention {
    /// Valid cache positions, the new ones included; query `i` sits at `len - t + i`.
    pub len: usize,
    pub scale: f32,
}

/// Shapes an attention call works on, checked once for both implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnDims {
    pub t: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
    pub q_offset: usize,
    pub q_head_stride: usize,
    pub q_row_stride: usize,
}

/// Largest head dimension the CUDA kernel handles (8 values per lane of a warp); the CPU side has
/// no limit.
pub const MAX_HEAD_DIM: usize = 256;

impl FusedAttention {
    pub fn dims(&self, q: &Layout, k: &Layout, v: &Layout) -> candle_core::Result<AttnDims> {
        let (b, n_heads, t, head_dim) = q.shape().dims4()?;
        let (bk, n_kv_heads, capacity, hdk) = k.shape().dims4()?;
        if b != 1 || bk != 1 || hdk != head_dim || k.shape() != v.shape() {
            candle_core::bail!(
                "fused attention: q {:?} / k {:?} / v {:?} do not fit",
                q.shape(),
                k.shape(),
                v.shape()
            );
        }
        if n_kv_heads == 0
            || !n_heads.is_multiple_of(n_kv_heads)
            || t > self.len
            || self.len > capacity
        {
            candle_core::bail!("fused attention: heads {n_heads}/{n_kv_heads}, head_dim {head_dim}, t {t}, len {}, capacity {capacity}", self.len);
        }
        if q.stride()[3] != 1 || !k.is_contiguous() || !v.is_contiguous() {
            candle_core::bail!(
                "fused attention: q's last dim and the k/v buffers must be contiguous"
            );
        }
        Ok(AttnDims {
            t,
            n_heads,
            n_kv_heads,
            head_dim,
            capacity,
            q_offset: q.start_offset(),
            q_head_stride: q.stride()[1],
            q_row_stride: q.stride()[2],
        })
    }
}

fn to_f32(s: &CpuStorage) -> candle_core::Result<Cow<'_, [f32]>> {
    Ok(match s {
        CpuStorage::F32(v) => Cow::Borrowed(v.as_slice()),
        CpuStorage::BF16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
        CpuStorage::F16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
        other => candle_core::bail!("fused ops: unsupported dtype {:?}", other.dtype()),
    })
}

fn from_f32(v: Vec<f32>, dtype: DType) -> candle_core::Result<CpuStorage> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(v),
        DType::BF16 => CpuStorage::BF16(v.into_iter().map(half::bf16::from_f32).collect()),
        DType::F16 => CpuStorage::F16(v.into_iter().map(half::f16::from_f32).collect()),
        other => candle_core::bail!("fused ops: unsupported dtype {other:?}"),
    })
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "foresight-fused-attention"
    }

    /// The CPU attention over a KV cache (decode and verification chunks): each head's rows by
    /// `cpu_kernels::attend_rows`, softmax in f32, rounded once to the storage dtype; rows are
    /// bit-identical whatever the chunk length, so verified drafts equal one-token decoding.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.dims(l1, l2, l3)?;
        let (q, k, v) = (to_f32(s1)?, to_f32(s2)?, to_f32(s3)?);
        let (k, v) = (&k[l2.start_offset()..], &v[l3.start_offset()..]);
        let hd = d.head_dim;
        let group = d.n_heads / d.n_kv_heads;
        let offset = self.len - d.t;
        // Head h's t query rows, gathered contiguous, attend together (each key and value is
        // read once for all of them); its rows are then placed in (1, t, n_heads, head_dim) order.
        let head = |h: usize| {
            let mut q_rows = Vec::with_capacity(d.t * hd);
            for i in 0..d.t {
                q_rows.extend_from_slice(
                    &q[d.q_offset + h * d.q_head_stride + i * d.q_row_stride..][..hd],
                );
            }
            let base = (h / group) * d.capacity * hd;
            let mut o = vec![0f32; d.t * hd];
            attend_rows(
                &q_rows,
                hd,
                &k[base..],
                &v[base..],
                offset + 1,
                self.scale,
                &mut o,
            );
            o
        };
        let heads: Vec<Vec<f32>> = if worth_parallel(d.n_heads * d.t * self.len * hd) {
            (0..d.n_heads).into_par_iter().map(head).collect()
        } else {
            (0..d.n_heads).map(head).collect()
        };
        let mut out = vec![0f32; d.t * d.n_heads * hd];
        for (h, rows) in heads.iter().enumerate() {
            for (i, row) in rows.chunks_exact(hd).enumerate() {
                out[(i * d.n_heads + h) * hd..][..hd].copy_from_slice(row);
            }
        }
        Ok((
            from_f32(out, s1.dtype())?,
            Shape::from((1, d.t, d.n_heads, hd)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::attention(self, s1, l1, s2, l2, s3, l3)
    }
}

/// `x @ w^T` with f32 output: x `(rows, d)` and w `(vocab, d)`, both contiguous, in the same dtype.
/// On a GPU, bf16 inputs go through one cuBLAS GemmEx with f32 accumulation and f32 output, so
/// logits are never rounded to bf16 (8 bits of mantissa would make near-ties in the argmax).
#[derive(Debug, Clone, Copy)]
pub struct LogitsF32;

fn matmul_dims(x: &Layout, w: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (rows, d) = x.shape().dims2()?;
    let (vocab, dw) = w.shape().dims2()?;
    if d != dw || !x.is_contiguous() || !w.is_contiguous() {
        candle_core::bail!(
            "logits: x {:?} and w {:?} must be contiguous (rows, d) and (vocab, d)",
            x.shape(),
            w.shape()
        );
    }
    Ok((rows, d, vocab))
}

impl CustomOp2 for LogitsF32 {
    fn name(&self) -> &'static str {
        "foresight-logits-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, d, vocab) = matmul_dims(l1, l2)?;
        let (x, w) = (to_f32(s1)?, to_f32(s2)?);
        let (x, w) = (&x[l1.start_offset()..], &w[l2.start_offset()..]);
        let mut out = vec![0f32; rows * vocab];
        for r in 0..rows {
            let xr = &x[r * d..][..d];
            for (c, o) in out[r * vocab..][..vocab].iter_mut().enumerate() {
                *o = xr.iter().zip(&w[c * d..][..d]).map(|(a, b)| a * b).sum();
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, vocab))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::logits_f32(s1, l1, s2, l2)
    }
}

/// Final projection to f32 logits for 2-D `x`: `LogitsF32` for bf16/f16 weights, a plain matmul for f32.
pub fn logits_f32(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    if weight.dtype() == DType::F32 {
        return x.to_dtype(DType::F32)?.matmul(&weight.t()?);
    }
    x.to_dtype(weight.dtype())?
        .contiguous()?
        .apply_op2_no_bwd(&weight.contiguous()?, &LogitsF32)
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The CUDA sides of the fused ops: PTX built by build.rs, cuBLAS through cudarc.
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cublas::{result as cublas, sys as cublas_sys};
    use candle_core::cuda_backend::cudarc::driver::{
        DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaStorage, CudaStorageSlice, WrapErr};
    use candle_core::{Layout, Shape};

    use super::FusedAttention;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
    const THREADS_Y: u32 = 4; // NWARPS in attention.cu

    pub fn attention(
        op: &FusedAttention,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let d = op.dims(l1, l2, l3)?;
        if d.head_dim > super::MAX_HEAD_DIM {
            candle_core::bail!(
                "fused attention: head_dim {} is over the CUDA kernel's {}",
                d.head_dim,
                super::MAX_HEAD_DIM
            );
        }
        let dev = s1.device().clone();
        let cfg = LaunchConfig {
            grid_dim: (d.t as u32, d.n_heads as u32, 1),
            block_dim: (32, THREADS_Y, 1),
            shared_mem_bytes: 0,
        };
        let n_out = d.t * d.n_heads * d.head_dim;
        let ints = [d.t, d.n_heads, d.n_kv_heads, d.head_dim, d.capacity, op.len].map(|x| x as i32);
        let strides = [d.q_head_stride as i64, d.q_row_stride as i64];
        macro_rules! launch {
            ($q:expr, $k:expr, $v:expr, $ty:ty, $name:literal, $wrap:ident) => {{
                let q = $q.slice(d.q_offset..);
                let k = $k.slice(l2.start_offset()..);
                let v = $v.slice(l3.start_offset()..);
                let func = dev.get_or_load_custom_func($name, "foresight_attention", PTX)?;
                // SAFETY: every element is written by the kernel before it is read.
                let out = unsafe { dev.alloc::<$ty>(n_out)? };
                let mut b = func.builder();
                b.arg(&q);
                b.arg(&k);
                b.arg(&v);
                b.arg(&out);
                for x in &ints {
                    b.arg(x);
                }
                for s in &strides {
                    b.arg(s);
                }
                b.arg(&op.scale);
                // SAFETY: argument types and order match the kernel's signature in attention.cu.
                unsafe { b.launch(cfg) }.w()?;
                CudaStorageSlice::$wrap(out)
            }};
        }
        let slice = match (&s1.slice, &s2.slice, &s3.slice) {
            (CudaStorageSlice::BF16(q), CudaStorageSlice::BF16(k), CudaStorageSlice::BF16(v)) => {
                launch!(q, k, v, half::bf16, "foresight_attention_bf16", BF16)
            }
            (CudaStorageSlice::F32(q), CudaStorageSlice::F32(k), CudaStorageSlice::F32(v)) => {
                launch!(q, k, v, f32, "foresight_attention_f32", F32)
            }
            _ => candle_core::bail!("fused attention: q, k and v must all be bf16 or all f32"),
        };
        Ok((
            CudaStorage { slice, device: dev },
            Shape::from((1, d.t, d.n_heads, d.head_dim)),
        ))
    }

    pub fn logits_f32(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, d, vocab) = super::matmul_dims(l1, l2)?;
        let (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(w)) = (&s1.slice, &s2.slice) else {
            candle_core::bail!("logits: the GPU path takes bf16 x and w");
        };
        let dev = s1.device().clone();
        let stream = dev.cuda_stream();
        let x = x.slice(l1.start_offset()..);
        let w = w.slice(l2.start_offset()..);
        let mut out = dev.alloc_zeros::<f32>(rows * vocab)?;
        let blas = dev.cublas_handle();
        let (alpha, beta) = (1f32, 0f32);
        {
            let (xp, _gx) = x.device_ptr(&stream);
            let (wp, _gw) = w.device_ptr(&stream);
            let (op, _go) = out.device_ptr_mut(&stream);
            // Column-major view: out^T (vocab x rows) = w (d x vocab)^T * x^T (d x rows).
            // SAFETY: pointers are live for the call (guards above); sizes match the layouts checked.
            unsafe {
                cublas::gemm_ex(
                    *blas.handle(),
                    cublas_sys::cublasOperation_t::CUBLAS_OP_T,
                    cublas_sys::cublasOperation_t::CUBLAS_OP_N,
                    vocab as i32,
                    rows as i32,
                    d as i32,
                    (&alpha) as *const f32 as *const _,
                    wp as *const _,
                    cublas_sys::cudaDataType_t::CUDA_R_16BF,
                    d as i32,
                    xp as *const _,
                    cublas_sys::cudaDataType_t::CUDA_R_16BF,
                    d as i32,
                    (&beta) as *const f32 as *const _,
                    op as *mut _,
                    cublas_sys::cudaDataType_t::CUDA_R_32F,
                    vocab as i32,
                    cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
                .map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
            }
        }
        Ok((
            CudaStorage {
                slice: CudaStorageSlice::F32(out),
                device: dev,
            },
            Shape::from((rows, vocab)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn logits_f32_matches_matmul_and_is_f32_for_bf16_inputs() {
        let (x, w) = (rand(&[3, 16], 1), rand(&[40, 16], 2));
        let want = x.matmul(&w.t().unwrap()).unwrap();
        let got = logits_f32(
            &x.to_dtype(DType::BF16).unwrap(),
            &w.to_dtype(DType::BF16).unwrap(),
        )
        .unwrap();
        assert_eq!(got.dtype(), DType::F32);
        let diff = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 0.1, "{diff}"); // bf16 rounding of the inputs only
        let exact = logits_f32(&x, &w).unwrap();
        assert_eq!(
            exact.to_vec2::<f32>().unwrap(),
            want.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn fused_attention_refuses_shapes_it_cannot_handle() {
        let q = rand(&[1, 3, 2, 8], 1);
        let k = rand(&[1, 2, 5, 8], 2); // 3 heads over 2 kv heads
        let err = q
            .apply_op3_no_bwd(&k, &k, &FusedAttention { len: 4, scale: 1.0 })
            .unwrap_err();
        assert!(err.to_string().contains("heads 3/2"), "{err}");
        let k = rand(&[1, 1, 5, 8], 2);
        let err = q
            .apply_op3_no_bwd(&k, &k, &FusedAttention { len: 6, scale: 1.0 })
            .unwrap_err();
        assert!(err.to_string().contains("capacity 5"), "{err}");
    }
}
