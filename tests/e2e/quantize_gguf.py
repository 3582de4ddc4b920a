"""`moe quantize` against llama.cpp: every file it writes loads in llama.cpp and runs there as in moe.

Models (built here, in a temporary folder):
  mixtral   the Hugging Face fixture mixtral_f32 (width 32, expert width 24: the K types fall back
            to Q8_0, rows of 24 to F16) with a byte-level tokenizer.json -> llama + gpt2 vocabulary;
  qwen2moe  a random Qwen2-MoE folder (every block sparse, shared expert, q/k/v biases, width 256,
            a vocabulary padded past its tokenizer, Qwen2's pre-tokenizer, a chat template);
  olmoe     a random OLMoE folder (q/k norms, width 256, GPT-2's pre-tokenizer);
  run       a run of `moe train` (width 256, every block MoE, Mixtral's router) -> llama +
            its sentencepiece tokenizer.model;
  requantized  the run's q8_0 file, as `moe quantize` input (its tokenizer metadata copied).
Each is written by `moe quantize` as f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m and q6_k. For
each file, llama.cpp's llama-debug (F32 KV cache, flash attention off) tokenizes a prompt and
gives the last position's logits; `moe logits` on the same file and ids must give them within
1e-5 of the logits' range (test_gguf_model's tolerance: the same blocks, the same activation
quantization), the f16 and bf16 files within 1e-3 and 1e-2 (ggml rounds the activations to
the weights' type there, moe does not), and so the mixtral fixture's quantized files, whose
expert down-projections (rows of 24) fall back to f16, within 1e-2. The f32 file's logits must equal the source model's in moe within 1e-6 of the
range (the same weights; only the q/k rows moved). Then the refusals: an unknown --type, run and
Hugging Face setups llama.cpp cannot run, an --out in a missing folder: exit 2, one line, and no
file left behind. Last, `moe eval --quantize` (the same types, in memory) against the files.

Usage: quantize_gguf.py MOE SOURCE_DIR LLAMA_BIN_DIR HF_FIXTURES_DIR   (/usr/bin/python3: numpy)
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

MOE, SRC, LLAMA_BIN, HF = sys.argv[1:5]
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"]
# ggml's CPU backend rounds the activations to the weights' type before an f16 or bf16 product
# (moe keeps them fp32): 11 and 8 significant bits, so those files agree to about 2^-11 and 2^-8.
TOLERANCE = {"f16": 1e-3, "bf16": 1e-2}
# As test_gguf_model's llama-q6_k and olmoe-q6_k: an activation 1e-7 from a rounding boundary of
# its 8-bit quantization (ggml's SIMD sums in another order than ours) rounds the other way, one
# quantization step apart (measured here: 0.0065 of the range). Held to 1e-2, greedy token equal.
ROUNDING_BOUNDARY = {"qwen2moe-q5_k_m": 1e-2}
PROMPT = "Sparse experts, one token at a time."
# Qwen2's pre-tokenizer regex as its tokenizer.json writes it.
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
          " + '<|im_end|>' + '\\n'}}{% endfor %}")


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, **kw)
    if r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(map(str, cmd))} exited {r.returncode}:\n"
                 f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def write_safetensors(path, tensors):
    tensors = {name: np.ascontiguousarray(t, dtype=np.float32) for name, t in tensors.items()}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for t in tensors.values():
            f.write(t.tobytes())


def byte_level_tokenizer(folder, regex, small=False):
    """GPT-2's 256 byte letters (small: only space, newline and printable ASCII but the
    backquote, no merges), three merges and one special token; regex None: ByteLevel's own GPT-2 split."""
    if small:
        vocab = {ch: i for i, ch in enumerate(["Ġ", "Ċ"] + [chr(c) for c in range(33, 126) if c != 96])}
    else:
        printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
        letters, extra = {}, 0
        for b in range(256):
            if b in printable:
                letters[b] = chr(b)
            else:
                letters[b] = chr(256 + extra)
                extra += 1
        vocab = {letters[b]: b for b in range(256)}
    merges = [] if small else [["Ġ", "t"], ["e", "r"], ["Ġt", "o"]]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    added = [{"id": len(vocab), "content": "<|endoftext|>", "special": True}]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": regex is None}
    pre = byte_level if regex is None else {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}, byte_level]}
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        json.dump({"model": {"type": "BPE", "vocab": vocab, "merges": merges}, "pre_tokenizer": pre,
                   "decoder": {"type": "ByteLevel"}, "added_tokens": added}, f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|endoftext|>", "chat_template": CHATML}, f)
    return len(vocab) + len(added)


def random_hf_folder(folder, kind, rng):
    """A random Qwen2-MoE or OLMoE checkpoint of width 256 in Hugging Face's layout."""
    os.makedirs(folder)
    tokens = byte_level_tokenizer(folder, QWEN2_REGEX if kind == "qwen2_moe" else None)
    V, D, H, F, E, L = tokens + 12, 256, 4, 256, 4, 2  # 12 embedding rows past the tokenizer
    KV, hd = (2 if kind == "qwen2_moe" else H), D // H
    config = {"model_type": kind, "vocab_size": V, "hidden_size": D, "num_attention_heads": H,
              "num_key_value_heads": KV, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
              "rope_theta": 10000.0, "hidden_act": "silu", "rope_scaling": None, "torch_dtype": "float32",
              "num_hidden_layers": L, "num_experts": E, "num_experts_per_tok": 2, "intermediate_size": F,
              "norm_topk_prob": False, "tie_word_embeddings": False}
    if kind == "qwen2_moe":
        config.update({"moe_intermediate_size": F, "shared_expert_intermediate_size": F,
                       "decoder_sparse_step": 1, "mlp_only_layers": [], "use_sliding_window": False,
                       "qkv_bias": True})
    else:
        config.update({"clip_qkv": None, "attention_bias": False})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)

    def matrix(rows, cols, scale=1.0):
        return rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)

    def norm(n):
        return 1.0 + 0.1 * rng.standard_normal(n)

    t = {"model.embed_tokens.weight": matrix(V, D, 16.0), "model.norm.weight": norm(D),
         "lm_head.weight": matrix(V, D, 4.0)}
    for l in range(L):
        p = f"model.layers.{l}."
        t.update({p + "input_layernorm.weight": norm(D), p + "post_attention_layernorm.weight": norm(D),
                  p + "self_attn.q_proj.weight": matrix(H * hd, D), p + "self_attn.k_proj.weight": matrix(KV * hd, D),
                  p + "self_attn.v_proj.weight": matrix(KV * hd, D), p + "self_attn.o_proj.weight": matrix(D, H * hd),
                  p + "mlp.gate.weight": matrix(E, D, 8.0)})
        for e in range(E):
            q = f"{p}mlp.experts.{e}."
            t.update({q + "gate_proj.weight": matrix(F, D), q + "up_proj.weight": matrix(F, D),
                      q + "down_proj.weight": matrix(D, F)})
        if kind == "qwen2_moe":
            for name, n in (("q", H * hd), ("k", KV * hd), ("v", KV * hd)):
                t[f"{p}self_attn.{name}_proj.bias"] = 0.1 * rng.standard_normal(n)
            s = p + "mlp.shared_expert."
            t.update({s + "gate_proj.weight": matrix(F, D), s + "up_proj.weight": matrix(F, D),
                      s + "down_proj.weight": matrix(D, F), p + "mlp.shared_expert_gate.weight": matrix(1, D)})
        else:
            t.update({p + "self_attn.q_norm.weight": norm(D), p + "self_attn.k_norm.weight": norm(D)})
    write_safetensors(os.path.join(folder, "model.safetensors"), t)


def train_run(work, name, config):
    corpus = os.path.join(work, "corpus.jsonl.gz")
    if not os.path.exists(corpus):
        lines = subprocess.run(f"zcat '{SRC}/data/corpus.jsonl.gz' | head -n 60", shell=True,
                               capture_output=True).stdout
        import gzip
        with gzip.open(corpus, "wb") as f:
            f.write(lines)
    path = os.path.join(work, name + ".json")
    with open(path, "w") as f:
        json.dump(config, f)
    out = os.path.join(work, name)
    run([MOE, "train", "--out", out, "--config", path, "--corpus", corpus, "--steps", "2",
         "--batch-size", "2", "--seq-len", "16", "--quiet", "--no-sample",
         "--cache-dir", os.path.join(work, "cache")])
    return out


def read_floats(path):
    return np.fromfile(path, dtype=np.float32)


def llama_cpp_logits(model, work, context):
    """llama-debug's tokens of PROMPT and its last position's logits."""
    out = os.path.join(work, "debug")
    shutil.rmtree(out, ignore_errors=True)
    run([os.path.join(LLAMA_BIN, "llama-debug"), "-m", model, "-p", PROMPT, "-t", "2", "-c", str(context),
         "-ctk", "f32", "-ctv", "f32", "-fa", "off", "--save-logits", "--logits-output-dir", out])
    stem = os.path.join(out, "llamacpp-" + os.path.basename(model)[:-len(".gguf")])
    return np.fromfile(stem + "-tokens.bin", dtype=np.int32), read_floats(stem + ".bin")


def moe_logits(model, ids, work):
    out = os.path.join(work, "moe.logits")
    run([MOE, "logits", "--model", model, "--ids", ",".join(map(str, ids)), "--out", out])
    return read_floats(out)


def check_models(work, models):
    failures = []
    for name, (folder, context) in models.items():
        reference = None
        for t in TYPES:
            gguf = os.path.join(work, f"{name}-{t}.gguf")
            summary = run([MOE, "quantize", "-m", folder, "-o", gguf, "-t", t], text=True).stdout.strip()
            ids, want = llama_cpp_logits(gguf, work, context)
            got = moe_logits(gguf, ids, work)
            assert got.shape == want.shape, (name, t, got.shape, want.shape)
            span = float(want.max() - want.min())
            worst = float(np.abs(got - want).max())
            print(f"{name}-{t}: {len(ids)} tokens, max |moe - llama.cpp| = {worst:.3g} of a range of "
                  f"{span:.3g} ({worst / span:.2g})  [{summary}]")
            tolerance = TOLERANCE.get(t, 1e-5) if name != "mixtral" or t == "f32" else 1e-2
            tolerance = max(tolerance, ROUNDING_BOUNDARY.get(f"{name}-{t}", 0))
            if worst > tolerance * span:
                failures.append(f"{name}-{t}: llama.cpp's logits differ from moe's by {worst / span:.2g} of the range")
            if int(np.argmax(got)) != int(np.argmax(want)):
                failures.append(f"{name}-{t}: llama.cpp's greedy token differs from moe's")
            if t == "f32" and not folder.endswith(".gguf"):
                reference = (ids, moe_logits(folder, ids, work))
                gap = float(np.abs(reference[1] - got).max())
                print(f"{name}: f32 file against the source in moe: max difference {gap:.3g} ({gap / span:.2g})")
                if gap > 1e-6 * span:
                    failures.append(f"{name}: the f32 file's logits differ from the source's")
    return failures


def expect_refusal(work, args, words):
    out = args[args.index("-o") + 1]
    r = subprocess.run([MOE, "quantize", *args], capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, f"FAIL: quantize {args} exited {r.returncode}, expected 2: {r.stderr}"
    assert len(lines) == 1 and words in lines[0], f"FAIL: quantize {args}: expected one line with '{words}': {r.stderr}"
    left = [f for f in os.listdir(os.path.dirname(out) or ".") if f.startswith(os.path.basename(out))] \
        if os.path.isdir(os.path.dirname(out) or ".") else []
    assert not left, f"FAIL: quantize {args} left {left} behind"
    print(f"refused as expected: {lines[0]}")


def moe_token_ids(model, prompt):
    out = run([MOE, "tokenize", "-m", model, "-p", prompt], text=True).stdout.splitlines()
    return [int(line.split()[0]) for line in out if not line.endswith(" tokens")]


def check_layout_symbols(work, run_folder):
    """A run's tokenizer carries newlines and tabs as its own pieces; its GGUF file names those
    pieces by the characters, so llama.cpp gives a newline the token the model was trained on."""
    prompt = "one\ntwo\tthree\n"
    want = moe_token_ids(run_folder, prompt)
    gguf = os.path.join(work, "run-f32.gguf")
    got = moe_token_ids(gguf, prompt)
    out = os.path.join(work, "debug-layout")
    run([os.path.join(LLAMA_BIN, "llama-debug"), "-m", gguf, "-p", prompt, "-t", "2", "-c", "64",
         "--save-logits", "--logits-output-dir", out])
    llama = np.fromfile(os.path.join(out, "llamacpp-run-f32-tokens.bin"), dtype=np.int32).tolist()
    print(f"newlines and tabs: the run {want}, its file in moe {got}, in llama.cpp {llama}")
    assert want == got == llama, "FAIL: a run's file tokenizes newlines or tabs unlike the run"


def check_refusals(work, run_folder):
    out = os.path.join(work, "refused", "model.gguf")
    os.makedirs(os.path.dirname(out))
    expect_refusal(work, ["-m", run_folder, "-o", out, "-t", "q3_k"], "--type 'q3_k' is not one moe writes")
    expect_refusal(work, ["-m", run_folder, "-o", os.path.join(work, "missing", "m.gguf"), "-t", "q8_0"],
                   "does not exist")
    # The test suite's tiny model: noisy top-k with MoE in every other block only.
    with open(os.path.join(SRC, "tests/cases/tiny_model.json")) as f:
        tiny = train_run(work, "tiny", json.load(f))
    expect_refusal(work, ["-m", tiny, "-o", out, "-t", "q8_0"], "dense blocks between MoE blocks")
    sigmoid = train_run(work, "sigmoid", {**RUN_CONFIG, "moe": {**RUN_CONFIG["moe"], "router_type": "sigmoid_bias"}})
    expect_refusal(work, ["-m", sigmoid, "-o", out, "-t", "q4_k_m"], "the sigmoid router with a selection bias")
    # Qwen2-MoE with dense blocks (decoder_sparse_step 2), OLMoE with grouped-query attention.
    expect_refusal(work, ["-m", os.path.join(HF, "qwen2_moe_f32"), "-o", out, "-t", "f32"], "dense blocks")
    expect_refusal(work, ["-m", os.path.join(HF, "olmoe_f32"), "-o", out, "-t", "f32"], "grouped-query attention")


def moe_eval(model, text, *extra, ctx=64):
    r = subprocess.run([MOE, "eval", "-m", model, "--text", text, "--ctx", str(ctx), "--chunks", "2", "--json", *extra],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"FAIL: moe eval -m {model} {extra}: {r.stderr}"
    return json.loads(r.stdout)


def check_in_memory(work, models):
    """`moe eval --quantize T` on a folder against `moe eval` on the file `moe quantize` wrote
    from it: the same types, the same rounded values, so the same perplexity up to the order of
    sums (llama's q/k rows are interleaved in the file) and a rare activation rounded the other
    way at a quantization boundary: within 1e-3, over the same tokens. The tiny run with dense blocks, which no file holds,
    is quantized in memory too; a GGUF file is refused."""
    import gzip
    text = os.path.join(work, "eval.txt")
    with gzip.open(os.path.join(work, "corpus.jsonl.gz"), "rt") as f:
        docs = [json.loads(line) for line in f]
    with open(text, "w") as f:
        f.write("\n\n".join(d["text"] for d in docs[:12]))
    failures = []
    for name, folder in models.items():
        for t in ["q8_0", "q4_0", "q4_k_m"]:
            in_memory = moe_eval(folder, text, "--quantize", t)
            from_file = moe_eval(os.path.join(work, f"{name}-{t}.gguf"), text)
            assert in_memory["text_tokens"] == from_file["text_tokens"], \
                f"FAIL: {name}: the folder and its file tokenize the text differently"
            gap = abs(in_memory["perplexity"] / from_file["perplexity"] - 1)
            print(f"{name}-{t}: perplexity in memory {in_memory['perplexity']:.6f}, from the file "
                  f"{from_file['perplexity']:.6f} ({gap:.2g}), {in_memory['weight_bytes']} bytes of weights")
            if gap > 1e-3:
                failures.append(f"{name}-{t}: quantized in memory, perplexity {gap:.2g} from the file's")
    tiny = os.path.join(work, "tiny")
    full = moe_eval(tiny, text, "--quantize", "f32", ctx=32)
    for t in ["q8_0", "q4_0"]:
        typed = moe_eval(tiny, text, "--quantize", t, ctx=32)
        gap = abs(typed["perplexity"] / full["perplexity"] - 1)
        print(f"tiny (dense blocks)-{t}: perplexity {typed['perplexity']:.4f} against f32's "
              f"{full['perplexity']:.4f}; {typed['weight_bytes']} bytes against {full['weight_bytes']}")
        if gap > 0.02 or not typed["weight_bytes"] < full["weight_bytes"] / 3:
            failures.append(f"tiny-{t}: in memory, perplexity {gap:.2g} from f32's or bytes not cut")
    # A router no llama.cpp file holds (sigmoid scores with a selection bias), in memory.
    sigmoid = os.path.join(work, "sigmoid")
    full, typed = moe_eval(sigmoid, text, "--quantize", "f32"), moe_eval(sigmoid, text, "--quantize", "q8_0")
    gap = abs(typed["perplexity"] / full["perplexity"] - 1)
    print(f"sigmoid router-q8_0: perplexity {typed['perplexity']:.4f} against f32's {full['perplexity']:.4f}")
    if gap > 0.02:
        failures.append(f"sigmoid-q8_0: in memory, perplexity {gap:.2g} from f32's")
    r = subprocess.run([MOE, "eval", "-m", os.path.join(work, "run-q8_0.gguf"), "--text", text,
                        "--quantize", "q4_0"], capture_output=True, text=True)
    assert r.returncode == 2 and "already typed" in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
        f"FAIL: eval --quantize of a GGUF file: {r.returncode} {r.stderr}"
    print(f"refused as expected: {r.stderr.strip()}")
    # A run without --ctx: --quantize still means the perplexity, and an unknown type is refused.
    r = subprocess.run([MOE, "eval", "-m", tiny, "--text", text, "--quantize", "q3"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--quantize 'q3' is not one of" in r.stderr and not r.stdout, \
        f"FAIL: eval --quantize q3: {r.returncode} {r.stdout[:200]} {r.stderr}"
    print(f"refused as expected: {r.stderr.strip()}")
    return failures


RUN_CONFIG = {"vocab_size": 400, "hidden_size": 256, "intermediate_size": 256, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
              "moe": {"moe_intermediate_size": 256, "num_experts": 4, "top_k": 2,
                      "router_type": "topk_softmax", "capacity_factor": 0.0}}


def main():
    work = tempfile.mkdtemp(prefix="moe-quantize-")
    try:
        rng = np.random.default_rng(2026)
        mixtral = os.path.join(work, "mixtral")
        shutil.copytree(os.path.join(HF, "mixtral_f32"), mixtral)
        tokens = byte_level_tokenizer(mixtral, None, small=True)
        with open(os.path.join(mixtral, "config.json")) as f:
            assert json.load(f)["vocab_size"] >= tokens
        random_hf_folder(os.path.join(work, "qwen2moe"), "qwen2_moe", rng)
        random_hf_folder(os.path.join(work, "olmoe"), "olmoe", rng)
        run_folder = train_run(work, "run", RUN_CONFIG)
        failures = check_models(work, {"mixtral": (mixtral, 64), "qwen2moe": (os.path.join(work, "qwen2moe"), 128),
                            "olmoe": (os.path.join(work, "olmoe"), 128), "run": (run_folder, 64),
                                        # a quantized GGUF, dequantized and quantized again
                                        "requantized": (os.path.join(work, "run-q8_0.gguf"), 64)})
        check_refusals(work, run_folder)
        check_layout_symbols(work, run_folder)
        failures += check_in_memory(work, {"qwen2moe": os.path.join(work, "qwen2moe"),
                                           "olmoe": os.path.join(work, "olmoe"), "run": run_folder})
        assert not failures, "FAIL:\n" + "\n".join(failures)
    finally:
        shutil.rmtree(work)
    print("PASS")


if __name__ == "__main__":
    main()
