"""MTP acceptance and wall-clock speedup of the NumPy engine on the held-out evaluation prompts.

    python benchmarks/eval_acceptance.py                       # bundled mtp-tiny, all prompts, k = 0..3
    python benchmarks/eval_acceptance.py --max-new-tokens 64 --repeats 1 --limit 5 --json out.json

For every category of mtp_ref/eval/prompts.jsonl and every draft depth k (greedy; chain mode unless --mode recursive) it runs
`mtp_ref.generate` on each prompt and reports, summed over the category's prompts:
  * acceptance per depth: P(draft d accepted) = rounds with >= d accepted / rounds (the engine's
    acceptance_per_depth), and the conditional rate P(d accepted | d-1 accepted);
  * mean accepted drafts per round, tokens per target (trunk) forward;
  * wall-clock: generated tokens per second and the speedup over k = 0 on the same prompts
    (median of --repeats timed runs per prompt and k, after one untimed warm-up run of each);
  * whether greedy speculative output equals plain greedy output token for token.
Prompts are encoded with the model's tokenizer and prefixed with the bos token (config bos_token_id),
as the training documents were (each followed by <|endoftext|>, which is also the bos).
Timings depend on the machine: pin threads (the engine uses one BLAS thread for small models) and
keep the machine otherwise idle; the project's reference machine has 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mtp_ref import generate, load_model  # noqa: E402

DEFAULT_PROMPTS = ROOT / "mtp_ref" / "eval" / "prompts.jsonl"


def load_prompts(path: Path, categories: list[str] | None, limit: int | None) -> dict[str, list[dict]]:
    by_cat: dict[str, list[dict]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                by_cat.setdefault(r["category"], []).append(r)
    if categories:
        by_cat = {c: by_cat[c] for c in categories}
    if limit:
        by_cat = {c: rows[:limit] for c, rows in by_cat.items()}
    return by_cat


def run_one(model, ids, k, max_new, repeats, mode="chain"):
    generate(model, ids, max_new_tokens=max_new, draft_depth=k, mode=mode, temperature=0.0, seed=0)  # warm-up
    times, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = generate(model, ids, max_new_tokens=max_new, draft_depth=k, mode=mode, temperature=0.0, seed=0)
        times.append(time.perf_counter() - t0)
    return res, statistics.median(times)


def summarise(k, results, seconds, base_seconds, same):
    gen = sum(len(r.token_ids) for r in results)
    tf = sum(r.stats["target_forwards"] for r in results)
    row = {"k": k, "prompts": len(results), "generated_tokens": gen, "target_forwards": tf,
           "mtp_forwards": sum(r.stats["mtp_forwards"] for r in results),
           "tokens_per_target_forward": gen / tf if tf else 0.0,
           "seconds": seconds, "tokens_per_second": gen / seconds if seconds else 0.0,
           "speedup_vs_k0": base_seconds / seconds if seconds else 0.0,
           "identical_to_k0": same}
    if k > 0:
        hist = [0] * (k + 1)
        for r in results:
            for a, n in enumerate(r.stats["accepted_length_histogram"]):
                hist[a] += n
        rounds = sum(hist)
        at_least = [sum(hist[d:]) / rounds if rounds else 0.0 for d in range(k + 1)]  # at_least[0] = 1
        row["accepted_length_histogram"] = hist
        row["acceptance_per_depth"] = at_least[1:]
        row["conditional_acceptance_per_depth"] = [at_least[d] / at_least[d - 1] if at_least[d - 1] else 0.0
                                                   for d in range(1, k + 1)]
        row["mean_accepted_length"] = sum(a * n for a, n in enumerate(hist)) / rounds if rounds else 0.0
    return row


def fmt_table(report) -> str:
    lines = ["| category | k | accept d1 | d2 | d3 | mean accepted | tokens / target fwd | tok/s | speedup | same as k=0 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for cat, rows in report["categories"].items():
        for r in rows:
            acc = r.get("acceptance_per_depth", [])
            cells = [f"{acc[d]:.3f}" if d < len(acc) else "" for d in range(3)]
            lines.append(f"| {cat} | {r['k']} | " + " | ".join(cells)
                         + f" | {r.get('mean_accepted_length', 0):.2f} | {r['tokens_per_target_forward']:.2f}"
                         + f" | {r['tokens_per_second']:.0f} | {r['speedup_vs_k0']:.2f}x | {r['identical_to_k0']} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the bundled mtp-tiny)")
    ap.add_argument("--prompts", default=str(DEFAULT_PROMPTS))
    ap.add_argument("--categories", default=None, help="comma-separated (default: all in the file)")
    ap.add_argument("--ks", default="0,1,2,3", help="draft depths to run; 0 (plain decoding) is always added")
    ap.add_argument("--mode", choices=["chain", "recursive"], default="chain")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per prompt and k (median is kept)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many prompts per category")
    ap.add_argument("--no-bos", action="store_true", help="do not prefix the bos token")
    ap.add_argument("--json", default=None, help="also write the full report here")
    ap.add_argument("--samples", default=None, help="write the k=0 continuations (text) of every prompt here")
    args = ap.parse_args(argv)

    model = load_model(args.model)
    cfg = model.config
    ks = sorted({0} | {int(x) for x in args.ks.split(",") if x.strip()})
    cats = args.categories.split(",") if args.categories else None
    prompts = load_prompts(Path(args.prompts), cats, args.limit)
    bos = [] if args.no_bos or cfg.bos_token_id is None else [cfg.bos_token_id]

    report = {"model": str(model.path), "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
              "mode": "chain", "temperature": 0.0, "bos_prefixed": bool(bos),
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "python": platform.python_version()},
              "categories": {}}
    samples = []
    for cat, rows in prompts.items():
        per_k_results = {k: [] for k in ks}
        per_k_time = {k: 0.0 for k in ks}
        for r in rows:
            ids = bos + model.encode(r["text"])
            for k in ks:
                res, sec = run_one(model, ids, k, args.max_new_tokens, args.repeats, args.mode)
                per_k_results[k].append(res)
                per_k_time[k] += sec
            samples.append({"id": r["id"], "category": cat, "prompt": r["text"],
                            "continuation_k0": model.decode(per_k_results[0][-1].token_ids)})
        base = per_k_results[0]
        out = []
        for k in ks:
            same = all(a.token_ids == b.token_ids for a, b in zip(per_k_results[k], base))
            out.append(summarise(k, per_k_results[k], per_k_time[k], per_k_time[0], same))
        report["categories"][cat] = out
        print(f"[{cat}] done: {len(rows)} prompts", file=sys.stderr, flush=True)

    # best k per category by wall-clock
    report["best_k"] = {c: max(rows, key=lambda r: r["speedup_vs_k0"])["k"] for c, rows in report["categories"].items()}
    print(fmt_table(report))
    print("best k by wall-clock:", report["best_k"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.samples:
        with open(args.samples, "w", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
