#!/usr/bin/python3
"""Rebuilds data/corpus.jsonl.gz, the shipped default corpus, from Debian packages.

Six labelled domains, about 1 MB of text each:
  en      English manual pages      (packages manpages, manpages-dev)
  de      German manual pages       (manpages-de)
  fr      French manual pages       (manpages-fr)
  es      Spanish manual pages      (manpages-es)
  c_cpp   C and C++ headers         (libc6-dev, linux-libc-dev, libstdc++-12-dev)
  python  Python standard library   (libpython3.11-stdlib)

One JSON object per line: {"domain", "source" (the file), "split" ("train" or "valid"),
"text"}. Files are taken in an order fixed by a hash of their path, so a rebuild on the same
package versions gives the same corpus; every 16th document of each domain is the validation
split (about 6%). Pages that render to the same text (aliases) are kept once. Manual pages are rendered to plain text by man-db at 80 columns.

Usage: /usr/bin/python3 data/build_corpus.py [--out data/corpus.jsonl.gz] [--per-domain BYTES]
Needs: apt-get install manpages manpages-dev manpages-de manpages-fr manpages-es man-db
       groff-base libc6-dev linux-libc-dev libstdc++-12-dev libpython3.11-stdlib
"""
import argparse
import glob
import gzip
import json
import os
import re
import subprocess
import zlib

MAX_DOC_BYTES = 24_000   # long files are cut so that no one document dominates a domain
MIN_DOC_BYTES = 300
VALID_EVERY = 16         # every 16th document of a domain (in hash order) -> validation


def package_files(package, pattern):
    out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True)
    return sorted(p for p in out.stdout.splitlines() if re.search(pattern, p) and os.path.isfile(p))


def render_man(path):
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8", MAN_KEEP_FORMATTING="")
    out = subprocess.run(["man", "--no-hyphenation", "--no-justification", "-E", "UTF-8", "-l",
                          path], capture_output=True, env=env, timeout=60)
    text = out.stdout.decode("utf-8", errors="replace")
    text = re.sub(".\x08", "", text)              # overstrike bold/underline
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)     # SGR escapes
    return text


def read_source(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def ordered(paths):
    return sorted(paths, key=lambda p: (zlib.crc32(p.encode()), p))


DOMAINS = {
    "en": (lambda: package_files("manpages", r"/man[2-7]/.*\.gz$")
           + package_files("manpages-dev", r"/man[23]/.*\.gz$"), render_man),
    "de": (lambda: package_files("manpages-de", r"/man/de/man\d/.*\.gz$"), render_man),
    "fr": (lambda: package_files("manpages-fr", r"/man/fr/man\d/.*\.gz$"), render_man),
    "es": (lambda: package_files("manpages-es", r"/man/es/man\d/.*\.gz$"), render_man),
    "c_cpp": (lambda: sorted(glob.glob("/usr/include/*.h") + glob.glob("/usr/include/sys/*.h")
                             + glob.glob("/usr/include/linux/*.h")
                             + glob.glob("/usr/include/c++/12/bits/*.h")
                             + [p for p in glob.glob("/usr/include/c++/12/*") if os.path.isfile(p)]),
              read_source),
    "python": (lambda: package_files("libpython3.11-stdlib", r"^/usr/lib/python3\.11/[^/]+\.py$")
               + package_files("libpython3.11-stdlib", r"^/usr/lib/python3\.11/(json|email|asyncio|http|xml/etree)/[^/]+\.py$"),
               read_source),
}


def main():
    ap = argparse.ArgumentParser(description="Rebuild the shipped corpus from Debian packages")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "corpus.jsonl.gz"))
    ap.add_argument("--per-domain", type=int, default=1_000_000, help="bytes of text per domain")
    args = ap.parse_args()
    docs = []
    seen = set()
    for domain, (list_files, read) in DOMAINS.items():
        total = kept = 0
        for path in ordered(list_files()):
            if total >= args.per_domain:
                break
            text = read(path).strip()
            if len(text.encode()) < MIN_DOC_BYTES:
                continue
            text = text.encode()[:MAX_DOC_BYTES].decode("utf-8", errors="ignore")
            if text in seen:
                continue
            seen.add(text)
            split = "valid" if kept % VALID_EVERY == VALID_EVERY // 2 else "train"
            kept += 1
            docs.append({"domain": domain, "source": path, "split": split, "text": text})
            total += len(text.encode())
        print(f"{domain:7s} {total:9d} bytes")
    tmp = args.out + ".tmp"
    # mtime=0 keeps the gzip bytes identical across rebuilds.
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as f:
        for d in docs:
            f.write((json.dumps(d, ensure_ascii=False) + "\n").encode())
    os.replace(tmp, args.out)
    print(f"{len(docs)} documents -> {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
