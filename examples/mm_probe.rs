//! Times the small-chunk matmul kernel on weights that do not fit in L2 (many copies), f32 vs bf16.
//! Not a test. Run: `RAYON_NUM_THREADS=1 cargo run --release --example mm_probe`
use foresight::model::cpu_kernels::{small_matmul, Weights};
use std::time::Instant;

fn main() {
    for (n, k, copies) in [
        (4096usize, 256usize, 8usize),
        (704, 256, 40),
        (256, 704, 40),
    ] {
        let ws: Vec<Vec<f32>> = (0..copies)
            .map(|c| (0..n * k).map(|i| ((i + c) % 13) as f32 * 0.25).collect())
            .collect();
        let ws16: Vec<Vec<half::bf16>> = ws
            .iter()
            .map(|w| w.iter().map(|v| half::bf16::from_f32(*v)).collect())
            .collect();
        for rows in [1usize, 4] {
            let x: Vec<f32> = (0..rows * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let mut best = [f64::MAX; 2];
            for _round in 0..5 {
                for (v, b) in best.iter_mut().enumerate() {
                    let iters = 400;
                    let t = Instant::now();
                    for it in 0..iters {
                        let w = if v == 0 {
                            Weights::F32(&ws[it % copies])
                        } else {
                            Weights::Bf16(&ws16[it % copies])
                        };
                        std::hint::black_box(small_matmul(&x, rows, k, w, n));
                    }
                    *b = b.min(t.elapsed().as_secs_f64() / iters as f64);
                }
            }
            let gmac = |dt: f64| (n * k * rows) as f64 / dt / 1e9;
            println!(
                "n{n} k{k} rows{rows}: f32 {:.1} us ({:.2} GMAC/s), bf16 {:.1} us ({:.2} GMAC/s)",
                best[0] * 1e6,
                gmac(best[0]),
                best[1] * 1e6,
                gmac(best[1])
            );
        }
    }
}
