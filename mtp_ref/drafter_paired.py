"""The llama.cpp (Step-3.5 style) way of running several MTP modules: a drafter for parity with that engine.

Our chain mode (drafters.MtpDrafter, SpeculativeDecoder(mode="chain")) follows DeepSeek and transformers'
MtpModel: module j's row i pairs module j-1's output at row i with token t[i+j+1], at position i+j+1, so every
committed row of module j depends on module j-1's outputs.

llama.cpp's multi-module path (src/models/step35.cpp `graph_mtp`, the speculative driver bumping
`nextn_layer_offset` per draft step; see ../shared/reference/mtp_families.md 9.2) instead pairs EVERY module's
committed rows with the trunk: row i of module j takes the trunk's hidden h_i and token t[i+1] at position i+1,
exactly like module 0. Only the newest, drafting row of module j >= 1 is chained: it takes the output of
module j-1's drafting row and the draft d_j, at position N+j. llama.cpp seeds that step with the block output
BEFORE shared_head.norm (`t_h_nextn`); set Model.mtp_chain = "pre_norm" for that, "post_norm" otherwise.

Depth 1 is the same either way; from depth 2 on module j >= 1 attends over different cached rows, so the draft
distributions differ and a port must pick the convention its engine of record uses. Which one Step's training
used is not stated in the release; our oracle (transformers' MtpModel) is the chain.

Caveat: a module j >= 1 drafting row sits at position N+j while its cache ends at position N; the causal and
sliding-window masks here count cache rows (as everywhere in this engine), llama.cpp's count positions, so with a
sliding window smaller than the context the two can differ by the j-1 skipped positions at the window's edge.
"""

from __future__ import annotations

import numpy as np

from .cache import LayerCache
from .errors import MtpRefError


class TrunkPairedDrafter:
    def __init__(self, model, k: int):
        if not 0 < k <= model.config.num_mtp_modules:
            raise MtpRefError(f"the trunk-paired drafter runs module j at depth j: --draft must be 1 .. "
                              f"{model.config.num_mtp_modules} for this checkpoint, not {k}")
        self.model = model
        self.caches = [LayerCache() for _ in range(k)]
        self.carry: np.ndarray | None = None         # [1, H] output of the previous depth's drafting row

    def _rows(self, dec, j: int, stop: int, ext: list[int]):
        """Module j over its rows cache.length .. stop-1: row i = (trunk h_i, token ext[i+1]) at position i+1."""
        c = self.caches[j]
        r0 = c.length
        if r0 >= stop:
            return None, None
        rows = np.arange(r0, stop)
        return self.model.mtp_forward(j, [ext[i + 1] for i in rows], dec.h[r0:stop], c, rows + 1, last_only=True)

    def prefill(self, dec) -> None:
        for j in range(len(self.caches)):
            self._rows(dec, j, len(dec.tokens) - 1, dec.tokens)

    def logits(self, dec, j: int, ext: list[int]) -> np.ndarray:
        N = len(dec.tokens)
        g, lg = self._rows(dec, j, N, ext)           # trunk-paired rows up to (h_{N-1}, pending t_N)
        if j == 0:
            self.carry = g[-1:]
            return lg[-1]
        g, lg = self.model.mtp_forward(j, [ext[N + j]], self.carry, self.caches[j], np.array([N + j]),
                                       last_only=True)
        self.carry = g
        return lg[-1]

    def rollback(self, dec, N: int, a: int) -> None:
        # rows 0..N-1 paired committed trunk hiddens with committed tokens (t_N was pending, now kept); the
        # drafting rows of modules j >= 1 saw drafts: cut them
        for c in self.caches:
            c.truncate(min(c.length, N))
