"""Build mtp_ref/eval/prompts.jsonl: evaluation prompts drawn ONLY from held-out documents.

    python training/make_eval_prompts.py --data ../shared/data \
        --tokenizer mtp_ref/checkpoints/mtp-tiny/tokenizer.json --out mtp_ref/eval/prompts.jsonl

Categories (20 prompts each), all from the held-out side of the split in tinymtp_data.py:
* stories  - TinyStories held-out stories: the opening sentences (>= 30 tokens); the 15 whole stories
             among the cased file's held-out entries, topped up with lower-cased held-out stories.
* code     - Python stdlib held-out files: the file's opening lines (>= 40 tokens, cut at a line end),
             one per file; the remaining prompts are excerpts that start at a top-level `def`/`class`
             of the largest held-out test files.
* dialogue - Gutenberg held-out books: 1-3 consecutive paragraphs ending in a quoted line of a
             conversation (a paragraph that opens with a quotation mark, after another one that does),
             spread evenly through each book.
Every prompt is 30-200 tokens long in the bundled tokenizer. Deterministic (no randomness).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tinymtp_data import load_split  # noqa: E402

N_PER_CATEGORY = 20
MIN_TOK, MAX_TOK = 30, 200
QUOTES = ("“", '"', "‘", "'")


def ntok(tok, text):
    return len(tok.encode(text, add_special_tokens=False).ids)


def story_prompts(docs, tok, lower_docs=()):
    """Cased held-out stories first; if fewer than 20 are whole stories (the cased file has only 21
    held-out entries, some of them story fragments), top up with lower-cased held-out stories."""
    out = []
    cased_keys = {d.strip().lower() for d in docs}
    tagged = [("", i, d) for i, d in enumerate(docs)]
    tagged += [("lc", i, d) for i, d in enumerate(lower_docs) if d.strip() not in cased_keys]
    for tag, i, d in tagged:
        d = d.strip()
        text = d
        for m in re.finditer(r"[.!?][\"”]?(?=\s)", d):  # cut after the first sentence end giving >= 30 tokens
            if ntok(tok, d[:m.end()]) >= MIN_TOK:
                text = d[:m.end()]
                break
        n = ntok(tok, text)
        if MIN_TOK <= n <= 120 and len(text) < len(d) - 40:
            src = "tinystories-lowercase" if tag else "tinystories-cased"
            out.append({"category": "stories", "id": f"stories-{len(out):02d}-{src}-heldout{i}", "text": text})
        if len(out) == N_PER_CATEGORY:
            break
    return out


def code_prefix(lines, tok, start, min_tok=40, max_tok=160):
    text = ""
    for ln in lines[start:]:
        cand = text + ln + "\n"
        if ntok(tok, cand) > max_tok:
            break
        text = cand
        if ntok(tok, text) >= min_tok and ln.strip() == "":
            break
    return text


def code_prompts(docs, tok):
    out = []
    for d in docs:
        lines = d.split("\n")
        name = lines[0].replace("# File: ", "")
        text = code_prefix(lines, tok, 0)
        if ntok(tok, text) >= MIN_TOK:
            out.append({"category": "code", "id": f"code-{len(out):02d}-{name}", "text": text})
    tests = sorted((d for d in docs if "/test" in d.split("\n")[0]), key=len, reverse=True)
    k = 0
    while len(out) < N_PER_CATEGORY and tests:
        d = tests[k % len(tests)]
        lines = d.split("\n")
        name = lines[0].replace("# File: ", "")
        starts = [i for i, ln in enumerate(lines) if re.match(r"(def|class) \w", ln)]
        pick = starts[len(starts) // 2 + k // len(tests)] if starts else None
        if pick is not None:
            text = code_prefix(lines, tok, pick)
            if ntok(tok, text) >= MIN_TOK:
                out.append({"category": "code", "id": f"code-{len(out):02d}-{name}:L{pick + 1}", "text": text})
        k += 1
    return out[:N_PER_CATEGORY]


def dialogue_prompts(docs, tok):
    per_book = [N_PER_CATEGORY // len(docs) + (1 if i < N_PER_CATEGORY % len(docs) else 0) for i in range(len(docs))]
    out = []
    for b, (d, want) in enumerate(zip(docs, per_book)):
        paras = [p for p in d.split("\n\n") if p.strip()]
        title = paras[0].strip().split("\n")[0][:40]
        cands = []
        for i in range(2, len(paras)):
            p, prev = paras[i].strip(), paras[i - 1].strip()
            if p.startswith(QUOTES) and prev.startswith(QUOTES) and not paras[i - 2].strip().startswith(QUOTES):
                # narrative paragraph, then a quoted line, then the quoted line we end on
                text = "\n\n".join(x.strip() for x in paras[i - 2:i + 1])
                n = ntok(tok, text)
                if n > MAX_TOK:
                    text = "\n\n".join(x.strip() for x in paras[i - 1:i + 1])
                    n = ntok(tok, text)
                if MIN_TOK <= n <= MAX_TOK:
                    cands.append((i, text))
        step = len(cands) / want
        for k in range(want):
            i, text = cands[int(k * step + step / 2)]
            out.append({"category": "dialogue", "id": f"dialogue-{len(out):02d}-{title}:p{i}", "text": text})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--tokenizer", default="mtp_ref/checkpoints/mtp-tiny/tokenizer.json")
    ap.add_argument("--out", default="mtp_ref/eval/prompts.jsonl")
    args = ap.parse_args()
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(args.tokenizer)
    split = load_split(args.data)
    rows = (story_prompts(split["tinystories_cased"]["heldout"], tok, split["tinystories_lower"]["heldout"])
            + code_prompts(split["python"]["heldout"], tok)
            + dialogue_prompts(split["gutenberg"]["heldout"], tok))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    for cat in ("stories", "code", "dialogue"):
        ns = [ntok(tok, r["text"]) for r in rows if r["category"] == cat]
        print(f"{cat:9s} {len(ns):3d} prompts, tokens min {min(ns)} median {sorted(ns)[len(ns) // 2]} max {max(ns)}")


if __name__ == "__main__":
    main()
