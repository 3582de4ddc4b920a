"""The first documents of the shipped corpus (data/corpus.jsonl.gz), for tests that train a
tiny model on a plain-text corpus: documents separated by blank lines."""
import gzip
import json
import os


def write_plain_text(src, path, documents):
    """Writes the corpus's first `documents` texts to `path`, separated by blank lines."""
    texts = []
    with gzip.open(os.path.join(src, "data", "corpus.jsonl.gz"), "rt") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == documents:
                break
    with open(path, "w") as f:
        f.write("\n\n".join(texts))
