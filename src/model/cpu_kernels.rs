//! Decode-time CPU kernels for short chunks (at most [`MAX_ROWS`] new tokens): a matmul over
//! blocks of eight weight rows (f32, or bf16 widened as it is read; one AVX-512 or AVX2
//! accumulator per output, eight reduced at once, up to four rows of the chunk sharing each
//! weight load), and causal attention of one head's query rows over a KV cache (the CPU side of
//! `gpu_ops::FusedAttention`). Each output row is computed by the same code whatever the chunk
//! length, so verifying k drafts reads the weights once, and verified rows are bit-identical to
//! one-token decoding. Also the thread pool decoding runs on. Not for prefill, GPUs or training:
//! those use candle's gemm and ops.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape};
use rayon::prelude::*;

/// Longest chunk the small-chunk kernels take; longer ones go to candle's gemm.
pub const MAX_ROWS: usize = 16;

/// Below this many multiply-adds a kernel runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 18;

pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{what}: small-chunk kernels take f32")
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: must be contiguous")
    };
    Ok(&data[start..end])
}

/// Dot product with a fixed summation order (16 lanes, then a fixed tree), so the same inputs
/// always give the same bits.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let full = a.len() / LANES * LANES;
    for (ca, cb) in a[..full]
        .chunks_exact(LANES)
        .zip(b[..full].chunks_exact(LANES))
    {
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

/// Runs `f` on a thread of a rayon pool of its own and returns its result. The kernels' parallel
/// loops then split their work between that thread and the pool's others; called from outside a
/// pool, each loop is handed to the global pool while the caller sleeps, two context switches per
/// matmul. Wrap whole decoding loops in it (the server's model worker, `eval`, `complete`).
pub fn run_on_kernel_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("foresight-kernels-{i}"))
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(e) => {
            tracing::warn!(
                "cannot start the kernel thread pool ({e}); decoding on the global pool"
            );
            f()
        }
    }
}

/// Weight rows per block of the matmul kernel: one AVX2 accumulator each, reduced together.
const BLOCK: usize = 8;

/// Lane `c` of the result is the sum of the lanes of `acc[c]`, added as
/// `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))` whatever the other accumulators hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn reduce8(acc: &[std::arch::x86_64::__m256; BLOCK]) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let h01 = _mm256_hadd_ps(acc[0], acc[1]);
    let h23 = _mm256_hadd_ps(acc[2], acc[3]);
    let h45 = _mm256_hadd_ps(acc[4], acc[5]);
    let h67 = _mm256_hadd_ps(acc[6], acc[7]);
    let h0123 = _mm256_hadd_ps(h01, h23);
    let h4567 = _mm256_hadd_ps(h45, h67);
    let low = _mm256_permute2f128_ps(h0123, h4567, 0x20);
    let high = _mm256_permute2f128_ps(h0123, h4567, 0x31);
    _mm256_add_ps(low, high)
}

/// `out[r][c] = x[r] · w[c]` for every row `r` of `x` (`rows` rows of length `k`) and the
/// [`BLOCK`] weight rows of `w` (row stride `k`). Each output sits in its own accumulator and is
/// reduced by [`reduce8`], so its bits depend only on its own two rows: never on `rows`, on the
/// other weight rows, or on threads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(x: &[f32], rows: usize, k: usize, w: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() >= rows * k && w.len() >= BLOCK * k && out.len() >= rows * BLOCK);
    let pw = w.as_ptr();
    let full = k / 8 * 8;
    for r in 0..rows {
        let px = x.as_ptr().add(r * k);
        let mut acc = [_mm256_setzero_ps(); BLOCK];
        let mut i = 0;
        while i < full {
            let xv = _mm256_loadu_ps(px.add(i));
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(xv, _mm256_loadu_ps(pw.add(c * k + i)), *a);
            }
            i += 8;
        }
        let sums = reduce8(&acc);
        let o = &mut out[r * BLOCK..(r + 1) * BLOCK];
        _mm256_storeu_ps(o.as_mut_ptr(), sums);
        if full < k {
            for (c, o) in o.iter_mut().enumerate() {
                for j in full..k {
                    *o += x[r * k + j] * w[c * k + j];
                }
            }
        }
    }
}

/// Portable form of [`block_avx2`] (same contract, its own summation order).
fn block_lanes(x: &[f32], rows: usize, k: usize, w: &[f32], out: &mut [f32]) {
    for r in 0..rows {
        for c in 0..BLOCK {
            out[r * BLOCK + c] = dot_lanes(&x[r * k..(r + 1) * k], &w[c * k..(c + 1) * k]);
        }
    }
}

/// `out (rows, BLOCK) = x (rows, k) @ w (BLOCK, k)^T` through the best kernel this CPU has.
#[inline]
fn matmul_block(x: &[f32], rows: usize, k: usize, w: &[f32], out: &mut [f32]) {
    if block_avx512(x, rows, k, Weights::F32(w), out) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present; the slices hold `rows` rows of `x`, BLOCK rows of `w`
        // and rows * BLOCK outputs (small_matmul asserts its inputs' sizes and pads the last block;
        // key_scores passes whole key rows and a padded last block).
        return unsafe { block_avx2(x, rows, k, w, out) };
    }
    block_lanes(x, rows, k, w, out)
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| is_x86_feature_detected!("avx512f") && has_avx2_fma())
}

/// `out (rows, BLOCK) = x (rows, k) @ w (BLOCK, k)^T` with AVX-512, for f32 weights or bf16
/// weights widened in registers as they are read (the same products: a widened bf16 is exact).
/// False (nothing done) where the CPU lacks AVX-512; where it has it, every block of every
/// chunk length goes through here, so rows stay independent of the chunk they came in.
fn block_avx512(x: &[f32], rows: usize, k: usize, w: Weights, out: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        let w_len = match w {
            Weights::F32(w) => w.len(),
            Weights::Bf16(w) => w.len(),
        };
        assert!(x.len() >= rows * k && w_len >= BLOCK * k && out.len() >= rows * BLOCK);
        let mut r = 0;
        while r < rows {
            let group = (rows - r).min(AVX512_ROWS);
            let (xr, or) = (&x[r * k..], &mut out[r * BLOCK..]);
            // SAFETY: AVX-512F, AVX2 and FMA are present; `xr` holds `group` rows of `k`, `w`
            // BLOCK rows of `k` and `or` group * BLOCK outputs (asserted above).
            unsafe {
                match (w, group) {
                    (Weights::F32(w), 4) => rows_avx512::<4, false>(xr, k, w.as_ptr().cast(), or),
                    (Weights::F32(w), 3) => rows_avx512::<3, false>(xr, k, w.as_ptr().cast(), or),
                    (Weights::F32(w), 2) => rows_avx512::<2, false>(xr, k, w.as_ptr().cast(), or),
                    (Weights::F32(w), _) => rows_avx512::<1, false>(xr, k, w.as_ptr().cast(), or),
                    (Weights::Bf16(w), 4) => rows_avx512::<4, true>(xr, k, w.as_ptr().cast(), or),
                    (Weights::Bf16(w), 3) => rows_avx512::<3, true>(xr, k, w.as_ptr().cast(), or),
                    (Weights::Bf16(w), 2) => rows_avx512::<2, true>(xr, k, w.as_ptr().cast(), or),
                    (Weights::Bf16(w), _) => rows_avx512::<1, true>(xr, k, w.as_ptr().cast(), or),
                }
            }
            r += group;
        }
        return true;
    }
    let _ = (x, rows, k, w, out);
    false
}

/// Rows of `x` one AVX-512 kernel call takes together: each weight vector it loads serves them
/// all (4 rows x 4 weight rows = 16 accumulators of the 32 registers).
const AVX512_ROWS: usize = 4;

/// `R` rows of `x` against the BLOCK weight rows at `w` (f32, or bf16 when `BF16`), in two halves
/// of four weight rows. Each output has its own 16-lane accumulator over `k` in steps of 16, folded
/// to 8 lanes (lane l + lane l + 8) and reduced by [`reduce8`], then the `k % 16` tail added in
/// order: its bits depend only on its own two rows, never on `R`, on the other rows or threads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn rows_avx512<const R: usize, const BF16: bool>(
    x: &[f32],
    k: usize,
    w: *const u8,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() >= R * k && out.len() >= R * BLOCK);
    let (px, wf, wh) = (x.as_ptr(), w as *const f32, w as *const u16);
    // Weight `j` of the block (row-major, row stride k) as f32: bf16 is the high half of an f32.
    let weight = |j: usize| -> f32 {
        if BF16 {
            f32::from_bits((*wh.add(j) as u32) << 16)
        } else {
            *wf.add(j)
        }
    };
    let full = k / 16 * 16;
    let mut folded = [[_mm256_setzero_ps(); BLOCK]; R];
    for half in 0..2 {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        let mut i = 0;
        while i < full {
            let mut wv = [_mm512_setzero_ps(); 4];
            for (c, v) in wv.iter_mut().enumerate() {
                let at = (half * 4 + c) * k + i;
                *v = if BF16 {
                    let halves = _mm256_loadu_si256(wh.add(at) as *const __m256i);
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
                } else {
                    _mm512_loadu_ps(wf.add(at))
                };
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(px.add(r * k + i));
                for (a, w) in acc_r.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xv, *w, *a);
                }
            }
            i += 16;
        }
        for (acc_r, folded_r) in acc.iter().zip(folded.iter_mut()) {
            for (c, a) in acc_r.iter().enumerate() {
                let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*a)));
                folded_r[half * 4 + c] = _mm256_add_ps(_mm512_castps512_ps256(*a), high);
            }
        }
    }
    for (r, folded_r) in folded.iter().enumerate() {
        let o = &mut out[r * BLOCK..(r + 1) * BLOCK];
        _mm256_storeu_ps(o.as_mut_ptr(), reduce8(folded_r));
        for (c, o) in o.iter_mut().enumerate() {
            for j in full..k {
                *o += x[r * k + j] * weight(c * k + j);
            }
        }
    }
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
        _mm256_storeu_ps(
            py.add(i),
            _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i))),
        );
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

/// `out[..src.len()] = src` widened to f32. bf16 is the high half of an f32: exact.
fn widen_bf16(src: &[half::bf16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 is present; `out` is at least as long as `src`.
        return unsafe { widen_bf16_avx2(src, out) };
    }
    for (o, v) in out.iter_mut().zip(src) {
        *o = f32::from_bits((v.to_bits() as u32) << 16);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn widen_bf16_avx2(src: &[half::bf16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(out.len() >= src.len());
    let (ps, po) = (src.as_ptr() as *const u16, out.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= src.len() {
        let halves = _mm_loadu_si128(ps.add(i) as *const __m128i);
        _mm256_storeu_ps(
            po.add(i),
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves))),
        );
        i += 8;
    }
    for j in i..src.len() {
        out[j] = f32::from_bits((src[j].to_bits() as u32) << 16);
    }
}

/// One row of `x` against a full block of bf16 weight rows, widening as it reads (no scratch):
/// the same sums, in the same order, as [`block_avx2`] on the widened rows. False (nothing
/// done) where the CPU lacks AVX2.
fn bf16_block_inline(x: &[f32], k: usize, w: &[half::bf16], out: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present; `w` holds BLOCK rows of `k`, `x` one row, `out` BLOCK.
        unsafe { block_bf16_avx2(x, k, w, out) };
        return true;
    }
    let _ = (x, k, w, out);
    false
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_bf16_avx2(x: &[f32], k: usize, w: &[half::bf16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(x.len() >= k && w.len() >= BLOCK * k && out.len() >= BLOCK);
    let (px, pw) = (x.as_ptr(), w.as_ptr() as *const u16);
    let full = k / 8 * 8;
    let mut acc = [_mm256_setzero_ps(); BLOCK];
    let mut i = 0;
    while i < full {
        let xv = _mm256_loadu_ps(px.add(i));
        for (c, a) in acc.iter_mut().enumerate() {
            let halves = _mm_loadu_si128(pw.add(c * k + i) as *const __m128i);
            let wv = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)));
            *a = _mm256_fmadd_ps(xv, wv, *a);
        }
        i += 8;
    }
    _mm256_storeu_ps(out.as_mut_ptr(), reduce8(&acc));
    for (c, o) in out[..BLOCK].iter_mut().enumerate() {
        for j in full..k {
            *o += x[j] * f32::from_bits((w[c * k + j].to_bits() as u32) << 16);
        }
    }
}

/// Weight matrix `(n, k)` of a small-chunk matmul: f32, or bf16 that the kernel widens to f32
/// exactly (half the memory traffic, the same products).
#[derive(Debug, Clone, Copy)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
}

/// `x (rows, k) @ w (n, k)^T`, as `(rows, n)`.
/// Panics if `x` holds fewer than `rows * k` values or `w` fewer than `n * k` (the unsafe
/// kernels below rely on it).
pub fn small_matmul(x: &[f32], rows: usize, k: usize, w: Weights, n: usize) -> Vec<f32> {
    let w_len = match w {
        Weights::F32(w) => w.len(),
        Weights::Bf16(w) => w.len(),
    };
    assert!(
        x.len() >= rows * k && w_len >= n * k,
        "small_matmul: {} x values for {rows}x{k}, {w_len} weights for {n}x{k}",
        x.len()
    );
    if rows == 0 || n == 0 {
        return Vec::new();
    }
    // Blocks of BLOCK weight rows; block b's outputs land in out_blocks[b] as (rows, BLOCK), so
    // threads own disjoint slices. The last block is zero-padded when n is not a multiple; bf16
    // blocks are widened as they are read for one row, into a scratch buffer for several.
    let n_blocks = n.div_ceil(BLOCK);
    let block_len = rows * BLOCK;
    let mut out_blocks = vec![0f32; n_blocks * block_len];
    let fill = |b: usize, out: &mut [f32], scratch: &mut Vec<f32>| {
        let (j0, j1) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
        match w {
            Weights::F32(w) if j1 - j0 == BLOCK => {
                matmul_block(x, rows, k, &w[j0 * k..j1 * k], out)
            }
            Weights::F32(w) => {
                // The last, partial block: zero rows after the real ones.
                scratch.clear();
                scratch.extend_from_slice(&w[j0 * k..j1 * k]);
                scratch.resize(BLOCK * k, 0.0);
                matmul_block(x, rows, k, scratch, out);
            }
            Weights::Bf16(w) => {
                let block = &w[j0 * k..j1 * k];
                if j1 - j0 == BLOCK
                    && (block_avx512(x, rows, k, Weights::Bf16(block), out)
                        || rows == 1 && bf16_block_inline(x, k, block, out))
                {
                    return;
                }
                // Rows past the block's real ones must be zero; the rest is overwritten.
                scratch.resize(BLOCK * k, 0.0);
                widen_bf16(block, scratch);
                scratch[(j1 - j0) * k..].fill(0.0);
                matmul_block(x, rows, k, scratch, out);
            }
        }
    };
    if n * k * rows >= PARALLEL_MIN_WORK {
        let per_task = n_blocks.div_ceil(rayon::current_num_threads() * 4).max(2);
        out_blocks
            .par_chunks_mut(per_task * block_len)
            .enumerate()
            .for_each(|(t, chunk)| {
                let mut scratch = Vec::with_capacity(BLOCK * k);
                for (i, out) in chunk.chunks_exact_mut(block_len).enumerate() {
                    fill(t * per_task + i, out, &mut scratch);
                }
            });
    } else {
        let mut scratch = Vec::with_capacity(BLOCK * k);
        for (b, out) in out_blocks.chunks_exact_mut(block_len).enumerate() {
            fill(b, out, &mut scratch);
        }
    }
    let mut out = vec![0f32; rows * n];
    for (b, block) in out_blocks.chunks_exact(block_len).enumerate() {
        let (j0, j1) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
        for r in 0..rows {
            out[r * n + j0..r * n + j1].copy_from_slice(&block[r * BLOCK..r * BLOCK + (j1 - j0)]);
        }
    }
    out
}

/// Whether every value of `w` is a bf16 value (its low 16 bits are zero), so that a bf16 copy
/// loses nothing: true of weights stored as bf16 and loaded as f32.
pub fn exactly_bf16(w: &[f32]) -> bool {
    w.iter().all(|v| v.to_bits() & 0xffff == 0)
}

/// `x (..., k)` times `w (n, k)` transposed, for at most [`MAX_ROWS`] rows of `x`; `w` is f32 or
/// bf16, the result f32.
pub struct SmallMatmul;

impl CustomOp2 for SmallMatmul {
    fn name(&self) -> &'static str {
        "small-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "small-matmul lhs")?;
        let Some((start, end)) = l2.contiguous_offsets() else {
            candle_core::bail!("small-matmul weight: must be contiguous")
        };
        let w = match s2 {
            CpuStorage::F32(w) => Weights::F32(&w[start..end]),
            CpuStorage::BF16(w) => Weights::Bf16(&w[start..end]),
            _ => candle_core::bail!("small-matmul weight: f32 or bf16"),
        };
        let (n, k) = l2.shape().dims2()?;
        let dims = l1.shape().dims();
        if dims.last() != Some(&k) {
            candle_core::bail!("small-matmul: lhs {:?} vs weight ({n}, {k})", dims);
        }
        let rows = x.len() / k;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("lhs has a last dim") = n;
        Ok((
            CpuStorage::F32(small_matmul(x, rows, k, w, n)),
            Shape::from(out_dims),
        ))
    }
}

/// Scores `q_i · key_j` of `t` query rows (`q_rows`, `t` rows of `hd`) against every key row of
/// `keys` (`n` rows of `hd`), as `t` rows of `n`: eight keys per kernel call (the last block
/// zero-padded), all query rows sharing each key load. Each score depends only on its query and
/// its key, never on `t` or `n`, so a query gets the same scores in a one-token step as in a
/// verified chunk.
fn key_scores(q_rows: &[f32], t: usize, keys: &[f32], hd: usize) -> Vec<f32> {
    let n = keys.len() / hd;
    let mut scores = vec![0f32; t * n];
    let mut block_out = vec![0f32; t * BLOCK];
    let mut padded = Vec::new();
    for j0 in (0..n).step_by(BLOCK) {
        let real = (n - j0).min(BLOCK);
        let block = if real == BLOCK {
            &keys[j0 * hd..(j0 + BLOCK) * hd]
        } else {
            padded.resize(BLOCK * hd, 0.0);
            padded[..real * hd].copy_from_slice(&keys[j0 * hd..]);
            &padded[..]
        };
        matmul_block(q_rows, t, hd, block, &mut block_out);
        for r in 0..t {
            scores[r * n + j0..r * n + j0 + real]
                .copy_from_slice(&block_out[r * BLOCK..r * BLOCK + real]);
        }
    }
    scores
}

/// Attention of `t` consecutive query rows of one head (`q_rows`, `t` rows of `hd`) over a cache:
/// row `i` sees the first `first_valid + i` rows of `keys` and `values` (causal), and its result is
/// added into row `i` of `out` (`t` rows of `hd`). Scores by blocks of keys, softmax in f32, then
/// the weighted sum of values, each output value summed over the keys in order, so a row gets the
/// same bits whatever the chunk it came in and whatever the key count. The CPU side of
/// `gpu_ops::FusedAttention`, the one attention over a KV cache.
pub(crate) fn attend_rows(
    q_rows: &[f32],
    hd: usize,
    keys: &[f32],
    values: &[f32],
    first_valid: usize,
    scale: f32,
    out: &mut [f32],
) {
    let t = q_rows.len() / hd;
    assert!(
        t > 0 && first_valid > 0 && out.len() == t * hd,
        "attend_rows: {t} rows of {hd}"
    );
    let n = first_valid + t - 1;
    let mut probs = key_scores(q_rows, t, &keys[..n * hd], hd);
    for (i, row) in probs.chunks_exact_mut(n).enumerate() {
        let row = &mut row[..first_valid + i];
        for s in row.iter_mut() {
            *s *= scale;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        for s in row.iter_mut() {
            *s *= inv;
        }
    }
    weighted_values(&probs, n, first_valid, &values[..n * hd], hd, out);
}

/// `out[i] += sum over j < first_valid + i of probs[i][j] * values[j]` (`probs` rows of stride
/// `n`), each output value summed over `j` in order, whatever the number of rows: with AVX-512
/// (and `hd` a multiple of 64) held in registers, up to [`AVX512_ROWS`] rows sharing each value
/// load; elsewhere one [`axpy`] per key, in order.
fn weighted_values(
    probs: &[f32],
    n: usize,
    first_valid: usize,
    values: &[f32],
    hd: usize,
    out: &mut [f32],
) {
    let t = out.len() / hd;
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && hd.is_multiple_of(64) {
        let mut r = 0;
        while r < t {
            let group = (t - r).min(AVX512_ROWS);
            let (p, o) = (&probs[r * n..], &mut out[r * hd..(r + group) * hd]);
            let valid = first_valid + r;
            // SAFETY: AVX-512F is present; `p` holds `group` rows of stride `n` and row g reads
            // `valid + g <= n` of them; `values` holds `n` rows of `hd`, `o` `group` rows of `hd`.
            unsafe {
                match group {
                    4 => values_avx512::<4>(p, n, valid, values, hd, o),
                    3 => values_avx512::<3>(p, n, valid, values, hd, o),
                    2 => values_avx512::<2>(p, n, valid, values, hd, o),
                    _ => values_avx512::<1>(p, n, valid, values, hd, o),
                }
            }
            r += group;
        }
        return;
    }
    for (i, o) in out.chunks_exact_mut(hd).enumerate() {
        for (j, p) in probs[i * n..i * n + first_valid + i].iter().enumerate() {
            axpy(*p, &values[j * hd..(j + 1) * hd], o);
        }
    }
}

/// [`weighted_values`] for `R` rows with AVX-512: row `g` sums the first `valid + g` values, 64
/// columns at a time in four registers per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn values_avx512<const R: usize>(
    probs: &[f32],
    n: usize,
    valid: usize,
    values: &[f32],
    hd: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(
        hd.is_multiple_of(64)
            && probs.len() >= (R - 1) * n + valid + R - 1
            && values.len() >= (valid + R - 1) * hd
            && out.len() >= R * hd
    );
    let (pv, po) = (values.as_ptr(), out.as_mut_ptr());
    for col in (0..hd).step_by(64) {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for (r, acc_r) in acc.iter_mut().enumerate() {
            for (c, a) in acc_r.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(po.add(r * hd + col + c * 16));
            }
        }
        for j in 0..valid + R - 1 {
            let mut v = [_mm512_setzero_ps(); 4];
            for (c, v) in v.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(pv.add(j * hd + col + c * 16));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                if j < valid + r {
                    let p = _mm512_set1_ps(probs[r * n + j]);
                    for (a, v) in acc_r.iter_mut().zip(&v) {
                        *a = _mm512_fmadd_ps(p, *v, *a);
                    }
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (c, a) in acc_r.iter().enumerate() {
                _mm512_storeu_ps(po.add(r * hd + col + c * 16), *a);
            }
        }
    }
}

/// Whether `work` multiply-adds are worth spreading over the decode pool's threads.
pub(crate) fn worth_parallel(work: usize) -> bool {
    work >= PARALLEL_MIN_WORK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_scores_match_plain_sums_and_do_not_depend_on_the_key_or_query_count() {
        let hd = 12;
        let q: Vec<f32> = (0..5 * hd).map(|i| (i as f32 * 0.37).sin()).collect();
        let keys: Vec<f32> = (0..19 * hd).map(|i| (i as f32 * 0.11).cos()).collect();
        let all = key_scores(&q, 5, &keys, hd);
        for r in 0..5 {
            let one = &q[r * hd..(r + 1) * hd];
            for n in [1, 7, 8, 9, 16, 19] {
                let some = key_scores(one, 1, &keys[..n * hd], hd);
                assert_eq!(
                    some.as_slice(),
                    &all[r * 19..r * 19 + n],
                    "row {r}, {n} keys"
                );
            }
            for j in 0..19 {
                let plain: f64 = (0..hd)
                    .map(|c| one[c] as f64 * keys[j * hd + c] as f64)
                    .sum();
                assert!(
                    (all[r * 19 + j] as f64 - plain).abs() < 1e-5,
                    "row {r} key {j}"
                );
            }
        }
    }

    /// Causal attention of `t` rows computed in f64, the reference for `attend_rows`.
    fn attention_f64(
        q: &[f32],
        hd: usize,
        k: &[f32],
        v: &[f32],
        first: usize,
        scale: f32,
    ) -> Vec<f64> {
        let t = q.len() / hd;
        let mut out = vec![0f64; t * hd];
        for i in 0..t {
            let n = first + i;
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    (0..hd)
                        .map(|c| q[i * hd + c] as f64 * k[j * hd + c] as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for j in 0..n {
                for c in 0..hd {
                    out[i * hd + c] += e[j] / sum * v[j * hd + c] as f64;
                }
            }
        }
        out
    }

    #[test]
    fn attention_rows_match_f64_and_do_not_depend_on_the_chunk() {
        // hd 64 takes the AVX-512 value kernel where the CPU has it, hd 24 the axpy chain; chunks
        // of 1 to 9 rows cover every group size of the four-row kernels.
        for hd in [64, 24] {
            let keys: Vec<f32> = (0..40 * hd).map(|i| (i as f32 * 0.013).sin()).collect();
            let values: Vec<f32> = (0..40 * hd).map(|i| (i as f32 * 0.029).cos()).collect();
            let q: Vec<f32> = (0..9 * hd)
                .map(|i| (i as f32 * 0.041).sin() * 2.0)
                .collect();
            let first = 31;
            let scale = 1.0 / (hd as f32).sqrt();
            let mut all = vec![0f32; 9 * hd];
            attend_rows(&q, hd, &keys, &values, first, scale, &mut all);
            let want = attention_f64(&q, hd, &keys, &values, first, scale);
            for (a, w) in all.iter().zip(&want) {
                assert!((*a as f64 - w).abs() < 1e-5, "hd {hd}: {a} vs {w}");
            }
            for (start, t) in [(0, 1), (3, 1), (0, 4), (2, 5), (4, 3), (1, 8)] {
                let mut some = vec![0f32; t * hd];
                attend_rows(
                    &q[start * hd..(start + t) * hd],
                    hd,
                    &keys,
                    &values,
                    first + start,
                    scale,
                    &mut some,
                );
                assert_eq!(
                    some.as_slice(),
                    &all[start * hd..(start + t) * hd],
                    "hd {hd}: rows {start}..+{t}"
                );
            }
        }
    }

    #[test]
    fn small_matmul_rows_do_not_depend_on_the_row_count() {
        let (k, n) = (70, 300);
        let x: Vec<f32> = (0..8 * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.05)
            .collect();
        let all = small_matmul(&x, 8, k, Weights::F32(&w), n);
        for i in 0..8 {
            let one = small_matmul(&x[i * k..(i + 1) * k], 1, k, Weights::F32(&w), n);
            assert_eq!(&all[i * n..(i + 1) * n], one.as_slice(), "row {i}");
            let want: f32 = (0..k).map(|c| x[i * k + c] * w[c]).sum();
            assert!((one[0] - want).abs() < 1e-4);
        }
    }

    #[test]
    fn every_block_kernel_this_cpu_has_matches_plain_sums_row_by_row() {
        // small_matmul takes the best kernel; the others must stay right for CPUs without it.
        let (k, rows) = (72, 7);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let w: Vec<f32> = (0..BLOCK * k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.05)
            .collect();
        type Kernel<'a> = Box<dyn Fn(&[f32], usize, &mut [f32]) -> bool + 'a>;
        let mut kernels: Vec<(&str, Kernel)> = vec![(
            "portable",
            Box::new(|x, rows, out| {
                block_lanes(x, rows, k, &w, out);
                true
            }),
        )];
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            kernels.push((
                "avx2",
                // SAFETY: AVX2 and FMA are present; the slices are sized for `rows`.
                Box::new(|x, rows, out| {
                    unsafe { block_avx2(x, rows, k, &w, out) };
                    true
                }),
            ));
        }
        kernels.push((
            "avx512",
            Box::new(|x, rows, out| block_avx512(x, rows, k, Weights::F32(&w), out)),
        ));
        for (name, kernel) in &kernels {
            let mut all = vec![0f32; rows * BLOCK];
            if !kernel(&x, rows, &mut all) {
                continue; // not on this CPU
            }
            for r in 0..rows {
                let mut one = vec![0f32; BLOCK];
                kernel(&x[r * k..(r + 1) * k], 1, &mut one);
                assert_eq!(
                    &all[r * BLOCK..(r + 1) * BLOCK],
                    one.as_slice(),
                    "{name} row {r}"
                );
                for c in 0..BLOCK {
                    let want: f32 = (0..k).map(|j| x[r * k + j] * w[c * k + j]).sum();
                    assert!((one[c] - want).abs() < 1e-4, "{name} row {r} col {c}");
                }
            }
        }
    }

    #[test]
    fn bf16_weights_give_the_bits_of_their_f32_values() {
        let (k, n) = (70, 45);
        let x: Vec<f32> = (0..3 * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let w16: Vec<half::bf16> = (0..n * k)
            .map(|i| half::bf16::from_f32(((i * 5 % 11) as f32 - 5.0) * 0.0371))
            .collect();
        let w32: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        assert!(exactly_bf16(&w32));
        assert!(!exactly_bf16(&[0.1f32]));
        for rows in [1, 3] {
            // rows 1 takes the inline-widening kernel for full blocks, rows 3 the scratch path.
            assert_eq!(
                small_matmul(&x, rows, k, Weights::Bf16(&w16), n),
                small_matmul(&x, rows, k, Weights::F32(&w32), n)
            );
        }
        let one = small_matmul(&x[..k], 1, k, Weights::Bf16(&w16), n);
        assert_eq!(
            &small_matmul(&x, 3, k, Weights::Bf16(&w16), n)[..n],
            one.as_slice()
        );
    }

    #[test]
    fn parallel_products_equal_one_thread_bit_for_bit() {
        // Big enough for the parallel branch (n * k * rows >= PARALLEL_MIN_WORK), with a partial
        // last block; the split between threads must not change a single output.
        let (rows, k, n) = (4, 136, 1003);
        assert!(rows * k * n >= PARALLEL_MIN_WORK);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.05)
            .collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| small_matmul(&x, rows, k, Weights::F32(&w), n))
        };
        let one = run(1);
        assert_eq!(run(3), one);
        let serial: Vec<f32> = (0..rows)
            .flat_map(|r| small_matmul(&x[r * k..(r + 1) * k], 1, k, Weights::F32(&w), n))
            .collect();
        assert_eq!(serial, one, "row by row, below the parallel threshold");
        assert!(small_matmul(&x, 0, k, Weights::F32(&w), n).is_empty());
    }
}
