#!/usr/bin/python3
"""PyTorch reference for the MoE layer: every router, capacity and loss variant, written from
the papers (Switch, ST-MoE, Mixtral, DeepSeekMoE/V2/V3, Expert Choice, Shazeer 2017) with
autograd doing the backward. For each case of tests/cases/moe_cases.json it draws inputs from
a fixed seed, runs forward and backward of

    L = sum(y * dy) + aux_loss + z_loss

and writes inputs, outputs and every gradient to <out>/<case>.safetensors, which the C++ test
test_moe_reference loads. Random noise (normal draws, jitter) is an input, so both sides use
the same draws. Run with Debian's interpreter: /usr/bin/python3.
"""
import argparse
import json
import math
import os
import struct
import zlib
from fractions import Fraction

import torch
import torch.nn.functional as F


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous()
        data = t.numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# DeepSeek-V3 adds this to the sums that normalise sigmoid scores, so scores that all
# underflow to 0 give 0, not NaN.
NORM_EPS = 1e-20


def swiglu(x, w1, w3, w2):
    """Mixtral's expert: w2(silu(w1 x) * w3 x); weights stored [out, in]."""
    return (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T


def capacity_of(cfg, tokens, training):
    """max(min_capacity, ceil(cf * T * k / E)), the formula part capped at T, in exact rational
    arithmetic on the factor as written in decimal (1.1 is 11/10, not the nearest double)."""
    cf = cfg.get("capacity_factor", 0.0)
    if not training and cfg.get("eval_capacity_factor") is not None:
        cf = cfg["eval_capacity_factor"]
    elif not training and cfg.get("router_type") != "expert_choice":
        return None  # token choice evaluates dropless unless eval_capacity_factor is set
    if cf <= 0:
        return None
    exact = Fraction(str(cf)) * tokens * cfg["top_k"] / cfg["num_experts"]
    return max(cfg.get("min_capacity", 0), min(math.ceil(exact), tokens))


def balance_loss(probs, topk_idx, num_experts, k, seq_len, alpha):
    """Switch: alpha * E * sum_i f_i P_i per sequence, averaged; f counted before dropping."""
    T = probs.shape[0]
    losses = []
    for s in range(0, T, seq_len):
        p = probs[s:s + seq_len]
        counts = F.one_hot(topk_idx[s:s + seq_len].reshape(-1), num_experts).sum(0).float()
        f = counts / (seq_len * k)
        losses.append(num_experts * (f * p.mean(0)).sum())
    return alpha * torch.stack(losses).mean()


def token_choice(cfg, logits, scores, bias):
    """Returns top-k expert ids [T, k] and gate weights [T, k]."""
    E, k = cfg["num_experts"], cfg["top_k"]
    rtype = cfg.get("router_type", "topk_softmax")
    scale = cfg.get("routed_scaling_factor", 1.0)
    if rtype in ("topk_softmax", "noisy_topk"):
        # Mixtral / Shazeer: keep the k largest logits, softmax over them.
        top_logits, idx = logits.topk(k, dim=-1)
        return idx, scale * F.softmax(top_logits, dim=-1)
    selection = scores + bias if rtype == "sigmoid_bias" else scores
    groups = cfg.get("n_group", 1)
    if groups > 1:
        # A group scores the sum of its top-2 (DeepSeek-V3) or its maximum (DeepSeek-V2);
        # keep topk_group groups.
        grouped = selection.detach().view(-1, groups, E // groups)
        if cfg.get("group_score", "top2_sum") == "max":
            group_score = grouped.max(dim=-1).values
        else:
            group_score = grouped.topk(min(2, E // groups), dim=-1).values.sum(-1)
        keep = group_score.topk(cfg["topk_group"], dim=-1).indices
        mask = torch.zeros_like(group_score).scatter_(1, keep, 1.0)
        mask = mask.repeat_interleave(E // groups, dim=1)
        selection = selection.masked_fill(mask == 0, float("-inf"))
    idx = selection.detach().topk(k, dim=-1).indices
    w = scores.gather(1, idx)
    if cfg.get("norm_topk_prob", True):
        w = w / (w.sum(-1, keepdim=True) + NORM_EPS)
    return idx, scale * w


def keep_mask(cfg, idx, gates, training):
    """Capacity per expert; over it keep the earliest tokens (position) or highest gates."""
    T, k = idx.shape
    cap = capacity_of(cfg, T, training)
    keep = torch.ones(T, k, dtype=torch.bool)
    if cap is None:
        return keep
    for e in range(cfg["num_experts"]):
        slots = [(t, j) for t in range(T) for j in range(k) if idx[t, j] == e]
        if len(slots) <= cap:
            continue
        if cfg.get("drop_policy", "probs") == "probs":
            slots = sorted(slots, key=lambda s: -float(gates[s]))
        for t, j in slots[cap:]:
            keep[t, j] = False
    return keep


def route_input(cfg, case, x):
    """What the router scores: each token's x, or (sequence routing) the mean of x over positions
    0..min(t, P-1) of the token's sequence."""
    if cfg.get("routing_level", "token") != "sequence":
        return x
    S, P = case["seq_len"], cfg["route_prefix"]
    last = torch.clamp(torch.arange(S), max=P - 1)
    rows = []
    for s in range(0, x.shape[0], S):
        prefix_sums = x[s:s + S].cumsum(0)
        rows.append(prefix_sums[last] / (last + 1).unsqueeze(1).float())
    return torch.cat(rows)


def expert_choice_picks(cfg, scores, training):
    """Each expert's top-C tokens within each of the G capacity groups of T/G tokens, C from
    T/G: picks [E] of token ids (group by group), and each expert's threshold estimate, the
    mean over the groups of its C-th pick's score [E]."""
    T, E = scores.shape
    G = cfg.get("capacity_groups", 1)
    Tg = T // G
    C = min(capacity_of(cfg, Tg, training), Tg)
    picks, last = [], []
    for e in range(E):
        top = [scores[g * Tg:(g + 1) * Tg, e].detach().topk(C) for g in range(G)]
        picks.append(torch.cat([g * Tg + t.indices for g, t in enumerate(top)]))
        last.append(torch.stack([t.values[-1] for t in top]).mean())
    return picks, torch.stack(last)


def expert_choice_thresholds(cfg, case, p):
    """Thresholds after one training forward on x_threshold (see expert_choice_picks)."""
    with torch.no_grad():
        scores = F.softmax(route_input(cfg, case, p["x_threshold"]) @ p["gate.weight"].T, dim=-1)
        return expert_choice_picks(cfg, scores, True)[1]


def moe_forward(cfg, case, p, training):
    D, E, k = cfg["hidden_size"], cfg["num_experts"], cfg["top_k"]
    rtype = cfg.get("router_type", "topk_softmax")
    x = p["x"]
    T = x.shape[0]
    eps = cfg.get("jitter_eps", 0.0)
    xr = route_input(cfg, case, x)
    xr = xr * p["jitter"] if training and eps > 0 else xr
    logits = xr @ p["gate.weight"].T
    if rtype == "noisy_topk" and training:
        logits = logits + p["noise_normal"] * F.softplus(xr @ p["gate.noise_weight"].T)
    z_loss = cfg.get("z_loss_coeff", 0.001) * (torch.logsumexp(logits, -1) ** 2).mean()

    if rtype == "sigmoid_bias":
        scores = torch.sigmoid(logits)
        probs = scores / (scores.sum(-1, keepdim=True) + NORM_EPS)
    else:
        scores = F.softmax(logits, dim=-1)
        probs = scores

    y = torch.zeros_like(x)
    routed = torch.zeros(E)
    kept = torch.zeros(E)
    aux = torch.zeros(())
    expert_out = {}

    def ffn(e, rows):
        return swiglu(x[rows], p[f"experts.{e}.w1"], p[f"experts.{e}.w3"], p[f"experts.{e}.w2"])

    threshold = None
    if rtype == "expert_choice":
        scale = cfg.get("routed_scaling_factor", 1.0)
        if training or case.get("batch_selection_in_eval", False):
            picks, last = expert_choice_picks(cfg, scores, training)
            if training:  # the first training forward sets each threshold
                threshold = last
        else:
            # Evaluation by thresholds learned on one training batch (x_threshold): every token
            # whose score reaches an expert's threshold goes to it.
            theta = expert_choice_thresholds(cfg, case, p)
            picks = [torch.nonzero(scores[:, e].detach() >= theta[e]).flatten() for e in range(E)]
        for e in range(E):
            tok = picks[e]
            if len(tok):
                y = y.index_add(0, tok, scale * scores[tok, e, None] * ffn(e, tok))
            routed[e] = kept[e] = len(tok)
    else:
        assert cfg.get("capacity_groups", 1) == 1, "capacity groups: expert choice only here"
        idx, gates = token_choice(cfg, logits, scores, p["gate.bias"])
        keep = keep_mask(cfg, idx, gates, training)
        for e in range(E):
            t, j = torch.nonzero((idx == e) & keep, as_tuple=True)
            routed[e] = (idx == e).sum()
            kept[e] = len(t)
            if len(t):
                y = y.index_add(0, t, gates[t, j, None] * ffn(e, t))
        aux_type = cfg.get("aux_loss_type", "switch")
        if aux_type != "none":
            seq = case["seq_len"] if aux_type == "seq" else T
            aux = balance_loss(probs, idx, E, k, seq, cfg.get("aux_loss_coeff", 0.01))

    for s in range(cfg.get("n_shared_experts", 0)):
        out = swiglu(x, p[f"shared_experts.{s}.w1"], p[f"shared_experts.{s}.w3"],
                     p[f"shared_experts.{s}.w2"])
        if cfg.get("shared_expert_gate", False):
            out = torch.sigmoid(x @ p["shared_expert_gate.weight"].T) * out
        y = y + out
    return y, aux, z_loss, routed, kept, threshold


def make_case(name, case):
    cfg = case["layer"]
    torch.manual_seed(zlib.crc32(name.encode()))
    T, D, Fh, E = case["tokens"], cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["num_experts"]
    # Wide layers take smaller weights (case key "weight_std"), so that fp32 sums over many
    # terms stay within the test's tolerance.
    weight_std = case.get("weight_std", 0.4)
    g = lambda *shape, std=weight_std: (torch.randn(*shape) * std)
    p = {"x": g(T, D, std=1.0), "dy": g(T, D, std=1.0), "noise_normal": g(T, E, std=1.0),
         "gate.weight": g(E, D), "gate.noise_weight": g(E, D), "gate.bias": g(E, std=0.1)}
    eps = cfg.get("jitter_eps", 0.0)
    p["jitter"] = 1.0 - eps + 2 * eps * torch.rand(T, D)
    for e in range(E):
        p[f"experts.{e}.w1"], p[f"experts.{e}.w3"], p[f"experts.{e}.w2"] = g(Fh, D), g(Fh, D), g(D, Fh)
    Fs = cfg.get("shared_expert_intermediate_size", 0)
    for s in range(cfg.get("n_shared_experts", 0)):
        p[f"shared_experts.{s}.w1"], p[f"shared_experts.{s}.w3"] = g(Fs, D), g(Fs, D)
        p[f"shared_experts.{s}.w2"] = g(D, Fs)
    p["shared_expert_gate.weight"] = g(1, D)

    trainable = [n for n in p if n not in ("dy", "noise_normal", "jitter", "gate.bias",
                                           "x_threshold")]
    for n in trainable:
        p[n].requires_grad_(True)
    p["x_threshold"] = g(T, D, std=1.0)  # drawn last: the other tensors stay as they were
    y, aux, z, routed, kept, threshold = moe_forward(cfg, case, p, case["training"])
    loss = (y * p["dy"]).sum() + aux + z
    loss.backward()

    out = {n: v.detach() for n, v in p.items()}
    # Per capacity group (training, and expert choice's batch selection in evaluation).
    grouped = case["training"] or case.get("batch_selection_in_eval", False)
    capacity = capacity_of(cfg, T // (cfg.get("capacity_groups", 1) if grouped else 1),
                           case["training"])
    out["out.capacity"] = torch.tensor([-1.0 if capacity is None else float(capacity)])
    out.update({"out.y": y.detach(), "out.aux_loss": aux.detach().reshape(1),
                "out.z_loss": z.detach().reshape(1), "out.tokens_per_expert": routed,
                "out.kept_per_expert": kept})
    if threshold is not None:
        out["out.threshold"] = threshold
    for n in trainable:
        out["grad." + n] = p[n].grad if p[n].grad is not None else torch.zeros_like(p[n])
    return out


def run_cases(description, make_case, file_prefix, summary):
    """Shared driver of the reference scripts: --cases FILE --out DIR; one safetensors file per
    case (keys starting with "_" are comments), summary(name, tensors) printed for each."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with open(args.cases) as f:
        cases = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    os.makedirs(args.out, exist_ok=True)
    for name, case in cases.items():
        tensors = make_case(name, case)
        write_safetensors(os.path.join(args.out, file_prefix + name + ".safetensors"), tensors,
                          {"case": name, "config": json.dumps(case)})
        print(summary(name, tensors))


def main():
    run_cases(__doc__.splitlines()[0], make_case, "",
              lambda name, t: f"reference {name}: y[0,:3] = {t['out.y'][0, :3].tolist()}")


if __name__ == "__main__":
    main()
