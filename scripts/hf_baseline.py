#!/usr/bin/env python3
"""PyTorch baseline for `foresight bench-gpu`: Hugging Face transformers on the same GPU, on the
configuration Foresight measured (read from its JSON report), so the figures stand side by side.

The HF model is the plain next-token twin of Foresight's plain path: LlamaForCausalLM with the
report's trunk + head-1 layers (`num_hidden_layers`), random weights, bf16, batch 1. Measured:
  - prefill tokens/s (one forward over the prompt, KV cache on);
  - decode ms/token with `generate` (greedy): (t(N new) - t(1 new)) / (N - 1);
  - completion latency: `generate` of the report's completion length after its prompt;
  - training tokens/s and peak memory (torch.cuda.max_memory_allocated): AdamW, f32 master weights,
    bf16 autocast, next-token loss (HF has no extra heads; Foresight trains n heads).
Attention implementations: "eager" (PyTorch eager, the issue's baseline) and "sdpa".

usage: hf_baseline.py --report bench_gpu.json --out hf_baseline.json [--target 1b] [--attn eager,sdpa]
Logs go to stderr; the JSON goes to --out.
"""
import argparse
import json
import statistics
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def hf_config(cfg, attn):
    return LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-5), rope_theta=cfg.get("rope_theta", 10000.0),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        tie_word_embeddings=cfg.get("tie_word_embeddings", False), bos_token_id=1, eos_token_id=2,
        attn_implementation=attn)


DEVICE = "cuda"


def sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeats):
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def tokens(n, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (1, n), generator=g).to(DEVICE)


def generate(model, ids, n):
    # eos_token_id=None: never stop early, exactly n tokens
    return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)


def bench(cfg, args, attn, report_args):
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf_config(cfg, attn)).to(device=DEVICE, dtype=torch.bfloat16).eval()
    vocab = cfg["vocab_size"]
    row = {"attn_implementation": attn, "parameters": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        row["prefill"] = []
        for n in report_args["prefill"]:
            ids = tokens(n, vocab, 1)
            ms = timed(lambda: model(ids, use_cache=True), args.repeats)
            row["prefill"].append({"tokens": n, "ms": ms, "tokens_per_s": n / (ms / 1e3)})
            log(f"[{attn}] prefill {n}: {ms:.1f} ms")
        prompt = tokens(report_args["prompt_tokens"], vocab, 2)
        n = report_args["new_tokens"]
        t_n = timed(lambda: generate(model, prompt, n), args.repeats)
        t_1 = timed(lambda: generate(model, prompt, 1), args.repeats)
        row["decode"] = {"prompt_tokens": prompt.shape[1], "tokens": n, "ms_per_token": (t_n - t_1) / (n - 1)}
        log(f"[{attn}] decode {row['decode']['ms_per_token']:.2f} ms/token")
        m = report_args["completion_tokens"]
        row["completion"] = {"prompt_tokens": prompt.shape[1], "new_tokens": m,
                             "latency_ms": timed(lambda: generate(model, prompt, m), args.repeats)}
        log(f"[{attn}] completion {row['completion']['latency_ms']:.1f} ms")
    del model
    if DEVICE.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def bench_train(cfg, args, attn):
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf_config(cfg, attn)).to(device=DEVICE, dtype=torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.randint(3, cfg["vocab_size"], (args.train_batch, args.train_seq + 1), device=DEVICE)
    cuda = DEVICE.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast(DEVICE.split(":")[0], dtype=torch.bfloat16):
            loss = model(ids[:, :-1], labels=ids[:, :-1]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms = timed(step, args.train_steps)
    row = {"attn_implementation": attn, "seq": args.train_seq, "batch": args.train_batch, "steps": args.train_steps,
           "ms_per_step": ms, "tokens_per_s": args.train_seq * args.train_batch / (ms / 1e3),
           "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
           "note": "next-token loss only (n=1)"}
    log(f"[{attn}] train {row['tokens_per_s']:.0f} tok/s, peak {row['peak_memory_bytes']} bytes")
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", required=True, help="foresight bench-gpu JSON (for the config and lengths)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--target", default="1b")
    ap.add_argument("--attn", default="eager,sdpa")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--completion-tokens", type=int, default=64)
    ap.add_argument("--prefill", default="512,2048")
    ap.add_argument("--train-seq", type=int, default=1024)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--device", default="cuda", help="cuda (the baseline) or cpu (a smoke run of this script)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    report = json.load(open(args.report))
    target = next((t for t in report["targets"] if t["name"] == args.target), None)
    if target is None or not target.get("config"):
        sys.exit(f"hf_baseline: no target {args.target!r} with a config in {args.report}")
    cfg = target["config"]
    lengths = {"prefill": [int(x) for x in args.prefill.split(",") if x], "prompt_tokens": args.prompt_tokens,
               "new_tokens": args.new_tokens, "completion_tokens": args.completion_tokens}
    out = {"target": args.target, "torch": torch.__version__,
           "device": torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else DEVICE,
           "config": cfg, "lengths": lengths, "runs": [], "train": None}
    import transformers
    out["transformers"] = transformers.__version__
    for attn in [a for a in args.attn.split(",") if a]:
        out["runs"].append(bench(cfg, args, attn, lengths))
        json.dump(out, open(args.out, "w"), indent=2)
    if args.train_steps > 0:
        out["train"] = bench_train(cfg, args, args.attn.split(",")[0])
    json.dump(out, open(args.out, "w"), indent=2)


if __name__ == "__main__":
    main()
