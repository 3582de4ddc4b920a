#!/usr/bin/python3
"""`moe generate` end to end on a tiny model trained here from a plain-text corpus (a file of
documents separated by blank lines, cut from the shipped corpus): short flags, --prompt -
from standard input, --stop, the line at the context length, prefill and decode speeds, and
--verbose on a sequence-routed model (one route per layer once the prefix is covered)."""
import json
import os
import re
import shutil
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
    assert "more than the model's context of 32" in r.stderr, r.stderr
    assert r.stdout == "", f"a refused prompt printed {r.stdout!r}"
    print("ok: a prompt longer than the context is one error line, nothing on stdout")

    check_prompt_and_seed(work, model)
    check_logits_and_tokenize(work, model)
    check_default_warmup(work, corpus)

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


def check_prompt_and_seed(work, model):
    # -f FILE: the prompt from a file (its last newline is not part of it), as -p gives it.
    prompt_file = os.path.join(work, "prompt.txt")
    with open(prompt_file, "w") as f:
        f.write("NAME\n")
    fixed = ["-n", "8", "--seed", "5", "--threads", "1"]
    assert run("generate", "-m", model, "-f", prompt_file, *fixed).stdout == \
        run("generate", "-m", model, "-p", "NAME", *fixed).stdout
    print("ok: -f FILE reads the prompt from a file")

    # Text that is not UTF-8 is refused, naming the byte, with nothing on stdout.
    r = subprocess.run([MOE, "generate", "-m", model, "-p", b"abc\xff\xfe"], capture_output=True)
    assert r.returncode == 2 and r.stdout == b"", (r.returncode, r.stdout)
    assert b"not UTF-8 text (byte 3 is 0xff)" in r.stderr, r.stderr
    print("ok: a prompt that is not UTF-8 is refused")

    # --seed: -1 and the default draw a random seed (printed with -v); a fixed one repeats; one
    # beyond 64 bits is refused.
    samples = set()
    for _ in range(3):
        r = run("generate", "-m", model, "-p", "NAME", "-n", "12", "--temperature", "1.5", "-v")
        seeds = [line for line in r.stderr.splitlines() if line.startswith("seed: ")]
        assert len(seeds) == 1, r.stderr
        samples.add(r.stdout)
    assert len(samples) > 1, "the default seed gave the same sample three times"
    for bad in ("99999999999999999999999", "-2", "x"):
        r = run("generate", "-m", model, "-p", "NAME", "--seed", bad, check=False)
        assert r.returncode == 2 and "--seed must be -1 (random) or an integer" in r.stderr, r.stderr
    print("ok: --seed -1 (the default) is random, and a seed beyond 64 bits is refused")

    # Inference needs the model, config and tokenizer only: no optimizer state.
    slim = os.path.join(work, "slim")
    shutil.copytree(model, slim)
    os.remove(os.path.join(slim, "optimizer.safetensors"))
    assert run("generate", "-m", slim, "-p", "NAME", *fixed).stdout == \
        run("generate", "-m", model, "-p", "NAME", *fixed).stdout
    print("ok: a run folder without optimizer.safetensors generates")

    # A tokenizer file that is not one: the reason in words, not sentencepiece's source lines.
    with open(os.path.join(slim, "tokenizer.model"), "wb") as f:
        f.write(b"garbage")
    r = run("generate", "-m", slim, "-p", "NAME", check=False)
    assert r.returncode == 2 and "is not a sentencepiece model" in r.stderr, r.stderr
    assert ".cc(" not in r.stderr and "Internal" not in r.stderr, r.stderr


def check_logits_and_tokenize(work, model):
    # tokenize: ids and pieces; --ids-only is what logits --ids takes; logits -p gives the same.
    r = run("tokenize", "-m", model, "-p", "NAME ls")
    lines = r.stdout.splitlines()
    assert lines and all(re.match(r'^ *\d+ ".*"$', line) for line in lines), r.stdout
    ids = run("tokenize", "-m", model, "-p", "NAME ls", "--ids-only").stdout.strip()
    assert ids == ",".join(line.split()[0] for line in lines), (ids, lines)
    as_json = json.loads(run("tokenize", "-m", model, "-p", "NAME ls", "--json").stdout)
    assert ",".join(map(str, as_json["ids"])) == ids and len(as_json["pieces"]) == len(lines)
    by_ids = os.path.join(work, "ids.f32")
    run("logits", "-m", model, "--ids", ids, "-o", by_ids)
    # -o - writes the floats to standard output, and no file named "-".
    r = subprocess.run([MOE, "logits", "-m", model, "-p", "NAME ls", "-o", "-"], capture_output=True,
                       cwd=work)
    assert r.returncode == 0, r.stderr
    with open(by_ids, "rb") as f:
        assert r.stdout == f.read(), "logits -p TEXT -o - differ from logits --ids"
    assert not os.path.exists(os.path.join(work, "-"))
    print(f"ok: tokenize ({len(lines)} tokens) and logits -p / --ids / -o -")


def check_default_warmup(work, corpus):
    # A short run's default warm-up shrinks to a tenth of it, with no warning; an explicit
    # warm-up as long as the run is warned about, once every check has passed.
    short = os.path.join(work, "short")
    tiny = os.path.join(SRC, "tests/cases/tiny_model.json")
    common = ["--config", tiny, "--corpus", corpus, "--steps", "20", "--batch-size", "2",
              "--seq-len", "16", "--eval-every", "20", "--quiet", "--no-sample"]
    r = run("train", "--out", short, *common)
    assert "warm-up" not in r.stderr, r.stderr
    with open(os.path.join(short, "trainer_state.json")) as f:
        assert json.load(f)["options"]["warmup"] == 2
    r = run("train", "--out", os.path.join(work, "long_warmup"), "--warmup", "20", *common)
    assert "warning: the warm-up (20 steps) is not shorter than the run" in r.stderr, r.stderr
    r = run("train", "--out", os.path.join(work, "refused"), "--warmup", "20", *common,
            "--seq-len", "4096", check=False)
    assert r.returncode == 2 and "warm-up" not in r.stderr, r.stderr
    print("ok: the default warm-up of a short run, and the warning for an explicit one")


if __name__ == "__main__":
    main()
