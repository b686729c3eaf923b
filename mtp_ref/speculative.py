"""MTP self-speculative decoding: prefill -> (draft -> verify -> accept -> rollback)*.

State between cycles:
  * main cache holds tokens 0 .. N-1; `pending` is token N (already chosen, not yet fed);
  * h[i] is the trunk's final-normed hidden at position i (i < N);
  * MTP module j has its own one-layer cache; its row i pairs (h or g^{j-1})[i] with token
    t[i+j+1] at rotary position i+j+1 and predicts t[i+j+2] (transformers' MtpModel layout).

chain mode:     module j drafts depth j+1 (the released multi-module layout, k <= modules).
recursive mode: module 0 drafts every depth, feeding its own post-norm output back as the
                hidden of the next row (what engines do with DeepSeek-V3's single module).
The drafting itself is behind a drafter (drafters.py): the checkpoint's MTP modules as above (MtpDrafter,
the default) or a separate model that reads the main cache and keeps none (Gemma 4's assistant).

Verification of k drafts is ONE trunk forward over [pending, d1 .. dk]. Greedy: accept while
d_j equals the target argmax; the first mismatch is replaced by the argmax, or a bonus token
follows when all k pass. Sampling: accept d_j with prob min(1, p(d_j)/q(d_j)), else draw from
normalise(max(p - q, 0)); bonus from p. Output is then distributed exactly as plain sampling.

Rollback of the main cache after a rejection (recurrent Gated DeltaNet layers cannot drop rows):
rollback="snapshot":  cache.truncate(N + 1 + a); recurrent layers restore the state they kept
                      after that token of the verify forward (per-token snapshots, llama.cpp's way).
rollback="redecode":  the readable reference: checkpoint the cache before verify, restore it on a
                      rejection and run the trunk again over the kept tokens [pending, d1 .. da].
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .cache import LayerCache
from .drafters import MtpDrafter
from .errors import MtpRefError
from .model import Model
from .sampling import SamplingParams, probs_from_logits, sample, top_probs


@dataclass
class DraftInfo:
    token: int
    q: float                           # draft probability of the token (1.0 when greedy)
    top: list[tuple[int, float]]       # top-5 of the draft distribution


@dataclass
class StepRecord:
    """Everything one cycle did, for the explainer and for tests."""
    position: int                      # N: position of `pending` (the first verified token)
    pending: int                       # token fed first to the verify forward
    drafts: list[DraftInfo]
    target_argmax: list[int]           # argmax of the target at each verify row (k+1 rows)
    p_of_draft: list[float]            # target prob p_j(d_j) (greedy: 1 if argmax, else 0)
    accept_u: list[float | None]       # the uniform draw of each accept test (None when greedy)
    accepted: int                      # a: drafts accepted
    new_tokens: list[int]              # d_1..d_a then the correction / bonus token
    residual_top: list[tuple[int, float]] | None  # top of normalise(max(p-q,0)) on a sampled rejection
    cache_before: dict                 # lengths of main and MTP caches before rollback
    cache_after: dict


@dataclass
class Stats:
    k: int
    target_forwards: int = 0
    mtp_forwards: int = 0
    hist: list[int] = field(default_factory=list)
    redecode_forwards: int = 0         # extra trunk forwards of rollback="redecode"
    prefill_seconds: float = 0.0
    seconds: float = 0.0
    bytes_read: int = 0                # weight bytes read after prefill
    generated: int = 0

    def as_dict(self) -> dict:
        rounds = sum(self.hist)
        a = np.arange(len(self.hist))
        per_depth = [(sum(self.hist[d + 1:]) / rounds if rounds else 0.0) for d in range(self.k)]
        return {
            "draft_depth": self.k,
            "generated_tokens": self.generated,
            "target_forwards": self.target_forwards,
            "mtp_forwards": self.mtp_forwards,
            "verify_rounds": rounds if self.k else 0,
            "accepted_length_histogram": list(self.hist) if self.k else [],
            "acceptance_per_depth": per_depth,
            "mean_accepted_length": float((a * np.array(self.hist)).sum() / rounds) if rounds and self.k else 0.0,
            "tokens_per_target_forward": self.generated / self.target_forwards if self.target_forwards else float(self.generated),
            "redecode_forwards": self.redecode_forwards,
            "seconds": self.seconds,
            "prefill_seconds": self.prefill_seconds,
            "weight_bytes_per_token": self.bytes_read / self.generated if self.generated else 0.0,
        }


class SpeculativeDecoder:
    def __init__(self, model: Model, draft_depth: int = 0, mode: str = "chain",
                 sampling: SamplingParams = SamplingParams(), seed: int = 0, rollback: str = "snapshot",
                 drafter=None):
        """drafter: what drafts (drafters.py); None: the checkpoint's own MTP modules (drafters.MtpDrafter)."""
        cfg = model.config
        if mode not in ("chain", "recursive"):
            raise MtpRefError(f"--mode must be 'chain' or 'recursive', not '{mode}'")
        if rollback not in ("snapshot", "redecode"):
            raise MtpRefError(f"--rollback must be 'snapshot' or 'redecode', not '{rollback}'")
        if (rollback == "snapshot" and "linear_attention" in cfg.layer_types and model.delta_rule != "chunked"
                and draft_depth + 1 > model.recurrent_max_tokens):
            raise MtpRefError(f"--draft {draft_depth}: a verify window of {draft_depth + 1} tokens exceeds the "
                              f"{model.recurrent_max_tokens} tokens for which the recurrent layers keep per-token "
                              f"snapshots; use a smaller --draft or --rollback redecode")
        if draft_depth < 0:
            raise MtpRefError("--draft must be >= 0")
        if draft_depth > 0 and cfg.num_mtp_modules == 0 and drafter is None:
            declared = cfg.num_nextn_predict_layers
            why = (f"config.json declares {cfg.mtp_declared_by}={declared} but the weights hold no MTP module "
                   f"(a conversion or quantisation dropped them)" if declared else
                   f"the '{cfg.model_type}' checkpoint has no MTP modules")
            raise MtpRefError(f"{model.path}: cannot draft: {why}; use --draft 0, a checkpoint with MTP weights, "
                              f"or a separate drafter (--drafter DIR, e.g. a Gemma 4 assistant)")
        if mode == "chain" and draft_depth > cfg.num_mtp_modules and drafter is None:
            raise MtpRefError(f"chain mode drafts depth j with module j, and this checkpoint has "
                              f"{cfg.num_mtp_modules} MTP module(s): use --draft <= {cfg.num_mtp_modules} "
                              f"or --mode recursive")
        self.model, self.k, self.mode, self.sp, self.rollback_mode = model, draft_depth, mode, sampling, rollback
        self.rng = np.random.default_rng(seed)
        n_mod = 0 if draft_depth == 0 or drafter is not None else (draft_depth if mode == "chain" else 1)
        self.drafter = MtpDrafter() if drafter is None else drafter
        self.cache = model.new_cache() if rollback == "snapshot" else model.new_cache(keep_snapshots=False)
        self._saved = None                                     # pre-verify checkpoint (rollback="redecode")
        self.mtp_caches = [model.new_mtp_cache() for _ in range(n_mod)]
        # per-row hidden histories, in growable buffers (appending must not copy the whole history each step)
        self._out = [LayerCache() for _ in range(n_mod)]      # module j's post-norm outputs g^j, per row
        self._h = LayerCache()                                 # trunk hidden h per committed position
        self.tokens: list[int] = []                            # committed tokens (in the main cache)
        self.pending: int | None = None
        self.prompt_len = 0
        self.stats = Stats(k=draft_depth, hist=[0] * (draft_depth + 1))
        self.records: list[StepRecord] = []

    # -------------------------------------------------------------- helpers
    @property
    def h(self) -> np.ndarray:
        return self._h.view("h")                               # [N, H]

    def mtp_out(self, j: int) -> np.ndarray:
        return self._out[j].view("g")                          # [rows of module j, H]

    def _choose(self, logits: np.ndarray) -> tuple[int, np.ndarray | None]:
        if self.sp.greedy:
            return int(np.argmax(logits)), None
        p = probs_from_logits(logits, self.sp)
        return sample(p, self.rng), p

    @property
    def generated(self) -> list[int]:
        out = self.tokens[self.prompt_len:]
        return out + ([self.pending] if self.pending is not None else [])

    def cache_lengths(self) -> dict:
        return {"main": self.cache.length, "mtp": [c.length for c in self.mtp_caches]}

    def _mtp_rows(self, j: int, stop: int, ext: list[int]):
        """Run module (j in chain mode, 0 in recursive mode's first step) over its rows
        cache.length .. stop-1, with previous hiddens from h (j = 0) or module j-1's outputs."""
        c = self.mtp_caches[j]
        r0 = c.length
        if r0 >= stop:
            return None
        prev = self.h if j == 0 else self.mtp_out(j - 1)
        rows = np.arange(r0, stop)
        module = j if self.mode == "chain" else 0
        g, logits = self.model.mtp_forward(module, [ext[i + j + 1] for i in rows], prev[r0:stop], c, rows + j + 1,
                                           last_only=True)
        self._out[j].truncate(r0)
        self._out[j].append(g=g)
        return logits

    # -------------------------------------------------------------- named steps
    def prefill(self, prompt: list[int]) -> int:
        """Trunk over the prompt, first token chosen, MTP caches filled over the prompt rows."""
        if not prompt:
            raise MtpRefError("the prompt is empty; give at least one token")
        t0 = time.perf_counter()
        self.model.reset_meter()
        h, logits = self.model.forward(np.asarray(prompt), self.cache)
        self._h.append(h=h)
        self.tokens, self.prompt_len = list(prompt), len(prompt)
        self.pending, _ = self._choose(logits[-1])
        self.drafter.prefill(self)
        self.stats.prefill_seconds = time.perf_counter() - t0
        self.model.reset_meter()
        return self.pending

    def draft(self) -> tuple[list[int], list[np.ndarray | None], list[DraftInfo]]:
        """k draft tokens with their draft distributions q (None when greedy)."""
        ext = self.tokens + [self.pending]
        drafts, qs, infos = [], [], []
        for j in range(self.k):
            logits = self.drafter.logits(self, j, ext)
            self.stats.mtp_forwards += 1
            d, q = self._choose(logits)
            if q is not None:
                top = np.argsort(-q, kind="stable")[:5]
                infos.append(DraftInfo(d, float(q[d]), [(int(t), float(q[t])) for t in top]))
            else:
                infos.append(DraftInfo(d, 1.0, top_probs(logits, 5)))
            drafts.append(d)
            qs.append(q)
            ext = ext + [d]
        return drafts, qs, infos

    def verify(self, drafts: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """ONE trunk forward over [pending, d1 .. dk]: k+1 rows of (hidden, logits)."""
        self.stats.target_forwards += 1
        if self.rollback_mode == "redecode":
            self._saved = self.cache.checkpoint()
        return self.model.forward(np.asarray([self.pending] + drafts), self.cache)

    def accept(self, drafts, qs, logits):
        """Greedy match or rejection sampling. Returns (a, new tokens, u draws, p(d), residual top)."""
        us, pds, resid = [], [], None
        if self.sp.greedy:
            am = np.argmax(logits, axis=-1)
            a = 0
            while a < len(drafts) and drafts[a] == am[a]:
                a += 1
            pds = [1.0 if drafts[j] == am[j] else 0.0 for j in range(len(drafts))]
            return a, drafts[:a] + [int(am[a])], [None] * len(drafts), pds, None
        for j, d in enumerate(drafts):
            p = probs_from_logits(logits[j], self.sp)
            q = qs[j]
            u = float(self.rng.random())
            us.append(u)
            pds.append(float(p[d]))
            if u < min(1.0, p[d] / q[d]):
                continue
            r = np.maximum(p - q, 0.0)
            r /= r.sum()
            top = np.argsort(-r)[:5]
            resid = [(int(t), float(r[t])) for t in top if r[t] > 0]
            return j, drafts[:j] + [sample(r, self.rng)], us, pds, resid
        bonus = sample(probs_from_logits(logits[len(drafts)], self.sp), self.rng)
        return len(drafts), drafts + [bonus], us, pds, None

    def rollback(self, N: int, a: int, h_new: np.ndarray, drafts: list[int] = ()) -> None:
        """Keep pending + a accepted drafts in the main cache; cut drafter rows that saw a rejected draft."""
        if self.rollback_mode == "redecode" and a + 1 < len(h_new):
            # the reference: back to the state before verify, then decode the kept tokens again
            self.cache.restore(self._saved)
            h_new, _ = self.model.forward(np.asarray([self.pending] + list(drafts[:a])), self.cache)
            self.stats.redecode_forwards += 1
        else:
            self.cache.truncate(N + 1 + a)
        self._h.append(h=h_new[: a + 1])
        self.drafter.rollback(self, N, a)

    def step(self) -> StepRecord:
        """One cycle (or one plain decode step when k = 0); commits >= 1 token."""
        if self.pending is None:
            raise MtpRefError("call prefill() before step()")
        N = len(self.tokens)
        self.model.reset_meter()
        if self.k == 0:
            self.stats.target_forwards += 1
            if self.sp.greedy:                       # the argmax is all a greedy step needs
                h, am = self.model.forward_greedy(np.asarray([self.pending]), self.cache)
                nxt = top = int(am[-1])
            else:
                h, logits = self.model.forward(np.asarray([self.pending]), self.cache)
                nxt, _ = self._choose(logits[-1])
                top = int(np.argmax(logits[-1]))
            self.tokens.append(self.pending)
            self._h.append(h=h)
            rec = StepRecord(N, self.pending, [], [top], [], [], 0, [nxt], None,
                             self.cache_lengths(), self.cache_lengths())
            self.pending = nxt
        else:
            drafts, qs, infos = self.draft()
            h, logits = self.verify(drafts)
            a, new, us, pds, resid = self.accept(drafts, qs, logits)
            before = self.cache_lengths()
            self.rollback(N, a, h, drafts)
            self.tokens += [self.pending] + drafts[:a]
            rec = StepRecord(N, self.pending, infos, [int(x) for x in np.argmax(logits, -1)], pds, us, a, new,
                             resid, before, self.cache_lengths())
            self.pending = new[-1]
            self.stats.hist[a] += 1
        self.stats.bytes_read += self.model.bytes_read
        self.records.append(rec)
        return rec


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    stats: dict
    steps: list[StepRecord]


def generate(model: Model, prompt_ids: list[int], max_new_tokens: int = 32, draft_depth: int = 0,
             mode: str = "chain", temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop_at_eos: bool = True, rollback: str = "snapshot", drafter=None) -> GenerationResult:
    """Generate up to max_new_tokens tokens after prompt_ids (stops early at an eos token). drafter: see
    SpeculativeDecoder (None: the checkpoint's MTP modules)."""
    if max_new_tokens < 1:
        raise MtpRefError("--max-new-tokens must be >= 1")
    cfg = model.config
    total = len(prompt_ids) + max_new_tokens + draft_depth
    if len(prompt_ids) > cfg.max_position_embeddings:
        raise MtpRefError(f"the prompt has {len(prompt_ids)} tokens but the model's context "
                          f"(max_position_embeddings in config.json) is {cfg.max_position_embeddings}")
    if total > cfg.max_position_embeddings:
        raise MtpRefError(f"prompt ({len(prompt_ids)}) + max_new_tokens ({max_new_tokens}) + draft ({draft_depth}) "
                          f"= {total} tokens exceeds max_position_embeddings {cfg.max_position_embeddings}")
    dec = SpeculativeDecoder(model, draft_depth, mode, SamplingParams(temperature, top_k, top_p), seed, rollback,
                             drafter)
    t0 = time.perf_counter()
    dec.prefill(list(prompt_ids))
    eos = set(cfg.eos_token_id) if stop_at_eos else set()
    while len(dec.generated) < max_new_tokens and not (eos & set(dec.generated)):
        dec.step()
    out = dec.generated
    for i, t in enumerate(out):
        if t in eos:
            out = out[: i + 1]
            break
    out = out[:max_new_tokens]
    dec.stats.seconds = time.perf_counter() - t0
    dec.stats.generated = len(out)
    return GenerationResult(out, model.decode(out), dec.stats.as_dict(), dec.records)
