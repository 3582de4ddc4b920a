#!/usr/bin/python3
"""The sparsity study's arithmetic (scripts/study.py): where a validation curve reaches a loss,
its loss at a token count, and the pick of the best run, on hand-worked curves."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import study  # noqa: E402

curve = [[100, 6.0], [200, 5.0], [300, 4.5], [400, 4.4]]
# 4.75 lies halfway between the evaluations at 200 (5.0) and 300 (4.5) tokens.
assert study.tokens_to_reach(curve, 4.75) == 250, study.tokens_to_reach(curve, 4.75)
assert study.tokens_to_reach(curve, 6.5) == 100          # reached at the first evaluation
assert study.tokens_to_reach(curve, 4.5) == 300          # exactly on an evaluation
assert study.tokens_to_reach(curve, 4.3) is None         # never reached
assert abs(study.tokens_to_reach([[100, 5.0], [200, 5.2], [300, 4.0]], 4.9) - 225) < 1e-9  # a bump
assert abs(study.loss_at(curve, 350) - 4.45) < 1e-12
assert study.loss_at(curve, 50) == 6.0 and study.loss_at(curve, 500) is None
results = {"a": {"final_val_loss": 4.1}, "b": {"final_val_loss": 3.9}, "c": {"final_val_loss": 4.0}}
assert study.best(results, ["a", "b", "x"]) == "b" and study.best(results, ["x"]) is None
assert study.run_name("e8-every", 6e-3, 2000) == "e8-every-lr0.006-s2000"
# The budget table: the MoE reaches the twin's 4.5 at 300 of its 400 tokens (0.75); its own
# short run ends 0.1 above the twin.
S, short = study.STEPS, int(study.STEPS * study.TARGET_SHARE)
runs = {study.run_name("dense", 6e-3, S): {"lr": 6e-3, "tokens": 400, "final_val_loss": 4.5},
        study.run_name("m", 6e-3, S): {"config": "m", "lr": 6e-3, "curve": curve, "final_val_loss": 4.4},
        study.run_name("m", 6e-3, short): {"final_val_loss": 4.6}}
row = study.budget_table(runs, {"dense": study.run_name("dense", 6e-3, S),
                                "moe": study.run_name("m", 6e-3, S)}).splitlines()[2]
assert row == f"| {S} | 4.5000 | 4.4000 | 0.00M (0.75) | 4.6000 | +0.1000 |", row
print("study arithmetic: ok")
