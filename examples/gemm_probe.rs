//! Times f32 matmul on the training step's shapes: candle's `Tensor::matmul` (a new output
//! tensor each call) beside the `gemm` crate called into a reused buffer, as the training kernels
//! call it. Compare with `scripts/torch_matmul_probe.py` (PyTorch/MKL). Not a test.
//! Run: `cargo run --release --example gemm_probe`
use candle_core::{Device, Tensor};
use gemm::Parallelism;
use std::time::Instant;

/// Best mean seconds per call of `f` over 5 rounds of 20 calls (after 3 warm-up calls).
fn best_of(mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..20 {
                f();
            }
            t.elapsed().as_secs_f64() / 20.0
        })
        .fold(f64::MAX, f64::min)
}

fn main() -> candle_core::Result<()> {
    let threads = match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    };
    for (name, m, k, n) in [
        ("qkv", 2048usize, 256usize, 768usize),
        ("out", 2048, 256, 256),
        ("gate-up", 2048, 256, 1408),
        ("down", 2048, 704, 256),
        ("unembed", 2048, 256, 4096),
        ("dW qkv", 768, 2048, 256),
        ("dW down", 256, 2048, 704),
        ("dX gate-up", 2048, 1408, 256),
    ] {
        let a = Tensor::randn(0f32, 1., (m, k), &Device::Cpu)?;
        let b = Tensor::randn(0f32, 1., (k, n), &Device::Cpu)?;
        let candle = best_of(|| {
            std::hint::black_box(a.matmul(&b).unwrap());
        });
        let (av, bv) = (
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?,
        );
        let mut c = vec![0f32; m * n];
        let direct = best_of(|| unsafe {
            // SAFETY: `c` is m x n row-major, `av` m x k, `bv` k x n; no overlap.
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                av.as_ptr(),
                1,
                k as isize,
                bv.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                threads,
            )
        });
        let gmac = |s: f64| (m * k * n) as f64 / s / 1e9;
        println!(
            "{name:10} {m}x{k}x{n}: candle matmul {:.3} ms ({:.0} GMAC/s), gemm into a reused buffer {:.3} ms ({:.0} GMAC/s)",
            candle * 1e3,
            gmac(candle),
            direct * 1e3,
            gmac(direct)
        );
    }
    Ok(())
}
