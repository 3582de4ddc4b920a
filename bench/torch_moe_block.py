#!/usr/bin/python3
"""PyTorch baseline for `moe bench layer`: a Hugging Face-style MixtralSparseMoeBlock (router
Linear, softmax, top-k, renormalise, per-expert index_add) and a DeepSeek-like block with 64
fine-grained experts and a shared expert, on the same shapes and thread count.

Run PyTorch at its best: glibc's default malloc makes its backward mostly page faults, so:
  MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 \
  MALLOC_TOP_PAD_=268435456 /usr/bin/python3 bench/torch_moe_block.py --threads 2
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Expert(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.w1 = nn.Linear(d, f, bias=False)
        self.w3 = nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoeBlock(nn.Module):
    """Hugging Face's Mixtral block; `sigmoid` and `shared` turn it DeepSeek-like."""

    def __init__(self, d, f, e, k, sigmoid=False, shared=0):
        super().__init__()
        self.k, self.e, self.sigmoid = k, e, sigmoid
        self.gate = nn.Linear(d, e, bias=False)
        self.experts = nn.ModuleList(Expert(d, f) for _ in range(e))
        self.shared = Expert(d, shared) if shared else None

    def forward(self, x):
        logits = self.gate(x)
        scores = torch.sigmoid(logits) if self.sigmoid else F.softmax(logits, dim=-1, dtype=torch.float)
        weights, selected = torch.topk(scores, self.k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        mask = F.one_hot(selected, num_classes=self.e).permute(2, 1, 0)
        for e in range(self.e):
            idx, top = torch.where(mask[e])
            if top.numel() == 0:
                continue
            out.index_add_(0, top, self.experts[e](x[top]) * weights[top, idx, None])
        if self.shared is not None:
            out = out + self.shared(x)
        # Switch balancing loss, as ours computes.
        f = F.one_hot(selected, self.e).sum((0, 1)).float() / (x.shape[0] * self.k)
        probs = scores / scores.sum(-1, keepdim=True)
        aux = 0.01 * self.e * (f * probs.mean(0)).sum()
        return out, aux


def timed(fn, min_seconds):
    fn()
    samples, start = [], time.perf_counter()
    while len(samples) < 3 or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, nargs="+", default=[16, 256, 2048, 8192])
    ap.add_argument("--min-seconds", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm = 2 * 2048 ** 3 / timed(lambda: torch.mm(a, b), args.min_seconds) / 1e9
    cases = {"mixtral": dict(d=512, f=1408, e=8, k=2),
             "deepseek": dict(d=512, f=176, e=64, k=6, sigmoid=True, shared=352)}
    rows = []
    for name, kw in cases.items():
        block = SparseMoeBlock(**kw)
        dense = Expert(kw["d"], kw["k"] * kw["f"] + kw.get("shared", 0))
        active = kw["k"] * kw["f"] + kw.get("shared", 0)
        for T in args.tokens:
            # The input needs its gradient, as inside a model (and as ours computes): without
            # it autograd skips dx = dh W for every expert, a third of the backward's FLOPs.
            x = torch.randn(T, kw["d"], requires_grad=True)
            dy = torch.randn(T, kw["d"])

            def fwd():
                with torch.no_grad():
                    block(x)

            def fwdbwd(module=block):
                module.zero_grad(set_to_none=True)
                x.grad = None
                out = module(x)
                if isinstance(out, tuple):
                    (out[0] * dy).sum().add(out[1]).backward()
                else:
                    (out * dy).sum().backward()

            t_fwd = timed(fwd, args.min_seconds)
            t_fb = timed(fwdbwd, args.min_seconds)
            t_dense = timed(lambda: fwdbwd(dense), args.min_seconds)
            flops = 3 * (6 * kw["d"] * active + 2 * kw["d"] * kw["e"]) * T
            rows.append({"case": name, "tokens": T, "threads": args.threads,
                         "fwd_tokens_per_s": T / t_fwd, "fwdbwd_tokens_per_s": T / t_fb,
                         "dense_ratio_fwdbwd": t_fb / t_dense,
                         "gflops_fwdbwd": flops / t_fb / 1e9, "mm_gflops": mm})
            r = rows[-1]
            print(f"torch {name:9s} T={T:5d} fwd {r['fwd_tokens_per_s']:9.0f} tok/s  "
                  f"fwd+bwd {r['fwdbwd_tokens_per_s']:8.0f} tok/s  dense x{r['dense_ratio_fwdbwd']:.2f}  "
                  f"{r['gflops_fwdbwd']:.1f} GFLOP/s (mm {mm:.0f})", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
