#!/usr/bin/python3
"""Rebuilds data/corpus.jsonl.gz, the shipped default corpus, from Debian 12 packages.

Six labelled domains, about 10 MB of text each:
  en      English manual pages and documentation  (manpages, manpages-dev, git-man,
          libreoffice-help-en-us, gimp-help-en, debian-handbook, debian-reference-en)
  de      the same in German   (manpages-de, libreoffice-help-de, gimp-help-de,
          debian-handbook, debian-reference-de)
  fr      the same in French   (manpages-fr, libreoffice-help-fr, gimp-help-fr, ...)
  es      the same in Spanish  (manpages-es, libreoffice-help-es, gimp-help-es, ...)
  c_cpp   C and C++ headers    (libc6-dev, linux-libc-dev, libstdc++-12-dev)
  python  Python 3.11's standard library, test suite and examples (libpython3.11-minimal,
          libpython3.11-stdlib, libpython3.11-testsuite, python3.11-examples)

The packages are fetched with `apt-get download` into a cache folder and unpacked there with
`dpkg-deb -x` (nothing is installed), so the corpus does not depend on what the machine has
installed. Manual pages are rendered to plain text by man-db at 80 columns; HTML help pages are
reduced to their text with Python's html.parser.

One JSON object per line: {"domain", "source" (package:path), "split" ("train" or "valid"),
"text"}. Files are taken in an order fixed by a CRC-32 of their path, so a rebuild from the
same package versions gives the same bytes; every 16th document of each domain is the
validation split (about 6%). Documents that reduce to the same text (man page aliases, help
pages shared by two modules) are kept once. The package versions used are written to
data/corpus_sources.txt beside the corpus, with the corpus's SHA-256.

Usage: /usr/bin/python3 data/build_corpus.py [--out data/corpus.jsonl.gz] [--per-domain BYTES]
                                             [--cache DIR]
Needs: apt-get install man-db groff-base  (and a reachable Debian 12 package mirror)
"""
import argparse
import glob
import gzip
import hashlib
import html.parser
import json
import multiprocessing
import os
import re
import subprocess
import zlib

MAX_DOC_BYTES = 24_000   # long files are cut so that no one document dominates a domain
MIN_DOC_BYTES = 300
VALID_EVERY = 16         # every 16th document of a domain (in hash order) -> validation
HTML_LANG = {"en": ("en-US", "en"), "de": ("de-DE", "de"), "fr": ("fr-FR", "fr"),
             "es": ("es-ES", "es")}


def render_man(path):
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8", MAN_KEEP_FORMATTING="")
    out = subprocess.run(["man", "--no-hyphenation", "--no-justification", "-E", "UTF-8", "-l",
                          path], capture_output=True, env=env, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(path)))
    text = out.stdout.decode("utf-8", errors="replace")
    text = re.sub(".\x08", "", text)              # overstrike bold/underline
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)     # SGR escapes
    return text


def read_source(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


class _HtmlText(html.parser.HTMLParser):
    BLOCKS = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "tr", "pre", "dt", "dd",
              "table", "section"}
    HIDDEN = {"script", "style", "head", "nav"}

    def __init__(self):
        super().__init__()
        self.parts, self.hidden = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.hidden += 1
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def read_html(path):
    parser = _HtmlText()
    parser.feed(read_source(path))
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    # LibreOffice's help pages open with the same navigation words and end with a debug trailer.
    text = re.sub(r"\A(.*\n){0,8}?.*🔎︎\s*\n", "", text)
    text = text.split("Help content debug info:")[0]
    return text


def files(root, pattern):
    return [p for p in glob.glob(os.path.join(root, pattern), recursive=True) if os.path.isfile(p)]


def man_pages(root, section_glob):
    return files(root, f"usr/share/man/{section_glob}/*.gz")


def help_pages(roots, lang):
    """HTML help of libreoffice-help-*, gimp-help-*, debian-handbook, debian-reference-*."""
    long, short = HTML_LANG[lang]
    lo = "en-US" if lang == "en" else short
    return (files(roots[f"libreoffice-help-{'en-us' if lang == 'en' else lang}"],
                  f"usr/share/libreoffice/help/{lo}/text/**/*.html")
            + files(roots[f"gimp-help-{lang}"], f"usr/share/gimp/2.0/help/{short}/**/*.html")
            + files(roots["debian-handbook"], f"usr/share/doc/debian-handbook/html/{long}/*.html")
            + files(roots[f"debian-reference-{lang}"], f"usr/share/debian-reference/*.{short}.html"))


def domains(roots):
    """domain -> list of (path, reader)."""
    def man(paths):
        return [(p, render_man) for p in paths]

    def html(paths):
        return [(p, read_html) for p in paths]

    out = {
        "en": man(man_pages(roots["manpages"], "man[1-8]") + man_pages(roots["manpages-dev"], "man[23]")
                  + man_pages(roots["git-man"], "man[1-7]")) + html(help_pages(roots, "en")),
    }
    for lang in ("de", "fr", "es"):
        out[lang] = man(man_pages(roots[f"manpages-{lang}"], f"{lang}/man[1-8]")) + html(help_pages(roots, lang))
    headers = (files(roots["libc6-dev"], "usr/include/**/*.h")
               + files(roots["linux-libc-dev"], "usr/include/**/*.h")
               + files(roots["libstdc++-12-dev"], "usr/include/c++/12/**/*"))
    out["c_cpp"] = [(p, read_source) for p in headers]
    python = [p for package in ("libpython3.11-minimal", "libpython3.11-stdlib",
                                "libpython3.11-testsuite", "python3.11-examples")
              for p in files(roots[package], "usr/**/*.py")]
    out["python"] = [(p, read_source) for p in python]
    return out


PACKAGES = ["manpages", "manpages-dev", "git-man", "manpages-de", "manpages-fr", "manpages-es",
            "debian-handbook", "libc6-dev", "linux-libc-dev", "libstdc++-12-dev",
            "libpython3.11-minimal", "libpython3.11-stdlib", "libpython3.11-testsuite",
            "python3.11-examples"]
PACKAGES += [f"{kind}-{lang}" for lang in ("de", "fr", "es") for kind in ("libreoffice-help", "gimp-help", "debian-reference")]
PACKAGES += ["libreoffice-help-en-us", "gimp-help-en", "debian-reference-en"]


def fetch(cache):
    """Downloads and unpacks each package once; returns ({package: root}, {package: version})."""
    os.makedirs(cache, exist_ok=True)
    missing = [p for p in PACKAGES if not glob.glob(os.path.join(cache, f"{p}_*.deb"))]
    if missing:
        subprocess.run(["apt-get", "download"] + missing, cwd=cache, check=True)
    roots, versions = {}, {}
    for p in PACKAGES:
        (deb,) = glob.glob(os.path.join(cache, f"{p}_*.deb"))
        versions[p] = subprocess.run(["dpkg-deb", "-f", deb, "Version"], capture_output=True,
                                     text=True, check=True).stdout.strip()
        root = os.path.join(cache, "root", p)
        if not os.path.isdir(root):
            os.makedirs(os.path.dirname(root), exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", deb, root + ".tmp"], check=True)
            os.replace(root + ".tmp", root)
        roots[p] = root
    return roots, versions


def _read(item):
    path, reader = item
    return reader(path).strip()


def main():
    ap = argparse.ArgumentParser(description="Rebuild the shipped corpus from Debian packages")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "corpus.jsonl.gz"))
    ap.add_argument("--per-domain", type=int, default=10_500_000, help="bytes of text per domain")
    ap.add_argument("--cache", default="/tmp/moe-corpus-debs", help="where packages are unpacked")
    args = ap.parse_args()
    roots, versions = fetch(args.cache)
    docs, seen = [], set()
    with multiprocessing.Pool() as pool:
        for domain, items in domains(roots).items():
            # The order is fixed by the path inside the package, wherever the cache lives.
            key = {p: p[len(args.cache):] for p, _ in items}
            items = sorted(items, key=lambda it: (zlib.crc32(key[it[0]].encode()), key[it[0]]))
            total = kept = 0
            for (path, _), text in zip(items, pool.imap(_read, items, chunksize=4)):
                if total >= args.per_domain:
                    break
                if len(text.encode()) < MIN_DOC_BYTES:
                    continue
                text = text.encode()[:MAX_DOC_BYTES].decode("utf-8", errors="ignore")
                if text in seen:
                    continue
                seen.add(text)
                split = "valid" if kept % VALID_EVERY == VALID_EVERY // 2 else "train"
                kept += 1
                package = key[path].split("/")[2]
                source = package + ":" + key[path][len("/root/" + package):]
                docs.append({"domain": domain, "source": source, "split": split, "text": text})
                total += len(text.encode())
            print(f"{domain:7s} {total:10d} bytes  {kept:5d} documents", flush=True)
    tmp = args.out + ".tmp"
    # No time stamp and no file name in the gzip header: the bytes depend on the text alone.
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0,
                                               compresslevel=9) as f:
        for d in docs:
            f.write((json.dumps(d, ensure_ascii=False) + "\n").encode())
    os.replace(tmp, args.out)
    with open(args.out, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(os.path.dirname(args.out), "corpus_sources.txt"), "w") as f:
        f.write(f"# Debian 12 packages {os.path.basename(args.out)} was built from; its SHA-256:\n")
        f.write(f"sha256 {digest}\n")
        for p in sorted(versions):
            f.write(f"{p} {versions[p]}\n")
    print(f"{len(docs)} documents -> {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
