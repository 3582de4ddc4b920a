#!/usr/bin/python3
"""`moe bench layer --json` prints one JSON array with the fields the MoE-layer issue names,
for every case and token count asked, each figure positive and consistent with the others."""
import json
import math
import subprocess
import sys

REQUIRED = ["case", "tokens", "fwd_tokens_per_s", "fwdbwd_tokens_per_s", "dense_ratio_fwdbwd",
            "gflops_fwdbwd", "sgemm_gflops", "memory_limit_fwdbwd_tokens_per_s"]


def main():
    moe = sys.argv[1]
    out = subprocess.run([moe, "bench", "layer", "--json", "--case", "mixtral", "deepseek",
                          "--tokens", "16", "40", "--min-seconds", "0.001"],
                         check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    assert [(r["case"], r["tokens"]) for r in rows] == [
        ("mixtral", 16), ("mixtral", 40), ("deepseek", 16), ("deepseek", 40)], rows
    for r in rows:
        missing = [k for k in REQUIRED if k not in r]
        assert not missing, f"missing {missing} in {r}"
        for k in REQUIRED[2:]:
            assert math.isfinite(r[k]) and r[k] > 0, f"{k} = {r[k]} in {r}"
        ratio = r["dense_fwdbwd_tokens_per_s"] / r["fwdbwd_tokens_per_s"]
        assert math.isclose(r["dense_ratio_fwdbwd"], ratio, rel_tol=1e-9), r
    print(f"ok: {len(rows)} rows")


if __name__ == "__main__":
    main()
