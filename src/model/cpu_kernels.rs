//! Decode-time CPU kernels for short chunks (at most [`MAX_ROWS`] new tokens): a matmul over
//! blocks of eight weight rows (f32, or bf16 widened as it is read; one AVX2 accumulator per
//! output, eight reduced at once), and one query row of causal attention over a KV cache (the CPU
//! side of `gpu_ops::FusedAttention`). Each output row is
//! computed by the same code whatever the chunk length, so verifying k drafts reads the weights
//! once, and verified rows are bit-identical to one-token decoding. Also the thread pool decoding
//! runs on. Not for prefill, GPUs or training: those use candle's gemm and ops.

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
                if rows == 1 && j1 - j0 == BLOCK && bf16_block_inline(x, k, block, out) {
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

/// `q · key_j` for every key row of `keys` (`n` rows of `hd`), eight keys per kernel call (the
/// last block zero-padded). Each score depends only on `q` and its key, never on `n`, so a query
/// gets the same scores in a one-token step as in a verified chunk.
fn key_scores(q: &[f32], keys: &[f32], hd: usize) -> Vec<f32> {
    let n = keys.len() / hd;
    let full = n / BLOCK * BLOCK;
    let mut scores = vec![0f32; n.div_ceil(BLOCK) * BLOCK];
    for (b, out) in scores[..full].chunks_exact_mut(BLOCK).enumerate() {
        matmul_block(q, 1, hd, &keys[b * BLOCK * hd..(b + 1) * BLOCK * hd], out);
    }
    if full < n {
        let mut padded = vec![0f32; BLOCK * hd];
        padded[..(n - full) * hd].copy_from_slice(&keys[full * hd..]);
        matmul_block(q, 1, hd, &padded, &mut scores[full..]);
    }
    scores.truncate(n);
    scores
}

/// One query row's attention over `n_valid` keys and values (rows of `hd` floats from the start of
/// `keys` and `values`), added into `out`: scores by blocks of keys (the same code whatever the
/// key count, so a row does not depend on the chunk it came in), softmax in f32, then the weighted
/// sum of values. The CPU side of `gpu_ops::FusedAttention`, the one attention over a KV cache.
pub(crate) fn attend_row(
    q_row: &[f32],
    keys: &[f32],
    values: &[f32],
    n_valid: usize,
    scale: f32,
    out: &mut [f32],
) {
    let hd = q_row.len();
    let mut scores = key_scores(q_row, &keys[..n_valid * hd], hd);
    for s in &mut scores {
        *s *= scale;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in &mut scores {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    for (j, p) in scores.iter().enumerate() {
        axpy(p * inv, &values[j * hd..(j + 1) * hd], out);
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
    fn key_scores_match_plain_sums_and_do_not_depend_on_the_key_count() {
        let hd = 12;
        let q: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.37).sin()).collect();
        let keys: Vec<f32> = (0..19 * hd).map(|i| (i as f32 * 0.11).cos()).collect();
        let all = key_scores(&q, &keys, hd);
        for n in [1, 7, 8, 9, 16, 19] {
            let some = key_scores(&q, &keys[..n * hd], hd);
            assert_eq!(some.as_slice(), &all[..n], "{n} keys");
        }
        for (j, s) in all.iter().enumerate() {
            let plain: f64 = (0..hd).map(|c| q[c] as f64 * keys[j * hd + c] as f64).sum();
            assert!((*s as f64 - plain).abs() < 1e-5, "key {j}");
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
