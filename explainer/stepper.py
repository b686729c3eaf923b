"""The state machine of chapters 2 and 4: a SpeculativeDecoder that keeps the full p and q of each accept(),
for display."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mtp_ref.sampling import SamplingParams, probs_from_logits
from mtp_ref.speculative import SpeculativeDecoder, StepRecord


class RecordingDecoder(SpeculativeDecoder):
    """The engine's decoder, unchanged, plus a copy of the distributions its accept() compared.

    last_p[j]: target distribution at verify row j (the sampling distribution; softmax at T=1 when greedy).
    last_q[j]: draft distribution of d_(j+1) (None when greedy: the draft is the argmax).
    """

    last_p: list[np.ndarray]
    last_q: list[np.ndarray | None]

    def accept(self, drafts, qs, logits):
        sp = SamplingParams(1.0) if self.sp.greedy else self.sp
        self.last_p = [probs_from_logits(row, sp) for row in logits]
        self.last_q = list(qs)
        return super().accept(drafts, qs, logits)


@dataclass
class StepView:
    """One cycle, as the page draws it."""
    rec: StepRecord
    tokens_before: list[int]          # committed tokens before the cycle (main cache rows 0 .. N-1)
    p: list[np.ndarray]               # target distribution per verify row (k+1 rows)
    q: list[np.ndarray | None]        # draft distribution per depth
    greedy: bool
    start: dict                       # cache lengths when the cycle began (main, mtp)
    kinds: list[str] = field(default_factory=list)   # per new token: "accepted" | "correction" | "bonus"


def view_of(dec: RecordingDecoder, rec: StepRecord, tokens_before: list[int], start: dict) -> StepView:
    k = len(rec.drafts)
    kinds = ["accepted"] * rec.accepted + ["bonus" if rec.accepted == k else "correction"]
    if k == 0:
        kinds = ["plain"]
    return StepView(rec, tokens_before, getattr(dec, "last_p", []), getattr(dec, "last_q", []),
                    dec.sp.greedy, start, kinds)


def residual(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """normalise(max(p - q, 0)): where the correction token is drawn from after a rejection."""
    r = np.maximum(p - q, 0.0)
    s = r.sum()
    return r / s if s > 0 else r


def cache_rows(view: StepView, mode: str) -> list[dict]:
    """The main and MTP cache rows before and after rollback, with the token each row holds.

    Main cache row i holds token t_i. MTP module j's row i pairs hidden i with token t_(i+j+1)
    (recursive mode: module 0 only, plus provisional rows fed with drafts).
    """
    rec = view.rec
    ext = view.tokens_before + [rec.pending] + [d.token for d in rec.drafts]
    rows = [{"cache": "main", "before": rec.cache_before["main"], "after": rec.cache_after["main"],
             "tokens": ext[: rec.cache_before["main"]], "first_new": view.start["main"]}]
    for j, (lb, la) in enumerate(zip(rec.cache_before["mtp"], rec.cache_after["mtp"])):
        shift = j + 1 if mode == "chain" else 1
        rows.append({"cache": f"MTP {j}", "before": lb, "after": la,
                     "tokens": [ext[i + shift] if i + shift < len(ext) else None for i in range(lb)],
                     "first_new": view.start["mtp"][j]})
    return rows
