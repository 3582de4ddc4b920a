#!/usr/bin/python3
"""PyTorch baseline for `moe bench train`: training steps (forward, backward, gradient
clipping, AdamW) of the PyTorch reference model of the tests (tests/reference/
model_reference.py: Hugging Face-style per-expert loops) on the same config, batch and
threads, with random tokens. Prints tokens/s and peak RSS as JSON.

Run it at its best, with glibc's allocator kept from returning memory to the kernel:
  MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 \\
  MALLOC_TOP_PAD_=268435456 /usr/bin/python3 bench/torch_train.py --config configs/default.json
"""
import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
from model_reference import make_weights, model_forward  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs",
                                                     "default.json"))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    with open(args.config) as f:
        cfg = json.load(f)
    p = make_weights(cfg)
    params = [v.requires_grad_(True) for n, v in p.items()
              if not n.endswith("e_score_correction_bias")]
    decay = [v for n, v in p.items() if "norm" not in n and v.requires_grad]
    plain = [v for n, v in p.items() if "norm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": plain, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.95))
    B, S, V = args.batch_size, args.seq_len, cfg["vocab_size"]

    def step():
        tokens = torch.randint(0, V, (B, S))
        targets = torch.randint(0, V, (B, S))
        opt.zero_grad(set_to_none=True)
        _, ce, router = model_forward(cfg, p, tokens, targets, True)
        (ce + router).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "torch", "torch_version": torch.__version__, "batch_size": B,
                      "seq_len": S, "threads": args.threads, "step_seconds_median": median,
                      "tokens_per_s": B * S / median, "peak_rss_mib": peak_mib}))


if __name__ == "__main__":
    main()
