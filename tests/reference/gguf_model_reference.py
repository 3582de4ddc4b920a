"""Tiny MoE models as llama.cpp's GGUF files, quantized by llama.cpp, with llama.cpp's logits.

For each architecture llama.cpp runs and moe reads (llama with merged experts, as its converter
writes Mixtral; qwen2moe with q/k/v biases and a gated shared expert; olmoe with q/k norms), a
random model is written in F32 by gguf-py (llama.cpp's own writer, from the llama.cpp source that
scripts/llama_cpp_source.sh fetches) in the layout llama.cpp's convert_hf_to_gguf.py gives it,
then quantized by llama.cpp's llama-quantize to each type below, and each file is run by
llama.cpp's llama-debug on one prompt. Written to DIR:

  ARCH-TYPE.gguf         the model (TYPE: f32, q8_0, q4_0, q4_k_m, q5_k_m, q6_k)
  ARCH-TYPE.tokens       the prompt's ids as llama.cpp tokenized it (int32)
  ARCH-TYPE.logits       llama.cpp's next-token logits after the last of them (float32, [V])

Widths are multiples of 256 so that every K format applies to every matrix (llama-quantize
falls back to other types otherwise). The KV cache is F32 (llama.cpp's default is F16) so that
attention is not rounded. The vocabulary is a placeholder in Llama's layout (<unk> <s> </s>,
256 byte tokens, fillers): the prompt is tokenized to byte tokens.

Usage: gguf_model_reference.py --llama-bin DIR --out DIR   (with /usr/bin/python3: numpy, yaml)
"""

import argparse
import os
import pathlib
import subprocess
import sys

import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build-llama", "src")
sys.path.insert(0, os.path.join(SOURCE, "gguf-py"))
import gguf  # noqa: E402  (from the llama.cpp source above)

assert pathlib.Path(gguf.__file__).resolve().is_relative_to(pathlib.Path(SOURCE).resolve()), \
    f"gguf imported from {gguf.__file__}, not from {SOURCE}"

TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}
PROMPT = "Sparse experts, one token at a time."
D, H, F, E, K, L, V, CONTEXT = 256, 4, 256, 4, 2, 2, 512, 128


def permute_rope(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: each head's rows from halves to pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_model(arch, path, rng):
    kv = H if arch == "olmoe" else 2  # OLMoE's k norm spans the whole width: no GQA
    hd = D // H

    def matrix(rows, cols, scale=1.0):
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    tensors = {"token_embd.weight": matrix(V, D, 16.0), "output_norm.weight": norm(D),
               "output.weight": matrix(V, D, 4.0)}
    for l in range(L):
        b = f"blk.{l}."
        q, k = matrix(H * hd, D), matrix(kv * hd, D)
        if arch == "llama":  # the converter's interleaving of each head's halves
            q, k = permute_rope(q, H), permute_rope(k, kv)
        tensors.update({b + "attn_norm.weight": norm(D), b + "attn_q.weight": q,
                        b + "attn_k.weight": k, b + "attn_v.weight": matrix(kv * hd, D),
                        b + "attn_output.weight": matrix(D, H * hd), b + "ffn_norm.weight": norm(D),
                        b + "ffn_gate_inp.weight": matrix(E, D, 8.0)})
        if arch == "qwen2moe":
            for name, n in (("attn_q.bias", H * hd), ("attn_k.bias", kv * hd), ("attn_v.bias", kv * hd)):
                tensors[b + name] = (0.1 * rng.standard_normal(n)).astype(np.float32)
            tensors.update({b + "ffn_gate_shexp.weight": matrix(F, D), b + "ffn_up_shexp.weight": matrix(F, D),
                            b + "ffn_down_shexp.weight": matrix(D, F),
                            b + "ffn_gate_inp_shexp.weight": (rng.standard_normal(D) / 16).astype(np.float32)})
        if arch == "olmoe":
            tensors[b + "attn_q_norm.weight"] = norm(H * hd)
            tensors[b + "attn_k_norm.weight"] = norm(kv * hd)
        for part, rows, cols in (("gate", F, D), ("up", F, D), ("down", D, F)):
            tensors[b + f"ffn_{part}_exps.weight"] = np.stack([matrix(rows, cols) for _ in range(E)])

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny {arch}")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(D)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(1e6 if arch == "llama" else 10000.0)
    w.add_layer_norm_rms_eps(1e-5 if arch != "qwen2moe" else 1e-6)
    w.add_expert_count(E)
    w.add_expert_used_count(K)
    if arch == "qwen2moe":
        w.add_expert_feed_forward_length(F)
        w.add_expert_shared_feed_forward_length(F)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    types += [gguf.TokenType.NORMAL] * (V - len(tokens))
    tokens += [f"tok{i}" for i in range(len(tokens), V)]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * V)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def run(cmd, log):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pathlib.Path(log).write_bytes(r.stdout)  # bytes: llama-debug prints pieces of characters
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({r.returncode}); its output is in {log}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out, bin_dir = pathlib.Path(a.out), pathlib.Path(a.llama_bin)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2026)
    for arch in ("llama", "qwen2moe", "olmoe"):
        f32 = out / f"{arch}-f32.gguf"
        write_model(arch, f32, rng)
        for name, ftype in [("f32", None)] + list(TYPES.items()):
            model = out / f"{arch}-{name}.gguf"
            if ftype:
                run([bin_dir / "llama-quantize", f32, model, ftype], out / f"{arch}-{name}.quantize.log")
            logits_dir = out / f"{arch}-{name}.debug"
            run([bin_dir / "llama-debug", "-m", model, "-p", PROMPT, "-t", "2", "-c", str(CONTEXT),
                 "-ctk", "f32", "-ctv", "f32", "-fa", "off", "--save-logits", "--logits-output-dir", logits_dir],
                out / f"{arch}-{name}.debug.log")
            stem = logits_dir / f"llamacpp-{arch}-{name}"
            os.replace(f"{stem}.bin", out / f"{arch}-{name}.logits")
            os.replace(f"{stem}-tokens.bin", out / f"{arch}-{name}.tokens")
    print(f"gguf_model_reference: {3 * (1 + len(TYPES))} models in {out}")


if __name__ == "__main__":
    main()
