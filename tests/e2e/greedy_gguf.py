"""Greedy generation by moe against llama.cpp's on the same GGUF files.

The files are the gguf_models fixture's (tests/reference/gguf_model_reference.py): tiny
llama (Mixtral-style), qwen2moe and olmoe models in f32, q8_0, q4_0, q4_K_M, q5_K_M and q6_K.
llama.cpp generates 16 tokens greedily through its library (tests/e2e/llama_greedy.cpp, built
here against the llama.cpp the fixture built; F32 KV cache, no flash attention) and prints each
token with its margin over the runner-up. Then, for every file:
- teacher-forced: at each step, `moe logits` on the prompt and llama.cpp's tokens so far
  (moe's prefill path) must pick llama.cpp's token. Where it picks another, both programs must
  see a near tie: the two tokens within 1% of the logits' range in moe's logits, and llama.cpp's
  own margin within 1% too. That 1% is the size of one activation quantized one step apart
  (test_gguf_model.cpp measures 0.6% where that happens); a real difference is far larger;
- free-running: `moe generate --temperature 0` (moe's token-by-token decode path) must print
  exactly llama.cpp's bytes, unless a near tie above let the two paths part.

Usage: greedy_gguf.py MOE LLAMA_BIN_DIR GGUF_MODELS_DIR LLAMA_SOURCE_DIR
"""

import os
import struct
import subprocess
import sys
import tempfile

MOE, LLAMA_BIN, MODELS, LLAMA_SOURCE = sys.argv[1:5]
PROMPT = "Sparse experts, one token at a time."
N_TOKENS = 16
NEAR_TIE = 1e-2  # of the logits' range
ARCHS = ("llama", "qwen2moe", "olmoe")
TYPES = ("f32", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k")


def build_llama_greedy(folder):
    program = os.path.join(folder, "llama_greedy")
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llama_greedy.cpp")
    subprocess.run(["g++", "-std=c++17", "-O2", "-o", program, source,
                    "-I", os.path.join(LLAMA_SOURCE, "include"),
                    "-I", os.path.join(LLAMA_SOURCE, "ggml", "include"),
                    "-L", LLAMA_BIN, "-lllama", "-lggml", "-lggml-base",
                    "-Wl,-rpath," + os.path.abspath(LLAMA_BIN)], check=True)
    return program


def llama_generation(program, model):
    """(prompt ids, [(token, margin, range, piece bytes)]) of llama.cpp's greedy run."""
    out = subprocess.run([program, model, str(N_TOKENS), PROMPT], check=True,
                         stdout=subprocess.PIPE, text=True).stdout.splitlines()
    if not out or not out[0].startswith("prompt ") or not out[-1].startswith("end "):
        sys.exit(f"llama_greedy printed no complete run for {model}: {out}")
    prompt = [int(t) for t in out[0].split()[1:]]
    steps = []
    for line in out[1:-1]:
        _, token, margin, span, piece = line.split()
        steps.append((int(token), float(margin), float(span),
                      b"" if piece == "-" else bytes.fromhex(piece)))
    return prompt, steps


def moe_logits(model, ids, folder):
    path = os.path.join(folder, "logits.f32")
    run = subprocess.run([MOE, "logits", "-m", model, "--ids", ",".join(map(str, ids)), "-o", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if run.returncode != 0:
        sys.exit(f"FAIL: moe logits on {model} exited {run.returncode}: {run.stderr}")
    data = open(path, "rb").read()
    return struct.unpack(f"<{len(data) // 4}f", data)


def teacher_forced(name, model, prompt, steps, folder):
    """The first step at which moe picked another token within a near tie (None: none did)."""
    ids = list(prompt)
    for k, (token, llama_margin, llama_range, _) in enumerate(steps):
        logits = moe_logits(model, ids, folder)
        best = max(range(len(logits)), key=lambda i: (logits[i], -i))
        if best != token:
            span = max(logits) - min(logits)
            gap = logits[best] - logits[token]
            if gap > NEAR_TIE * span or llama_margin > NEAR_TIE * llama_range:
                sys.exit(f"FAIL {name}: step {k}: moe picks {best}, llama.cpp {token}; "
                         f"moe's gap {gap:.4g} of range {span:.4g}, llama.cpp's margin "
                         f"{llama_margin:.4g} of {llama_range:.4g}: not a near tie")
            print(f"  {name}: step {k} a near tie (moe {best}, llama.cpp {token}, gap "
                  f"{gap / span:.2e} of the range)")
            return k
        ids.append(token)
    return None


def free_running(name, model, steps):
    expected = b"".join(piece for _, _, _, piece in steps)
    out = subprocess.run([MOE, "generate", "-m", model, "-p", PROMPT, "-n", str(N_TOKENS),
                          "--temperature", "0"], check=True, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL).stdout.rstrip(b"\n")
    if not out.endswith(expected):
        sys.exit(f"FAIL {name}: moe generate printed {out[-len(expected) - 8:]!r}, "
                 f"llama.cpp generated {expected!r}")


def main():
    with tempfile.TemporaryDirectory() as folder:
        program = build_llama_greedy(folder)
        same, ties = 0, 0
        for arch in ARCHS:
            for kind in TYPES:
                name = f"{arch}-{kind}"
                model = os.path.join(MODELS, name + ".gguf")
                prompt, steps = llama_generation(program, model)
                if len(steps) < 4:
                    sys.exit(f"FAIL {name}: llama.cpp generated only {len(steps)} tokens")
                tie = teacher_forced(name, model, prompt, steps, folder)
                if tie is None:
                    free_running(name, model, steps)
                    same += 1
                else:
                    ties += 1
                print(f"{name}: {len(steps)} tokens, "
                      + ("the same, teacher-forced and free-running" if tie is None
                         else f"the same up to a near tie at step {tie}"))
        print(f"greedy_gguf: {same} files give llama.cpp's tokens exactly, {ties} part at a near tie")
        if same < len(ARCHS) * len(TYPES) // 2:
            sys.exit("FAIL: fewer than half the files give llama.cpp's tokens exactly")


if __name__ == "__main__":
    main()
