#!/usr/bin/env python3
"""`moe bench decode --json` on a tiny Hugging Face folder, with and without the expert cache:
every field is there and sane; the bytes a decode step reads are the model's active weights."""
import json
import subprocess
import sys

MOE, CASES = sys.argv[1], sys.argv[2]


def bench(*args):
    r = subprocess.run([MOE, "bench", "decode", "--prompt", "8", "--tokens", "4", "--json", *args],
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

r = subprocess.run([MOE, "bench", "decode", "--model", f"{CASES}/../bpe"], capture_output=True,
                   text=True)
assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
assert "not a model folder" in r.stderr, r.stderr
print("PASS")
