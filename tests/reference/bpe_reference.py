"""Byte-level BPE tokenizers in Hugging Face's tokenizer.json format, and their expected ids.

Builds three small tokenizers the way GPT-2's was built (bytes mapped to printable code points
by GPT-2's bytes_to_unicode, text split by a regex, merges learnt by counting adjacent pairs
over the corpus below), each written in one of the forms real checkpoints ship:

  gpt2    pre_tokenizer ByteLevel(use_regex=true) with GPT-2's regex; merges as "a b" strings;
          added tokens: <|endoftext|> (special), <mask> (special, lstrip) and four spaces
          (not special, normalized), as RoBERTa and GPT-NeoX have them, and <|end, a prefix of
          another (the longest match wins); no tokenizer_config.json.
  qwen2   NFC normalizer; Sequence[Split(Qwen2's regex, Isolated), ByteLevel(use_regex=false)];
          merges as ["a", "b"] pairs; <|endoftext|>, <|im_start|>, <|im_end|>; a
          tokenizer_config.json naming <|im_end|> as eos_token.
  llama3  as qwen2 with Llama-3's regex (digits in runs of at most 3), no normalizer,
          ignore_merges=true, and a vocabulary entry that no merge reaches.

Then encodes a set of strings (ASCII, accents, CJK, emoji, digits, whitespace runs, code,
added tokens in the middle of text) with a plain-Python encoder written from the same
published algorithm and Hugging Face tokenizers' documented pipeline: added tokens first
(leftmost-longest, lstrip/rstrip), the normalizer, the pre-tokenizer's regex, the byte
mapping, merges by rank, vocabulary lookup. Writes DIR/<form>/tokenizer.json (and
tokenizer_config.json) and DIR/bpe_expected.json: {form: [{"text", "ids", "decoded"}]}.
Needs only python3 and python3-regex (for \\p{L} and \\p{N}).

Usage: bpe_reference.py --out DIR
"""

import argparse
import json
import os
import unicodedata

import regex

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                 r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                  r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# Rust's char::is_whitespace (Unicode White_Space), which lstrip/rstrip of added tokens use.
WHITE_SPACE = set("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)}

CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs on and on.
It's a truth universally acknowledged that they'll say we're here, I'm sure, you've seen it.
Mixture-of-experts models route each token to a few experts: the router picks the top-k.
In 2024 there were 12 experts, 3 shared ones and 1,024 tokens per batch at 3.14159 rad.
def forward(self, x):
    scores = self.router(x)  # [T, E]
    return torch.topk(scores, k=2, dim=-1)

for (int i = 0; i < n; ++i) { total += values[i] * 2; }
if (a != b && c >= d) { return -1; }
Café, naïve, façade, Ångström, über, señor, crème brûlée: les élèves étaient très contents.
Über den Wolken muss die Freiheit wohl grenzenlos sein. Ça va très bien, merci beaucoup.
中文分词测试：模型把每个词分到专家。专家模型很大，专家很多。
日本語のテキストです。専門家の混合モデル。東京は大きい都市です。
한국어 문장도 있습니다. 전문가 모델입니다.
Emoji: 🎉 🎉 👍 👍🏽 🚀🚀 and the family 👨‍👩‍👧 again 🎉!
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 12345 67890 2026-11-26 09:30:00.
Whitespace:    four spaces,\ttabs\t\tand\n\nblank lines\r\nwindows ends.
"""


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 bytes to printable code points (its encoder.py)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
          list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return bs, [chr(c) for c in cs]


BYTE_ORDER, BYTE_CHARS = bytes_to_unicode()
BYTE_ENCODER = dict(zip(BYTE_ORDER, BYTE_CHARS))


def map_bytes(piece):
    return "".join(BYTE_ENCODER[b] for b in piece.encode("utf-8"))


def train_merges(pattern, n_merges):
    """Classic BPE training: repeatedly merge the most frequent adjacent pair (ties: the
    smallest pair in code-point order) over the corpus's regex pieces."""
    counts = {}
    for word in regex.findall(pattern, CORPUS):
        key = tuple(map_bytes(word))
        counts[key] = counts.get(key, 0) + 1
    words = list(counts.items())
    merges = []
    for _ in range(n_merges):
        pairs = {}
        for symbols, count in words:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = best[0] + best[1]
        new_words = []
        for symbols, count in words:
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_words.append((tuple(out), count))
        words = new_words
    return merges


def make_form(name, pattern, n_merges, added, extra_vocab=()):
    merges = train_merges(pattern, n_merges)
    vocab = {c: i for i, c in enumerate(BYTE_CHARS)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for token in extra_vocab:
        vocab.setdefault(token, len(vocab))
    added_tokens = []
    for content, special, flags in added:
        entry = {"id": len(vocab) + len(added_tokens), "content": content, "single_word": False,
                 "lstrip": False, "rstrip": False, "normalized": not special, "special": special}
        entry.update(flags)
        added_tokens.append(entry)
    return {"name": name, "pattern": pattern, "merges": merges, "vocab": vocab,
            "added_tokens": added_tokens}


FORMS = {
    "gpt2": make_form("gpt2", GPT2_PATTERN, 300,
                      [("<|endoftext|>", True, {}), ("<mask>", True, {"lstrip": True}),
                       ("<|end", True, {}), ("    ", False, {})]),
    "qwen2": make_form("qwen2", QWEN2_PATTERN, 300,
                       [("<|endoftext|>", True, {}), ("<|im_start|>", True, {}),
                        ("<|im_end|>", True, {})]),
    "llama3": make_form("llama3", LLAMA3_PATTERN, 250, [("<|end_of_text|>", True, {})],
                        extra_vocab=[map_bytes(" xyzzy")]),
}
FORMS["qwen2"]["nfc"] = True
FORMS["llama3"]["ignore_merges"] = True


def tokenizer_json(form):
    name = form["name"]
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
             "vocab": form["vocab"]}
    if name == "gpt2":
        model["merges"] = [f"{a} {b}" for a, b in form["merges"]]
        pre = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
               "use_regex": True}
        normalizer = None
    else:
        model["continuing_subword_prefix"] = ""
        model["end_of_word_suffix"] = ""
        model["ignore_merges"] = form.get("ignore_merges", False)
        model["merges"] = [[a, b] for a, b in form["merges"]]
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": form["pattern"]}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}]}
        normalizer = {"type": "NFC"} if form.get("nfc") else None
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": form["added_tokens"], "normalizer": normalizer,
            "pre_tokenizer": pre,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False,
                               "trim_offsets": False, "use_regex": False},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                        "use_regex": False},
            "model": model}


# ---- the reference encoder ----

def split_added(text, tokens):
    """[(piece, id or None)]: added tokens matched leftmost-longest and split out literally;
    lstrip/rstrip widen a match over the white space beside it."""
    out, start, i = [], 0, 0
    while i < len(text):
        best = None
        for t in tokens:
            if text.startswith(t["content"], i) and (
                    best is None or len(t["content"]) > len(best["content"])):
                best = t
        if best is None:
            i += 1
            continue
        s, e = i, i + len(best["content"])
        if best["lstrip"]:
            while s > start and text[s - 1] in WHITE_SPACE:
                s -= 1
        if best["rstrip"]:
            while e < len(text) and text[e] in WHITE_SPACE:
                e += 1
        if s > start:
            out.append((text[start:s], None))
        out.append((text[s:e], best["id"]))
        start = i = e
    if start < len(text):
        out.append((text[start:], None))
    return out


def pre_tokenize(text, pattern):
    """The regex's matches and the gaps between them, each a piece (behavior Isolated)."""
    pieces, prev = [], 0
    for m in regex.finditer(pattern, text):
        if m.start() > prev:
            pieces.append(text[prev:m.start()])
        if m.end() > m.start():
            pieces.append(m.group())
        prev = m.end()
    if prev < len(text):
        pieces.append(text[prev:])
    return pieces


def bpe(word, ranks):
    """GPT-2's bpe(): merge the lowest-ranked adjacent pair, every occurrence left to right,
    until no pair has a rank."""
    symbols = list(word)
    while len(symbols) > 1:
        pairs = [(ranks.get(p, float("inf")), p) for p in zip(symbols, symbols[1:])]
        rank, best = min(pairs)
        if rank == float("inf"):
            break
        out, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                out.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    return symbols


def encode(form, text):
    ranks = {pair: r for r, pair in enumerate(form["merges"])}
    vocab = form["vocab"]
    raw = [t for t in form["added_tokens"] if not t["normalized"]]
    # tokenizers matches a normalized added token by its normalized content.
    normalized = [dict(t, content=unicodedata.normalize("NFC", t["content"]) if form.get("nfc")
                       else t["content"]) for t in form["added_tokens"] if t["normalized"]]
    ids = []
    for piece, token in split_added(text, raw):
        if token is not None:
            ids.append(token)
            continue
        if form.get("nfc"):
            piece = unicodedata.normalize("NFC", piece)
        for sub, sub_token in split_added(piece, normalized):
            if sub_token is not None:
                ids.append(sub_token)
                continue
            for word in pre_tokenize(sub, form["pattern"]):
                mapped = map_bytes(word)
                if form.get("ignore_merges") and mapped in vocab:
                    ids.append(vocab[mapped])
                else:
                    ids.extend(vocab[s] for s in bpe(mapped, ranks))
    return ids


def decode(form, ids):
    """The ByteLevel decoder: each token's code points back to bytes; an added token whose
    text is not in the byte alphabet (four raw spaces) stays as it is."""
    tokens = {i: t for t, i in form["vocab"].items()}
    tokens.update({t["id"]: t["content"] for t in form["added_tokens"]})
    byte_decoder = {c: b for b, c in BYTE_ENCODER.items()}
    out = bytearray()
    for i in ids:
        token = tokens[i]
        if all(c in byte_decoder for c in token):
            out.extend(byte_decoder[c] for c in token)
        else:
            out.extend(token.encode("utf-8"))
    return out.decode("utf-8")


TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "It's what they'll say: I'M SURE we've SEEN it, don't you?",
    "Café naïve façade Ångström über señor crème brûlée",
    "cafe\u0301 and A\u030angstro\u0308m, decomposed",
    "中文分词测试：模型把每个词分到专家。",
    "日本語のテキストです。한국어 문장도 있습니다.",
    "🎉 👍🏽 🚀🚀 👨‍👩‍👧 family!",
    "0 7 42 1024 12345 3.14159 2026-11-26 09:30:00 1234567890",
    "a  b   c\t\td\n\n\ne    f        g",
    "   leading and trailing   ",
    "line one\r\nline two\r\n\r\n",
    "def forward(self, x):\n    scores = self.router(x)  # [T, E]\n    return scores\n",
    "for (int i = 0; i < n; ++i) { total += values[i] * 2; }",
    "Hello<|endoftext|>world",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text <|endoftext|><|endoftext|> more<|end_of_text|>",
    "fill the <mask> here and  <mask>there",
    "<|endoftext|",
    "mixed: naïve 中文 123 👍 <|im_end|>end",
    " xyzzy and xyzzy",
    "\u00a0non-breaking\u3000ideographic space\u2028separator \u180e\u180e mongolian \x1c\x85",
    "it'\u017f and IT'S, case-folded contractions",
    "",
    " ",
    "\n",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    expected = {}
    for name, form in FORMS.items():
        folder = os.path.join(args.out, name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tokenizer_json(form), f, ensure_ascii=False, indent=1)
        config = os.path.join(folder, "tokenizer_config.json")
        if name == "qwen2":
            with open(config, "w", encoding="utf-8") as f:
                json.dump({"eos_token": "<|im_end|>", "model_max_length": 32768}, f)
        elif os.path.exists(config):
            os.remove(config)
        expected[name] = []
        for text in TEXTS:
            ids = encode(form, text)
            decoded = decode(form, ids)
            # decode(encode(s)) == s, or NFC(s) under the NFC normalizer; an lstrip added token
            # keeps the white space it swallowed out of the text, as in tokenizers.
            round_trip = unicodedata.normalize("NFC", text) if form.get("nfc") else text
            if decoded != round_trip and not (name == "gpt2" and "<mask>" in text):
                raise AssertionError(f"{name}: {text!r} decodes to {decoded!r}")
            expected[name].append({"text": text, "ids": ids, "decoded": decoded})
    with open(os.path.join(args.out, "bpe_expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
