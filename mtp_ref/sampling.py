"""Logits -> probabilities (temperature, top-k, top-p) and the draws, in float64 for exact sums."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .errors import MtpRefError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0   # 0 = greedy (argmax)
    top_k: int = 0             # 0 = off
    top_p: float = 1.0         # 1 = off

    def __post_init__(self):
        # a NaN temperature or an empty top-p nucleus does not fail later: it turns the distribution into NaNs,
        # and the draws and acceptance rates read from it into confident garbage, so refuse them here
        t, k, p = self.temperature, self.top_k, self.top_p
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t < 0:
            raise MtpRefError(f"temperature (--temperature) must be a finite number >= 0 (0 = greedy), got {t!r}")
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            raise MtpRefError(f"top_k (--top-k) must be an integer >= 0 (0 = off), got {k!r}")
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 < p <= 1.0:
            raise MtpRefError(f"top_p (--top-p) must be in (0, 1] (1 = off), got {p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def probs_from_logits(logits: np.ndarray, sp: SamplingParams) -> np.ndarray:
    """The distribution a token is drawn from; applied identically to target (p) and draft (q)."""
    z = logits.astype(np.float64) / sp.temperature                      # [V]
    if sp.top_k and sp.top_k < z.shape[-1]:
        kth = np.partition(z, -sp.top_k)[-sp.top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if sp.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        csum = np.cumsum(p[order])
        keep = csum - p[order] < sp.top_p                                # smallest set with mass >= top_p
        mask = np.zeros_like(p, bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return p                                                             # [V] float64


def sample(p: np.ndarray, rng: np.random.Generator) -> int:
    """Inverse-CDF draw: one uniform per token, so a seed fixes the whole run."""
    c = np.cumsum(p)
    return int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), len(p) - 1))


def top_probs(logits: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    """The k most likely tokens of softmax(logits) (temperature 1) with their probabilities, most likely
    first; the same numbers as sorting probs_from_logits(logits, T=1) without sorting the whole vocabulary."""
    z = logits.astype(np.float64)                                        # [V]
    m = z.max()
    lse = m + np.log(np.sum(np.exp(z - m)))
    k = min(k, z.shape[-1])
    top = np.argpartition(-z, k - 1)[:k]                                 # [k], unordered
    top = top[np.lexsort((top, -z[top]))]                                # by probability, then by id
    return [(int(t), float(np.exp(z[t] - lse))) for t in top]
