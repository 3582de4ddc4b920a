#!/usr/bin/python3
"""`moe generate` end to end on a tiny model trained here from a plain-text corpus (a file of
documents separated by blank lines, cut from the shipped corpus): short flags, --prompt -
from standard input, --stop, the line at the context length, prefill and decode speeds, and
--verbose on a sequence-routed model (one route per layer once the prefix is covered)."""
import json
import os
import re
import subprocess
import sys
import tempfile

import shipped_corpus  # beside this file

MOE, SRC = sys.argv[1], sys.argv[2]
SPEED = re.compile(r"^prefill: (\d+) tokens, [0-9.]+ tokens/s; decode: (\d+) tokens, "
                   r"[0-9.]+ tokens/s$")


def run(*args, stdin=None, check=True):
    r = subprocess.run([MOE, *args], capture_output=True, text=True, input=stdin)
    if check:
        assert r.returncode == 0, f"moe {' '.join(args)}: exit {r.returncode}\n{r.stderr}"
    return r


def speeds(stderr):
    """(prompt tokens, generated tokens) from the one speed line, which ends stderr."""
    lines = stderr.splitlines()
    m = SPEED.match(lines[-1]) if lines else None
    assert m, f"no speed line at the end of stderr: {stderr!r}"
    return int(m.group(1)), int(m.group(2))


def main():
    with tempfile.TemporaryDirectory() as work:
        check_generate(work)


def check_generate(work):
    corpus = os.path.join(work, "manpages.txt")
    shipped_corpus.write_plain_text(SRC, corpus, 40)
    model = os.path.join(work, "run")
    run("train", "--out", model, "--config", os.path.join(SRC, "tests/cases/tiny_model.json"),
        "--corpus", corpus, "--steps", "20", "--batch-size", "4", "--seq-len", "16",
        "--eval-every", "20", "--warmup", "2", "--quiet", "--no-sample")
    context = 32  # tiny_model.json's max_position_embeddings

    # A seed whose 20 tokens hold no end-of-text, so there is text enough to cut with --stop.
    for seed in range(50):
        # One thread count throughout, so that every run draws the same tokens.
        sampling = ["--temperature", "0.8", "--seed", str(seed), "--threads", "1"]
        full = run("generate", "-m", model, "-p", "NAME", "-n", "20", *sampling)
        prompt_tokens, generated_tokens = speeds(full.stderr)
        if generated_tokens == 20 and len(full.stdout) >= len("NAME") + 8:
            break
    assert generated_tokens == 20, "every seed drew end-of-text early"
    assert full.stdout.startswith("NAME"), full.stdout
    long_flags = run("generate", "--model", model, "--prompt", "NAME", "--max-tokens", "20",
                     *sampling)
    assert long_flags.stdout == full.stdout, (long_flags.stdout, full.stdout)
    print(f"ok: short flags; {full.stderr.splitlines()[-1]}")

    # --prompt - reads standard input (its final newline dropped); --threads before the command.
    piped = run("--threads", "1", "generate", "-m", model, "-p", "-", "-n", "20", *sampling[:4],
                stdin="NAME\n")
    assert piped.stdout == full.stdout, (piped.stdout, full.stdout)
    assert speeds(piped.stderr)[0] == prompt_tokens
    print("ok: --prompt - reads standard input")

    # --stop: the output ends just before the first occurrence in the generated text, and
    # generation stops there (fewer tokens drawn).
    generated = full.stdout[len("NAME"):-1]  # print() adds the final newline
    stop = generated[3:5]
    cut = run("generate", "-m", model, "-p", "NAME", "-n", "20", "--stop", stop, *sampling)
    expected = "NAME" + generated[:generated.find(stop)] + "\n"
    assert cut.stdout == expected, (cut.stdout, expected, stop)
    assert speeds(cut.stderr)[1] < generated_tokens, cut.stderr
    # A stop text that never comes changes nothing; one inside the prompt does not count.
    absent = run("generate", "-m", model, "-p", "NAME", "-n", "20", "--stop", "\x01", *sampling)
    assert absent.stdout == full.stdout
    in_prompt = run("generate", "-m", model, "-p", "NAME", "-n", "20", "--stop", "AM", *sampling)
    if "AM" not in generated:
        assert in_prompt.stdout == full.stdout
    print(f"ok: --stop {stop!r}")

    # The context: a line on stderr when generation stops there (sampled runs, so that one
    # of the seeds goes on to the end of the context instead of drawing end-of-text).
    hit = False
    for seed in range(20):
        r = run("generate", "-m", model, "-p", "NAME", "-n", "500", "--temperature", "1",
                "--seed", str(seed))
        p, n = speeds(r.stderr)
        stopped = f"moe: stopped at the model's context length ({context} tokens)" in r.stderr
        assert stopped == (p + n > context), (p, n, r.stderr)
        hit |= stopped
        if hit:
            break
    assert hit, "no seed reached the context length"
    print("ok: the context-length line")
    r = run("generate", "-m", model, "-p", "word " * 60, check=False)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "more than the context of 32" in r.stderr, r.stderr
    print("ok: a prompt longer than the context is one error line")

    # --verbose with sequence routing: once the prompt has covered the route prefix, every
    # decoded token of a layer uses the same k experts, so exactly k distinct ones appear.
    with open(os.path.join(SRC, "tests/cases/tiny_model.json")) as f:
        config = json.load(f)
    config["moe"].update({"routing_level": "sequence", "route_prefix": 2, "capacity_factor": 0})
    config_path = os.path.join(work, "sequence.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    seq_model = os.path.join(work, "sequence_run")
    run("train", "--out", seq_model, "--config", config_path, "--corpus", corpus, "--steps", "10",
        "--batch-size", "4", "--seq-len", "16", "--eval-every", "10", "--warmup", "2", "--quiet",
        "--no-sample")
    r = run("generate", "-m", seq_model, "-p", "NAME ls lists files", "-n", "12", "-v",
            "--temperature", "1", "--seed", "3")
    layers = [line for line in r.stderr.splitlines() if line.startswith("layer ")]
    assert layers, r.stderr
    k = config["moe"]["top_k"]
    for line in layers:
        assert f": {k} distinct experts used" in line, line
    print(f"ok: --verbose, sequence routing keeps {k} experts per layer: {layers[0]}")


if __name__ == "__main__":
    main()
