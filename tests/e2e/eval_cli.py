#!/usr/bin/python3
"""`moe eval` end to end: a tiny run trained with --keep-checkpoints on three domains of the
shipped corpus, then `moe eval --json` checked field by field against the schema (names, shapes,
ranges and the identities between figures), the human table, --text, --capacity-factor, the
comparison of runs, the eval_capacity_factor warning, and the refusals (one line, exit 2,
nothing written)."""
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

MOE, SRC = sys.argv[1], sys.argv[2]
DOMAINS = ["en", "de", "python"]


def run(*args, check=True):
    r = subprocess.run([MOE, *args, "--threads", "1"], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, f"moe {' '.join(args)}: exit {r.returncode}\n{r.stderr}"
    return r


def listing(folder):
    out = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            out.append((path, os.path.getsize(path), os.path.getmtime(path)))
    return sorted(out)


def refused(words, *args, folder):
    before = listing(folder)
    r = run(*args, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, f"moe {' '.join(args)}: exit {r.returncode}, expected 2\n{r.stderr}"
    assert len(lines) == 1 and words in lines[0], f"expected one line naming '{words}': {r.stderr!r}"
    assert r.stdout == "", f"refusal printed on stdout: {r.stdout!r}"
    assert listing(folder) == before, "a refused eval changed the folder"
    print("refused as expected:", lines[0])


def write_corpus(path):
    """12 documents of each domain, cut to 2500 characters; every 6th is validation."""
    taken = {d: [] for d in DOMAINS}
    with gzip.open(os.path.join(SRC, "data", "corpus.jsonl.gz"), "rt") as f:
        for line in f:
            doc = json.loads(line)
            if doc["domain"] in taken and len(taken[doc["domain"]]) < 12:
                taken[doc["domain"]].append(doc)
    with open(path, "w") as out:
        for d in DOMAINS:
            for i, doc in enumerate(taken[d]):
                doc["text"] = doc["text"][:2500]
                doc["split"] = "valid" if i % 6 == 5 else "train"
                out.write(json.dumps(doc) + "\n")


def train(work, name, *extra, vocab="480"):
    out = os.path.join(work, name)
    run("train", "--out", out, "--config", os.path.join(SRC, "tests/cases/tiny_model.json"),
        "--corpus", os.path.join(work, "corpus.jsonl"), "--batch-size", "4", "--seq-len", "16",
        "--warmup", "1", "--quiet", "--no-sample", "--vocab-size", vocab, *extra)
    return out


def unit(x):
    return isinstance(x, (int, float)) and -1e-9 <= x <= 1 + 1e-9


def check_eval_json(j, model):
    for key in ["model", "source", "loss", "perplexity", "tokens", "capacity_factor",
                "active_params", "total_params", "active_flops_per_token", "layers",
                "saturation", "passages"]:
        assert key in j, f"missing top-level field {key}"
    assert j["model"] == model and j["source"] == "valid"
    assert math.isfinite(j["loss"]) and j["loss"] > 0
    assert abs(j["perplexity"] - math.exp(j["loss"])) < 1e-6 * j["perplexity"]
    assert j["tokens"] > 0
    assert j["capacity_factor"] == 1.25  # tiny_model.json's training factor
    assert 0 < j["active_params"] < j["total_params"]
    assert j["active_flops_per_token"] > 0
    assert len(j["layers"]) == 1, "tiny_model.json has one MoE block"
    E, k = 4, 2
    for layer in j["layers"]:
        assert layer["layer"] == 1 and layer["experts"] == E and layer["k"] == k
        counts = layer["counts"]
        assert len(counts) == E and sum(counts) == j["tokens"] * k, counts
        for key in ["cv", "gini", "entropy", "max_over_mean", "drop_rate", "mean_top1_gate"]:
            assert isinstance(layer[key], (int, float)), key
        assert 0 <= layer["gini"] <= (E - 1) / E + 1e-9 and unit(layer["entropy"])
        assert abs(layer["max_over_mean"] - max(counts) / (sum(counts) / E)) < 1e-9
        assert unit(layer["drop_rate"]) and 0 < layer["mean_top1_gate"] <= 1
        hist = layer["gate_histogram"]
        assert len(hist) == 10 and sum(hist) == j["tokens"]
        assert isinstance(layer["alerts"], list)
        m = layer["domain_matrix"]
        assert m["domains"] == DOMAINS, m["domains"]
        for table in ("top1", "all_k"):
            assert len(m[table]) == len(DOMAINS)
            for row in m[table]:
                assert len(row) == E and abs(sum(row) - 1) < 1e-9
        assert unit(layer["nmi"]["top1"]) and unit(layer["nmi"]["all_k"])
        assert len(layer["top_tokens"]) == E
        for tokens in layer["top_tokens"]:
            assert len(tokens) <= 10
            for t in tokens:
                assert isinstance(t["token"], str) and t["lift"] > 0 and t["count"] >= 10
            assert [t["lift"] for t in tokens] == sorted([t["lift"] for t in tokens], reverse=True)
        assert len(layer["token_classes"]) == E
        for c in layer["token_classes"]:
            assert set(c) == {"letters", "digits", "punctuation", "whitespace", "code_symbols"}
            assert abs(sum(c.values()) - 1) < 1e-9 or sum(c.values()) == 0
        cons = layer["consecutive"]
        assert unit(cons["rate"]) and 1 / E - 1e-9 <= cons["chance"] <= 1 + 1e-9
        assert set(cons["per_domain"]) == set(DOMAINS)
        for v in cons["per_domain"].values():
            assert unit(v["rate"]) and unit(v["chance"])
        noise = layer["noise_agreement"]  # tiny_model.json: noisy top-k with jitter
        assert noise is not None and unit(noise["top1"]) and unit(noise["topk_set"])
    s = j["saturation"]
    assert s["steps"] == [2, 4, 6], s["steps"]
    for layer in s["layers"]:
        assert len(layer["changed_from_previous"]) == 2 and len(layer["same_as_final"]) == 3
        assert all(unit(v) for v in layer["changed_from_previous"] + layer["same_as_final"])
        assert layer["same_as_final"][-1] == 1.0
    assert [p["domain"] for p in j["passages"]] == DOMAINS
    for p in j["passages"]:
        assert 0 < len(p["tokens"]) <= 80 and len(p["top1"]) == len(j["layers"])
        for row in p["top1"]:
            assert len(row) == len(p["tokens"]) and all(0 <= e < E for e in row)


def main():
    with tempfile.TemporaryDirectory() as work:
        write_corpus(os.path.join(work, "corpus.jsonl"))
        a = train(work, "a", "--steps", "6", "--save-every", "2", "--eval-every", "2",
                  "--keep-checkpoints")
        assert sorted(os.listdir(os.path.join(a, "checkpoints"))) == [
            "step-000002", "step-000004", "step-000006"]
        assert sorted(os.listdir(os.path.join(a, "checkpoints", "step-000004"))) == [
            "config.json", "model.safetensors"]

        j = json.loads(run("eval", "--model", a, "--json").stdout)
        check_eval_json(j, a)

        table = run("eval", "--model", a).stdout
        assert "perplexity" in table and "\n    1  |" in table, table
        assert "routing saturation" in table, table
        # FLOPs per token depend on the context: eval counts at the run's, says which, and
        # `moe params` at that context gives the same figure.
        assert f"forward FLOPs per token (at context {j['seq_len']})" in table, table
        params = json.loads(run("params", "--config", os.path.join(a, "config.json"), "--context",
                                str(j["seq_len"]), "--json").stdout)
        assert params["forward_flops_per_token"] == j["active_flops_per_token"], (params, j)

        dropless = json.loads(run("eval", "-m", a, "--json", "--capacity-factor", "0").stdout)
        assert dropless["capacity_factor"] is None
        assert all(l["drop_rate"] == 0 for l in dropless["layers"])
        tight = json.loads(run("eval", "-m", a, "--json", "--capacity-factor", "0.5").stdout)
        assert all(l["drop_rate"] > 0 for l in tight["layers"])
        assert tight["loss"] == dropless["loss"], "the capacity factor changed the eval forward"

        text = os.path.join(work, "notes.txt")
        with open(text, "w") as f:
            f.write("The quick brown fox jumps over the lazy dog.\n\nint main(void) { return 0; }\n")
        t = json.loads(run("eval", "-m", a, "--json", "--text", text).stdout)
        assert t["source"] == text and t["tokens"] > 0 and "domain_matrix" not in t["layers"][0]

        # eval_capacity_factor other than the training one: a warning line, the figures still.
        warned = os.path.join(work, "warned")
        shutil.copytree(a, warned)
        with open(os.path.join(warned, "config.json")) as f:
            config = json.load(f)
        config["moe"]["eval_capacity_factor"] = 2.0
        with open(os.path.join(warned, "config.json"), "w") as f:
            json.dump(config, f)
        r = run("eval", "-m", warned)
        assert r.stderr.startswith("warning:") and "eval_capacity_factor" in r.stderr, r.stderr

        # Comparison: b shares a's corpus and vocabulary (so its tokenizer), trains less.
        b = train(work, "b", "--steps", "2", "--eval-every", "1")
        cmp = json.loads(run("eval", "-m", a, "-m", b, "--json").stdout)
        ra, rb = cmp["runs"]
        for r_ in (ra, rb):
            for key in ["model", "final_val_loss", "active_flops_per_token", "total_params",
                        "training_tokens", "tokens_to_reach", "val_curve"]:
                assert key in r_, key
        assert ra["training_tokens"] == 6 * 4 * 16 and rb["training_tokens"] == 2 * 4 * 16
        reach = ra["tokens_to_reach"][b]
        assert reach is None or 0 < reach <= ra["training_tokens"]
        human = run("eval", "-m", a, "-m", b).stdout
        assert "final valid loss" in human and ("tokens" in human or "not reached" in human)

        # Refusals: one line, exit 2, nothing written.
        empty_run = os.path.join(work, "empty_run")
        os.mkdir(empty_run)
        refused("is not a run folder", "eval", "-m", empty_run, folder=work)
        bad = os.path.join(work, "latin1.txt")
        with open(bad, "wb") as f:
            f.write(b"caf\xe9 au lait\n")
        refused("not UTF-8", "eval", "-m", a, "--text", bad, folder=work)
        blank = os.path.join(work, "blank.txt")
        with open(blank, "w") as f:
            f.write("\n  \n\n")
        refused("is empty", "eval", "-m", a, "--text", blank, folder=work)
        other = train(work, "other", "--steps", "1", vocab="500")
        refused("different tokenizers", "eval", "-m", a, "-m", other, folder=work)
    print("PASS")


if __name__ == "__main__":
    main()
