#!/usr/bin/env python3
"""PyTorch reference for `foresight bench train`: training throughput of an MTP model shaped like
Foresight's default model (d = 256 * SCALE, SwiGLU 704 * SCALE, 4 * SCALE attention heads of 64,
vocab 4096, sequences of 512, batch 4; a trunk of L layers and n head layers, one transformer layer
each, a shared final norm and unembedding), losses in the paper's memory-efficient order (trunk
forward once, each head's forward and backward in turn, one trunk backward), eager mode, f32, AdamW,
on random tokens. The same shapes as `foresight bench train`.

Usage: torch_train_reference.py HEADS TRUNK_LAYERS STEPS THREADS [SCALE]
Prints one line: `tokens_per_s=<float> ms_per_step=<float> params=<int>` (stdout); nothing else.
"""
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def main():
    n, trunk_layers, steps, threads = (int(a) for a in sys.argv[1:5])
    scale = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    d, ff, n_attn, vocab, seq, batch = 256 * scale, 704 * scale, 4 * scale, 4096, 512, 4

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn_norm, self.mlp_norm = nn.RMSNorm(d), nn.RMSNorm(d)
            self.qkv = nn.Linear(d, 3 * d, bias=False)
            self.out = nn.Linear(d, d, bias=False)
            self.gate_up = nn.Linear(d, 2 * ff, bias=False)
            self.down = nn.Linear(ff, d, bias=False)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, n_attn, d // n_attn).transpose(1, 3).unbind(2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
            x = x + self.out(a)
            gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, -1)
            return x + self.down(F.silu(gate) * up)

    embed = nn.Embedding(vocab, d)
    trunk = nn.ModuleList(Layer() for _ in range(trunk_layers))
    heads = nn.ModuleList(Layer() for _ in range(n))
    norm, unembed = nn.RMSNorm(d), nn.Linear(d, vocab, bias=False)
    params = [p for m in (embed, trunk, heads, norm, unembed) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    data = torch.randint(0, vocab, (batch, seq + n))

    def step():
        h = embed(data[:, :seq])
        for layer in trunk:
            h = layer(h)
        z = h.detach().requires_grad_()
        for i, head in enumerate(heads):
            logits = unembed(norm(head(z)))
            F.cross_entropy(logits.view(-1, vocab), data[:, i + 1:seq + i + 1].reshape(-1)).backward()
        h.backward(z.grad)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    print(f"tokens_per_s={batch * seq / dt:.1f} ms_per_step={dt * 1000:.1f} params={sum(p.numel() for p in params)}")


if __name__ == "__main__":
    main()
