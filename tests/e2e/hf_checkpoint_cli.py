#!/usr/bin/python3
"""`moe logits` and `moe generate` on the Hugging Face checkpoint folders that
tests/reference/hf_reference.py --make built: the logits file holds the last position's
vocab_size float32 values and matches the reference within 1e-4 + 1e-4 |ref|; bad input (an id
outside the vocabulary, an unknown model_type, a tokenizer.json-only folder, no tokenizer, an
export of a folder that already is one) exits 2 with one line naming it."""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

MOE, CASES = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import hf_reference  # noqa: E402  (the reference's own safetensors reader and case list)


def run(*args):
    return subprocess.run([MOE, *args], capture_output=True, text=True)


def one_line_error(args, *expected):
    r = run(*args)
    lines = r.stderr.splitlines()
    assert r.returncode == 2, f"{args}: exit {r.returncode}, stderr {r.stderr!r}"
    assert len(lines) == 1 and lines[0].startswith("moe: error: "), f"{args}: {r.stderr!r}"
    for part in expected:
        assert part in lines[0], f"{args}: {part!r} not in {lines[0]!r}"
    print(f"ok: refused: {lines[0]}")


def check_dumps(work):
    """`moe logits --dump all` against the PyTorch reference's intermediates under the same
    names, for the fp32 folder of each architecture: every tensor within 1e-4 + 1e-4 |ref|, the
    experts each token chose exactly."""
    import torch
    for case in ("mixtral_f32", "qwen2_moe_f32", "olmoe_f32"):
        folder = os.path.join(CASES, case)
        tokens = hf_reference.PROMPT
        with torch.no_grad():
            hf_reference.INTERMEDIATES.clear()
            hf_reference.forward(folder, tokens)
        want = dict(hf_reference.INTERMEDIATES)
        dump = os.path.join(work, case + ".dump.safetensors")
        r = run("logits", "-m", folder, "--ids", ",".join(map(str, tokens)), "--dump", "all",
                "--dump-out", dump, "-o", os.path.join(work, case + ".dump.bin"))
        assert r.returncode == 0, f"{case}: {r.stderr}"
        got = hf_reference.read_safetensors(dump)
        assert set(got) == set(want), f"{case}: names {sorted(set(got) ^ set(want))} differ"
        for name, ref in want.items():
            mine = got[name]
            assert list(mine.shape) == list(ref.shape), f"{case} {name}: {mine.shape} vs {ref.shape}"
            if name.endswith(".experts"):
                assert torch.equal(mine, ref), f"{case} {name}: {mine.tolist()} vs {ref.tolist()}"
                continue
            worst = ((mine - ref).abs() - 1e-4 * ref.abs()).max().item()
            assert worst <= 1e-4, f"{case} {name}: differs by {worst}"
        print(f"ok: moe logits --dump all on {case}: {len(want)} intermediates match the reference")


def main():
    work = tempfile.mkdtemp()
    try:
        for case in hf_reference.CASES:
            expected = hf_reference.read_safetensors(os.path.join(CASES, case + ".expected.safetensors"))
            tokens = ",".join(str(int(t)) for t in expected["tokens"].tolist())
            want = expected["logits"][-1].tolist()
            out = os.path.join(work, case + ".bin")
            r = run("logits", "--model", os.path.join(CASES, case), "--ids", tokens, "--out", out)
            assert r.returncode == 0, f"{case}: {r.stderr}"
            data = open(out, "rb").read()
            assert len(data) == 4 * len(want), f"{case}: {len(data)} bytes for {len(want)} logits"
            got = struct.unpack(f"<{len(want)}f", data)
            worst = max(abs(g - w) - 1e-4 * abs(w) for g, w in zip(got, want))
            assert worst <= 1e-4, f"{case}: logits differ by {worst}"
            print(f"ok: moe logits {case} matches the reference")

        check_dumps(work)

        folder = os.path.join(CASES, "olmoe_f32")
        one_line_error(["logits", "--model", folder, "--dump", "blk.0.nothing", "--dump-out",
                        os.path.join(work, "d"), "--ids", "3", "--out", os.path.join(work, "x")],
                       "no intermediate 'blk.0.nothing'")
        one_line_error(["logits", "--model", folder, "--ids", "3,97", "--out", os.path.join(work, "x")],
                       "id 97 (position 1) is outside the vocabulary [0, 97)")
        one_line_error(["logits", "--model", folder, "--ids", "-1", "--out", os.path.join(work, "x")],
                       "outside the vocabulary")

        one_line_error(["export", "--model", folder, "--out", os.path.join(work, "again")],
                       "already a Hugging Face checkpoint folder")

        copy = os.path.join(work, "copy")
        shutil.copytree(folder, copy)
        one_line_error(["generate", "--model", copy, "--prompt", "hi"], "no tokenizer.model or tokenizer.json")
        with open(os.path.join(copy, "tokenizer.json"), "w") as f:
            f.write("{}")
        one_line_error(["generate", "--model", copy, "--prompt", "hi"], "tokenizer.json", "model is missing")
        # A folder with only a byte-level BPE tokenizer.json (as Qwen2-MoE and OLMoE ship):
        # the 94 printable ASCII bytes as tokens, no merges, so it fits the model's 97 ids.
        vocab = {chr(c): i for i, c in enumerate(range(ord("!"), ord("~") + 1))}
        with open(os.path.join(copy, "tokenizer.json"), "w") as f:
            json.dump({"model": {"type": "BPE", "vocab": vocab, "merges": []},
                       "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                                         "use_regex": True},
                       "decoder": {"type": "ByteLevel"}, "added_tokens": []}, f)
        r = subprocess.run([MOE, "generate", "--model", copy, "--prompt", "hi!", "-n", "4",
                            "--temperature", "0"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.startswith("hi!"), (r.returncode, r.stdout, r.stderr)
        # Experts read from storage, one per layer in RAM, the next layer's guessed ahead: the
        # same greedy text, and -v names each MoE layer's experts.
        cached = subprocess.run([MOE, "generate", "--model", copy, "--prompt", "hi!", "-n", "4",
                                 "--temperature", "0", "--expert-cache", "1", "--prefetch", "-v"],
                                capture_output=True, text=True)
        assert cached.returncode == 0 and cached.stdout == r.stdout, (cached.stdout, cached.stderr)
        assert "layer 0:" in cached.stderr and "distinct experts used" in cached.stderr, cached.stderr
        with open(os.path.join(copy, "config.json")) as f:
            config = json.load(f)
        config["model_type"] = "deepseek_v3"
        with open(os.path.join(copy, "config.json"), "w") as f:
            json.dump(config, f)
        one_line_error(["logits", "--model", copy, "--ids", "1", "--out", os.path.join(work, "x")],
                       "model_type 'deepseek_v3' is not supported")
    finally:
        shutil.rmtree(work)
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
