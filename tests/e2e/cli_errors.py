#!/usr/bin/python3
"""The command line a new user meets, without training anything: global options before or
after the subcommand, one short line (exit 2) for a bad value or an unknown command, and help
text without CLI11's internals."""
import json
import os
import subprocess
import sys
import tempfile

MOE = sys.argv[1]


def run(*args):
    return subprocess.run([MOE, *args], capture_output=True, text=True)


def one_line_error(args, *expected, width=160):
    """`moe args` exits 2 with exactly one short line on stderr, holding every expected part."""
    r = run(*args)
    lines = r.stderr.splitlines()
    assert r.returncode == 2, f"{args}: exit {r.returncode}, stderr {r.stderr!r}"
    assert len(lines) == 1, f"{args}: {len(lines)} lines: {r.stderr!r}"
    assert len(lines[0]) <= width, f"{args}: {len(lines[0])} characters: {lines[0]!r}"
    assert lines[0].startswith("moe: error: "), lines[0]
    for part in expected:
        assert part in lines[0], f"{args}: {part!r} not in {lines[0]!r}"
    print(f"ok: moe {' '.join(args)}  ->  {lines[0]}")


def main():
    # --threads before and after the subcommand (and a nested one).
    for args in (["--threads", "1", "params", "--preset", "default"],
                 ["params", "--threads", "1", "--preset", "default"],
                 ["params", "--preset", "default", "--threads", "1"]):
        r = run(*args)
        assert r.returncode == 0, f"{args}: exit {r.returncode}, {r.stderr!r}"
        assert "total parameters" in r.stdout, r.stdout
    print("ok: --threads before and after the subcommand")

    # Zero or negative counts: the option and its range, in one line.
    one_line_error(["--threads", "0", "params"], "--threads must be in [1, 4096], got 0")
    one_line_error(["params", "--threads", "-2"], "--threads must be in [1, 4096], got -2")
    one_line_error(["bench", "layer", "--tokens", "0"], "--tokens must be in [1, 1048576], got 0")
    one_line_error(["bench", "layer", "--threads", "0"], "--threads")
    one_line_error(["train", "--threads", "0"], "--threads must be in [1, 4096], got 0")
    one_line_error(["bench", "train", "--steps", "0"], "--steps must be in [1, 1048576], got 0")
    one_line_error(["bench", "train", "--batch-size", "-1"], "--batch-size", "got -1")
    one_line_error(["bench", "train", "--seq-len", "1"], "--seq-len must be in [2, 1048576]")
    one_line_error(["params", "--context", "0"], "--context", "got 0")
    one_line_error(["generate", "-m", ".", "-p", "x", "-n", "0"], "--max-tokens", "got 0")
    # CLI::PositiveNumber's range (DBL_MIN to DBL_MAX) reads as "positive", whoever uses it.
    one_line_error(["train", "--steps", "0"], "--steps", "got 0")
    one_line_error(["train", "--batch-size", "-3"], "--batch-size", "got -3")
    one_line_error(["params", "--context", "abc"], "--context")

    # Unknown or missing commands list the valid ones.
    one_line_error(["frobnicate"], "unknown command 'frobnicate'",
                   "bench, params, train, generate")
    one_line_error(["--threads", "2", "frobnicate"], "unknown command 'frobnicate'")
    one_line_error([], "a command is required", "bench, params, train, generate")
    one_line_error(["bench", "frob"], "unknown command 'frob' for 'moe bench'", "layer, train")
    one_line_error(["bench"], "a command is required for 'moe bench'", "layer, train")
    one_line_error(["params", "--no-such-option"], "unknown option '--no-such-option'")

    # One plain style per class of error. A typo gets the nearest option, wherever it stands.
    one_line_error(["train", "--stepz", "3"], "unknown option '--stepz' (did you mean '--steps'?)")
    one_line_error(["--bogus", "train"], "unknown option '--bogus'")
    one_line_error(["--bogus"], "unknown option '--bogus'")
    # A value of the wrong kind names the option and what it takes.
    one_line_error(["train", "--steps", "1e3"], "--steps must be an integer, got '1e3'")
    one_line_error(["generate", "-m", ".", "-p", "x", "--temperature", "warm"],
                   "--temperature must be in [0, 100], got warm")
    # Numbers as a person writes them, never std::to_string's -1.000000.
    one_line_error(["train", "--min-lr", "-1"], "got -1")
    r = run("train", "--min-lr", "-1")
    assert "-1.000000" not in r.stderr, r.stderr
    # No library's own text: nlohmann's "[json.exception...]" tags, sentencepiece's source lines.
    with tempfile.TemporaryDirectory() as work:
        bad = os.path.join(work, "bad.json")
        with open(bad, "w") as f:
            f.write("{bad")
        # (The parser's own account of the syntax error is worth its length.)
        one_line_error(["train", "--config", bad], "is not valid JSON", "line 1, column 2",
                       width=240)
        r = run("train", "--config", bad)
        assert "json.exception" not in r.stderr, r.stderr
        # An empty folder: one message, whichever command reads it.
        empty = os.path.join(work, "empty")
        os.makedirs(empty)
        for args in (["generate", "-m", empty, "-p", "x"], ["logits", "-m", empty, "--ids", "1", "-o", "-"],
                     ["eval", "-m", empty], ["report", "-m", empty, "--out", os.path.join(work, "r.html")],
                     ["export", "-m", empty, "--out", os.path.join(work, "hf")]):
            one_line_error(args, f"'{empty}' is not a", "folder (no config.json): give a folder that "
                           "moe train wrote")
        # A Hugging Face config.json (as `moe export` writes it, which generate reads) is a
        # model config for params and bench train too.
        hf_config = os.path.join(work, "config.json")
        config = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                  "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4,
                  "num_experts_per_tok": 2, "vocab_size": 300, "max_position_embeddings": 64,
                  "rms_norm_eps": 1e-5, "rope_theta": 1e6, "hidden_act": "silu",
                  "tie_word_embeddings": False}
        with open(hf_config, "w") as f:
            json.dump(config, f)
        r = run("params", "--config", hf_config, "--batch-size", "2", "--seq-len", "8")
        assert r.returncode == 0 and "total parameters" in r.stdout, r.stderr
        assert "training memory" in r.stdout, r.stdout
        r = run("bench", "train", "--config", hf_config, "--steps", "1", "--batch-size", "1",
                "--seq-len", "8")
        assert r.returncode == 0, r.stderr
    print("ok: one style per class of error")

    # --version names the build.
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("moe "), r.stdout

    # Help: no flag defaults in braces, no "(default: default)".
    for args in (["--help"], ["bench", "train", "--help"], ["bench", "layer", "--help"],
                 ["params", "--help"], ["generate", "--help"]):
        r = run(*args)
        assert r.returncode == 0, f"{args}: exit {r.returncode}"
        for bad in ("{false}", "{true}", "(default: default)"):
            assert bad not in r.stdout, f"{args}: {bad!r} in help:\n{r.stdout}"
        # Every command's help names --threads (taken everywhere) and has examples.
        assert "--threads" in r.stdout, f"{args}: no --threads in help"
        if args != ["--help"]:
            assert "Examples:" in r.stdout, f"{args}: no examples in help"
    r = run("generate", "--help")
    for flag in ("-m,--model", "-p,--prompt", "-n,--max-tokens", "--stop"):
        assert flag in r.stdout, f"{flag} not in generate's help:\n{r.stdout}"
    print("ok: help text")


if __name__ == "__main__":
    main()
