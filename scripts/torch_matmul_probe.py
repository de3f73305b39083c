#!/usr/bin/env python3
"""PyTorch's f32 matmul (MKL) on the training step's shapes, beside `cargo run --release --example
gemm_probe`. Not a test. Usage: torch_matmul_probe.py [THREADS] (default 2)."""
import sys
import time

import torch


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    shapes = [("qkv", 2048, 256, 768), ("out", 2048, 256, 256), ("gate-up", 2048, 256, 1408),
              ("down", 2048, 704, 256), ("unembed", 2048, 256, 4096), ("dW qkv", 768, 2048, 256),
              ("dW down", 256, 2048, 704), ("dX gate-up", 2048, 1408, 256)]
    for name, m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        c = torch.empty(m, n)
        for _ in range(3):
            torch.matmul(a, b, out=c)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(20):
                torch.matmul(a, b, out=c)
            best = min(best, (time.perf_counter() - t) / 20)
        print(f"{name:10} {m}x{k}x{n}: torch.matmul(out=) {best * 1e3:.3f} ms ({m * k * n / best / 1e9:.0f} GMAC/s)")


if __name__ == "__main__":
    main()
