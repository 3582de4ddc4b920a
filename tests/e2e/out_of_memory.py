#!/usr/bin/python3
"""Out of memory is one error line and exit 2, not "internal error" and exit 1: here a batch of
4 TiB of token ids in `moe bench train`, under a 16 GiB address-space limit so that nothing is
touched. Not run in sanitizer builds (their allocator aborts instead of throwing)."""
import resource
import subprocess
import sys


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))


def main():
    r = subprocess.run([sys.argv[1], "bench", "train", "--batch-size", "1048576",
                        "--seq-len", "1048576"],
                       capture_output=True, text=True, preexec_fn=limit_memory)
    errors = [line for line in r.stderr.splitlines()
              if not line.startswith(("moe: warning:", "bench train: max_position_embeddings"))]
    assert r.returncode == 2, f"exit {r.returncode}, {r.stderr!r}"
    assert len(errors) == 1 and errors[0].startswith("moe: error: out of memory"), r.stderr
    print(f"ok: {errors[0]}")


if __name__ == "__main__":
    main()
