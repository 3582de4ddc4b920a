"""Forward pass of a Hugging Face Mixtral, Qwen2-MoE or OLMoE checkpoint folder, in plain PyTorch.

Reads the folder the way transformers' MixtralForCausalLM / Qwen2MoeForCausalLM /
OlmoeForCausalLM do: the architecture and its sizes from config.json, the weights from
model.safetensors (or the shards model.safetensors.index.json lists) by their Hugging Face
names. The math follows the published model definitions (written here independently of our C++
and of tests/reference/moe_reference.py): RMSNorm with the eps inside the root, rotate-half
RoPE, grouped-query causal attention scaled by head_dim^-1/2, SwiGLU MLPs, the router's softmax
in fp32 then top-k (renormalised always for Mixtral, when norm_topk_prob for Qwen2-MoE and
OLMoE), Qwen2-MoE's sigmoid-gated shared expert and q/k/v biases, Qwen2-MoE's rule for which
blocks are sparse (mlp_only_layers, decoder_sparse_step), OLMoE's q/k RMSNorm over the whole
projection followed by the clip_qkv clamp. BF16/F16 weights are upcast to fp32 and the math runs
in fp32. Every tensor of the files must be used exactly once: a stray or missing name is an error.

Usage:
  hf_reference.py --tokens 3,17,5 --job EXPORT_DIR OUT.safetensors [--job ...]
      writes logits [S, V] (fp32) for each job and prints each job's last-position top tokens.
  hf_reference.py --make DIR
      builds the tiny random checkpoint folders of CASES under DIR (DIR/<case>/) and, for each,
      DIR/<case>.expected.safetensors: "tokens" (the prompt), "logits" [S, V] and "greedy" (the
      ids greedy decoding draws after the prompt), ids stored as float32.
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
        if begin == end:
            t = torch.zeros(0)
        elif info["dtype"] == "F32":
            t = torch.frombuffer(raw, dtype=torch.float32).clone()
        elif info["dtype"] == "BF16":
            bits = torch.frombuffer(raw, dtype=torch.int16).to(torch.int32) & 0xFFFF
            t = (bits << 16).view(torch.float32).clone()
        elif info["dtype"] == "F16":
            t = torch.frombuffer(raw, dtype=torch.float16).to(torch.float32)
        else:
            raise ValueError(f"{path}: tensor {name}: unexpected dtype {info['dtype']}")
        tensors[name] = t.reshape(info["shape"])
    return tensors


def read_checkpoint_tensors(folder):
    """model.safetensors, or every shard model.safetensors.index.json names."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if not os.path.exists(index):
        return read_safetensors(os.path.join(folder, "model.safetensors"))
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        for name, t in read_safetensors(os.path.join(folder, shard)).items():
            if weight_map.get(name) != shard:
                raise ValueError(f"{folder}: {shard} holds {name}, which the index places elsewhere")
            tensors[name] = t
    missing = set(weight_map) - set(tensors)
    if missing:
        raise ValueError(f"{folder}: the index names tensors no shard holds: {sorted(missing)[:3]}")
    return tensors


STORED = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def write_safetensors(path, tensors, dtype="F32", metadata=None):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        stored = t.detach().to(STORED[dtype]).contiguous()
        if dtype == "BF16":  # numpy has no bfloat16: its bits as int16
            stored = stored.view(torch.int16)
        blob = stored.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
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


def self_attention(cfg, w, prefix, x, qkv_bias, qk_norm=False):
    S, D = x.shape
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or D // H
    clip = cfg.get("clip_qkv") if qk_norm else None

    def project(name, heads):
        y = x @ w.take(f"{prefix}{name}_proj.weight", [heads * hd, D]).T
        if qkv_bias:
            y = y + w.take(f"{prefix}{name}_proj.bias", [heads * hd])
        if qk_norm and name in ("q", "k"):  # OLMoE: over the whole projection, before the heads split
            y = rms_norm(y, w.take(f"{prefix}{name}_norm.weight", [heads * hd]), cfg["rms_norm_eps"])
        if clip is not None:
            y = y.clamp(min=-clip, max=clip)
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


# The smallest gap between the k-th and the (k+1)-th router probability seen since the last
# reset: a near tie would make the choice of experts depend on rounding.
ROUTER_GAP = [float("inf")]
# With --dump: the forward's intermediates under moe's names (`moe logits --dump`), and the
# block being run, which routed_experts names its router logits and picks after.
INTERMEDIATES = {}
CURRENT_BLOCK = [0]


def routed_experts(w, prefix, x, num_experts, top_k, renormalise, width, names):
    S, D = x.shape
    logits = x @ w.take(f"{prefix}gate.weight", [num_experts, D]).T
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    if top_k < num_experts:
        ranked = torch.sort(probs, dim=-1, descending=True).values
        ROUTER_GAP[0] = min(ROUTER_GAP[0], (ranked[:, top_k - 1] - ranked[:, top_k]).min().item())
    gates, picks = torch.topk(probs, top_k, dim=-1)
    INTERMEDIATES[f"blk.{CURRENT_BLOCK[0]}.moe.router_logits"] = logits
    INTERMEDIATES[f"blk.{CURRENT_BLOCK[0]}.moe.experts"] = picks.to(torch.float32)
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


def olmoe_ffn(cfg, w, layer, x):
    return routed_experts(
        w,
        f"model.layers.{layer}.mlp.",
        x,
        cfg["num_experts"],
        cfg["num_experts_per_tok"],
        cfg.get("norm_topk_prob", False),
        cfg["intermediate_size"],
        ("gate_proj", "up_proj", "down_proj"),
    )


def forward(folder, tokens):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    kind = cfg["model_type"]
    if kind not in ("mixtral", "qwen2_moe", "olmoe"):
        raise ValueError(f"{folder}: model_type {kind!r} is not mixtral, qwen2_moe or olmoe")
    if cfg.get("rope_scaling") or cfg.get("hidden_act") != "silu":
        raise ValueError(f"{folder}: rope_scaling or a non-silu activation is not modelled here")
    if kind == "qwen2_moe" and cfg.get("use_sliding_window"):
        raise ValueError(f"{folder}: sliding-window attention is not modelled here")
    w = Weights(read_checkpoint_tensors(folder))
    V, D, eps = cfg["vocab_size"], cfg["hidden_size"], cfg["rms_norm_eps"]
    if kind == "qwen2_moe":
        qkv_bias = cfg.get("qkv_bias", True)
    else:
        qkv_bias = kind == "olmoe" and cfg.get("attention_bias", False)

    embed = w.take("model.embed_tokens.weight", [V, D])
    x = embed[torch.tensor(tokens, dtype=torch.int64)]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        CURRENT_BLOCK[0] = layer
        normed = rms_norm(x, w.take(p + "input_layernorm.weight", [D]), eps)
        attn = self_attention(cfg, w, p + "self_attn.", normed, qkv_bias, qk_norm=kind == "olmoe")
        INTERMEDIATES[f"blk.{layer}.attn_out"] = attn
        x = x + attn
        normed = rms_norm(x, w.take(p + "post_attention_layernorm.weight", [D]), eps)
        ffn = {"mixtral": mixtral_ffn, "qwen2_moe": qwen2_moe_ffn, "olmoe": olmoe_ffn}[kind]
        ffn_out = ffn(cfg, w, layer, normed)
        INTERMEDIATES[f"blk.{layer}.ffn_out"] = ffn_out
        x = x + ffn_out
    x = rms_norm(x, w.take("model.norm.weight", [D]), eps)
    INTERMEDIATES["norm_out"] = x
    head = embed if cfg.get("tie_word_embeddings") else w.take("lm_head.weight", [V, D])
    logits = x @ head.T
    if w.leftovers():
        raise ValueError(f"{folder}: tensors the model never reads: {w.leftovers()[:5]}")
    return kind, logits


# Tiny random checkpoints, one per architecture and layout: several layers, grouped-query heads
# (4 query heads on 2 key/value heads), 4 experts top-2, fp32, bf16 and fp16 files, one folder
# in three shards. Sizes are small enough for the whole set to build and run in seconds.
COMMON = {
    "vocab_size": 97,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "rope_scaling": None,
    "torch_dtype": "float32",
}
CASES = {
    "mixtral_f32": {"model_type": "mixtral", "dtype": "F32", "num_hidden_layers": 3,
                    "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 24,
                    "sliding_window": None},
    # Three shards, one of them holding the head and the final norm only.
    "mixtral_bf16_sharded": {"model_type": "mixtral", "dtype": "BF16", "shards": 3, "num_hidden_layers": 3,
                             "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 24,
                             "tie_word_embeddings": True},
    "mixtral_f16": {"model_type": "mixtral", "dtype": "F16", "num_hidden_layers": 2,
                    "num_local_experts": 4, "num_experts_per_tok": 1, "intermediate_size": 16},
    # Layout A: blocks 1 and 3 MoE (decoder_sparse_step 2), top-k gates left unnormalised.
    "qwen2_moe_f32": {"model_type": "qwen2_moe", "dtype": "F32", "num_hidden_layers": 4,
                      "num_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 40,
                      "moe_intermediate_size": 16, "shared_expert_intermediate_size": 24,
                      "decoder_sparse_step": 2, "mlp_only_layers": [], "norm_topk_prob": False,
                      "use_sliding_window": False, "qkv_bias": True},
    # Layout B: every block MoE except mlp_only_layers 0 and 2, gates renormalised, tied head.
    "qwen2_moe_bf16": {"model_type": "qwen2_moe", "dtype": "BF16", "num_hidden_layers": 4,
                       "num_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 40,
                       "moe_intermediate_size": 16, "shared_expert_intermediate_size": 24,
                       "decoder_sparse_step": 1, "mlp_only_layers": [0, 2], "norm_topk_prob": True,
                       "tie_word_embeddings": True},
    "olmoe_f32": {"model_type": "olmoe", "dtype": "F32", "num_hidden_layers": 3, "num_experts": 4,
                  "num_experts_per_tok": 2, "intermediate_size": 24, "norm_topk_prob": False,
                  "clip_qkv": None, "attention_bias": False},
    # clip_qkv low enough that the clamp bites; q/k/v biases on; gates renormalised.
    "olmoe_bf16": {"model_type": "olmoe", "dtype": "BF16", "num_hidden_layers": 3, "num_experts": 4,
                   "num_experts_per_tok": 2, "intermediate_size": 24, "norm_topk_prob": True,
                   "clip_qkv": 1.2, "attention_bias": True},
}
PROMPT = [3, 17, 5, 42, 8, 91, 1, 60]
GREEDY_STEPS = 8


def random_tensors(cfg, gen):
    """Every tensor the architecture reads, with scales that keep logits and router scores spread
    (so no near tie decides a route or a greedy token)."""
    kind, V, D = cfg["model_type"], cfg["vocab_size"], cfg["hidden_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = D // H
    biased = (kind == "qwen2_moe" and cfg.get("qkv_bias", True)) or (
        kind == "olmoe" and cfg.get("attention_bias", False)
    )
    t = {}

    def normal(shape, std):
        return torch.randn(shape, generator=gen) * std

    def norm_weight(n):
        return 1.0 + normal([n], 0.2)

    t["model.embed_tokens.weight"] = normal([V, D], 1.0)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        t[p + "input_layernorm.weight"] = norm_weight(D)
        t[p + "post_attention_layernorm.weight"] = norm_weight(D)
        for name, rows in (("q", H * hd), ("k", KV * hd), ("v", KV * hd)):
            t[f"{p}self_attn.{name}_proj.weight"] = normal([rows, D], 1.5 / D**0.5)
            if biased:
                t[f"{p}self_attn.{name}_proj.bias"] = normal([rows], 0.3)
        if kind == "olmoe":
            t[p + "self_attn.q_norm.weight"] = norm_weight(H * hd)
            t[p + "self_attn.k_norm.weight"] = norm_weight(KV * hd)
        t[p + "self_attn.o_proj.weight"] = normal([D, H * hd], 1.0 / (H * hd) ** 0.5)

        def mlp(prefix, width, names=("gate_proj", "up_proj", "down_proj")):
            t[f"{prefix}{names[0]}.weight"] = normal([width, D], 1.0 / D**0.5)
            t[f"{prefix}{names[1]}.weight"] = normal([width, D], 1.0 / D**0.5)
            t[f"{prefix}{names[2]}.weight"] = normal([D, width], 1.0 / width**0.5)

        if kind == "mixtral":
            q = p + "block_sparse_moe."
            t[q + "gate.weight"] = normal([cfg["num_local_experts"], D], 3.0 / D**0.5)
            for e in range(cfg["num_local_experts"]):
                mlp(f"{q}experts.{e}.", cfg["intermediate_size"], ("w1", "w3", "w2"))
            continue
        q = p + "mlp."
        sparse = kind == "olmoe" or (
            layer not in cfg["mlp_only_layers"] and (layer + 1) % cfg["decoder_sparse_step"] == 0
        )
        if not sparse:
            mlp(q, cfg["intermediate_size"])
            continue
        width = cfg["intermediate_size"] if kind == "olmoe" else cfg["moe_intermediate_size"]
        t[q + "gate.weight"] = normal([cfg["num_experts"], D], 3.0 / D**0.5)
        for e in range(cfg["num_experts"]):
            mlp(f"{q}experts.{e}.", width)
        if kind == "qwen2_moe":
            mlp(q + "shared_expert.", cfg["shared_expert_intermediate_size"])
            t[q + "shared_expert_gate.weight"] = normal([1, D], 1.0 / D**0.5)
    t["model.norm.weight"] = norm_weight(D)
    if not cfg.get("tie_word_embeddings"):
        t["lm_head.weight"] = normal([V, D], 3.0 / D**0.5)
    return t


def write_checkpoint(folder, cfg, tensors, dtype, shards):
    os.makedirs(folder, exist_ok=True)
    for old in os.listdir(folder):
        os.remove(os.path.join(folder, old))
    config = {k: v for k, v in cfg.items() if k not in ("dtype", "shards")}
    config["torch_dtype"] = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype]
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    names = list(tensors)
    if shards == 1:
        write_safetensors(os.path.join(folder, "model.safetensors"), tensors, dtype, {"format": "pt"})
        return
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::shards]}
        write_safetensors(os.path.join(folder, file), part, dtype, {"format": "pt"})
        weight_map.update({n: file for n in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=2)


def greedy(folder, prompt, steps):
    """Greedy decoding by a full forward per step; also the smallest top-1 / top-2 logit gap."""
    ids, gap = list(prompt), float("inf")
    for _ in range(steps):
        _, logits = forward(folder, ids)
        top = torch.topk(logits[-1], 2)
        gap = min(gap, (top.values[0] - top.values[1]).item())
        ids.append(int(top.indices[0]))
    return ids[len(prompt) :], gap


def make_cases(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for case, spec in CASES.items():
        cfg = dict(COMMON, **spec)
        # The first seed whose routes and greedy picks are all clear of ties (the gaps are far
        # above the ~1e-5 differences of summation order between two fp32 implementations).
        for seed in range(100):
            gen = torch.Generator().manual_seed(1000 + seed)
            tensors = random_tensors(cfg, gen)
            folder = os.path.join(out_dir, case)
            write_checkpoint(folder, cfg, tensors, cfg["dtype"], cfg.get("shards", 1))
            ROUTER_GAP[0] = float("inf")
            _, logits = forward(folder, PROMPT)
            tokens, logit_gap = greedy(folder, PROMPT, GREEDY_STEPS)
            if ROUTER_GAP[0] > 1e-3 and logit_gap > 1e-2:
                break
        else:
            raise ValueError(f"{case}: no seed in 100 without a near tie")
        write_safetensors(
            os.path.join(out_dir, case + ".expected.safetensors"),
            {
                "tokens": torch.tensor(PROMPT, dtype=torch.float32),
                "logits": logits,
                "greedy": torch.tensor(tokens, dtype=torch.float32),
            },
            metadata={"format": "pt"},
        )
        print(f"{case}: seed {1000 + seed}, router gap {ROUTER_GAP[0]:.2e}, logit gap {logit_gap:.2e}, "
              f"greedy {tokens}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make", metavar="DIR", help="build the tiny test checkpoints here")
    parser.add_argument("--tokens", help="comma-separated token ids")
    parser.add_argument("--job", nargs=2, action="append", metavar=("FOLDER", "OUT"))
    parser.add_argument("--dump", action="store_true",
                        help="also write the intermediates under moe's --dump names")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.make:
        with torch.no_grad():
            make_cases(args.make)
        return 0
    if not args.tokens or not args.job:
        parser.error("--tokens and --job are required (or --make)")
    tokens = [int(t) for t in args.tokens.split(",")]
    failed = False
    for folder, out in args.job:
        try:
            with torch.no_grad():
                kind, logits = forward(folder, tokens)
        except (KeyError, ValueError, OSError) as e:
            print(f"hf_reference: {folder}: {e}", file=sys.stderr)
            failed = True
            continue
        tensors = {"logits": logits}
        if args.dump:
            tensors.update({k: v.contiguous() for k, v in INTERMEDIATES.items()})
        INTERMEDIATES.clear()
        write_safetensors(out, tensors)
        top = torch.topk(logits[-1], min(5, logits.shape[-1]))
        pairs = ", ".join(f"{i}:{v:.4f}" for v, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{folder} ({kind}): last-position top logits {pairs}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
