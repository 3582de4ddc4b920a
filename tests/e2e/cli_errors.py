#!/usr/bin/python3
"""The command line a new user meets, without training anything: global options before or
after the subcommand, one short line (exit 2) for a bad value or an unknown command, and help
text without CLI11's internals."""
import subprocess
import sys

MOE = sys.argv[1]


def run(*args):
    return subprocess.run([MOE, *args], capture_output=True, text=True)


def one_line_error(args, *expected):
    """`moe args` exits 2 with exactly one short line on stderr, holding every expected part."""
    r = run(*args)
    lines = r.stderr.splitlines()
    assert r.returncode == 2, f"{args}: exit {r.returncode}, stderr {r.stderr!r}"
    assert len(lines) == 1, f"{args}: {len(lines)} lines: {r.stderr!r}"
    assert len(lines[0]) <= 160, f"{args}: {len(lines[0])} characters: {lines[0]!r}"
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
    one_line_error(["params", "--no-such-option"], "--no-such-option")

    # Help: no flag defaults in braces, no "(default: default)".
    for args in (["--help"], ["bench", "train", "--help"], ["bench", "layer", "--help"],
                 ["params", "--help"], ["generate", "--help"]):
        r = run(*args)
        assert r.returncode == 0, f"{args}: exit {r.returncode}"
        for bad in ("{false}", "{true}", "(default: default)"):
            assert bad not in r.stdout, f"{args}: {bad!r} in help:\n{r.stdout}"
    r = run("generate", "--help")
    for flag in ("-m,--model", "-p,--prompt", "-n,--max-tokens", "--stop"):
        assert flag in r.stdout, f"{flag} not in generate's help:\n{r.stdout}"
    print("ok: help text")


if __name__ == "__main__":
    main()
