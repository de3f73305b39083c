//! Fused CPU training kernels with their own backward, as candle custom ops: a linear layer
//! (no bias), RMSNorm, the SwiGLU MLP (both projections),
//! causal self-attention (blocked, upper-triangle blocks skipped, probabilities recomputed in the
//! backward instead of stored) and the unembedding with a chunked cross-entropy whose full logits
//! never exist. Each replaces a chain of plain ops, so autograd keeps one node (one gradient
//! buffer) instead of five to ten. f32 and CPU only; each is tested against the plain
//! differentiable ops it replaces (tests/train_kernels.rs). Not here: the inference kernels
//! (`cpu_kernels.rs`), the GPU ops (`gpu_ops.rs`), and the choice of when to use them (`layers.rs`).

use std::mem::MaybeUninit;
use std::sync::Mutex;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Shape, Storage, Tensor,
};
use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu_kernels::f32_slice;
#[cfg(target_arch = "x86_64")]
use super::cpu_kernels::has_avx2_fma;

/// A strided matrix view into a slice: element `(i, j)` sits at `i * rs + j * cs`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// The row-major `rows x cols` matrix at the start of `data`.
    fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Rows `lo..hi` of this view.
    fn row_range(self, lo: usize, hi: usize) -> Self {
        Self {
            data: &self.data[(lo * self.rs).min(self.data.len())..],
            rows: hi - lo,
            ..self
        }
    }

    /// Columns `lo..hi` of this view.
    fn col_range(self, lo: usize, hi: usize) -> Self {
        Self {
            data: &self.data[(lo * self.cs).min(self.data.len())..],
            cols: hi - lo,
            ..self
        }
    }

    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = scale * a b` (or `dst += scale * a b` when `accumulate`), `dst` row-major `m x n` with
/// row stride `ld`. The matmul is the `gemm` crate's (the one candle uses).
fn matmul(
    dst: &mut [f32],
    ld: usize,
    a: View,
    b: View,
    scale: f32,
    accumulate: bool,
    par: Parallelism,
) {
    let (m, n) = (a.rows, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        n <= ld && (m - 1) * ld + n <= dst.len(),
        "matmul destination out of bounds"
    );
    // SAFETY: the destination was checked above to hold the `m x n` result at row stride `ld`,
    // and `dst` is borrowed mutably, so it overlaps neither operand.
    unsafe { gemm_into(dst.as_mut_ptr(), ld, a, b, scale, accumulate, par) }
}

/// `scale * a b` as a new row-major `m x n` buffer, written by the matmul into fresh memory (no
/// zero-fill first: on a training step's projections that fill was a serial pass over every
/// output and gradient buffer).
fn product(a: View, b: View, scale: f32, par: Parallelism) -> Vec<f32> {
    let (m, n) = (a.rows, b.cols);
    if m.min(n) <= 1 {
        // gemm's vector paths take a slice over the destination before writing it: give them
        // initialized memory (a single row or column costs nothing to zero).
        let mut out = vec![0f32; m * n];
        matmul(&mut out, n.max(1), a, b, scale, false, par);
        return out;
    }
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: `out` has room for `m x n` values at row stride `n`, and it is new, so it overlaps
    // neither operand. With `accumulate` false, `gemm_into` writes every one of the `m x n`
    // values and reads none of them (gemm's `read_dst = false`, zeros when `k` is 0), so all
    // `m * n` are initialized when the length is set.
    unsafe {
        gemm_into(out.as_mut_ptr(), n, a, b, scale, false, par);
        out.set_len(m * n);
    }
    out
}

/// The one way into `gemm`: `dst = scale * a b` (or `+=` when `accumulate`). Without
/// `accumulate` every `m x n` value of `dst` is written and none is read. With `Parallelism::Rayon(t)`
/// the output is cut along its longer side into `t` slabs, one single-threaded `gemm` each: on
/// this step's shapes that beats `gemm`'s own threading by 3-15% (`examples/gemm_probe.rs`).
///
/// # Safety
/// `dst` must be valid for writes (and, with `accumulate`, reads) of a row-major `m x n` matrix
/// at row stride `ld >= n`, and must not overlap `a` or `b`.
unsafe fn gemm_into(
    dst: *mut f32,
    ld: usize,
    a: View,
    b: View,
    scale: f32,
    accumulate: bool,
    par: Parallelism,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner sizes");
    assert!(
        a.in_bounds() && b.in_bounds(),
        "matmul operand out of bounds"
    );
    assert!(n <= ld, "matmul destination row stride");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::ptr::write_bytes(dst.add(i * ld), 0, n);
            }
        }
        return;
    }
    let slabs = match par {
        Parallelism::Rayon(t) if m.max(n) >= 2 * MIN_SLAB && m * n * k >= PAR_MIN_MACS => {
            t.min(m.max(n) / MIN_SLAB)
        }
        _ => 1,
    };
    if slabs <= 1 {
        gemm_slab(dst, ld, a, b, scale, accumulate);
        return;
    }
    // Slab `s` of the longer side: rows of `a` and `dst`, or columns of `b` and `dst`.
    let by_rows = m >= n;
    let long = if by_rows { m } else { n };
    let dst = SendPtr(dst);
    (0..slabs).into_par_iter().for_each(|s| {
        let (lo, hi) = (long * s / slabs, long * (s + 1) / slabs);
        // SAFETY: the slabs are disjoint parts of the `m x n` destination the caller vouched for.
        unsafe {
            if by_rows {
                gemm_slab(
                    dst.at(lo * ld),
                    ld,
                    a.row_range(lo, hi),
                    b,
                    scale,
                    accumulate,
                );
            } else {
                gemm_slab(dst.at(lo), ld, a, b.col_range(lo, hi), scale, accumulate);
            }
        }
    });
}

/// The fewest output rows (or columns) a thread's slab of a split matmul gets.
const MIN_SLAB: usize = 64;

/// Below this many multiply-adds a matmul runs on one thread.
const PAR_MIN_MACS: usize = 1 << 20;

/// A destination pointer handed to the threads of a split matmul, each writing its own slab.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

// SAFETY: only `gemm_into` makes one, and its threads write disjoint slabs of it.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer `offset` values on (a method, so closures capture the whole `Send` wrapper).
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// One single-threaded `gemm` call; the caller has checked the shapes and bounds.
unsafe fn gemm_slab(dst: *mut f32, ld: usize, a: View, b: View, scale: f32, accumulate: bool) {
    gemm::gemm(
        a.rows,
        b.cols,
        a.cols,
        dst,
        1,
        ld as isize,
        accumulate,
        a.data.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.data.as_ptr(),
        b.cs as isize,
        b.rs as isize,
        1.0,
        scale,
        false,
        false,
        false,
        Parallelism::None,
    );
}

fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// Runs `f` on the f32 contents of a CPU tensor (made contiguous first).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("training kernels run on the CPU")
    };
    Ok(f(f32_slice(cpu, layout, "training kernel input")?))
}

/// `dims` with its last dimension replaced by `n` (a row-wise op's output shape; `dims` is not empty).
fn with_last_dim(dims: &[usize], n: usize) -> Shape {
    let mut dims = dims.to_vec();
    *dims
        .last_mut()
        .expect("a row-wise op's input has a last dimension") = n;
    Shape::from(dims)
}

fn cpu_tensor(data: Vec<f32>, shape: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// Rows of at most this many elements go to one rayon task in element-wise kernels.
const PAR_CHUNK: usize = 16 * 1024;

/// Zeroes a chunk of fresh memory and hands it out as values: called inside each parallel task on
/// its own chunk, so the fill happens in cache and on every core, not as one serial pass over the
/// whole buffer before the tasks start.
fn zeroed(chunk: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for v in chunk.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every value of `chunk` was just written, and `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(chunk as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A new buffer of `len` values whose every chunk of `chunk` values is written in parallel by
/// `fill(chunk_index, values)` (zeroed first, in its own task).
fn par_new(len: usize, chunk: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    par_new_with(len, chunk, fill).0
}

/// [`par_new`] whose `fill` also returns a value per chunk: the buffer and those values, in chunk
/// order (a reduction over the chunks, such as a weight gradient, is the caller's to finish).
fn par_new_with<R: Send>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) -> R + Sync,
) -> (Vec<f32>, Vec<R>) {
    let mut out = Vec::with_capacity(len);
    let per_chunk = out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .map(|(i, c)| fill(i, zeroed(c)))
        .collect();
    // SAFETY: the chunks cover all `len` values and `zeroed` wrote each of them.
    unsafe { out.set_len(len) };
    (out, per_chunk)
}

/// `e^x` within about 2e-7 relative error for x in [-87, 88] (clamped outside that range),
/// branch-free so that loops over it vectorize (libm's `expf` is a scalar call): round
/// `x log2(e)` to n, reduce with ln 2 split in two parts, Cephes' degree-6 polynomial, scale by 2^n.
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5e-1;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    (p * r * r + r + 1.0) * scale
}

/// Runs `$body` compiled for AVX2 + FMA when the CPU has them (so `exp_fast` loops vectorize),
/// plainly otherwise. The same operations in the same order either way: only the speed differs.
macro_rules! wide {
    ($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) -> $ret {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                // SAFETY: the CPU has the features `avx2` was compiled for.
                return unsafe { avx2($($arg),*) };
            }
            body($($arg),*)
        }
    };
}

/// `row[i] = e^(row[i] - max)`; returns the sum, accumulated in 16 lanes (lane j takes elements
/// 16k + j in order, then the lanes are added in order, then the remainder). With AVX-512 an
/// explicit 16-lane `exp_fast`: the same operations in the same order, so the same bits.
fn exp_shifted_sum(row: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, which is all `avx512::exp_shifted_sum` uses.
        return unsafe { avx512::exp_shifted_sum(row, max) };
    }
    exp_shifted_sum_portable(row, max)
}

wide!(exp_shifted_sum_portable(row: &mut [f32], max: f32) -> f32 {
    // row[i] = e^(row[i] - max); returns the sum, accumulated in 16 lanes.
    let mut lanes = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (v, acc) in chunk.iter_mut().zip(lanes.iter_mut()) {
            *v = exp_fast(*v - max);
            *acc += *v;
        }
    }
    let mut sum = 0f32;
    for v in chunks.into_remainder() {
        *v = exp_fast(*v - max);
        sum += *v;
    }
    lanes.iter().sum::<f32>() + sum
});

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `exp_fast` on 16 lanes: the scalar function's operations, one for one (no fused
    /// multiply-add, the same constants), so each lane has the scalar result's bits.
    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let s = _mm512_set1_ps;
        let x = _mm512_max_ps(_mm512_min_ps(x, s(88.0)), s(-87.0));
        let round = s(12_582_912.0);
        let n = _mm512_sub_ps(
            _mm512_add_ps(_mm512_mul_ps(x, s(std::f32::consts::LOG2_E)), round),
            round,
        );
        let r = _mm512_sub_ps(
            _mm512_sub_ps(x, _mm512_mul_ps(n, s(0.693_359_4))),
            _mm512_mul_ps(n, s(-2.121_944_4e-4)),
        );
        let mut p = s(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5e-1,
        ] {
            p = _mm512_add_ps(_mm512_mul_ps(p, r), s(c));
        }
        let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_cvttps_epi32(n),
            _mm512_set1_epi32(127),
        ));
        let y = _mm512_add_ps(
            _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r),
            s(1.0),
        );
        _mm512_mul_ps(y, _mm512_castsi512_ps(bits))
    }

    /// `-x` exactly as the scalar negation (a sign flip: -0.0 for 0.0).
    #[target_feature(enable = "avx512f")]
    fn neg(x: __m512) -> __m512 {
        _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(x),
            _mm512_set1_epi32(i32::MIN),
        ))
    }

    /// See [`super::swiglu_forward`]: `g / (1 + e^-g) * u`, the scalar's operations one for one.
    #[target_feature(enable = "avx512f")]
    pub(super) fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
        let n = out.len().min(gate.len()).min(up.len());
        let one = _mm512_set1_ps(1.0);
        let full = n / 16 * 16;
        for i in (0..full).step_by(16) {
            // SAFETY: i + 16 <= n, within every slice; unaligned loads and stores.
            unsafe {
                let g = _mm512_loadu_ps(gate.as_ptr().add(i));
                let u = _mm512_loadu_ps(up.as_ptr().add(i));
                let e = exp16(neg(g));
                let y = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u);
                _mm512_storeu_ps(out.as_mut_ptr().add(i), y);
            }
        }
        for i in full..n {
            out[i] = gate[i] / (1.0 + super::exp_fast(-gate[i])) * up[i];
        }
    }

    /// See [`super::swiglu_backward`]: the scalar's operations one for one.
    #[target_feature(enable = "avx512f")]
    pub(super) fn swiglu_backward(
        dg: &mut [f32],
        du: &mut [f32],
        gate: &[f32],
        up: &[f32],
        dy: &[f32],
    ) {
        let n = gate
            .len()
            .min(dg.len())
            .min(du.len())
            .min(up.len())
            .min(dy.len());
        let one = _mm512_set1_ps(1.0);
        let full = n / 16 * 16;
        for i in (0..full).step_by(16) {
            // SAFETY: i + 16 <= n, within every slice; unaligned loads and stores.
            unsafe {
                let g = _mm512_loadu_ps(gate.as_ptr().add(i));
                let u = _mm512_loadu_ps(up.as_ptr().add(i));
                let d = _mm512_loadu_ps(dy.as_ptr().add(i));
                let e = exp16(neg(g));
                let sig = _mm512_div_ps(one, _mm512_add_ps(one, e));
                let slope = _mm512_add_ps(one, _mm512_mul_ps(g, _mm512_sub_ps(one, sig)));
                let vdg = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(d, u), sig), slope);
                let vdu = _mm512_mul_ps(_mm512_mul_ps(d, g), sig);
                _mm512_storeu_ps(dg.as_mut_ptr().add(i), vdg);
                _mm512_storeu_ps(du.as_mut_ptr().add(i), vdu);
            }
        }
        for i in full..n {
            let s = 1.0 / (1.0 + super::exp_fast(-gate[i]));
            dg[i] = dy[i] * up[i] * s * (1.0 + gate[i] * (1.0 - s));
            du[i] = dy[i] * gate[i] * s;
        }
    }

    /// See [`super::exp_shifted_sum`].
    #[target_feature(enable = "avx512f")]
    pub(super) fn exp_shifted_sum(row: &mut [f32], max: f32) -> f32 {
        let vmax = _mm512_set1_ps(max);
        let mut acc = _mm512_setzero_ps();
        let mut chunks = row.chunks_exact_mut(16);
        for chunk in &mut chunks {
            // SAFETY: `chunk` holds exactly 16 f32s; unaligned loads and stores.
            unsafe {
                let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(chunk.as_ptr()), vmax));
                _mm512_storeu_ps(chunk.as_mut_ptr(), e);
                acc = _mm512_add_ps(acc, e);
            }
        }
        let mut sum = 0f32;
        for v in chunks.into_remainder() {
            *v = super::exp_fast(*v - max);
            sum += *v;
        }
        let mut lanes = [0f32; 16];
        // SAFETY: `lanes` holds 16 f32s.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
        lanes.iter().sum::<f32>() + sum
    }
}

/// `out = silu(gate) * up`, elementwise; with AVX-512 in 16 lanes (the same bits).
fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, which is all the function uses.
        return unsafe { avx512::swiglu_forward(out, gate, up) };
    }
    swiglu_forward_portable(out, gate, up)
}

/// The gradients of [`swiglu_forward`] for gate and up; with AVX-512 in 16 lanes (the same bits).
fn swiglu_backward(dg: &mut [f32], du: &mut [f32], gate: &[f32], up: &[f32], dy: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, which is all the function uses.
        return unsafe { avx512::swiglu_backward(dg, du, gate, up, dy) };
    }
    swiglu_backward_portable(dg, du, gate, up, dy)
}

wide!(swiglu_forward_portable(out: &mut [f32], gate: &[f32], up: &[f32]) -> () {
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp_fast(-g)) * u;
    }
});

wide!(swiglu_backward_portable(dg: &mut [f32], du: &mut [f32], gate: &[f32], up: &[f32], dy: &[f32]) -> () {
    for i in 0..gate.len().min(dg.len()).min(du.len()).min(up.len()).min(dy.len()) {
        let s = 1.0 / (1.0 + exp_fast(-gate[i]));
        dg[i] = dy[i] * up[i] * s * (1.0 + gate[i] * (1.0 - s));
        du[i] = dy[i] * gate[i] * s;
    }
});

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// `x / sqrt(mean(x^2) + eps) * w` over the last dimension, with backward.
pub struct RmsNormOp {
    pub eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "train-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "rms-norm input")?;
        let w = f32_slice(s2, l2, "rms-norm weight")?;
        let d = w.len();
        if d == 0 || l1.dims().last() != Some(&d) {
            candle_core::bail!("rms-norm: weight of {d} for input {:?}", l1.dims());
        }
        let chunk = (PAR_CHUNK / d).max(1) * d;
        let out = par_new(x.len(), chunk, |i, o| {
            for (o, x) in o.chunks_mut(d).zip(x[i * chunk..].chunks(d)) {
                let r = inv_rms(x, self.eps);
                for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
                    *o = x * r * w;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let eps = self.eps;
        if d == 0 || x.dims() != dy.dims() || x.dims().last() != Some(&d) {
            candle_core::bail!(
                "rms-norm backward: input {:?}, output gradient {:?}, weight of {d}",
                x.dims(),
                dy.dims()
            );
        }
        let (dx, dw) = with_f32(x, |x| {
            with_f32(w, |w| {
                with_f32(dy, |dy| {
                    let chunk = (PAR_CHUNK / d).max(1) * d;
                    let (dx, dws) = par_new_with(x.len(), chunk, |i, dx| {
                        let rows = i * chunk..i * chunk + dx.len();
                        let (x, dy) = (&x[rows.clone()], &dy[rows]);
                        let mut dw = vec![0f32; d];
                        for ((dx, x), dy) in dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d)) {
                            let r = inv_rms(x, eps);
                            // g = dy * w; dx = r * (g - xhat * mean(g * xhat)), xhat = x * r.
                            let mut dot = 0f32;
                            for i in 0..d {
                                let xhat = x[i] * r;
                                dot += dy[i] * w[i] * xhat;
                                dw[i] += dy[i] * xhat;
                            }
                            let mean = dot / d as f32;
                            for i in 0..d {
                                dx[i] = r * (dy[i] * w[i] - x[i] * r * mean);
                            }
                        }
                        dw
                    });
                    let mut dw = vec![0f32; d];
                    for part in &dws {
                        dw.iter_mut().zip(part).for_each(|(a, b)| *a += b);
                    }
                    (dx, dw)
                })
            })
        })???;
        Ok((
            Some(cpu_tensor(dx, x.dims())?),
            Some(cpu_tensor(dw, w.dims())?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Linear (no bias), and the SwiGLU MLP

/// `y = x wᵀ` for `x` of shape `(.., d)` and `w` of shape `(o, d)`, with backward: one matmul of
/// all rows at once, and in the backward `dx = dy w` and `dw = dyᵀ x` straight from the saved
/// operands through strided views, so autograd keeps no transpose or broadcast node (each of which
/// would cost a weight-sized gradient buffer, and a broadcast a per-batch copy and sum).
pub struct LinearOp;

impl LinearOp {
    /// (rows, d, o), checking the shapes.
    fn dims(x: &[usize], w: &[usize]) -> candle_core::Result<(usize, usize, usize)> {
        match (x.split_last(), w) {
            (Some((&d, lead)), &[o, wd]) if d == wd => Ok((lead.iter().product(), d, o)),
            _ => candle_core::bail!("linear: input {x:?} and weight {w:?} do not match"),
        }
    }
}

/// `x wᵀ` for `rows x d` rows `x` and an `o x d` weight: `rows x o`.
fn linear_rows(x: &[f32], w: &[f32], rows: usize, d: usize, o: usize) -> Vec<f32> {
    product(
        View::rows(x, rows, d),
        View::rows(w, o, d).t(),
        1.0,
        threads(),
    )
}

/// The gradients of [`linear_rows`] for output gradients `dy`: `(dx, dw) = (dy w, dyᵀ x)`.
fn linear_rows_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    rows: usize,
    d: usize,
    o: usize,
) -> (Vec<f32>, Vec<f32>) {
    let dx = product(View::rows(dy, rows, o), View::rows(w, o, d), 1.0, threads());
    let dw = product(
        View::rows(dy, rows, o).t(),
        View::rows(x, rows, d),
        1.0,
        threads(),
    );
    (dx, dw)
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "train-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, "linear input")?;
        let w = f32_slice(ws, wl, "linear weight")?;
        let (rows, d, o) = Self::dims(xl.dims(), wl.dims())?;
        let y = linear_rows(x, w, rows, d, o);
        Ok((CpuStorage::F32(y), with_last_dim(xl.dims(), o)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, d, o) = Self::dims(x.dims(), w.dims())?;
        let (dx, dw) = with_f32(x, |x| {
            with_f32(w, |w| {
                with_f32(dy, |dy| linear_rows_backward(x, w, dy, rows, d, o))
            })
        })???;
        Ok((
            Some(cpu_tensor(dx, x.dims())?),
            Some(cpu_tensor(dw, w.dims())?),
        ))
    }
}

/// SwiGLU over rows of `[gate | up]` (each `2 ff` wide): rows of `ff` outputs, `silu(gate) * up`,
/// in parallel.
fn swiglu_rows(gu: &[f32], rows: usize, ff: usize) -> Vec<f32> {
    let rows_per_task = (PAR_CHUNK / ff).max(1);
    par_new(rows * ff, rows_per_task * ff, |i, o| {
        let gu = &gu[i * rows_per_task * 2 * ff..];
        for (o, gu) in o.chunks_mut(ff).zip(gu.chunks(2 * ff)) {
            swiglu_forward(o, &gu[..ff], &gu[ff..]);
        }
    })
}

/// The gradient of [`swiglu_rows`] at `gu` for output gradients `dy`: rows of `[dgate | dup]`.
fn swiglu_rows_backward(gu: &[f32], dy: &[f32], ff: usize) -> Vec<f32> {
    let rows_per_task = (PAR_CHUNK / ff).max(1);
    par_new(gu.len(), rows_per_task * 2 * ff, |i, dgu| {
        let gu = &gu[i * rows_per_task * 2 * ff..];
        let dy = &dy[i * rows_per_task * ff..];
        for ((dgu, gu), dy) in dgu
            .chunks_mut(2 * ff)
            .zip(gu.chunks(2 * ff))
            .zip(dy.chunks(ff))
        {
            let (dg, du) = dgu.split_at_mut(ff);
            swiglu_backward(dg, du, &gu[..ff], &gu[ff..], dy);
        }
    })
}

/// The SwiGLU MLP `down(silu(x gateᵀ) * (x upᵀ))` for `x` of shape `(.., d)`, the gate-and-up
/// weight `(2 ff, d)` (gate rows first) and the down weight `(d_out, ff)`: both projections and
/// SwiGLU in one node, so autograd holds no gradient for the `2 ff`-wide projection nor the
/// `ff`-wide hidden rows (a layer's widest activations). Both are kept from the forward for the
/// backward.
pub struct MlpOp {
    ff: usize,
    /// `(gate_up, hidden)` rows from the forward.
    kept: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl MlpOp {
    pub fn new(ff: usize) -> Self {
        Self {
            ff,
            kept: Mutex::new(None),
        }
    }

    /// (rows, d, d_out), checking the weights' shapes.
    fn dims(
        &self,
        x: &[usize],
        gu: &[usize],
        down: &[usize],
    ) -> candle_core::Result<(usize, usize, usize)> {
        let (rows, d, o) = LinearOp::dims(x, gu)?;
        match down {
            &[d_out, ff] if self.ff > 0 && o == 2 * self.ff && ff == self.ff => {
                Ok((rows, d, d_out))
            }
            _ => candle_core::bail!(
                "mlp: weights {gu:?} and {down:?} are not (2 x {ff}, ..) and (.., {ff})",
                ff = self.ff
            ),
        }
    }

    /// `(gate_up, hidden)` rows for `x`.
    fn hidden(&self, x: &[f32], gu_w: &[f32], rows: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
        let gu = linear_rows(x, gu_w, rows, d, 2 * self.ff);
        let hidden = swiglu_rows(&gu, rows, self.ff);
        (gu, hidden)
    }
}

impl CustomOp3 for MlpOp {
    fn name(&self) -> &'static str {
        "train-mlp"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, "mlp input")?;
        let gu_w = f32_slice(gs, gl, "gate-and-up weight")?;
        let down_w = f32_slice(ds, dl, "down weight")?;
        let (rows, d, d_out) = self.dims(xl.dims(), gl.dims(), dl.dims())?;
        let (gu, hidden) = self.hidden(x, gu_w, rows, d);
        let y = linear_rows(&hidden, down_w, rows, self.ff, d_out);
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some((gu, hidden));
        Ok((CpuStorage::F32(y), with_last_dim(xl.dims(), d_out)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gu_w: &Tensor,
        down_w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, d, d_out) = self.dims(x.dims(), gu_w.dims(), down_w.dims())?;
        let ff = self.ff;
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (dx, dgu_w, ddown_w) = with_f32(x, |x| {
            with_f32(gu_w, |gu_w| {
                with_f32(down_w, |down_w| {
                    with_f32(dy, |dy| {
                        // Kept from the forward; recomputed if this backward runs a second time.
                        let (gu, hidden) = kept.unwrap_or_else(|| self.hidden(x, gu_w, rows, d));
                        let (dhidden, ddown_w) =
                            linear_rows_backward(&hidden, down_w, dy, rows, ff, d_out);
                        let dgu = swiglu_rows_backward(&gu, &dhidden, ff);
                        let (dx, dgu_w) = linear_rows_backward(x, gu_w, &dgu, rows, d, 2 * ff);
                        (dx, dgu_w, ddown_w)
                    })
                })
            })
        })????;
        Ok((
            Some(cpu_tensor(dx, x.dims())?),
            Some(cpu_tensor(dgu_w, gu_w.dims())?),
            Some(cpu_tensor(ddown_w, down_w.dims())?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Causal self-attention

/// Query rows per block: a block attends to the keys up to its last row, so blocks above the
/// diagonal are never computed.
const ATTN_BLOCK: usize = 64;

/// RoPE tables for positions `0..t`: `(t, head_dim / 2)` each, and the layout.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    /// Meta's layout (pairs `2i, 2i + 1`) instead of Hugging Face's (halves `i, i + hd/2`).
    pub interleaved: bool,
}

impl RopeTables {
    /// Rotates `src` (one head's row at position `pos`) into `dst`; `inverse` rotates back (the
    /// transpose of the rotation: the backward of RoPE).
    fn rotate(&self, src: &[f32], dst: &mut [f32], pos: usize, inverse: bool) {
        let half = src.len() / 2;
        let (cos, sin) = (
            &self.cos[pos * half..(pos + 1) * half],
            &self.sin[pos * half..(pos + 1) * half],
        );
        let sign = if inverse { -1.0 } else { 1.0 };
        if self.interleaved {
            for i in 0..half {
                let (c, s) = (cos[i], sign * sin[i]);
                let (a, b) = (src[2 * i], src[2 * i + 1]);
                dst[2 * i] = a * c - b * s;
                dst[2 * i + 1] = a * s + b * c;
            }
        } else {
            // Halves: a loop over slices of one length, which the compiler vectorizes.
            let (src_a, src_b) = src.split_at(half);
            let (dst_a, dst_b) = dst.split_at_mut(half);
            let (src_b, dst_b) = (&src_b[..half], &mut dst_b[..half]);
            for i in 0..half {
                let (c, s) = (cos[i], sign * sin[i]);
                let (a, b) = (src_a[i], src_b[i]);
                dst_a[i] = a * c - b * s;
                dst_b[i] = a * s + b * c;
            }
        }
    }
}

/// Causal self-attention over whole sequences (no cache, positions from 0), straight from the
/// fused q/k/v projection: the input `(b * t, (h + 2 kv) * hd)` holds, per position, the `h`
/// query heads, then the `kv` key heads, then the `kv` value heads (query head `i` reads kv head
/// `i / (h / kv)`); RoPE is applied inside; the output `(b * t, h * hd)` is in the layout the
/// output projection reads. Softmax in f32 with the max subtracted; the backward recomputes the
/// probabilities block by block instead of keeping the `t x t` matrix.
pub struct CausalAttentionOp {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub rope: RopeTables,
}

impl CausalAttentionOp {
    /// The attention output rows `(b t, h hd)` for the projection's rows `qkv` (`(b t, width)`).
    fn forward_rows(&self, qkv: &[f32], t: usize) -> Vec<f32> {
        let (b, h, kv, hd, w) = (
            self.batch,
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.width(),
        );
        let group = h / kv;
        // One task per (sequence, query head); each returns its head's output rows (t, hd).
        let heads: Vec<Vec<f32>> = (0..b * h)
            .into_par_iter()
            .map(|bh| {
                let (bi, hi) = (bh / h, bh % h);
                let kvi = hi / group;
                let q = self.rotated(qkv, bi, t, hi * hd);
                let k = self.rotated(qkv, bi, t, (h + kvi) * hd);
                let mut o = vec![0f32; t * hd];
                let mut p = vec![0f32; ATTN_BLOCK * t];
                for r0 in (0..t).step_by(ATTN_BLOCK) {
                    let rows = ATTN_BLOCK.min(t - r0);
                    let keys = r0 + rows;
                    block_probs(&mut p, &q, &k, r0, rows, hd, self.scale);
                    let v = Self::head_rows(qkv, w, bi * t, (h + kv + kvi) * hd, keys, hd);
                    matmul(
                        &mut o[r0 * hd..],
                        hd,
                        View::rows(&p[..rows * keys], rows, keys),
                        v,
                        1.0,
                        false,
                        Parallelism::None,
                    );
                }
                o
            })
            .collect();
        // Sequence `bi`'s rows gather its heads' outputs, one task per sequence.
        par_new(b * t * h * hd, t * h * hd, |bi, out| {
            for (r, row) in out.chunks_mut(h * hd).enumerate() {
                for (hi, dst) in row.chunks_mut(hd).enumerate() {
                    dst.copy_from_slice(&heads[bi * h + hi][r * hd..(r + 1) * hd]);
                }
            }
        })
    }

    /// The gradient at `qkv` for the output gradient `d_o`, given the forward's output `o`.
    fn backward_rows(&self, qkv: &[f32], o: &[f32], d_o: &[f32], t: usize) -> Vec<f32> {
        let (b, h, kv, hd, w) = (
            self.batch,
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.width(),
        );
        let (group, scale, ow) = (h / kv, self.scale, h * hd);
        // One task per (sequence, kv head): it owns that kv head's dK, dV and the dQ
        // of its query group; each returns (dQ of the group, dK, dV), un-rotated.
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..b * kv)
            .into_par_iter()
            .map(|bkv| {
                let (bi, kvi) = (bkv / kv, bkv % kv);
                let k = self.rotated(qkv, bi, t, (h + kvi) * hd);
                let vcol = (h + kv + kvi) * hd;
                let mut dk_rot = vec![0f32; t * hd];
                let mut dv = vec![0f32; t * hd];
                let mut dq = vec![0f32; group * t * hd];
                let mut dq_rot = vec![0f32; t * hd];
                let mut p = vec![0f32; ATTN_BLOCK * t];
                let mut ds = vec![0f32; ATTN_BLOCK * t];
                for g in 0..group {
                    let hi = kvi * group + g;
                    let q = self.rotated(qkv, bi, t, hi * hd);
                    for r0 in (0..t).step_by(ATTN_BLOCK) {
                        let rows = ATTN_BLOCK.min(t - r0);
                        let keys = r0 + rows;
                        block_probs(&mut p, &q, &k, r0, rows, hd, scale);
                        let dob = Self::head_rows(d_o, ow, bi * t + r0, hi * hd, rows, hd);
                        let v = Self::head_rows(qkv, w, bi * t, vcol, keys, hd);
                        // dP = dO V^T
                        matmul(&mut ds, keys, dob, v.t(), 1.0, false, Parallelism::None);
                        // dS = P * (dP - rowsum(dO * O))
                        for i in 0..rows {
                            let at = (bi * t + r0 + i) * ow + hi * hd;
                            let di: f32 = d_o[at..at + hd]
                                .iter()
                                .zip(&o[at..at + hd])
                                .map(|(a, b)| a * b)
                                .sum();
                            for (d, p) in ds[i * keys..(i + 1) * keys]
                                .iter_mut()
                                .zip(&p[i * keys..(i + 1) * keys])
                            {
                                *d = p * (*d - di);
                            }
                        }
                        let dsb = View::rows(&ds[..rows * keys], rows, keys);
                        let pb = View::rows(&p[..rows * keys], rows, keys);
                        // dQ = scale dS K; dK += scale dS^T Q; dV += P^T dO
                        matmul(
                            &mut dq_rot[r0 * hd..],
                            hd,
                            dsb,
                            View::rows(&k[..keys * hd], keys, hd),
                            scale,
                            false,
                            Parallelism::None,
                        );
                        matmul(
                            &mut dk_rot,
                            hd,
                            dsb.t(),
                            View::rows(&q[r0 * hd..keys * hd], rows, hd),
                            scale,
                            true,
                            Parallelism::None,
                        );
                        matmul(&mut dv, hd, pb.t(), dob, 1.0, true, Parallelism::None);
                    }
                    let dq_g = &mut dq[g * t * hd..(g + 1) * t * hd];
                    for (r, (src, dst)) in dq_rot.chunks(hd).zip(dq_g.chunks_mut(hd)).enumerate() {
                        self.rope.rotate(src, dst, r, true);
                    }
                }
                let mut dk = vec![0f32; t * hd];
                for (r, (src, dst)) in dk_rot.chunks(hd).zip(dk.chunks_mut(hd)).enumerate() {
                    self.rope.rotate(src, dst, r, true);
                }
                (dq, dk, dv)
            })
            .collect();
        // Sequence `bi`'s rows gather its kv heads' parts, one task per sequence.
        par_new(b * t * w, t * w, |bi, rows| {
            for (r, row) in rows.chunks_mut(w).enumerate() {
                for (kvi, (dq, dk, dv)) in parts[bi * kv..(bi + 1) * kv].iter().enumerate() {
                    for g in 0..group {
                        let hi = kvi * group + g;
                        row[hi * hd..(hi + 1) * hd]
                            .copy_from_slice(&dq[(g * t + r) * hd..(g * t + r + 1) * hd]);
                    }
                    row[(h + kvi) * hd..(h + kvi + 1) * hd]
                        .copy_from_slice(&dk[r * hd..(r + 1) * hd]);
                    row[(h + kv + kvi) * hd..(h + kv + kvi + 1) * hd]
                        .copy_from_slice(&dv[r * hd..(r + 1) * hd]);
                }
            }
        })
    }

    fn width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Sequence length, after checking the input's shape and the tables.
    fn seq_len(&self, dims: &[usize]) -> candle_core::Result<usize> {
        let (h, kv, hd) = (self.heads, self.kv_heads, self.head_dim);
        let &[rows, width] = dims else {
            candle_core::bail!("causal attention: input {dims:?} must be 2-d")
        };
        if self.batch == 0
            || rows % self.batch != 0
            || width != self.width()
            || kv == 0
            || h % kv != 0
            || hd % 2 != 0
        {
            candle_core::bail!(
                "causal attention: input {dims:?} for batch {}, {h} heads, {kv} kv heads of {hd}",
                self.batch
            );
        }
        let t = rows / self.batch;
        if self.rope.cos.len() < t * hd / 2 || self.rope.sin.len() < t * hd / 2 {
            candle_core::bail!("causal attention: RoPE tables shorter than {t} positions");
        }
        Ok(t)
    }

    /// One head's rows `(t, hd)` of sequence `bi`, starting at column `col`, rotated by RoPE.
    fn rotated(&self, qkv: &[f32], bi: usize, t: usize, col: usize) -> Vec<f32> {
        let (w, hd) = (self.width(), self.head_dim);
        let mut out = vec![0f32; t * hd];
        for (r, dst) in out.chunks_mut(hd).enumerate() {
            let at = (bi * t + r) * w + col;
            self.rope.rotate(&qkv[at..at + hd], dst, r, false);
        }
        out
    }

    /// A strided view of `rows` rows of one head (`hd` columns from `col`) in a `(b * t, width)`
    /// buffer, starting at buffer row `first` (sequence `bi`'s row `r0` is `bi * t + r0`).
    fn head_rows<'a>(
        data: &'a [f32],
        width: usize,
        first: usize,
        col: usize,
        rows: usize,
        hd: usize,
    ) -> View<'a> {
        View {
            data: &data[first * width + col..],
            rows,
            cols: hd,
            rs: width,
            cs: 1,
        }
    }
}

/// Softmax of each row of `s (rows x keys)` over its causal prefix: row `i` sees keys
/// `0..=first_row + i`, the rest are set to 0. `s` holds scaled scores on entry.
fn causal_softmax_rows(s: &mut [f32], rows: usize, keys: usize, first_row: usize) {
    for i in 0..rows {
        let row = &mut s[i * keys..(i + 1) * keys];
        let seen = (first_row + i + 1).min(keys);
        let max = row[..seen]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let inv = 1.0 / exp_shifted_sum(&mut row[..seen], max);
        row[..seen].iter_mut().for_each(|v| *v *= inv);
        row[seen..].fill(0.0);
    }
}

/// The probabilities `P (rows x keys)` of query rows `r0..r0 + rows` of one head (`q`, `k`
/// row-major `(t, hd)`, rotated), into `p`.
fn block_probs(p: &mut [f32], q: &[f32], k: &[f32], r0: usize, rows: usize, hd: usize, scale: f32) {
    let keys = r0 + rows;
    let qb = View::rows(&q[r0 * hd..(r0 + rows) * hd], rows, hd);
    let kb = View::rows(&k[..keys * hd], keys, hd);
    matmul(p, keys, qb, kb.t(), scale, false, Parallelism::None);
    causal_softmax_rows(&mut p[..rows * keys], rows, keys, r0);
}

impl CustomOp1 for CausalAttentionOp {
    fn name(&self) -> &'static str {
        "train-causal-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s, l, "attention input")?;
        let t = self.seq_len(l.dims())?;
        let out = self.forward_rows(qkv, t);
        Ok((
            CpuStorage::F32(out),
            Shape::from((self.batch * t, self.heads * self.head_dim)),
        ))
    }

    fn bwd(&self, qkv: &Tensor, o: &Tensor, d_o: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let t = self.seq_len(qkv.dims())?;
        let dqkv = with_f32(qkv, |qkv| {
            with_f32(o, |o| {
                with_f32(d_o, |d_o| self.backward_rows(qkv, o, d_o, t))
            })
        })???;
        Ok(Some(cpu_tensor(dqkv, qkv.dims())?))
    }
}

/// Causal attention over the q/k/v projection of `x` (`(b t, d)`, weights concatenated as
/// `(width, d)`, no biases): the projection ([`LinearOp`]) and [`CausalAttentionOp`] in one node, so
/// autograd holds no gradient for the projection's rows (three activations wide). The projection is
/// kept from the forward for the backward.
pub struct AttentionLinearOp {
    attention: CausalAttentionOp,
    qkv: Mutex<Option<Vec<f32>>>,
}

impl AttentionLinearOp {
    pub fn new(attention: CausalAttentionOp) -> Self {
        Self {
            attention,
            qkv: Mutex::new(None),
        }
    }

    /// (rows, d, t), checking that `w` is `(width, d)` and the rows make whole sequences.
    fn dims(&self, x: &[usize], w: &[usize]) -> candle_core::Result<(usize, usize, usize)> {
        let (rows, d, o) = LinearOp::dims(x, w)?;
        let t = self.attention.seq_len(&[rows, o])?;
        Ok((rows, d, t))
    }
}

impl CustomOp2 for AttentionLinearOp {
    fn name(&self) -> &'static str {
        "train-attention-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, "attention input")?;
        let w = f32_slice(ws, wl, "q/k/v weight")?;
        let (rows, d, t) = self.dims(xl.dims(), wl.dims())?;
        let qkv = linear_rows(x, w, rows, d, self.attention.width());
        let out = self.attention.forward_rows(&qkv, t);
        *self.qkv.lock().unwrap_or_else(|p| p.into_inner()) = Some(qkv);
        let a = &self.attention;
        Ok((
            CpuStorage::F32(out),
            Shape::from((rows, a.heads * a.head_dim)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        o: &Tensor,
        d_o: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, d, t) = self.dims(x.dims(), w.dims())?;
        let width = self.attention.width();
        let kept = self.qkv.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (dx, dw) = with_f32(x, |x| {
            with_f32(w, |w| {
                with_f32(o, |o| {
                    with_f32(d_o, |d_o| {
                        // Kept from the forward; recomputed if this backward runs a second time.
                        let qkv = kept.unwrap_or_else(|| linear_rows(x, w, rows, d, width));
                        let dqkv = self.attention.backward_rows(&qkv, o, d_o, t);
                        linear_rows_backward(x, w, &dqkv, rows, d, width)
                    })
                })
            })
        })????;
        Ok((
            Some(cpu_tensor(dx, x.dims())?),
            Some(cpu_tensor(dw, w.dims())?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Unembedding + cross-entropy

/// Rows of the unembedding computed at once: `LOSS_CHUNK x vocab` logits exist at a time.
const LOSS_CHUNK: usize = 256;

/// Mean cross-entropy of `x (N, d) W^T` against `targets` (N), without the `(N, vocab)` logits:
/// the forward walks the rows in chunks and, since the loss is a scalar, computes the gradients
/// of `x` and `W` on the way (a second pass would recompute the logits). The backward scales
/// them by the incoming gradient. One op instance serves one forward and one backward.
pub struct LinearCrossEntropyOp {
    targets: Vec<u32>,
    grads: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl LinearCrossEntropyOp {
    pub fn new(targets: Vec<u32>) -> Self {
        Self {
            targets,
            grads: Mutex::new(None),
        }
    }
}

/// Per-row loss and gradient of the logits in place: `row` holds logits on entry and
/// `(softmax - onehot(target)) * inv_n` on exit; returns `logsumexp - logit[target]`.
fn softmax_xent_row(row: &mut [f32], target: usize, inv_n: f32) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let shifted_target = row[target] - max;
    let sum = exp_shifted_sum(row, max);
    // -log p_t = log(sum) - (logit_t - max)
    let loss = sum.ln() - shifted_target;
    let scale = inv_n / sum;
    row.iter_mut().for_each(|v| *v *= scale);
    row[target] -= inv_n;
    loss
}

impl CustomOp2 for LinearCrossEntropyOp {
    fn name(&self) -> &'static str {
        "train-linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "cross-entropy input")?;
        let w = f32_slice(s2, l2, "unembedding")?;
        let (&[n, d], &[vocab, wd]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!(
                "linear cross-entropy: input {:?} and weight {:?} must be 2-d",
                l1.dims(),
                l2.dims()
            )
        };
        if wd != d || self.targets.len() != n || n == 0 {
            candle_core::bail!(
                "linear cross-entropy: input {:?}, weight {:?}, {} targets",
                l1.dims(),
                l2.dims(),
                self.targets.len()
            );
        }
        if let Some(bad) = self.targets.iter().find(|&&t| t as usize >= vocab) {
            candle_core::bail!(
                "linear cross-entropy: target {bad} outside the vocabulary of {vocab}"
            );
        }
        let inv_n = 1.0 / n as f32;
        let mut dx = vec![0f32; n * d];
        let mut dw = vec![0f32; vocab * d];
        let mut logits = vec![0f32; LOSS_CHUNK.min(n) * vocab];
        let wv = View::rows(w, vocab, d);
        let mut loss = 0f64;
        for r0 in (0..n).step_by(LOSS_CHUNK) {
            let rows = LOSS_CHUNK.min(n - r0);
            let xb = View::rows(&x[r0 * d..(r0 + rows) * d], rows, d);
            matmul(&mut logits, vocab, xb, wv.t(), 1.0, false, threads());
            let targets = &self.targets[r0..r0 + rows];
            loss += logits[..rows * vocab]
                .par_chunks_mut(vocab)
                .zip(targets.par_iter())
                .map(|(row, &t)| f64::from(softmax_xent_row(row, t as usize, inv_n)))
                .sum::<f64>();
            let gb = View::rows(&logits[..rows * vocab], rows, vocab);
            matmul(&mut dx[r0 * d..], d, gb, wv, 1.0, false, threads());
            matmul(&mut dw, d, gb.t(), xb, 1.0, true, threads());
        }
        *self
            .grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("cross-entropy gradients poisoned".into()))? =
            Some((dx, dw));
        Ok((
            CpuStorage::F32(vec![(loss * f64::from(inv_n)) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let taken = self
            .grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("cross-entropy gradients poisoned".into()))?
            .take();
        let Some((mut dx, mut dw)) = taken else {
            candle_core::bail!("linear cross-entropy: backward without a forward, or twice")
        };
        if g != 1.0 {
            dx.iter_mut().for_each(|v| *v *= g);
            dw.iter_mut().for_each(|v| *v *= g);
        }
        Ok((
            Some(cpu_tensor(dx, x.dims())?),
            Some(cpu_tensor(dw, w.dims())?),
        ))
    }
}

/// Mean cross-entropy of `x (N, d) W^T` against `targets (N)` (u32) through [`LinearCrossEntropyOp`].
pub fn linear_cross_entropy(
    x: &Tensor,
    w: &Tensor,
    targets: &Tensor,
) -> candle_core::Result<Tensor> {
    let targets = targets.flatten_all()?.to_vec1::<u32>()?;
    x.contiguous()?
        .apply_op2(&w.contiguous()?, LinearCrossEntropyOp::new(targets))
}

/// Whether tensors on `device` in `dtype` can take these kernels.
pub fn supported(device: &Device, dtype: candle_core::DType) -> bool {
    device.is_cpu() && dtype == candle_core::DType::F32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_fast_is_within_3e7_of_exp() {
        let (mut worst, mut at) = (0f64, 0f32);
        for i in -86_999..=87_999 {
            let x = i as f32 * 1e-3;
            let want = f64::from(x).exp();
            let err = (f64::from(exp_fast(x)) - want).abs() / want;
            if err > worst {
                (worst, at) = (err, x);
            }
        }
        assert!(worst < 3e-7, "relative error {worst} at {at}");
        assert_eq!(exp_fast(0.0), 1.0);
        assert!(
            exp_fast(-1000.0) > 0.0 && exp_fast(1000.0).is_finite(),
            "clamped"
        );
    }

    #[test]
    fn exp_shifted_sum_is_bit_identical_on_every_path() {
        // Lengths around the 16-lane chunks, values across exp_fast's range and its clamps.
        for len in [0, 1, 15, 16, 17, 33, 4096 + 5] {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 2001) as f32 * 0.05 - 60.0)
                .collect();
            let (mut a, mut b) = (row.clone(), row.clone());
            let (sa, sb) = (
                exp_shifted_sum(&mut a, 30.0),
                exp_shifted_sum_portable(&mut b, 30.0),
            );
            assert_eq!(sa.to_bits(), sb.to_bits(), "sum, length {len}");
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "values, length {len}"
            );
        }
    }

    #[test]
    fn swiglu_is_bit_identical_on_every_path() {
        for len in [0, 1, 15, 16, 17, 40, 1409] {
            let v = |k: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| ((i * 7919 + k) % 2003) as f32 * 0.01 - 10.0)
                    .collect()
            };
            let (g, u, dy) = (v(1), v(2), v(3));
            let (mut a, mut b) = (vec![0f32; len], vec![0f32; len]);
            swiglu_forward(&mut a, &g, &u);
            swiglu_forward_portable(&mut b, &g, &u);
            let same =
                |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same(&a, &b), "forward, length {len}");
            let (mut dga, mut dua, mut dgb, mut dub) = (
                vec![0f32; len],
                vec![0f32; len],
                vec![0f32; len],
                vec![0f32; len],
            );
            swiglu_backward(&mut dga, &mut dua, &g, &u, &dy);
            swiglu_backward_portable(&mut dgb, &mut dub, &g, &u, &dy);
            assert!(
                same(&dga, &dgb) && same(&dua, &dub),
                "backward, length {len}"
            );
        }
    }

    #[test]
    fn exp_shifted_sum_table() {
        let mut row: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        let want: f32 = row.iter().map(|v| (v - 3.6).exp()).sum();
        let sum = exp_shifted_sum(&mut row, 3.6);
        assert!((sum - want).abs() < 1e-5 * want, "{sum} vs {want}");
        assert!((row[36] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn causal_softmax_rows_table() {
        // Two rows starting at row 1: row 0 sees 2 keys, row 1 sees 3.
        let mut s = vec![0.0, 0.0, 5.0, 1.0f32.ln(), 2.0f32.ln(), 1.0f32.ln()];
        causal_softmax_rows(&mut s, 2, 3, 1);
        let want = [0.5, 0.5, 0.0, 0.25, 0.5, 0.25];
        for (a, b) in s.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{s:?}");
        }
    }

    #[test]
    fn softmax_xent_row_table() {
        let mut row = vec![0.0f32; 4];
        let loss = softmax_xent_row(&mut row, 2, 0.5);
        assert!((loss - 4f32.ln()).abs() < 1e-6);
        assert_eq!(row, vec![0.125, 0.125, 0.125 - 0.5, 0.125]);
    }

    #[test]
    fn matmul_strided_and_accumulating() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0f32]; // 2x3
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0f32]; // 3x2
        let mut c = vec![0f32; 4];
        matmul(
            &mut c,
            2,
            View::rows(&a, 2, 3),
            View::rows(&b, 3, 2),
            1.0,
            false,
            Parallelism::None,
        );
        assert_eq!(c, vec![4.0, 5.0, 10.0, 11.0]);
        // c += 2 * a a^T
        matmul(
            &mut c,
            2,
            View::rows(&a, 2, 3),
            View::rows(&a, 2, 3).t(),
            2.0,
            true,
            Parallelism::None,
        );
        assert_eq!(c, vec![4.0 + 28.0, 5.0 + 64.0, 10.0 + 64.0, 11.0 + 154.0]);
    }
    /// The threaded path (slabs along rows or columns, strided operands, accumulate or not, into
    /// a wider destination and into fresh memory) equals a plain triple loop.
    #[test]
    fn split_matmul_equals_the_naive_product() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        // (m, k, n): taller than wide, wider than tall; each over the threading threshold.
        for (m, k, n) in [(300usize, 64usize, 70usize), (70, 80, 257)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
            // b stored transposed (n x k), read through a strided view.
            let bt: Vec<f32> = (0..n * k).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
            let naive =
                |i: usize, j: usize| (0..k).map(|p| a[i * k + p] * bt[j * k + p]).sum::<f32>();
            let (av, bv) = (View::rows(&a, m, k), View::rows(&bt, n, k).t());
            let ld = n + 3;
            let mut dst = vec![1f32; m * ld];
            let fresh = pool.install(|| {
                matmul(&mut dst, ld, av, bv, 0.5, true, Parallelism::Rayon(3));
                product(av, bv, 1.0, Parallelism::Rayon(3))
            });
            for i in 0..m {
                for j in 0..ld {
                    let want = if j < n { 1.0 + 0.5 * naive(i, j) } else { 1.0 };
                    assert_eq!(
                        dst[i * ld + j],
                        want,
                        "({m}, {k}, {n}) accumulated at ({i}, {j})"
                    );
                }
                for j in 0..n {
                    assert_eq!(
                        fresh[i * n + j],
                        naive(i, j),
                        "({m}, {k}, {n}) fresh at ({i}, {j})"
                    );
                }
            }
        }
    }

    /// A single row or column (gemm's vector paths) and an empty inner size, into fresh memory.
    #[test]
    fn product_of_vectors_and_empty_inner_size() {
        let a: Vec<f32> = (0..12).map(|i| i as f32 - 4.0).collect();
        // (1 x 12) (12 x 1), (12 x 1) (1 x 12) through transposed views, and (3 x 0) (0 x 4).
        assert_eq!(
            product(
                View::rows(&a, 1, 12),
                View::rows(&a, 12, 1),
                1.0,
                Parallelism::None
            ),
            vec![a.iter().map(|v| v * v).sum::<f32>()]
        );
        let outer = product(
            View::rows(&a, 1, 12).t(),
            View::rows(&a, 1, 12),
            2.0,
            Parallelism::None,
        );
        for i in 0..12 {
            for j in 0..12 {
                assert_eq!(outer[i * 12 + j], 2.0 * a[i] * a[j]);
            }
        }
        assert_eq!(
            product(
                View::rows(&[], 3, 0),
                View::rows(&[], 0, 4),
                1.0,
                Parallelism::None
            ),
            vec![0.0; 12]
        );
    }
}
