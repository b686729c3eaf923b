"""Corpus reading and the deterministic train / held-out split for the bundled tiny MTP model.

Shared by training/train_tiny_mtp.py (which trains only on the "train" side) and
training/make_eval_prompts.py (which draws evaluation prompts only from the "heldout" side).

Split rule: a document is held out when the first 8 bytes of sha256(key) read as a big-endian
integer are 0 mod M, with M = 100 (1 %) for Gutenberg and the Python stdlib and M = 40 (2.5 %) for
TinyStories (the cased file has only 1,097 stories; 1 % would leave too few for ~20 story prompts). The key is the stripped document text; for TinyStories it is
the *lower-cased* stripped text, because the lower-cased file is a lower-cased superset of the
cased one: the same story then falls on the same side of the split in both files.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

EOT = "<|endoftext|>"
SEPARATOR = "\n" + EOT + "\n"

# source name -> (file name, lower-case the split key?, held-out modulus M)
SOURCES = {
    "gutenberg": ("gutenberg_children_en.txt.gz", False, 100),
    "tinystories_cased": ("tinystories_train_head_cased.txt.gz", True, 40),
    "tinystories_lower": ("tinystories_train_head_lowercase.txt.gz", True, 40),
    "python": ("python_stdlib_3.11.txt.gz", False, 100),
}


def read_documents(path: str | Path) -> list[str]:
    """All documents of one corpus file, in file order, stripped of the separator lines."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        text = f.read()
    docs = []
    for chunk in text.split(SEPARATOR):
        chunk = chunk.strip("\n")
        if chunk.endswith(EOT):  # last document: file ends with "\n<|endoftext|>" (+ "\n")
            chunk = chunk[: -len(EOT)].rstrip("\n")
        if chunk.strip():
            docs.append(chunk)
    return docs


def is_heldout(doc: str, lower_key: bool, modulus: int) -> bool:
    key = doc.strip()
    if lower_key:
        key = key.lower()
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return h % modulus == 0


def load_split(data_dir: str | Path) -> dict[str, dict[str, list[str]]]:
    """{source: {"train": [...], "heldout": [...]}} for every corpus in SOURCES."""
    data_dir = Path(data_dir)
    out = {}
    for name, (fname, lower_key, modulus) in SOURCES.items():
        docs = read_documents(data_dir / fname)
        train, held = [], []
        for d in docs:
            (held if is_heldout(d, lower_key, modulus) else train).append(d)
        out[name] = {"train": train, "heldout": held}
    return out


if __name__ == "__main__":  # print the split sizes
    import sys

    split = load_split(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    for name, s in split.items():
        nt, nh = len(s["train"]), len(s["heldout"])
        ct = sum(map(len, s["train"]))
        ch = sum(map(len, s["heldout"]))
        print(f"{name:18s} train {nt:6d} docs {ct:11d} chars   heldout {nh:4d} docs {ch:9d} chars")
