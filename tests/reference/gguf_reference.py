"""GGUF files written by llama.cpp's own Python writer (gguf-py), and what they hold.

gguf-py comes from the llama.cpp source that scripts/llama_cpp_source.sh fetches (node-llama-cpp's
git bundle); it is imported from there and nowhere else, and its absence is an error. Writes:

  DIR/all_types.gguf  metadata of every value type (each scalar type, and an array of each,
                      strings with UTF-8, an empty string and a newline among them) and tensors
                      of F32, F16, BF16, Q8_0 and Q4_0 (gguf-py's quantizers), Q4_K, Q5_K and
                      Q6_K (random block bytes: gguf-py has no K quantizer), from 1 to 4
                      dimensions, at the default alignment (32);
  DIR/aligned64.gguf  general.alignment = 64 and three tensors;
  DIR/<name>.json     for each file: {"alignment", "metadata": [{"key", "type", "array",
                      "value"}], "tensors": [{"name", "type" (ggml's number), "dims" (GGUF
                      order, ne[0] first), "data" (the bytes, hex)}]}.

Usage: gguf_reference.py --out DIR   (run with /usr/bin/python3: numpy and yaml)
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE = subprocess.run(["bash", str(ROOT / "scripts" / "llama_cpp_source.sh")], check=True,
                        stdout=subprocess.PIPE, text=True).stdout.strip()
sys.path.insert(0, os.path.join(SOURCE, "gguf-py"))
import gguf  # noqa: E402  (from the llama.cpp source above)

# Never another copy (a pip-installed gguf, say): the reference is the bundle's own writer.
assert pathlib.Path(gguf.__file__).resolve().is_relative_to(pathlib.Path(SOURCE).resolve()), \
    f"gguf imported from {gguf.__file__}, not from {SOURCE}"

V = gguf.GGUFValueType
Q = gguf.GGMLQuantizationType
TYPE_NAMES = {V.UINT8: "u8", V.INT8: "i8", V.UINT16: "u16", V.INT16: "i16", V.UINT32: "u32",
              V.INT32: "i32", V.FLOAT32: "f32", V.BOOL: "bool", V.STRING: "string",
              V.UINT64: "u64", V.INT64: "i64", V.FLOAT64: "f64"}


def f32(x):
    """x rounded to float32, as the file stores it (and exact as a JSON double)."""
    return float(np.float32(x))


# value type -> (the scalar written, the array written)
VALUES = {
    V.UINT8: (200, [0, 1, 255]),
    V.INT8: (-100, [-128, 0, 127]),
    V.UINT16: (60000, [0, 65535]),
    V.INT16: (-30000, [-32768, 32767, 5]),
    V.UINT32: (4000000000, [0, 4294967295, 7]),
    V.INT32: (-2000000000, [-2147483648, 2147483647, -1, 3]),
    V.FLOAT32: (f32(0.1), [f32(-2.5), f32(1e-30), f32(3.4e38), 0.0]),
    V.BOOL: (True, [True, False, False, True]),
    V.STRING: ("héllo, wörld ✓", ["<s>", "", "▁the", "line\nbreak", "日本語", "Ġa Ġb"]),
    V.UINT64: (2**64 - 1, [0, 2**64 - 1, 2**40]),
    V.INT64: (-2**63, [-2**63, 2**63 - 1, 0]),
    V.FLOAT64: (0.1, [1e-300, -1.5, 2.0**60]),
}


def add_metadata(writer, entries):
    writer.add_string("general.name", "gguf reference")
    entries.append(("general.architecture", V.STRING, False, "test"))
    entries.append(("general.name", V.STRING, False, "gguf reference"))
    for vtype, (scalar, array) in VALUES.items():
        name = TYPE_NAMES[vtype]
        writer.add_key_value(f"test.scalar.{name}", scalar, vtype)
        writer.add_key_value(f"test.array.{name}", array, V.ARRAY, sub_type=vtype)
        entries.append((f"test.scalar.{name}", vtype, False, scalar))
        entries.append((f"test.array.{name}", vtype, True, array))
    writer.add_bool("test.scalar.false", False)
    entries.append(("test.scalar.false", V.BOOL, False, False))


def tensors_all_types(rng):
    """(name, array, ggml type or None for the array's own dtype)."""
    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def raw_blocks(qtype, rows, blocks):
        block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
        return rng.integers(0, 256, size=(rows, blocks * block_bytes), dtype=np.uint8)

    return [
        ("token_embd.weight", normal(3, 5), None),
        ("output_norm.weight", normal(7), None),
        ("blk.0.ffn_gate_exps.weight", normal(2, 3, 4), None),
        ("blk.0.attn_q.weight", normal(2, 7).astype(np.float16), None),
        ("blk.0.attn_k.weight", normal(2, 1, 3, 2).astype(np.float16), None),
        ("blk.0.attn_v.weight", gguf.quants.quantize(normal(4, 6), Q.BF16), Q.BF16),
        ("blk.0.ffn_up_exps.weight", gguf.quants.quantize(normal(2, 3, 64), Q.Q8_0), Q.Q8_0),
        ("blk.0.ffn_down_exps.weight", gguf.quants.quantize(normal(2, 96), Q.Q4_0), Q.Q4_0),
        ("blk.1.ffn_gate_exps.weight", raw_blocks(Q.Q4_K, 2, 2), Q.Q4_K),
        ("blk.1.ffn_up_exps.weight", raw_blocks(Q.Q5_K, 3, 1), Q.Q5_K),
        ("output.weight", raw_blocks(Q.Q6_K, 1, 3), Q.Q6_K),
    ]


def tensors_aligned64(rng):
    return [
        ("a.weight", rng.standard_normal((3,)).astype(np.float32), None),
        ("b.weight", gguf.quants.quantize(rng.standard_normal((1, 32)).astype(np.float32), Q.Q8_0),
         Q.Q8_0),
        ("c.weight", rng.standard_normal((5, 3)).astype(np.float16), None),
    ]


def write(path, tensors, alignment):
    writer = gguf.GGUFWriter(str(path), "test")
    entries = []
    if alignment is not None:
        writer.add_custom_alignment(alignment)
        entries.append(("general.alignment", V.UINT32, False, alignment))
    add_metadata(writer, entries)
    expected = []
    for name, array, qtype in tensors:
        writer.add_tensor(name, array, raw_dtype=qtype)
        shape = writer.tensors[-1][name].shape  # in elements, outermost first
        ggml_type = int(writer.tensors[-1][name].dtype)
        expected.append({"name": name, "type": ggml_type, "dims": list(reversed(list(shape))),
                         "data": np.ascontiguousarray(array).tobytes().hex()})
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    manifest = {
        "alignment": alignment or 32,
        "metadata": [{"key": k, "type": TYPE_NAMES[t], "array": a, "value": v}
                     for k, t, a, v in entries],
        "tensors": expected,
    }
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    out = pathlib.Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(22)
    write(out / "all_types.gguf", tensors_all_types(rng), None)
    write(out / "aligned64.gguf", tensors_aligned64(rng), 64)
    print(f"gguf_reference: wrote {out}/all_types.gguf and aligned64.gguf with gguf-py from "
          f"{SOURCE}")


if __name__ == "__main__":
    main()
