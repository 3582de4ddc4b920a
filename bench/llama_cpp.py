"""Helpers of bench/llama_cpp.sh (moe against llama.cpp on the same weights).

  python3 bench/llama_cpp.py gguf HF_FOLDER OUT.gguf    # the folder's Mixtral as a llama.cpp GGUF
  python3 bench/llama_cpp.py logits A.f32 B.f32         # how far two raw float32 logit files differ
  python3 bench/llama_cpp.py table RESULTS_FOLDER       # the speed table of the runs saved there

`gguf` needs llama.cpp's own gguf-py on PYTHONPATH (build-llama/src/gguf-py) and numpy. It does
what llama.cpp's convert_hf_to_gguf.py does for a Mixtral folder (arch `llama`, experts merged
into one [n_expert, ...] tensor per projection, Q and K rows permuted from Hugging Face's
rotate-half RoPE to GGML's interleaved one, norms and router kept F32), without PyTorch, plus a
placeholder `llama` vocabulary of vocab_size tokens: llama-bench feeds token ids, never text.
"""

import json
import statistics
import sys
from pathlib import Path

import numpy as np


def read_safetensors(path):
    """{name: array} mapped from a safetensors file (BF16 as its raw uint16 bits)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    dtypes = {"F32": np.float32, "BF16": np.uint16}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        begin, end = t["data_offsets"]
        out[name] = data[begin:end].view(dtypes[t["dtype"]]).reshape(t["shape"])
    return out


def as_f32(a):
    """bf16 bits widened exactly to float32; float32 as it is."""
    return (a.astype(np.uint32) << 16).view(np.float32) if a.dtype == np.uint16 else a


def permute_rope(w, n_head):
    """LlamaModel.permute of convert_hf_to_gguf.py: each head's rows from halves to pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(folder, out):
    import gguf

    cfg = json.loads((Path(folder) / "config.json").read_text())
    w = read_safetensors(Path(folder) / "model.safetensors")
    H, KV, L = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    E, D, V = cfg["num_local_experts"], cfg["hidden_size"], cfg["vocab_size"]
    bf16 = w["model.layers.0.self_attn.q_proj.weight"].dtype == np.uint16

    # (gguf name, shape, producer): matrices keep the folder's dtype, norms and routers F32.
    plan = []

    def matrix(name, shape, make):
        plan.append((name, shape, make, bf16))

    def f32(name, src):
        plan.append((name, w[src].shape, lambda: as_f32(w[src]), False))

    matrix("token_embd.weight", (V, D), lambda: w["model.embed_tokens.weight"])
    for l in range(L):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        f32(b + "attn_norm.weight", p + "input_layernorm.weight")
        for hf, gg, heads in (("q", "attn_q", H), ("k", "attn_k", KV), ("v", "attn_v", None),
                              ("o", "attn_output", None)):
            src = w[p + f"self_attn.{hf}_proj.weight"]
            make = (lambda s=src, h=heads: permute_rope(s, h)) if heads else (lambda s=src: s)
            matrix(b + gg + ".weight", src.shape, make)
        f32(b + "ffn_norm.weight", p + "post_attention_layernorm.weight")
        f32(b + "ffn_gate_inp.weight", p + "block_sparse_moe.gate.weight")
        for hf, gg in (("w1", "ffn_gate_exps"), ("w3", "ffn_up_exps"), ("w2", "ffn_down_exps")):
            experts = [w[p + f"block_sparse_moe.experts.{e}.{hf}.weight"] for e in range(E)]
            matrix(b + gg + ".weight", (E, *experts[0].shape), lambda x=experts: np.stack(x))
    f32("output_norm.weight", "model.norm.weight")
    matrix("output.weight", (V, D), lambda: w["lm_head.weight"])

    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(Path(folder).name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if bf16 else gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(V)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(D)
    writer.add_block_count(L)
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(H)
    writer.add_head_count_kv(KV)
    writer.add_rope_freq_base(cfg["rope_theta"])
    writer.add_rope_dimension_count(cfg.get("head_dim") or D // H)
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_expert_count(E)
    writer.add_expert_used_count(cfg["num_experts_per_tok"])
    # Placeholder vocabulary in Llama's layout: <unk> <s> </s>, the 256 byte tokens, then fillers.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    types += [gguf.TokenType.NORMAL] * (V - len(tokens))
    tokens += [f"tok{i}" for i in range(len(tokens), V)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * V)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    # Tensor infos first, then each tensor made and written in turn: one layer's experts in
    # memory at a time, not the whole model.
    for name, shape, _, as_bf16 in plan:
        nbytes = int(np.prod(shape)) * (2 if as_bf16 else 4)
        writer.add_tensor_info(name, shape, np.dtype(np.uint16 if as_bf16 else np.float32), nbytes,
                               raw_dtype=gguf.GGMLQuantizationType.BF16 if as_bf16 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, _, make, _ in plan:
        writer.write_tensor_data(np.ascontiguousarray(make()))
    writer.close()


def compare_logits(a_path, b_path):
    a, b = np.fromfile(a_path, dtype=np.float32), np.fromfile(b_path, dtype=np.float32)
    if a.shape != b.shape:
        sys.exit(f"logits differ in count: {a.size} and {b.size}")
    span = float(a.max() - a.min())
    diff = float(np.abs(a - b).max())
    print(f"max |difference| {diff:.3g} = {100 * diff / span:.2f}% of the logit range {span:.3g}; "
          f"argmax {int(a.argmax())} and {int(b.argmax())}")


def table(folder):
    """One row per dtype from llama-<dtype>-<run>.json (llama-bench) and moe-<dtype>-<run>.json."""
    folder = Path(folder)

    def spread(values):
        if len(values) == 1:
            return f"{values[0]:.1f}"
        return f"{min(values):.1f}/{statistics.median(values):.1f}/{max(values):.1f}"

    def ratio(ours, theirs):
        return f"{statistics.median(ours) / statistics.median(theirs):.2f}"

    rows, llama_pp, moe_run = [], None, {}
    for dtype in ("f32", "bf16", "q8_0", "q4_0", "q4_k_m"):
        llama = [t for p in sorted(folder.glob(f"llama-{dtype}-*.json")) for t in json.loads(p.read_text())]
        ours = [json.loads(p.read_text()) for p in sorted(folder.glob(f"moe-{dtype}-*.json"))]
        if not llama or not ours:
            continue
        # llama-bench gives one entry per test: pp (n_prompt > 0) and tg (n_gen > 0).
        pp = [t for t in llama if t["n_prompt"] > 0]
        tg = [t for t in llama if t["n_gen"] > 0]
        lp, lt = [t["avg_ts"] for t in pp], [t["avg_ts"] for t in tg]
        mp = [r["prefill_tokens_per_s"] for r in ours]
        md = [r["decode_tokens_per_s"] for r in ours]
        share = statistics.median(r["bandwidth_share"] for r in ours)
        bandwidth = statistics.median(r["read_bandwidth_gbs"] for r in ours)
        rows.append((dtype, spread(lp), spread(mp), ratio(mp, lp), spread(lt), spread(md), ratio(md, lt),
                     f"{share:.2f} of {bandwidth:.1f} GB/s"))
        llama_pp, llama_tg, moe_run[dtype] = pp[0], tg[0], ours[0]
    if not rows:
        sys.exit(f"{folder}: no pair of llama-bench and moe results")

    runs = len(lp)
    print(f"tokens/s{' (min/median/max of ' + str(runs) + ' runs)' if runs > 1 else ''}: "
          f"prompt {llama_pp['n_prompt']} tokens (llama.cpp pp{llama_pp['n_prompt']}), "
          f"{llama_tg['n_gen']} decode steps (tg{llama_tg['n_gen']}), {llama_pp['n_threads']} threads")
    head = ("dtype", "llama.cpp prefill", "moe prefill", "moe/llama.cpp", "llama.cpp decode", "moe decode",
            "moe/llama.cpp", "moe decode's bandwidth share")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, ["-" * n for n in widths], *rows]:
        print(" | ".join(c.ljust(n) for c, n in zip(r, widths)).rstrip())
    print(f"llama.cpp: build {llama_pp['build_number']}, commit {llama_pp['build_commit']}, "
          f"backend {llama_pp['backends']}, CPU {llama_pp['cpu_info']}")
    first = next(iter(moe_run.values()))
    system = first.get("system", {})
    print(f"moe: kernel set {system.get('kernel_set', '?')}, CPU {system.get('cpu', '?')}, "
          f"OpenBLAS core {first['blas_core']}"
          + (f", bf16 prefill kernel {moe_run['bf16']['bf16_prefill_kernel']}" if "bf16" in moe_run else ""))


if __name__ == "__main__":
    commands = {"gguf": (write_gguf, 2), "logits": (compare_logits, 2), "table": (table, 1)}
    if len(sys.argv) < 2 or sys.argv[1] not in commands or len(sys.argv) != 2 + commands[sys.argv[1]][1]:
        sys.exit(__doc__)
    commands[sys.argv[1]][0](*sys.argv[2:])
