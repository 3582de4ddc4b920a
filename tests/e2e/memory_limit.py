#!/usr/bin/python3
"""The memory check before `moe train`, under a real limit: the process's address space
(`ulimit -v`, RLIMIT_AS) set to 1 GiB in the child.

1. A batch far too large is refused within seconds, in one line with the figure, the memory
   available and the largest batch that fits (exit 2), before anything is written: no run
   folder, no cache folder.
2. A run at that largest batch does run to its end under the same limit, and its peak RSS
   stays below the estimate that `moe params --batch-size B --seq-len S` prints.
3. `moe params` under the limit says the refused batch does not fit.
Not run in sanitizer builds (their shadow memory does not fit under an address-space limit)."""
import gzip
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

LIMIT = 1 << 30


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def run_limited(args):
    """Runs `args` under the limit; returns (exit code, stderr, peak RSS in bytes, seconds)."""
    start = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=limit_memory)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.stderr.close()
    return os.waitstatus_to_exitcode(status), err, usage.ru_maxrss * 1024, time.monotonic() - start


def main():
    moe, src = sys.argv[1], sys.argv[2]
    work = tempfile.mkdtemp()
    corpus = os.path.join(work, "corpus.jsonl.gz")
    with gzip.open(os.path.join(src, "data", "corpus.jsonl.gz"), "rt") as f:
        lines = [next(f) for _ in range(24)]
    with gzip.open(corpus, "wt") as f:
        f.writelines(lines)
    config = os.path.join(src, "tests", "cases", "tiny_model.json")
    out, cache = os.path.join(work, "run"), os.path.join(work, "cache")
    common = ["--config", config, "--corpus", corpus, "--cache-dir", cache, "--seq-len", "16",
              "--steps", "1", "--eval-batches", "1", "--quiet", "--no-sample"]

    # 1. Refused at once, nothing written.
    rc, err, _, seconds = run_limited([moe, "--threads", "1", "train", "--out", out,
                                       "--batch-size", "100000"] + common)
    errors = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert rc == 2, f"exit {rc}: {err!r}"
    assert len(errors) == 1, err
    line = errors[0]
    assert line.startswith("moe: error: out of memory: training at --batch-size 100000 x "
                           "--seq-len 16 needs "), line
    assert "(ulimit -v) is available" in line, line
    assert seconds < 10, f"the refusal took {seconds:.1f} s"
    assert not os.path.exists(out), "the refusal left a run folder"
    assert not os.path.exists(cache), "the refusal made the cache folder"
    fits = int(re.search(r"--batch-size (\d+) fits", line).group(1))
    print(f"refused in {seconds:.2f} s: {line}")

    # 2. The largest batch said to fit runs under the same limit, below its estimate.
    rc, err, peak, seconds = run_limited([moe, "--threads", "1", "train", "--out", out,
                                          "--batch-size", str(fits)] + common)
    assert rc == 0, f"--batch-size {fits} under the limit: exit {rc}: {err[-2000:]}"
    params = subprocess.run([moe, "--threads", "1", "params", "--config", config,
                             "--batch-size", str(fits), "--seq-len", "16", "--json"],
                            capture_output=True, text=True, check=True)
    estimate = json.loads(params.stdout)["training_memory"]["bytes"]
    assert peak <= estimate, f"peak RSS {peak} above the estimate {estimate}"
    assert peak >= estimate // 2, f"peak RSS {peak} far below the estimate {estimate}"
    print(f"--batch-size {fits} ran under the limit in {seconds:.1f} s: peak RSS "
          f"{peak / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB "
          f"({estimate / peak:.2f}x)")

    # 3. moe params under the limit agrees with the refusal.
    r = subprocess.run([moe, "--threads", "1", "params", "--config", config, "--batch-size",
                        "100000", "--seq-len", "16", "--json"],
                       capture_output=True, text=True, preexec_fn=limit_memory, check=True)
    memory = json.loads(r.stdout)["training_memory"]
    assert memory["fits"] is False and memory["limited_by"] == "ulimit -v", memory

    # 4. Inference: the random Mixtral-shaped model made in memory in fp32 (2.5 GiB of
    #    weights) is refused before it is made; with its experts in a file it would run.
    rc, err, _, seconds = run_limited([moe, "--threads", "1", "bench", "decode", "--random",
                                       "mixtral-d1024", "--dtype", "f32", "--n-prompt", "2",
                                       "--n-gen", "2"])
    assert rc == 2 and err.startswith("moe: error: out of memory: bench decode --random"), err
    assert "--expert-cache N" in err and seconds < 10, (err, seconds)
    print(f"bench decode refused in {seconds:.2f} s: {err.strip()}")

    # 5. bench layer: a row too large is refused before any row is measured; a small one runs.
    rc, err, _, seconds = run_limited([moe, "--threads", "1", "bench", "layer", "--tokens", "64",
                                       "1048576"])
    assert rc == 2 and "out of memory: bench layer --case mixtral at 1048576 tokens" in err, err
    assert seconds < 10, seconds
    rc, err, _, _ = run_limited([moe, "--threads", "1", "bench", "layer", "--case", "mixtral",
                                 "--tokens", "64", "--min-seconds", "0.01"])
    assert rc == 0, err
    print(f"bench layer refused in {seconds:.2f} s, and a small row ran under the limit")
    print("ok")


if __name__ == "__main__":
    main()
