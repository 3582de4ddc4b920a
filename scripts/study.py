#!/usr/bin/python3
"""The sparsity study: dense twin against MoE recipes of equal active FLOPs per token.

Trains every run of the study into runs/study/<name>/ with `moe train`, skipping runs already
finished and resuming runs that were stopped (so it can be run in parts), then writes
docs/study/results.json (every run's curve and figures), docs/study/curves.svg and the table
in docs/STUDY.md. Runs finished on an earlier machine and recorded in results.json count as
done, unless --retrain.

Phases (each needs the one before):
  1. the dense twin at three learning rates; every MoE recipe (configs/study/) at the middle one;
  2. the two best MoE recipes (final validation loss) at the other two rates;
  3. the best MoE (recipe and rate) trained for 60% of the steps with its own schedule;
  4. a second budget, the default job's (DEFAULT_STEPS): dense and best MoE at their best rates,
     and the MoE at 60% of it.

Usage: scripts/study.sh [--phases 1,2,3,4] [--dry-run] [--report-only] [--retrain NAME] [--bench]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOE = os.environ.get("MOE_BIN", os.path.join(ROOT, "build", "moe"))  # a copy keeps rebuilds out
RUNS = os.path.join(ROOT, "runs", "study")
RESULTS = os.path.join(ROOT, "docs", "study", "results.json")
BENCH = os.path.join(ROOT, "docs", "study", "bench.json")

STEPS = 2000           # x 4096 tokens = 8.2M tokens: 20 per non-embedding parameter of the dense twin
BATCH, SEQ = 32, 128
LRS = [3e-3, 6e-3, 1.2e-2]
BASE_LR = LRS[1]
TARGET_SHARE = 0.6     # the MoE must reach the dense twin's final loss in 60% of its tokens
DEFAULT_STEPS = 1500   # the second budget: `moe train`'s default run (about 5 minutes)
MOE_RECIPES = ["e8-every", "e8-other", "e16-every", "e16-other", "e32-every", "e32-other",
               "fine16-shared", "fine32-shared", "e8-expert-choice", "e8-sigmoid-bias",
               "e8-cf1.0", "e8-cf1.25"]


def run_name(config, lr, steps):
    return f"{config}-lr{lr:g}-s{steps}"


def train_args(config, lr, steps):
    return ["--config", os.path.join(ROOT, "configs", "study", config + ".json"),
            "--steps", str(steps), "--batch-size", str(BATCH), "--seq-len", str(SEQ),
            "--lr", f"{lr:g}", "--min-lr", f"{lr / 10:g}", "--warmup", str(steps // 20),
            "--eval-every", str(steps // 20), "--eval-batches", "16", "--save-every", "250",
            "--log-every", "25", "--monitor-every", "500", "--seed", "1234", "--quiet",
            "--no-sample"]


def load_results():
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            return json.load(f)
    return {}


def save_json(value, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


def save_results(results):
    save_json(results, RESULTS)


def collect(name, config, lr, steps):
    """A finished run's figures from its folder."""
    folder = os.path.join(RUNS, name)
    curve, speeds, seconds = [], [], 0.0
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    last_step = 0
    for r in rows:
        if "tokens_per_s" in r and r["step"] > last_step:
            # Each logged rate covers the steps since the previous log line.
            seconds += (r["step"] - last_step) * BATCH * SEQ / r["tokens_per_s"]
            speeds.append(r["tokens_per_s"])
            last_step = r["step"]
        if "val_loss" in r:
            curve.append([r["step"] * BATCH * SEQ, r["val_loss"]])
    speeds.sort()
    params = json.loads(subprocess.run([MOE, "params", "--config", os.path.join(ROOT, "configs", "study", config + ".json"), "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    return {"config": config, "lr": lr, "steps": steps, "tokens": steps * BATCH * SEQ,
            "final_val_loss": curve[-1][1], "curve": curve,
            "tokens_per_s": speeds[len(speeds) // 2], "train_seconds": round(seconds, 1),
            "active_params": params["active_params"], "total_params": params["total_params"],
            "forward_flops_per_token": params["forward_flops_per_token"],
            "threads": os.environ.get("MOE_THREADS", str(os.cpu_count()))}


def finished(name, steps):
    state = os.path.join(RUNS, name, "trainer_state.json")
    if not os.path.exists(state):
        return False
    with open(state) as f:
        return json.load(f).get("step") == steps


def ensure(results, config, lr, steps, dry_run):
    name = run_name(config, lr, steps)
    if name in results:
        return results[name]
    if dry_run:
        print(f"would train {name}")
        return None
    folder = os.path.join(RUNS, name)
    if not finished(name, steps):
        os.makedirs(RUNS, exist_ok=True)
        if os.path.exists(os.path.join(folder, "trainer_state.json")):
            cmd = [MOE, "train", "--resume", folder, "--quiet"]
        else:
            cmd = [MOE, "train", "--out", folder, "--force"] + train_args(config, lr, steps)
        print(f"[{time.strftime('%H:%M:%S')}] training {name}", flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        print(f"  done in {time.time() - t0:.0f} s", flush=True)
    results[name] = collect(name, config, lr, steps)
    print(f"  {name}: final validation loss {results[name]['final_val_loss']:.4f}", flush=True)
    save_results(results)
    return results[name]


def tokens_to_reach(curve, loss):
    """Tokens at which a validation curve first reaches `loss` (linear between evaluations)."""
    prev = None
    for tokens, value in curve:
        if value <= loss:
            if prev is None:
                return tokens
            t0, v0 = prev
            return t0 + (tokens - t0) * (v0 - loss) / (v0 - value)
        prev = (tokens, value)
    return None


def loss_at(curve, tokens):
    """The curve's loss at `tokens` (linear between evaluations; None past its end)."""
    prev = None
    for t, v in curve:
        if t >= tokens:
            if prev is None:
                return v
            t0, v0 = prev
            return v0 + (v - v0) * (tokens - t0) / (t - t0)
        prev = (t, v)
    return None


def best(results, names):
    done = [n for n in names if n in results]
    return min(done, key=lambda n: results[n]["final_val_loss"]) if done else None


def plan(results, phases, dry_run):
    """Runs the phases; returns the study's choices (for the report)."""
    choice = {}
    if 1 in phases:
        for lr in LRS:
            ensure(results, "dense", lr, STEPS, dry_run)
        for recipe in MOE_RECIPES:
            ensure(results, recipe, BASE_LR, STEPS, dry_run)
    base = [run_name(r, BASE_LR, STEPS) for r in MOE_RECIPES]
    ranked = sorted([n for n in base if n in results], key=lambda n: results[n]["final_val_loss"])
    top2 = [results[n]["config"] for n in ranked[:2]]
    choice["top2"] = top2
    if 2 in phases and len(top2) == 2:
        for recipe in top2:
            for lr in LRS:
                ensure(results, recipe, lr, STEPS, dry_run)
    dense = best(results, [run_name("dense", lr, STEPS) for lr in LRS])
    moe = best(results, [run_name(r, lr, STEPS) for r in top2 for lr in LRS])
    choice["dense"], choice["moe"] = dense, moe
    short = int(STEPS * TARGET_SHARE)
    if moe:
        m = results[moe]
        choice["moe_short"] = run_name(m["config"], m["lr"], short)
        if 3 in phases:
            ensure(results, m["config"], m["lr"], short, dry_run)
    if 4 in phases and dense and moe:
        d, m = results[dense], results[moe]
        ensure(results, "dense", d["lr"], DEFAULT_STEPS, dry_run)
        ensure(results, m["config"], m["lr"], DEFAULT_STEPS, dry_run)
        ensure(results, m["config"], m["lr"], int(DEFAULT_STEPS * TARGET_SHARE), dry_run)
    return choice


def svg_curves(results, names, path):
    """Validation loss against tokens, one polyline per run."""
    W, H, L, R, T, B = 760, 420, 60, 210, 20, 45
    curves = [(n, results[n]["curve"]) for n in names if n in results]
    if not curves:
        return
    xs = [t for _, c in curves for t, _ in c]
    ys = [v for _, c in curves for _, v in c if v < 8]
    x0, x1 = 0, max(xs)
    # The last stretch is where runs part: the first evaluations are cut at the top.
    y0, y1 = math.floor(min(ys) * 10) / 10, math.ceil(min(max(ys), min(ys) + 1.2) * 10) / 10
    sx = lambda t: L + (W - L - R) * (t - x0) / (x1 - x0)
    sy = lambda v: T + (H - T - B) * (y1 - min(max(v, y0), y1)) / (y1 - y0)
    colors = ["#000000", "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
              "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8", "#98df8a", "#ffbb78"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    for i in range(6):
        v = y0 + (y1 - y0) * i / 5
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#ddd"/>'
                   f'<text x="{L - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
        t = x0 + (x1 - x0) * i / 5
        out.append(f'<text x="{sx(t):.1f}" y="{H - B + 16}" text-anchor="middle">{t / 1e6:.1f}M</text>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 8}" text-anchor="middle">training tokens</text>')
    out.append(f'<text x="14" y="{(T + H - B) / 2}" transform="rotate(-90 14 {(T + H - B) / 2})" text-anchor="middle">validation loss</text>')
    for i, (name, curve) in enumerate(curves):
        color = colors[i % len(colors)]
        pts = " ".join(f"{sx(t):.1f},{sy(v):.1f}" for t, v in curve)
        width = 2.5 if name.startswith("dense") else 1.5
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{pts}"/>')
        out.append(f'<line x1="{W - R + 10}" x2="{W - R + 30}" y1="{T + 8 + 16 * i}" y2="{T + 8 + 16 * i}" stroke="{color}" stroke-width="{width}"/>'
                   f'<text x="{W - R + 35}" y="{T + 12 + 16 * i}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def bench(results):
    """Training-step tokens/s of every study config, measured back to back in one window (the
    runs' own rates depend on what else the machine was doing while each ran)."""
    speeds, load = {}, os.getloadavg()[0]
    for config in ["dense"] + MOE_RECIPES:
        out = subprocess.run([MOE, "bench", "train", "--config",
                              os.path.join(ROOT, "configs", "study", config + ".json"),
                              "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--steps", "30",
                              "--json"], capture_output=True, text=True, check=True).stdout
        speeds[config] = round(json.loads(out)["tokens_per_s"])
        print(f"  {config:18s} {speeds[config]:7d} tokens/s", flush=True)
    save_json({"tokens_per_s": speeds, "when": time.strftime("%Y-%m-%d %H:%M"),
               "batch_size": BATCH, "seq_len": SEQ, "load_before": load}, BENCH)


def fmt(value, spec, missing="—"):
    return format(value, spec) if value is not None else missing


def budget_table(results, choice):
    """Each budget's dense twin, best MoE and the MoE's own 60% run: how far the MoE is from the
    target at each budget (the curve read, and the separate run)."""
    lines = ["| budget (steps) | dense twin's final loss | MoE's final loss | MoE's tokens to reach the twin's final loss (curve) | MoE's own run of 60% of the steps: final loss | its gap to the twin |",
             "|---|---|---|---|---|---|"]
    dense, moe = choice.get("dense"), choice.get("moe")
    if not dense or not moe:
        return "\n".join(lines)
    d, m = results[dense], results[moe]
    for steps in [STEPS, DEFAULT_STEPS]:
        dn, mn = run_name("dense", d["lr"], steps), run_name(m["config"], m["lr"], steps)
        sn = run_name(m["config"], m["lr"], int(steps * TARGET_SHARE))
        if dn not in results or mn not in results:
            continue
        target = results[dn]["final_val_loss"]
        reach = tokens_to_reach(results[mn]["curve"], target)
        short = results.get(sn)
        lines.append(f"| {steps} | {target:.4f} | {results[mn]['final_val_loss']:.4f} | "
                     f"{fmt(reach and reach / 1e6, '.2f')}{'M' if reach else ''} "
                     f"({fmt(reach and reach / results[dn]['tokens'], '.2f', 'not reached')}) | "
                     f"{fmt(short and short['final_val_loss'], '.4f')} | "
                     f"{fmt(short and short['final_val_loss'] - target, '+.4f')} |")
    return "\n".join(lines)


def report(results, choice):
    dense = choice.get("dense")
    if not dense:
        print("no dense run finished yet: nothing to report")
        return
    speeds = {}
    if os.path.exists(BENCH):
        with open(BENCH) as f:
            speeds = json.load(f)["tokens_per_s"]
    target = results[dense]["final_val_loss"]
    d_tokens = results[dense]["tokens"]
    # Equal wall-clock: the dense twin's whole run, timed at the one-window bench rates when
    # there are some (each run's own rate depends on what else the machine did meanwhile).
    rate = lambda r: speeds.get(r["config"]) or r["tokens"] / r["train_seconds"]
    d_seconds = d_tokens / rate(results[dense])
    lines = ["| run | active / total params | lr | steps | final val loss | tokens to reach the dense twin's final loss | share of its tokens | val loss at its wall-clock | tokens/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    second_budget_steps = {DEFAULT_STEPS, int(DEFAULT_STEPS * TARGET_SHARE)}
    for name in sorted(results, key=lambda n: (-results[n]["steps"], results[n]["final_val_loss"])):
        r = results[name]
        if r["steps"] in second_budget_steps:
            continue  # the second budget's runs: their own table, against their own dense twin
        reach = tokens_to_reach(r["curve"], target)
        # A run faster than the dense twin ends before its wall-clock: its final loss, marked.
        ends = r["tokens"] / rate(r) / d_seconds
        at_wall = loss_at(r["curve"], min(d_seconds * rate(r), r["tokens"]))
        wall = f"{at_wall:.4f}" if ends >= 1 - 1e-9 else f"{r['final_val_loss']:.4f} (ends at {ends:.2f}x)"
        if not speeds:  # the runs' own rates depend on the machine's load: no comparison
            wall = "— (needs `--bench`)"
        mark = "**" if name in (dense, choice.get("moe"), choice.get("moe_short")) else ""
        lines.append(f"| {mark}`{name}`{mark} | {r['active_params'] / 1e6:.3f}M / {r['total_params'] / 1e6:.2f}M | "
                     f"{r['lr']:g} | {r['steps']} | {r['final_val_loss']:.4f} | {fmt(reach and reach / 1e6, '.2f')}{'M' if reach else ''} | "
                     f"{fmt(reach and reach / d_tokens, '.2f', 'not reached')} | {wall} | {rate(r):.0f} |")
    table = "\n".join(lines)
    budget = budget_table(results, choice)
    names = [dense] + [run_name(r, BASE_LR, STEPS) for r in MOE_RECIPES]
    svg_curves(results, names, os.path.join(ROOT, "docs", "study", "curves.svg"))
    m = results[choice["moe"]] if choice.get("moe") else None
    second_budget_runs = [run_name("dense", results[dense]["lr"], DEFAULT_STEPS)] + (
        [run_name(m["config"], m["lr"], steps) for steps in sorted(second_budget_steps, reverse=True)]
        if m else [])
    extra = [n for n in [choice.get("moe"), choice.get("moe_short")] + second_budget_runs if n]
    svg_curves(results, [dense] + extra, os.path.join(ROOT, "docs", "study", "best.svg"))
    path = os.path.join(ROOT, "docs", "STUDY.md")
    text = open(path).read() if os.path.exists(path) else ""
    for (begin, end), body in [(("<!-- study table: begin -->", "<!-- study table: end -->"), table),
                               (("<!-- budget table: begin -->", "<!-- budget table: end -->"), budget)]:
        if begin in text and end in text:
            text = text[:text.index(begin) + len(begin)] + "\n" + body + "\n" + text[text.index(end):]
    with open(path, "w") as f:
        f.write(text)
    print(table)
    print(budget)
    print(f"dense twin: {dense} (final {target:.4f}); best MoE: {choice.get('moe')}; "
          f"top two recipes: {', '.join(choice.get('top2', []))}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="1,2,3,4")
    ap.add_argument("--dry-run", action="store_true", help="list the runs still to train")
    ap.add_argument("--report-only", action="store_true", help="train nothing; rewrite the report")
    ap.add_argument("--retrain", action="append", default=[], help="forget a recorded run (NAME)")
    ap.add_argument("--bench", action="store_true",
                    help="time every config's training step back to back (on a quiet machine)")
    args = ap.parse_args()
    results = load_results()
    for name in args.retrain:
        results.pop(name, None)
    phases = set() if args.report_only else {int(p) for p in args.phases.split(",")}
    if args.bench:
        bench(results)
    choice = plan(results, phases, args.dry_run)
    report(results, choice)


if __name__ == "__main__":
    sys.exit(main())
