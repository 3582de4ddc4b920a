#!/usr/bin/env python3
"""`moe bench serve --json` on the small random Mixtral: one row per client count with its
figures present and sane (every timed token counted, rows per step at most the clients,
distinct experts at most the experts, a positive bound), and bad options refused in one line."""
import json
import subprocess
import sys

MOE = sys.argv[1]

r = subprocess.run([MOE, "bench", "serve", "--random", "mixtral-d512", "--n-prompt", "8",
                    "--n-gen", "4", "--clients", "1,2", "--requests-per-client", "1", "--json"],
                   capture_output=True, text=True)
assert r.returncode == 0, r.stderr
j = json.loads(r.stdout)
assert j["model"] == "mixtral-d512" and j["dtype"] == "bf16", j
assert j["num_experts"] == 8 and j["top_k"] == 2 and j["moe_layers"] == 8, j
assert j["read_bandwidth_gbs"] == max(j["read_bandwidth_probes_gbs"]) > 0, j
assert j["single_token_bound_tokens_per_s"] > 0 and "system" in j, j
assert [row["clients"] for row in j["rows"]] == [1, 2], j["rows"]
for row in j["rows"]:
    clients = row["clients"]
    assert row["requests"] == clients and row["output_tokens"] == clients * 1 * 4, row
    # The first token of a request comes from its prefill, the other three from decode steps.
    assert row["decode_rows"] == clients * 3, row
    assert 1 <= row["rows_per_step"] <= clients, row
    assert 2 <= row["distinct_experts_per_layer"] <= j["num_experts"], row
    for key in ["tokens_per_s", "decode_tokens_per_s", "bound_tokens_per_s", "share_of_bound",
                "time_per_token_p50_ms", "time_per_token_p99_ms", "first_token_p50_ms",
                "weight_bytes_per_step", "kv_bytes_per_step", "speedup_over_one_client"]:
        assert isinstance(row[key], (int, float)) and row[key] > 0, (key, row)
    assert row["time_per_token_p50_ms"] <= row["time_per_token_p99_ms"], row
    bound = row["rows_per_step"] * j["read_bandwidth_gbs"] * 1e9 / (
        row["weight_bytes_per_step"] + row["kv_bytes_per_step"])
    assert abs(row["bound_tokens_per_s"] - bound) < 1e-6 * bound, (bound, row)
one = j["rows"][0]
assert one["rows_per_step"] == 1 and one["speedup_over_one_client"] == 1, one
# One row per step reads what one token reads: the single-token bound, but for the keys and
# values (the single token's are counted at the mean position).
assert abs(one["bound_speedup_over_one_token"] - 1) < 0.05, one

for args, says in [(["--clients", "0"], "--clients"), (["--n-gen", "1"], "--n-gen"),
                   (["--model", "/nonexistent"], "--model"),
                   (["--random", "mixtral-d512", "--n-prompt", "4000", "--n-gen", "200"],
                    "context")]:
    r = subprocess.run([MOE, "bench", "serve", *args], capture_output=True, text=True)
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
        (args, r.returncode, r.stderr)
print("PASS")
