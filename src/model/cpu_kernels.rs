//! Decode-time CPU kernels for short chunks (at most [`MAX_ROWS`] new tokens): a matmul that
//! streams each weight row once for all rows, and causal attention over a KV cache. Each output
//! row is computed by the same code whatever the chunk length, so verifying k drafts costs about
//! one token's memory traffic, and verified rows are bit-identical to one-token decoding.
//! Not for prefill, GPUs or training: those use candle's gemm and ops.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape};
use rayon::prelude::*;

/// Longest chunk the small-chunk kernels take; longer ones go to candle's gemm.
pub const MAX_ROWS: usize = 16;

/// Below this many multiply-adds a kernel runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 18;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else { candle_core::bail!("{what}: small-chunk kernels take f32") };
    let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("{what}: must be contiguous") };
    Ok(&data[start..end])
}

/// Dot product with a fixed summation order (16 lanes, then a fixed tree), so the same inputs
/// always give the same bits.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let full = a.len() / LANES * LANES;
    for (ca, cb) in a[..full].chunks_exact(LANES).zip(b[..full].chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += ca[l] * cb[l];
        }
    }
    for (i, (x, y)) in a[full..].iter().zip(&b[full..]).enumerate() {
        acc[i] += x * y;
    }
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0]
}

/// Dots of `R` rows of `x` (row stride `k`) with one weight row, reading the weight once.
/// Each result is bit-identical to [`dot`] of that row alone: same lanes, same reduction order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2<const R: usize>(x: &[f32], k: usize, w: &[f32]) -> [f32; R] {
    use std::arch::x86_64::*;
    let (px, pw) = (x.as_ptr(), w.as_ptr());
    let mut acc0 = [_mm256_setzero_ps(); R];
    let mut acc1 = [_mm256_setzero_ps(); R];
    let mut i = 0;
    while i + 16 <= k {
        let w0 = _mm256_loadu_ps(pw.add(i));
        let w1 = _mm256_loadu_ps(pw.add(i + 8));
        for r in 0..R {
            acc0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(r * k + i)), w0, acc0[r]);
            acc1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(r * k + i + 8)), w1, acc1[r]);
        }
        i += 16;
    }
    let mut out = [0f32; R];
    for r in 0..R {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc0[r], acc1[r]));
        let mut sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        for j in i..k {
            sum += x[r * k + j] * w[j];
        }
        out[r] = sum;
    }
    out
}

/// Dots of every row of `x` (`rows` rows of length `k`) with `w_row`, into `out`.
#[inline]
fn dot_rows(x: &[f32], rows: usize, k: usize, w_row: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        let mut r = 0;
        while r < rows {
            let xs = &x[r * k..];
            // SAFETY: AVX2 and FMA are present; each call reads `n` whole rows of `x`.
            let n = (rows - r).min(4);
            unsafe {
                match n {
                    4 => out[r..r + 4].copy_from_slice(&dot_rows_avx2::<4>(xs, k, w_row)),
                    3 => out[r..r + 3].copy_from_slice(&dot_rows_avx2::<3>(xs, k, w_row)),
                    2 => out[r..r + 2].copy_from_slice(&dot_rows_avx2::<2>(xs, k, w_row)),
                    _ => out[r] = dot_rows_avx2::<1>(xs, k, w_row)[0],
                }
            }
            r += n;
        }
        return;
    }
    for (i, o) in out[..rows].iter_mut().enumerate() {
        *o = dot(&x[i * k..(i + 1) * k], w_row);
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// `a · b`; the result depends only on the inputs (never on threads or chunk sizes).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { dot_rows_avx2::<1>(&a[..b.len()], b.len(), b)[0] };
    }
    dot_lanes(a, b)
}

#[inline(always)]
fn axpy_lanes(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len());
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let va = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(py.add(i), _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i))));
        i += 8;
    }
    while i < n {
        y[i] += a * x[i];
        i += 1;
    }
}

/// `y += a * x`, elementwise.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { axpy_avx2(a, x, y) };
    }
    axpy_lanes(a, x, y)
}

/// `x (rows, k) @ w (n, k)^T`, as `(rows, n)`.
pub fn small_matmul(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    // Work in (n, rows) so threads own disjoint output columns, then transpose.
    let mut out_t = vec![0f32; n * rows];
    let fill = |j0: usize, chunk: &mut [f32]| {
        for (dj, outs) in chunk.chunks_exact_mut(rows).enumerate() {
            dot_rows(x, rows, k, &w[(j0 + dj) * k..(j0 + dj + 1) * k], outs);
        }
    };
    if n * k * rows >= PARALLEL_MIN_WORK {
        let per_task = n.div_ceil(rayon::current_num_threads() * 4).max(16);
        out_t.par_chunks_mut(per_task * rows).enumerate().for_each(|(c, chunk)| fill(c * per_task, chunk));
    } else {
        fill(0, &mut out_t);
    }
    let mut out = vec![0f32; rows * n];
    for j in 0..n {
        for i in 0..rows {
            out[i * n + j] = out_t[j * rows + i];
        }
    }
    out
}

/// `x (..., k)` times `w (n, k)` transposed, for at most [`MAX_ROWS`] rows of `x`.
pub struct SmallMatmul;

impl CustomOp2 for SmallMatmul {
    fn name(&self) -> &'static str {
        "small-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "small-matmul lhs")?;
        let w = f32_slice(s2, l2, "small-matmul weight")?;
        let (n, k) = l2.shape().dims2()?;
        let dims = l1.shape().dims();
        if dims.last() != Some(&k) {
            candle_core::bail!("small-matmul: lhs {:?} vs weight ({n}, {k})", dims);
        }
        let rows = x.len() / k;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("lhs has a last dim") = n;
        Ok((CpuStorage::F32(small_matmul(x, rows, k, w, n)), Shape::from(out_dims)))
    }
}

/// Causal attention of `q (1, heads, t, head_dim)` over the first `len` positions of full cache
/// buffers `(1, kv_heads, capacity, head_dim)`; query row i sits at position `len - t + i`.
pub struct CachedAttention {
    pub len: usize,
    pub scale: f32,
}

impl CustomOp3 for CachedAttention {
    fn name(&self) -> &'static str {
        "cached-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = f32_slice(s1, l1, "attention q")?;
        let k = f32_slice(s2, l2, "attention k")?;
        let v = f32_slice(s3, l3, "attention v")?;
        let (_, heads, t, hd) = l1.shape().dims4()?;
        let (_, kv_heads, capacity, _) = l2.shape().dims4()?;
        if self.len > capacity || t > self.len {
            candle_core::bail!("cached-attention: len {} with {t} queries and capacity {capacity}", self.len);
        }
        let group = heads / kv_heads;
        let offset = self.len - t;
        let mut out = vec![0f32; heads * t * hd];
        let row = |idx: usize, o: &mut [f32]| {
            let (h, i) = (idx / t, idx % t);
            let kv = h / group;
            let q_row = &q[(h * t + i) * hd..(h * t + i + 1) * hd];
            let keys = &k[kv * capacity * hd..];
            let values = &v[kv * capacity * hd..];
            let n_valid = offset + i + 1;
            let mut scores: Vec<f32> = (0..n_valid).map(|j| dot(q_row, &keys[j * hd..(j + 1) * hd]) * self.scale).collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in &mut scores {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            for (j, p) in scores.iter().enumerate() {
                axpy(p * inv, &values[j * hd..(j + 1) * hd], o);
            }
        };
        if heads * t * self.len * hd >= PARALLEL_MIN_WORK {
            out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| row(idx, o));
        } else {
            out.chunks_mut(hd).enumerate().for_each(|(idx, o)| row(idx, o));
        }
        Ok((CpuStorage::F32(out), Shape::from((1, heads, t, hd))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_a_plain_sum_and_is_stable() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - plain).abs() < 1e-5);
    }

    #[test]
    fn small_matmul_rows_do_not_depend_on_the_row_count() {
        let (k, n) = (70, 300);
        let x: Vec<f32> = (0..8 * k).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.05).collect();
        let all = small_matmul(&x, 8, k, &w, n);
        for i in 0..8 {
            let one = small_matmul(&x[i * k..(i + 1) * k], 1, k, &w, n);
            assert_eq!(&all[i * n..(i + 1) * n], one.as_slice(), "row {i}");
            let want: f32 = (0..k).map(|c| x[i * k + c] * w[c]).sum();
            assert!((one[0] - want).abs() < 1e-4);
        }
    }
}
