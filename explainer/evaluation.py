"""Chapter 5's computations: the bundled evaluation prompts, aggregation of the runs, the speedup formula."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mtp_ref import MtpRefError

from .common import ROOT
from .roofline import expected_tokens

ENV_PROMPTS = "MTP_REF_PROMPTS"
DEFAULT_PROMPTS = ROOT / "mtp_ref" / "eval" / "prompts.jsonl"


def prompts_path() -> Path:
    return Path(os.environ.get(ENV_PROMPTS) or DEFAULT_PROMPTS)


def load_prompts(path: Path) -> dict[str, list[dict]]:
    """{category: [{"id", "text"}, ...]} in file order. Raises MtpRefError with the line on bad input."""
    if not path.exists():
        raise MtpRefError(f"{path}: no evaluation prompts file (JSON lines with category, id, text)")
    out: dict[str, list[dict]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out.setdefault(str(rec["category"]), []).append({"id": str(rec["id"]), "text": str(rec["text"])})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise MtpRefError(f"{path}:{n}: not a {{category, id, text}} JSON line ({e})") from None
    if not out:
        raise MtpRefError(f"{path}: the file holds no prompts")
    return out


def aggregate(runs: list[dict]) -> pd.DataFrame:
    """One row per (category, temperature, k): summed counts over prompts, then the ratios.

    Decode-phase only: tokens after the first (which the prefill forward yields) per verify forward,
    and per second of decoding (prefill time excluded).
    """
    df = pd.DataFrame(runs)
    rows = []
    for (cat, temp, k), g in df.groupby(["category", "temperature", "k"], sort=True):
        hist = np.sum([h for h in g["hist"]], axis=0) if k else np.zeros(1)
        rounds = hist.sum()
        decode_s = (g["seconds"] - g["prefill_seconds"]).sum()
        decoded = (g["generated"] - 1).sum()      # the first token comes from the prefill forward
        row = {"category": cat, "temperature": temp, "k": k, "prompts": len(g), "generated": int(g["generated"].sum()),
               "target_forwards": int(g["target_forwards"].sum()), "decode_seconds": decode_s,
               "tokens_per_forward": decoded / max(g["target_forwards"].sum(), 1),
               "tokens_per_second": decoded / decode_s if decode_s > 0 else float("nan"),
               "hist": hist.tolist(),
               "acceptance_per_depth": [hist[d + 1:].sum() / rounds for d in range(k)] if k and rounds else []}
        rows.append(row)
    out = pd.DataFrame(rows)
    base = out[out.k == 0].set_index(["category", "temperature"])["tokens_per_second"]
    out["speedup"] = [r.tokens_per_second / base.get((r.category, r.temperature), np.nan) for r in out.itertuples()]
    return out


def fitted_acceptance(row) -> float:
    """i.i.d. acceptance a that explains a row's first-depth rate: P(draft 1 accepted) = a."""
    return float(row["acceptance_per_depth"][0]) if row["acceptance_per_depth"] else float("nan")


def analytic_speedup(a: float, c: float, ks, verify_cost=None) -> list[float]:
    """E[tokens per round] / (v_k + k c), in units of one plain 1-token forward.

    v_k = cost of the verify forward over k+1 tokens (1 when memory bound; measured on a CPU),
    c = cost of one MTP draft forward.
    """
    v = verify_cost or {}
    return [expected_tokens(a, int(k)) / (v.get(int(k), 1.0) + k * c) for k in ks]
