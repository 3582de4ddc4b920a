"""Forward pass of a Hugging Face Mixtral or Qwen2-MoE checkpoint folder, in plain PyTorch.

Reads the folder the way transformers' MixtralForCausalLM / Qwen2MoeForCausalLM do: the
architecture and its sizes from config.json, the weights from model.safetensors by their
Hugging Face names. The math follows the published model definitions (written here
independently of our C++ and of tests/reference/moe_reference.py): RMSNorm with the eps inside
the root, rotate-half RoPE, grouped-query causal attention scaled by head_dim^-1/2, SwiGLU
MLPs, the router's softmax in fp32 then top-k (renormalised always for Mixtral, when
norm_topk_prob for Qwen2-MoE), Qwen2-MoE's sigmoid-gated shared expert and q/k/v biases, and
Qwen2-MoE's rule for which blocks are sparse (mlp_only_layers, decoder_sparse_step).
Every tensor of the file must be used exactly once: a stray or missing name is an error.

Usage: hf_reference.py --tokens 3,17,5 --job EXPORT_DIR OUT.safetensors [--job ...]
writes logits [S, V] (fp32) for each job and prints each job's last-position top tokens.
No `transformers` or `safetensors` package is needed.
"""

import argparse
import json
import os
import struct
import sys

import torch
import torch.nn.functional as F


def read_safetensors(path):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    metadata = header.pop("__metadata__", {})
    if metadata.get("format") != "pt":
        raise ValueError(f"{path}: metadata format is {metadata.get('format')!r}, transformers needs 'pt'")
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        raw = data[base + begin : base + end]
        if info["dtype"] == "F32":
            t = torch.frombuffer(raw, dtype=torch.float32).clone()
        elif info["dtype"] == "BF16":
            bits = torch.frombuffer(raw, dtype=torch.int16).to(torch.int32) & 0xFFFF
            t = (bits << 16).view(torch.float32).clone()
        else:
            raise ValueError(f"{path}: tensor {name}: unexpected dtype {info['dtype']}")
        tensors[name] = t.reshape(info["shape"])
    return tensors


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        blob = t.detach().to(torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


class Weights:
    """The checkpoint's tensors; take() marks a name used, leftovers() lists the rest."""

    def __init__(self, tensors):
        self.tensors = tensors
        self.used = set()

    def take(self, name, shape):
        if name not in self.tensors:
            raise KeyError(f"missing tensor {name}")
        t = self.tensors[name]
        if list(t.shape) != list(shape):
            raise ValueError(f"tensor {name} has shape {list(t.shape)}, expected {list(shape)}")
        self.used.add(name)
        return t

    def has(self, name):
        return name in self.tensors

    def leftovers(self):
        return sorted(set(self.tensors) - self.used)


def rms_norm(x, weight, eps):
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def rope_cos_sin(head_dim, theta, seq):
    # Inverse frequencies in fp32, as transformers' default rotary embedding computes them.
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = torch.outer(torch.arange(seq).float(), inv_freq)
    both = torch.cat([angles, angles], dim=-1)
    return both.cos(), both.sin()


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + turned * sin


def self_attention(cfg, w, prefix, x, qkv_bias):
    S, D = x.shape
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or D // H

    def project(name, heads):
        y = x @ w.take(f"{prefix}{name}_proj.weight", [heads * hd, D]).T
        if qkv_bias:
            y = y + w.take(f"{prefix}{name}_proj.bias", [heads * hd])
        return y.reshape(S, heads, hd).transpose(0, 1)  # [heads, S, hd]

    q, k, v = project("q", H), project("k", KV), project("v", KV)
    cos, sin = rope_cos_sin(hd, cfg["rope_theta"], S)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    # Query head h reads key/value head h // (H / KV).
    k = k.repeat_interleave(H // KV, dim=0)
    v = v.repeat_interleave(H // KV, dim=0)
    scores = (q @ k.transpose(1, 2)) * hd**-0.5
    future = torch.triu(torch.ones(S, S, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    ctx = torch.softmax(scores, dim=-1, dtype=torch.float32) @ v  # [H, S, hd]
    ctx = ctx.transpose(0, 1).reshape(S, H * hd)
    return ctx @ w.take(f"{prefix}o_proj.weight", [D, H * hd]).T


def swiglu_mlp(w, prefix, x, width, names=("gate_proj", "up_proj", "down_proj")):
    D = x.shape[-1]
    gate = x @ w.take(f"{prefix}{names[0]}.weight", [width, D]).T
    up = x @ w.take(f"{prefix}{names[1]}.weight", [width, D]).T
    return (F.silu(gate) * up) @ w.take(f"{prefix}{names[2]}.weight", [D, width]).T


def routed_experts(w, prefix, x, num_experts, top_k, renormalise, width, names):
    S, D = x.shape
    logits = x @ w.take(f"{prefix}gate.weight", [num_experts, D]).T
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    gates, picks = torch.topk(probs, top_k, dim=-1)
    if renormalise:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(x)
    for e in range(num_experts):
        # Every expert's tensors are read, chosen or not (a checkpoint holds them all).
        expert_out = swiglu_mlp(w, f"{prefix}experts.{e}.", x, width, names)
        weight = (gates * (picks == e)).sum(dim=-1, keepdim=True)  # 0 where not picked
        out = out + weight * expert_out
    return out


def mixtral_ffn(cfg, w, layer, x):
    return routed_experts(
        w,
        f"model.layers.{layer}.block_sparse_moe.",
        x,
        cfg["num_local_experts"],
        cfg["num_experts_per_tok"],
        True,
        cfg["intermediate_size"],
        ("w1", "w3", "w2"),
    )


def qwen2_moe_ffn(cfg, w, layer, x):
    prefix = f"model.layers.{layer}.mlp."
    sparse = (
        layer not in (cfg.get("mlp_only_layers") or [])
        and cfg["num_experts"] > 0
        and (layer + 1) % cfg["decoder_sparse_step"] == 0
    )
    if not sparse:
        return swiglu_mlp(w, prefix, x, cfg["intermediate_size"])
    out = routed_experts(
        w,
        prefix,
        x,
        cfg["num_experts"],
        cfg["num_experts_per_tok"],
        cfg["norm_topk_prob"],
        cfg["moe_intermediate_size"],
        ("gate_proj", "up_proj", "down_proj"),
    )
    shared = swiglu_mlp(w, f"{prefix}shared_expert.", x, cfg["shared_expert_intermediate_size"])
    shared_gate = torch.sigmoid(x @ w.take(f"{prefix}shared_expert_gate.weight", [1, x.shape[-1]]).T)
    return out + shared_gate * shared


def forward(folder, tokens):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    kind = cfg["model_type"]
    if kind not in ("mixtral", "qwen2_moe"):
        raise ValueError(f"{folder}: model_type {kind!r} is neither mixtral nor qwen2_moe")
    if cfg.get("rope_scaling") or cfg.get("hidden_act") != "silu":
        raise ValueError(f"{folder}: rope_scaling or a non-silu activation is not modelled here")
    if kind == "qwen2_moe" and cfg.get("use_sliding_window"):
        raise ValueError(f"{folder}: sliding-window attention is not modelled here")
    w = Weights(read_safetensors(os.path.join(folder, "model.safetensors")))
    V, D, eps = cfg["vocab_size"], cfg["hidden_size"], cfg["rms_norm_eps"]
    qkv_bias = kind == "qwen2_moe" and cfg.get("qkv_bias", True)

    embed = w.take("model.embed_tokens.weight", [V, D])
    x = embed[torch.tensor(tokens, dtype=torch.int64)]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        normed = rms_norm(x, w.take(p + "input_layernorm.weight", [D]), eps)
        x = x + self_attention(cfg, w, p + "self_attn.", normed, qkv_bias)
        normed = rms_norm(x, w.take(p + "post_attention_layernorm.weight", [D]), eps)
        ffn = mixtral_ffn if kind == "mixtral" else qwen2_moe_ffn
        x = x + ffn(cfg, w, layer, normed)
    x = rms_norm(x, w.take("model.norm.weight", [D]), eps)
    head = embed if cfg.get("tie_word_embeddings") else w.take("lm_head.weight", [V, D])
    logits = x @ head.T
    if w.leftovers():
        raise ValueError(f"{folder}: tensors the model never reads: {w.leftovers()[:5]}")
    return kind, logits


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", required=True, help="comma-separated token ids")
    parser.add_argument("--job", nargs=2, action="append", required=True, metavar=("FOLDER", "OUT"))
    args = parser.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    torch.set_num_threads(1)
    failed = False
    for folder, out in args.job:
        try:
            with torch.no_grad():
                kind, logits = forward(folder, tokens)
        except (KeyError, ValueError, OSError) as e:
            print(f"hf_reference: {folder}: {e}", file=sys.stderr)
            failed = True
            continue
        write_safetensors(out, {"logits": logits})
        top = torch.topk(logits[-1], min(5, logits.shape[-1]))
        pairs = ", ".join(f"{i}:{v:.4f}" for v, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{folder} ({kind}): last-position top logits {pairs}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
