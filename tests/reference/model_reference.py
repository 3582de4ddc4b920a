#!/usr/bin/python3
"""PyTorch reference for the whole decoder-only model (Llama/Mixtral-style, written from the
papers and Hugging Face's modelling code's conventions): token embedding, pre-norm RMSNorm,
causal attention with RoPE (rotate-half) and grouped-query heads, dense SwiGLU FFN or the MoE
layer of moe_reference.py, final RMSNorm, LM head, mean cross-entropy (targets -1 ignored).

For each case of tests/cases/model_cases.json it draws weights (Hugging Face names, per-expert
tensors), tokens and targets from a fixed seed, computes

    L = cross_entropy + sum over MoE layers of (aux_loss + z_loss)

and writes weights, logits, losses and every gradient to <out>/<case>.safetensors for
test_model_reference. Run with Debian's interpreter: /usr/bin/python3.
"""
import os
import sys
import zlib

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moe_reference import moe_forward, run_cases  # noqa: E402


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(x, theta):
    """x: [B, heads, S, hd] -> rotated by position s (Hugging Face's rotate-half layout)."""
    S, hd = x.shape[2], x.shape[3]
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    angle = torch.arange(S, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat((angle, angle), dim=-1)
    cos, sin = emb.cos().float(), emb.sin().float()
    return x * cos + rotate_half(x) * sin


def attention(cfg, x, p, prefix, B, S):
    D, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", D // H)
    q = (x @ p[prefix + "q_proj.weight"].T).view(B, S, H, hd).transpose(1, 2)
    k = (x @ p[prefix + "k_proj.weight"].T).view(B, S, KV, hd).transpose(1, 2)
    v = (x @ p[prefix + "v_proj.weight"].T).view(B, S, KV, hd).transpose(1, 2)
    theta = cfg.get("rope_theta", 10000.0)
    q, k = rope(q, theta), rope(k, theta)
    k = k.repeat_interleave(H // KV, dim=1)  # Hugging Face's repeat_kv
    v = v.repeat_interleave(H // KV, dim=1)
    scores = (q @ k.transpose(-1, -2)) / hd ** 0.5
    mask = torch.ones(S, S, dtype=torch.bool).triu(1)
    probs = scores.masked_fill(mask, float("-inf")).softmax(-1)
    ctx = (probs @ v).transpose(1, 2).reshape(B * S, H * hd)
    return ctx @ p[prefix + "o_proj.weight"].T


def is_moe_layer(cfg, layer):
    return ("moe" in cfg and layer >= cfg.get("first_k_dense_replace", 0)
            and (layer + 1) % cfg.get("moe_layer_freq", 1) == 0)


def moe_block(cfg, x, p, prefix, S, training):
    m = dict(cfg["moe"], hidden_size=cfg["hidden_size"])
    q = {"x": x, "gate.weight": p[prefix + "gate.weight"],
         "gate.bias": p.get(prefix + "gate.e_score_correction_bias", torch.zeros(m["num_experts"]))}
    for e in range(m["num_experts"]):
        for w in ("w1", "w3", "w2"):
            q[f"experts.{e}.{w}"] = p[f"{prefix}experts.{e}.{w}.weight"]
    Fs = m.get("shared_expert_intermediate_size", 0)
    for s in range(m.get("n_shared_experts", 0)):
        rows = slice(s * Fs, (s + 1) * Fs)
        q[f"shared_experts.{s}.w1"] = p[prefix + "shared_experts.gate_proj.weight"][rows]
        q[f"shared_experts.{s}.w3"] = p[prefix + "shared_experts.up_proj.weight"][rows]
        q[f"shared_experts.{s}.w2"] = p[prefix + "shared_experts.down_proj.weight"][:, rows]
    if m.get("shared_expert_gate", False):
        q["shared_expert_gate.weight"] = p[prefix + "shared_expert_gate.weight"]
    y, aux, z, _, _, _ = moe_forward(m, {"seq_len": S}, q, training)
    return y, aux + z


def model_forward(cfg, p, tokens, targets, training):
    B, S = tokens.shape
    eps = cfg.get("rms_norm_eps", 1e-5)
    x = p["model.embed_tokens.weight"][tokens.reshape(-1)]
    router_loss = torch.zeros(())
    for l in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{l}."
        h = x + attention(cfg, rms_norm(x, p[pre + "input_layernorm.weight"], eps), p,
                          pre + "self_attn.", B, S)
        n = rms_norm(h, p[pre + "post_attention_layernorm.weight"], eps)
        if is_moe_layer(cfg, l):
            out, rl = moe_block(cfg, n, p, pre + "block_sparse_moe.", S, training)
            router_loss = router_loss + rl
        else:
            out = (F.silu(n @ p[pre + "mlp.gate_proj.weight"].T)
                   * (n @ p[pre + "mlp.up_proj.weight"].T)) @ p[pre + "mlp.down_proj.weight"].T
        x = h + out
    head = p["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else p["lm_head.weight"]
    logits = rms_norm(x, p["model.norm.weight"], eps) @ head.T
    ce = F.cross_entropy(logits, targets.reshape(-1), ignore_index=-1)
    return logits, ce, router_loss


def make_weights(cfg, weight_std):
    V, D, L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, Fd = cfg.get("head_dim", D // H), cfg["intermediate_size"]
    mat = lambda *shape: torch.randn(*shape) * weight_std
    norm = lambda: 1.0 + 0.1 * torch.randn(D)
    p = {"model.embed_tokens.weight": torch.randn(V, D), "model.norm.weight": norm()}
    if not cfg.get("tie_word_embeddings", False):
        p["lm_head.weight"] = mat(V, D)
    for l in range(L):
        pre = f"model.layers.{l}."
        p[pre + "input_layernorm.weight"] = norm()
        p[pre + "post_attention_layernorm.weight"] = norm()
        p[pre + "self_attn.q_proj.weight"] = mat(H * hd, D)
        p[pre + "self_attn.k_proj.weight"] = mat(KV * hd, D)
        p[pre + "self_attn.v_proj.weight"] = mat(KV * hd, D)
        p[pre + "self_attn.o_proj.weight"] = mat(D, H * hd)
        if not is_moe_layer(cfg, l):
            p[pre + "mlp.gate_proj.weight"] = mat(Fd, D)
            p[pre + "mlp.up_proj.weight"] = mat(Fd, D)
            p[pre + "mlp.down_proj.weight"] = mat(D, Fd)
            continue
        m, q = cfg["moe"], pre + "block_sparse_moe."
        E, Fe = m["num_experts"], m["moe_intermediate_size"]
        p[q + "gate.weight"] = mat(E, D)
        if m.get("router_type") == "sigmoid_bias":
            p[q + "gate.e_score_correction_bias"] = 0.1 * torch.randn(E)
        for e in range(E):
            p[f"{q}experts.{e}.w1.weight"], p[f"{q}experts.{e}.w3.weight"] = mat(Fe, D), mat(Fe, D)
            p[f"{q}experts.{e}.w2.weight"] = mat(D, Fe)
        Fs = m.get("n_shared_experts", 0) * m.get("shared_expert_intermediate_size", 0)
        if Fs:
            p[q + "shared_experts.gate_proj.weight"] = mat(Fs, D)
            p[q + "shared_experts.up_proj.weight"] = mat(Fs, D)
            p[q + "shared_experts.down_proj.weight"] = mat(D, Fs)
        if m.get("shared_expert_gate", False):
            p[q + "shared_expert_gate.weight"] = mat(1, D)
    return p


def make_case(name, case):
    cfg = case["model"]
    torch.manual_seed(zlib.crc32(name.encode()))
    B, S, V = case["batch"], case["seq"], cfg["vocab_size"]
    # Wide models take smaller weights (case key "weight_std"), so that fp32 sums over many
    # terms stay within the test's tolerance.
    p = make_weights(cfg, case.get("weight_std", 0.3))
    tokens = torch.randint(0, V, (B, S))
    targets = torch.randint(0, V, (B, S))
    targets[0, 1] = -1  # one ignored position
    trainable = [n for n in p if not n.endswith("e_score_correction_bias")]
    for n in trainable:
        p[n].requires_grad_(True)
    logits, ce, router_loss = model_forward(cfg, p, tokens, targets, case["training"])
    (ce + router_loss).backward()
    out = {n: v.detach() for n, v in p.items()}
    out.update({"tokens": tokens.float(), "targets": targets.float(), "out.logits": logits.detach(),
                "out.ce_loss": ce.detach().reshape(1),
                "out.router_loss": router_loss.detach().reshape(1)})
    for n in trainable:
        out["grad." + n] = p[n].grad if p[n].grad is not None else torch.zeros_like(p[n])
    return out


def main():
    run_cases(__doc__.splitlines()[0], make_case, "model_",
              lambda name, t: f"reference model {name}: loss = {t['out.ce_loss'].item():.6f} "
                              f"+ router {t['out.router_loss'].item():.6f}")


if __name__ == "__main__":
    main()
