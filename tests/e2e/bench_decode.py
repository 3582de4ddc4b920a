#!/usr/bin/env python3
"""`moe bench decode --json` on a tiny Hugging Face folder, with and without the expert cache:
every field is there and sane; the bytes a decode step reads are the model's active weights.
Then on a run of `moe train` (fp32), as stored and rounded to bf16 (in memory, and into a
scratch file for the expert cache)."""
import json
import os
import subprocess
import sys
import tempfile

import shipped_corpus

MOE, CASES, SRC = sys.argv[1], sys.argv[2], sys.argv[3]


def bench(*args):
    r = subprocess.run([MOE, "bench", "decode", "--n-prompt", "8", "--n-gen", "4", "--json", *args],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


for case, dtype in [("mixtral_bf16_sharded", "bf16"), ("olmoe_f32", "f32")]:
    j = bench("--model", f"{CASES}/{case}")
    for key in ["prefill_tokens_per_s", "decode_tokens_per_s", "read_bandwidth_gbs",
                "bandwidth_share", "weight_bytes_per_token", "kv_bytes_per_token"]:
        assert isinstance(j[key], (int, float)) and j[key] > 0, (case, key, j[key])
    assert j["dtype"] == dtype, j
    # The share divides by the larger of two bandwidth probes (before prefill, after decode).
    probes = j["read_bandwidth_probes_gbs"]
    assert len(probes) == 2 and j["read_bandwidth_gbs"] == max(probes) > 0, j
    share = j["weight_bytes_per_token"] * j["decode_tokens_per_s"] / (max(probes) * 1e9)
    assert abs(j["bandwidth_share"] - share) < 1e-9 * share, (share, j)
    assert "expert_cache" not in j
    cached = bench("--model", f"{CASES}/{case}", "--expert-cache", "1", "--cache-policy", "lfu",
                   "--prefetch")
    c = cached["expert_cache"]
    assert c["experts_per_layer"] == 1 and c["policy"] == "lfu" and c["prefetch"] is True, c
    assert 0 <= c["hit_rate"] <= 1 and c["storage_bytes_per_token"] > 0, c
    # The cache changes where experts come from, not what a step reads from RAM; prefetch adds
    # the next layer's router, read once more to guess its experts.
    plain = bench("--model", f"{CASES}/{case}", "--expert-cache", "2")
    assert plain["weight_bytes_per_token"] == j["weight_bytes_per_token"], (plain, j)
    assert j["weight_bytes_per_token"] < cached["weight_bytes_per_token"] < \
        1.05 * j["weight_bytes_per_token"], (cached, j)

# ggml's block formats: a random model's matrices as q8_0 are read at 34 bytes per 32 values
# (fp32: 128), the routers staying fp32; a GGUF file as llama.cpp quantized it runs as stored.
f32 = bench("--random", "mixtral-d512", "--dtype", "f32")
q8 = bench("--random", "mixtral-d512", "--dtype", "q8_0")
assert q8["dtype"] == "q8_0", q8
assert 0.26 < q8["weight_bytes_per_token"] / f32["weight_bytes_per_token"] < 0.275, (q8, f32)
gguf = bench("--model", f"{CASES}/../gguf_models/olmoe-q4_k_m.gguf")
assert gguf["dtype"] == "q4_K" and gguf["decode_tokens_per_s"] > 0, gguf
for args, says in [(["--random", "mixtral-d512", "--dtype", "q4_k"], "not a whole number of q4_K"),
                   (["--model", f"{CASES}/mixtral_f32", "--dtype", "q8_0"], "quantizes --random")]:
    r = subprocess.run([MOE, "bench", "decode", *args], capture_output=True, text=True)
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
        r.stderr

r = subprocess.run([MOE, "bench", "decode", "--model", f"{CASES}/../bpe"], capture_output=True,
                   text=True)
assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
assert "not a model folder" in r.stderr, r.stderr
print("PASS")

# A trained run through the same engine: fp32 as stored; --dtype bf16 halves each step's bytes
# but the routers' (kept fp32), the same with the expert cache reading a bf16 scratch file.
with tempfile.TemporaryDirectory() as work:
    corpus, model = os.path.join(work, "corpus.txt"), os.path.join(work, "run")
    shipped_corpus.write_plain_text(SRC, corpus, 40)
    r = subprocess.run([MOE, "train", "--out", model, "--config",
                        os.path.join(SRC, "tests/cases/tiny_model.json"), "--corpus", corpus,
                        "--steps", "4", "--batch-size", "4", "--seq-len", "16", "--warmup", "2",
                        "--quiet", "--no-sample"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    f32 = bench("--model", model)
    bf16 = bench("--model", model, "--dtype", "bf16")
    assert f32["dtype"] == "f32" and bf16["dtype"] == "bf16", (f32, bf16)
    assert 0.5 * f32["weight_bytes_per_token"] < bf16["weight_bytes_per_token"] < \
        0.6 * f32["weight_bytes_per_token"], (f32, bf16)
    scratch = os.path.join(work, "scratch")
    cached = bench("--model", model, "--dtype", "bf16", "--expert-cache", "1", "--scratch", scratch)
    assert cached["dtype"] == "bf16" and cached["expert_cache"]["storage_bytes_per_token"] > 0, cached
    assert os.path.exists(os.path.join(scratch, "model-bf16.safetensors"))
