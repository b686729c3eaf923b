"""Drafters: what proposes the k draft tokens of a speculative cycle. The decoder's loop (speculative.py) calls
the same three methods whatever drafts:

    prefill(dec)            after the target's prefill (dec.tokens = prompt, dec.pending = its next token)
    logits(dec, j, ext)     the draft distribution's logits [V] for depth j; ext = committed tokens + [pending]
                            + the drafts d_1..d_j chosen so far, so ext[len(dec.tokens) + j] is step j's input
    rollback(dec, N, a)     after verify kept a of the drafts (the target's cache is already cut to N + 1 + a)

MtpDrafter:        the MTP modules inside the target checkpoint (DeepSeek/GLM nextn, MiMo, Qwen `mtp.`), each
                   with its own KV cache over the committed rows (chain or recursive, SpeculativeDecoder.mode). Under
                   DSA with index_share_for_mtp_iteration, recursive steps >= 1 reuse step 0's top-k.
AssistantDrafter:  a separate small model that reads the TARGET's KV cache and keeps none of its own (Gemma 4's
                   `gemma4_assistant`), carrying a projected hidden from step to step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import MtpRefError


class MtpDrafter:
    """The checkpoint's MTP modules. Their caches and per-row outputs live on the decoder (dec.mtp_caches,
    dec._out), where the explainer and the tests read them."""

    shared_topk = None   # DSA: step 0's last-row selection this round (index_share_for_mtp_iteration)

    def prefill(self, dec) -> None:
        # rows that use prompt tokens only: module j, rows 0 .. N-2-j
        for j in range(len(dec.mtp_caches)):
            dec._mtp_rows(j, len(dec.tokens) - 1 - j, dec.tokens)

    def logits(self, dec, j: int, ext: list[int]) -> np.ndarray:
        N = len(dec.tokens)
        if dec.mode == "chain" or j == 0:
            lg = dec._mtp_rows(j, N, ext)[-1]
            if j == 0:
                self.shared_topk = getattr(dec.model, "mtp_topk", None)  # step 0's last row (row N-1)
            return lg
        # recursive: one provisional row at N-1+j fed with the previous step's output; with
        # index_share_for_mtp_iteration it attends to step 0's top-k instead of running the indexer
        share = {"reuse_topk": self.shared_topk} if getattr(dec.model, "mtp_index_share", False) else {}
        g, lg = dec.model.mtp_forward(0, [ext[N + j]], dec.mtp_out(0)[-1:], dec.mtp_caches[0], np.array([N + j]),
                                      last_only=True, **share)
        dec._out[0].append(g=g)
        return lg[-1]

    def rollback(self, dec, N: int, a: int) -> None:
        for j, c in enumerate(dec.mtp_caches):
            if dec.mode == "chain":
                # module j row i used tokens up to t[i+j+1] and drafts of depth < j: still valid when i+j+1 <= N+a
                keep = min(c.length, N + a - j, N)
            else:
                keep = min(c.length, N)  # provisional recursive rows were fed MTP outputs, not trunk hiddens
            c.truncate(max(keep, 0))
            dec._out[j].truncate(min(dec._out[j].length, c.length))


class AssistantDrafter:
    """A Gemma 4 assistant over a Gemma 4 target. Step 0 takes the pending token and the target's post-norm hidden
    of the last committed position; step j > 0 the previous draft and the previous step's projected hidden. Every
    step queries at position N (the target cache's length) and reads the target's cached K/V only."""

    def __init__(self, assistant, target):
        if not hasattr(target, "shared_kv"):
            raise MtpRefError(f"{assistant.path}: a Gemma 4 assistant drafts for a Gemma 4 target; "
                              f"{target.path} is a '{target.config.model_type}' checkpoint")
        assistant.check_target(target)
        self.assistant, self.target = assistant, target
        self.carried: np.ndarray | None = None      # [H_target]
        self.last: dict = {}                         # the last step's positions / hidden, for traces

    def prefill(self, dec) -> None:
        pass                                         # nothing of its own to fill: it reads the target's cache

    def logits(self, dec, j: int, ext: list[int]) -> np.ndarray:
        N = len(dec.tokens)
        if j == 0:
            self.carried = dec.h[-1]                 # the target hidden that chose `pending`
        lg, self.carried, _ = self.assistant.step(self.target, dec.cache, ext[N + j], self.carried)
        self.last = {"position": N, "hidden": self.carried}
        return lg

    def rollback(self, dec, N: int, a: int) -> None:
        pass                                         # no cache of its own; the target's was cut by the decoder


def load_drafter(path, target):
    """--drafter DIR: an assistant checkpoint for `target`."""
    from .gemma4 import load_assistant
    return AssistantDrafter(load_assistant(Path(path)), target)


def drafter_trace(drafter: AssistantDrafter, ids: list[int], k: int) -> dict[str, np.ndarray]:
    """One greedy drafting round of k steps after the prompt `ids`, teacher-free: the keys drafter.* of a trace
    (trace.py). The target runs over the prompt; its greedy next token starts step 0."""
    from .speculative import SpeculativeDecoder
    dec = SpeculativeDecoder(drafter.target, 0)
    dec.prefill(list(ids))
    ext = dec.tokens + [dec.pending]
    toks, pos, hid, lgs = [], [], [], []
    for j in range(k):
        toks.append(ext[-1])
        lg = drafter.logits(dec, j, ext)
        pos.append(drafter.last["position"])
        hid.append(drafter.last["hidden"])
        lgs.append(lg)
        ext = ext + [int(np.argmax(lg))]
    return {"drafter.input_ids": np.asarray(toks, np.int64), "drafter.positions": np.asarray(pos, np.int64),
            "drafter.hidden": np.stack(hid).astype(np.float32), "drafter.logits": np.stack(lgs).astype(np.float32)}
