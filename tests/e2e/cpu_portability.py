#!/usr/bin/python3
"""One binary for every x86-64 CPU. `moe --version` and `moe info` say what runs; MOE_KERNELS
picks a lower kernel set and a bad or unsupported one is refused in one line (exit 2); moe
sets a short OpenMP spin for itself unless the user chose a waiting policy. Then,
where qemu-user is installed (scripts/setup.sh installs it), the same binary runs as CPUs it
was not built on: `-cpu Nehalem` (SSE4.2, no AVX: any AVX instruction outside a dispatched
kernel faults) and `-cpu Haswell` (AVX2, no AVX-512): each trains a tiny model for a few
steps, computes `moe logits` on three Hugging Face reference folders (Mixtral bf16 sharded,
Qwen2-MoE, OLMoE) within 1e-4 + 1e-4 |ref| of the PyTorch reference, and generates from its
run.
Usage: cpu_portability.py MOE SOURCE_DIR HF_CASES qemu|no-qemu (no-qemu for a sanitizer build:
AddressSanitizer's shadow memory does not map under qemu-user)"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import shipped_corpus  # beside this file

MOE, SRC, CASES, QEMU_RUNS = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
import hf_reference  # noqa: E402  (the reference's own safetensors reader)


def run(args, env=None, prefix=()):
    return subprocess.run([*prefix, MOE, *args], capture_output=True, text=True, env=env,
                          timeout=600)


def with_env(**changes):
    env = dict(os.environ)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def refused(env, *expected):
    r = run(["info"], env=env)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("moe: error: "), r
    for part in expected:
        assert part in lines[0], (part, lines[0])
    print(f"ok: refused: {lines[0]}")


def check_info():
    r = run(["--version"])
    assert r.returncode == 0 and r.stdout.startswith("moe ") and "GCC" in r.stdout, r
    print(f"ok: {r.stdout.strip()}")
    info = json.loads(run(["info", "--json"]).stdout)
    for field in ("cpu", "cpu_features", "kernel_set", "kernel_sets_supported", "blas_core",
                  "omp_threads", "build_target"):
        assert field in info, field
    assert info["kernel_set"] == info["kernel_sets_supported"][-1], info
    text = run(["info"]).stdout
    assert f"kernel_set: {info['kernel_set']}\n" in text, text
    print(f"ok: moe info: {info['cpu']}, kernels {info['kernel_set']}")
    generic = json.loads(run(["info", "--json"], env=with_env(MOE_KERNELS="generic")).stdout)
    assert generic["kernel_set"] == "generic", generic
    # The short OpenMP spin moe sets for itself (by starting again), unless the user chose.
    def waiting(**changes):
        info = json.loads(run(["info", "--json"], env=with_env(**changes)).stdout)
        return info["gomp_spincount"], info["omp_wait_policy"]
    assert waiting(OMP_WAIT_POLICY=None, GOMP_SPINCOUNT=None) == ("300", "unset")
    assert waiting(OMP_WAIT_POLICY=None, GOMP_SPINCOUNT="1234") == ("1234", "unset")
    assert waiting(OMP_WAIT_POLICY="passive", GOMP_SPINCOUNT=None) == ("unset", "passive")
    print("ok: GOMP_SPINCOUNT=300 unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set")
    refused(with_env(MOE_KERNELS="avx3"), "generic, avx2, avx512", "avx3")
    if "avx512" not in info["kernel_sets_supported"]:
        refused(with_env(MOE_KERNELS="avx512"), "MOE_KERNELS=avx512", "lacks")
    return info


def check_logits(prefix, env, work, case):
    expected = hf_reference.read_safetensors(os.path.join(CASES, case + ".expected.safetensors"))
    tokens = ",".join(str(int(t)) for t in expected["tokens"].tolist())
    want = expected["logits"][-1].tolist()
    out = os.path.join(work, case + ".bin")
    r = run(["logits", "--model", os.path.join(CASES, case), "--ids", tokens, "--out", out],
            env=env, prefix=prefix)
    assert r.returncode == 0, r
    got = struct.unpack(f"<{len(want)}f", open(out, "rb").read())
    worst = max(abs(g - w) - 1e-4 * abs(w) for g, w in zip(got, want))
    assert worst <= 1e-4, f"{case}: logits differ by {worst}"


def check_under_qemu(qemu, cpu, kernels, work):
    # OpenBLAS as the emulated CPU makes it (the environment's OPENBLAS_CORETYPE may name a
    # core the emulated CPU lacks). GOMP_SPINCOUNT set: moe then does not start itself again
    # (src/cli/main.cpp), an exec that would leave the emulator and run on the real CPU.
    env = with_env(OPENBLAS_CORETYPE=None, OPENBLAS_L2_SIZE=None, MOE_KERNELS=None,
                   GOMP_SPINCOUNT="300")
    prefix = (qemu, "-cpu", cpu)
    info = json.loads(run(["info", "--json"], env=env, prefix=prefix).stdout)
    assert info["kernel_set"] == kernels, (cpu, info)
    corpus = os.path.join(work, "corpus.txt")
    shipped_corpus.write_plain_text(SRC, corpus, 20)
    model = os.path.join(work, "run-" + cpu)
    r = run(["train", "--out", model, "--config", os.path.join(SRC, "tests/cases/tiny_model.json"),
             "--corpus", corpus, "--steps", "4", "--batch-size", "2", "--seq-len", "16",
             "--eval-every", "4", "--warmup", "1", "--quiet", "--no-sample"], env=env,
            prefix=prefix)
    assert r.returncode == 0, (cpu, r)
    for case in ("mixtral_bf16_sharded", "qwen2_moe_f32", "olmoe_f32"):
        check_logits(prefix, env, work, case)
    r = run(["generate", "-m", model, "-p", "NAME", "-n", "8", "--temperature", "0"], env=env,
            prefix=prefix)
    assert r.returncode == 0 and r.stdout.startswith("NAME"), (cpu, r)
    print(f"ok: qemu -cpu {cpu}: kernels {kernels}, 4 training steps, logits match the "
          f"reference, generated {r.stdout.strip()!r}")


def main():
    check_info()
    if QEMU_RUNS == "no-qemu":
        return
    qemu = shutil.which("qemu-x86_64")
    if not qemu:
        print("skipped: qemu-x86_64 is not installed (scripts/setup.sh installs qemu-user)")
        sys.exit(77)
    with tempfile.TemporaryDirectory() as work:
        for cpu, kernels in (("Nehalem", "generic"), ("Haswell", "avx2")):
            check_under_qemu(qemu, cpu, kernels, work)


if __name__ == "__main__":
    main()
