"""Reference data for ggml's block formats (src/tensor/quant.h), from llama.cpp's own Python
package gguf-py (gguf.quants, numpy), which the C++ test (tests/test_quant.cpp) compares with.

For each of Q8_0, Q4_0, Q4_K, Q5_K and Q6_K it writes, into DIR:
  <type>.blocks     random blocks: every byte random except the fp16 scales, which are finite
                    (normal, subnormal, zero, either sign);
  <type>.values     those blocks dequantized by gguf.quants (fp32, little-endian);
and for Q8_0 and Q4_0, whose quantizers gguf-py writes bit for bit as ggml's reference:
  <type>.source     fp32 rows (random at several scales, plus hand-made blocks: zeros, ties at
                    .5, the largest magnitude negative and positive, one value alone);
  <type>.quantized  those rows quantized by gguf.quants.
The type names are ggml's ("q4_K"). gguf-py's directory comes from --gguf-py (CMake passes
MOE_GGUF_PY, by default build-llama/src/gguf-py: llama.cpp's source tree); without it this
script fails, and so does the test that needs its files.

Usage: quant_reference.py --gguf-py DIR --out DIR
"""

import argparse
import os
import sys

import numpy as np

# The fp16 scale fields of each format: byte offsets in a block.
SCALE_OFFSETS = {"Q8_0": [0], "Q4_0": [0], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}
BLOCKS_PER_TYPE = 96


def random_halves(rng, n):
    """Finite fp16 scales: mostly normal at magnitudes 1e-4 .. 10, some subnormal, some zero."""
    magnitude = 10.0 ** rng.uniform(-4, 1, n)
    subnormal = rng.random(n) < 0.1
    magnitude[subnormal] = rng.uniform(1e-8, 6e-5, subnormal.sum())
    magnitude[rng.random(n) < 0.05] = 0.0
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    return (sign * magnitude).astype(np.float16)


def random_blocks(rng, quant_type, block_bytes):
    blocks = rng.integers(0, 256, (BLOCKS_PER_TYPE, block_bytes), dtype=np.uint8)
    for offset in SCALE_OFFSETS[quant_type]:
        blocks[:, offset:offset + 2] = random_halves(rng, BLOCKS_PER_TYPE).view(np.uint8).reshape(-1, 2)
    return blocks


def source_rows(rng, block_values):
    """Blocks of fp32 values for the quantizers: random, and the cases that test the rounding."""
    rows = [rng.standard_normal(block_values * 16) * scale for scale in (1e-3, 0.02, 1.0, 300.0)]
    special = np.zeros((6, block_values), dtype=np.float32)
    # special[0]: all zero
    special[1, 0] = 127.0  # d = 1: quotients exactly at .5 tie (Q8_0 rounds them away from 0)
    special[1, 1:9] = [2.5, -2.5, 0.5, -0.5, 126.5, -126.5, 1.5, -1.5]
    special[2, 3] = -8.0  # Q4_0: d = 1, the largest magnitude negative
    special[2, 4:12] = [-7.5, 7.5, 0.5, -0.5, 6.9, 7.9, -0.1, 3.49]
    special[3] = rng.standard_normal(block_values)
    special[3, 5] = 40.0  # the largest magnitude positive
    special[4, 7] = -1e-3  # one value alone
    special[5] = np.linspace(-1, 1, block_values)  # a ramp: magnitude ties between ends
    rows.append(special.reshape(-1))
    return np.concatenate(rows).astype(np.float32)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf-py", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.gguf_py, "gguf", "quants.py")):
        sys.exit(f"quant_reference.py: no gguf-py at {args.gguf_py} (llama.cpp's source: "
                 "build-llama/src, or MOE_GGUF_PY)")
    sys.path.insert(0, args.gguf_py)
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf import quants

    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(22)
    for name in SCALE_OFFSETS:
        qtype = GGMLQuantizationType[name]
        block_values, block_bytes = GGML_QUANT_SIZES[qtype]
        stem = os.path.join(args.out, name[0].lower() + name[1:])  # ggml's name: q8_0, q4_K
        blocks = random_blocks(rng, name, block_bytes)
        values = quants.dequantize(blocks.reshape(-1), qtype).astype("<f4")
        assert values.size == BLOCKS_PER_TYPE * block_values and np.all(np.isfinite(values))
        blocks.tofile(stem + ".blocks")
        values.tofile(stem + ".values")
        if name in ("Q8_0", "Q4_0"):
            source = source_rows(rng, block_values)
            quantized = quants.quantize(source, qtype)
            source.astype("<f4").tofile(stem + ".source")
            quantized.tofile(stem + ".quantized")
    print(f"quant_reference.py: wrote {len(SCALE_OFFSETS)} formats to {args.out}")


if __name__ == "__main__":
    main()
