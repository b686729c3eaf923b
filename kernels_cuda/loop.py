"""Greedy decoding with the token feedback on the device: the host launches, the GPU chooses.

    from kernels_cuda.loop import generate_greedy
    res = generate_greedy(cm, prompt_ids, 64, draft_depth=3, mode="recursive")   # == mtp_ref.speculative.generate

The same algorithm as mtp_ref.speculative (prefill, then draft -> verify -> accept -> rollback), the same tokens,
but nothing the GPU computes comes back to the host except ints:

plain (k = 0)   one graph per decode step: trunk(1) + argmax + `loop_feedback`, which writes the next step's meta
                (ids[0] = argmax, start += 1, positions[0] += 1) and appends the token to a device buffer. The
                host replays it B times back to back and synchronises once per burst; tokens after an EOS are
                dropped and the cache cut back (DeviceCache.truncate).
speculative     every position's token lives in a device array TOK (prompt, pending, drafts), every trunk hidden
                row in Hh, module j's outputs g in G[j] (chain mode). Per call a small eager kernel (`loop_prep`)
                writes meta from TOK and copies the MTP module's previous hiddens device-to-device into PH; the
                captured graph runs the forward, its argmax and `put_draft` (TOK[p + 1] = argmax of the last row).
                The verify graph is trunk(k + 1) + argmax + `loop_accept` (the longest prefix where draft ==
                argmax, the correction / bonus token written to TOK) + `save_rows` (Hh rows N .. N+k). One D2H
                of 2k + 2 ints and one sync per cycle; rollback is cache lengths on the host.

Falls back to mtp_ref.speculative.generate (the SpeculativeDecoder path, unchanged) for what this loop does not
do: Gated DeltaNet layers (their rollback picks snapshots per forward), the "pre_norm" MTP chain, verify windows
over 16 tokens. Sampling and separate drafters (Gemma 4 assistants) never reach it (mtp_ref/cli.py decides).

draft_filter: an object with key (hashable) and launch(cm, stream, meta, am, n, module, depth), called inside the
captured MTP graph right after the argmax of its n rows: it may rewrite am[n - 1] (the draft) from device tables,
e.g. ForcedDrafts (benchmarks/bench_model7b.py) without host work.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
from numba import cuda

from mtp_ref.errors import MtpRefError
from mtp_ref.speculative import GenerationResult, SpeculativeDecoder, Stats, generate

from . import kernels as K
from .backend import NMAX, CudaModel
from .intrinsics import SIM

BURST = 16          # plain decode steps replayed per host sync


# ----------------------------------------------------------------------------- kernels
# reference: SpeculativeDecoder.step (k = 0): pending = argmax; the next forward feeds it at the next position
@cuda.jit
def loop_feedback(meta, am, out, cnt):
    if cuda.grid(1) == 0:
        t = am[0]
        meta[K.M_IDS] = t
        meta[K.M_START] += 1
        meta[K.M_POS] += 1
        out[cnt[0]] = t
        cnt[0] += 1


# reference: CudaModel._set_meta + the PH upload of CudaModel.mtp_forward
@cuda.jit
def loop_prep(meta, tok, start, n, pos0, src, soff, dst, nel):
    """meta for n rows at positions pos0.. with ids tok[pos0..]; dst[:nel] = src[soff: soff + nel]."""
    tid = cuda.grid(1)
    if tid == 0:
        meta[K.M_START] = start
        meta[K.M_N] = n
        for t in range(n):
            meta[K.M_POS + t] = pos0 + t
            meta[K.M_IDS + t] = tok[pos0 + t]
    for e in range(tid, nel, cuda.gridDim.x * cuda.blockDim.x):
        dst[e] = src[soff + e]


# reference: SpeculativeDecoder.draft (d = argmax of the last row; ext + [d])
@cuda.jit
def put_draft(meta, n, am, tok):
    if cuda.grid(1) == 0:
        tok[meta[K.M_POS + n - 1] + 1] = am[n - 1]      # the row at position p drafts the token at p + 1


# reference: the per-row history appends of SpeculativeDecoder (h, g), rows meta[M_START] ..
@cuda.jit
def save_rows(meta, src, dst, nel, H):
    base = meta[K.M_START] * H
    for e in range(cuda.grid(1), nel, cuda.gridDim.x * cuda.blockDim.x):
        dst[base + e] = src[e]


# reference: SpeculativeDecoder.accept (greedy)
@cuda.jit
def loop_accept(meta, tok, am, k, cyc):
    """cyc = [d_1..d_k | argmax_0..argmax_k | a]; tok[N + 1 + a] = argmax_a (the correction or the bonus)."""
    if cuda.grid(1) == 0:
        N = meta[K.M_START]
        a = 0
        for t in range(k):
            cyc[t] = tok[N + 1 + t]
        for t in range(k + 1):
            cyc[k + t] = am[t]
        while a < k and cyc[a] == am[a]:
            a += 1
        cyc[2 * k + 1] = a
        tok[N + 1 + a] = am[a]


# reference: benchmarks/bench_model7b.py ForcedDrafts (logits bent to ref[target] when crc32 says so)
@cuda.jit
def force_draft(meta, n, am, force, ref, L, module):
    if cuda.grid(1) == 0:
        target = meta[K.M_POS + n - 1] + 1
        if target < L and force[module * L + target] != 0:
            am[n - 1] = ref[target]


_FILTER_IDS = itertools.count()


class ForcedDraftFilter:
    """Drafts replaced by ref[target] where crc32(f"{salt}-{module}-{target}") / 2**32 < hit_rate: the decisions
    of ForcedDrafts (the module index is the one mtp_forward gets: 0 for every depth in recursive mode)."""

    def __init__(self, reference, hit_rate, modules: int, salt=0):
        import zlib
        L = len(reference)
        f = np.zeros((modules, L), np.int32)
        for m in range(modules):
            for t in range(L):
                f[m, t] = zlib.crc32(f"{salt}-{m}-{t}".encode()) / 2**32 < hit_rate
        self.force, self.L = cuda.to_device(f.ravel()), L
        self.ref = cuda.to_device(np.asarray(reference, np.int32))
        self.key = ("forced", next(_FILTER_IDS))     # not id(): a freed filter's id may come back

    def launch(self, cm, stream, meta, am, n, module, depth):
        force_draft[1, 1, stream](meta, n, am, self.force, self.ref, self.L, module)


# ----------------------------------------------------------------------------- state kept per model
class _LoopState:
    """Caches and device buffers of one (k, mode), kept on the CudaModel: the captured graphs bake their
    addresses, so reusing them keeps the graphs valid across calls."""

    def __init__(self, cm: CudaModel, k: int, mode: str):
        H, cap = cm.config.hidden_size, cm.cap
        self.cache = cm.new_cache()
        n_mod = 0 if k == 0 else (k if mode == "chain" else 1)
        self.mtp_caches = [cm.new_mtp_cache() for _ in range(n_mod)]
        i32 = np.int32
        self.tok = cuda.to_device(np.zeros(cap + k + 2, i32))
        self.cnt = cuda.to_device(np.zeros(1, i32))
        self.out = cuda.to_device(np.zeros(max(BURST, 1), i32))
        self.out_host = cuda.pinned_array(BURST, i32)
        self.zero = cuda.pinned_array(1, i32)
        self.zero[0] = 0
        self.cyc = cuda.to_device(np.zeros(2 * k + 2, i32))
        self.cyc_host = cuda.pinned_array(2 * k + 2, i32)
        self.cycles: list = []          # (drafts, target argmaxes) of each cycle of the last run
        if k:
            self.Hh = cuda.device_array((cap + k + 1) * H, np.float32)
            self.G = [cuda.device_array((cap + k + 1) * H, np.float32) for _ in range(max(0, n_mod - 1))]

    def reset(self):
        for c in [self.cache] + self.mtp_caches:
            c.length = c.start = c.nlast = c.slot = 0


def _state(cm, k, mode) -> _LoopState:
    states = cm.__dict__.setdefault("_loop_states", {})
    s = states.get((k, mode))
    if s is None:
        s = states[(k, mode)] = _LoopState(cm, k, mode)
    s.reset()
    return s


def _threads(nel: int):
    return (1, 1) if SIM else (max(1, min(64, -(-nel // 256))), 256)


def loop_supported(cm, draft_depth: int) -> str | None:
    """None when generate_greedy's device loop covers this model and depth; else why not (it falls back)."""
    if not isinstance(cm, CudaModel):
        return "not a CudaModel"
    if cm.linear:
        return "Gated DeltaNet layers (per-forward snapshot rollback)"
    if getattr(cm.base, "mtp_chain", "post_norm") != "post_norm":
        return "the pre_norm MTP chain"
    if draft_depth + 1 > NMAX:
        return f"verify windows over {NMAX} tokens"
    return None


# ----------------------------------------------------------------------------- entry point
def generate_greedy(cm: CudaModel, prompt_ids, max_new_tokens: int = 32, draft_depth: int = 0, mode: str = "chain",
                    stop_at_eos: bool = True, draft_filter=None, timing: bool = False) -> GenerationResult:
    """Greedy generation with the device loop; the tokens and stats keys of mtp_ref.speculative.generate
    (steps: [], no StepRecords; weight_bytes_per_token is not metered here); res.cycles: each cycle's drafts
    and target argmaxes (what StepRecord.drafts / target_argmax hold). timing: also
    decode_cpu_seconds (process_time after prefill), decode_sync_cpu_seconds (the part of it spent waiting in the
    bursts' / cycles' synchronisations) and decode_device_seconds (events around each burst/cycle)."""
    if loop_supported(cm, draft_depth) is not None:
        if draft_filter is not None:
            raise MtpRefError(f"draft_filter needs the device loop, which does not cover "
                              f"{loop_supported(cm, draft_depth)}")
        return generate(cm, prompt_ids, max_new_tokens, draft_depth, mode, stop_at_eos=stop_at_eos)
    if max_new_tokens < 1:
        raise MtpRefError("--max-new-tokens must be >= 1")
    P = len(prompt_ids)
    total = P + max_new_tokens + draft_depth
    if total > cm.config.max_position_embeddings:
        raise MtpRefError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) + draft ({draft_depth}) = {total} tokens "
                          f"exceeds max_position_embeddings {cm.config.max_position_embeddings}")
    if total + 1 > cm.cap:
        raise MtpRefError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) + draft ({draft_depth}) + 1 = "
                          f"{total + 1} rows exceed the CUDA backend's cache of {cm.cap} rows "
                          "(CudaModel(max_context=...))")
    # the SpeculativeDecoder does the argument checks and the prefill (trunk + MTP rows over the prompt)
    dec = SpeculativeDecoder(cm, draft_depth, mode)
    st = _state(cm, draft_depth, mode)
    dec.cache, dec.mtp_caches = st.cache, st.mtp_caches
    t0 = time.perf_counter()
    dec.prefill(list(prompt_ids))
    t1 = time.perf_counter()
    eos = set(cm.config.eos_token_id) if stop_at_eos else set()
    clock = _Clock(cm.stream) if timing else None
    c0 = time.process_time()
    if draft_depth == 0:
        gen = _plain(cm, st, dec, max_new_tokens, eos, clock)
    else:
        gen = _speculative(cm, st, dec, max_new_tokens, eos, draft_filter, clock)
    for i, t in enumerate(gen):
        if t in eos:
            gen = gen[: i + 1]
            break
    gen = gen[:max_new_tokens]
    stats = dec.stats
    stats.prefill_seconds, stats.seconds, stats.generated = t1 - t0, time.perf_counter() - t0, len(gen)
    d = stats.as_dict()
    d.pop("weight_bytes_per_token")
    d["device_loop"] = True
    if clock is not None:
        d["decode_seconds"] = time.perf_counter() - t1
        d["decode_cpu_seconds"] = time.process_time() - c0
        d["decode_device_seconds"] = clock.total()
        d["decode_sync_cpu_seconds"] = clock.sync_cpu
    res = GenerationResult(gen, cm.decode(gen), d, [])
    res.cycles = st.cycles if draft_depth else []     # (drafts, target argmax per verify row) per cycle
    return res


class _Clock:
    """Device time between event pairs around each burst / cycle (total() in seconds), and the host CPU time spent
    waiting in the synchronisations (the driver may spin there), so that the host's own work per token is the CPU
    time outside them."""

    def __init__(self, stream):
        self.stream, self.pairs, self.sync_cpu = stream, [], 0.0

    def sync(self):
        c = time.process_time()
        self.stream.synchronize()
        self.sync_cpu += time.process_time() - c

    def start(self):
        e = cuda.event()
        e.record(self.stream)
        self.pairs.append([e, None])

    def stop(self):
        e = cuda.event()
        e.record(self.stream)
        self.pairs[-1][1] = e

    def total(self) -> float:
        return sum(a.elapsed_time(b) for a, b in self.pairs) / 1e3


def _plain(cm, st, dec, max_new, eos, clock) -> list[int]:
    """Bursts of the one-step graph; returns the generated tokens (pending first)."""
    cache, s = st.cache, cm.stream
    gen = [dec.pending]
    cm._set_meta(cache.length, [cache.length], [dec.pending], cache.slot)
    steps = 0
    while len(gen) < max_new and not (eos & set(gen)):
        B = min(BURST, max_new - len(gen))
        st.cnt.copy_to_device(st.zero, stream=s)
        if clock:
            clock.start()
        for _ in range(B):
            cm._run(("loop_step",), cache, 1, lambda: _step_launches(cm, st))
        if clock:
            clock.stop()
        st.out[:B].copy_to_host(st.out_host[:B], stream=s)
        clock.sync() if clock else s.synchronize()
        new = [int(x) for x in st.out_host[:B]]
        for t in new:                       # the engine stops stepping once an eos is generated
            steps += 1
            gen.append(t)
            if t in eos:
                break
    if steps:               # the device ran whole bursts; the cache keeps what the engine's steps would
        cache.advanced(cache.length + steps - 1, 1)
    dec.stats.target_forwards = steps
    dec.tokens, dec.pending = dec.tokens + gen[:steps], gen[-1]
    return gen


def _step_launches(cm, st):
    cm._trunk_launches(st.cache, 1)
    cm._argmax_launches(1)
    loop_feedback[1, 1, cm.stream](cm.meta, cm.am_dev, st.out, st.cnt)


def _prep(cm, st, start, n, pos0, src=None, soff=0):
    nel = 0 if src is None else n * cm.config.hidden_size
    g, t = _threads(nel)
    loop_prep[g, t, cm.stream](cm.meta, st.tok, start, n, pos0, cm.PH if src is None else src, soff, cm.PH, nel)


def _mtp_call(cm, st, module, depth, cache, n, save, draft_filter):
    """One MTP forward over n rows (meta and PH already set), its last row's argmax into TOK; save: G[depth]."""
    s, H = cm.stream, cm.config.hidden_size

    def launches():
        cm._mtp_launches(module, cache, n)
        cm._argmax_launches(n)
        if draft_filter is not None:
            draft_filter.launch(cm, s, cm.meta, cm.am_dev, n, module, depth)
        put_draft[1, 1, s](cm.meta, n, cm.am_dev, st.tok)
        if save:
            g, t = _threads(n * H)
            save_rows[g, t, s](cm.meta, cm.HOUT, st.G[depth], n * H, H)

    fk = None if draft_filter is None else draft_filter.key
    cm._run(("loop_mtp", module, depth, save, fk), cache, n, launches)


def _speculative(cm, st, dec, max_new, eos, draft_filter, clock) -> list[int]:
    k, chain, H, s = dec.k, dec.mode == "chain", cm.config.hidden_size, cm.stream
    cache = st.cache
    P = len(dec.tokens)
    st.tok[: P + 1].copy_to_device(np.asarray(dec.tokens + [dec.pending], np.int32), stream=s)
    st.Hh[: P * H].copy_to_device(np.ascontiguousarray(dec.h, np.float32).ravel(), stream=s)
    for j, G in enumerate(st.G):
        g = dec.mtp_out(j)
        if len(g):
            G[: g.size].copy_to_device(np.ascontiguousarray(g, np.float32).ravel(), stream=s)
    gen = [dec.pending]
    tokens = list(dec.tokens)
    hist = dec.stats.hist
    N, n_prev = P, 1
    cycles = st.cycles = []
    while len(gen) < max_new and not (eos & set(gen)):
        if clock:
            clock.start()
        for j in range(k):                                        # draft
            c = st.mtp_caches[j if chain else 0]
            if chain or j == 0:
                r0 = c.length
                n = N - r0
                _prep(cm, st, r0, n, r0 + j + 1, st.Hh if j == 0 else st.G[j - 1], r0 * H)
            else:                                                 # recursive: one row fed the last output g
                r0, n = c.length, 1
                _prep(cm, st, r0, 1, N + j, cm.HOUT, (n_prev - 1) * H)
            _mtp_call(cm, st, j if chain else 0, j, c, n, chain and j < k - 1, draft_filter)
            c.length = r0 + n
            n_prev = n
        _prep(cm, st, N, k + 1, N)                                # verify
        cm._run(("loop_verify", k), cache, k + 1, lambda: _verify_launches(cm, st, k))
        if clock:
            clock.stop()
        st.cyc.copy_to_host(st.cyc_host, stream=s)
        clock.sync() if clock else s.synchronize()
        cyc = [int(x) for x in st.cyc_host]
        drafts, am, a = cyc[:k], cyc[k: 2 * k + 1], cyc[2 * k + 1]
        cache.advanced(N, k + 1)                                  # rollback (SpeculativeDecoder.rollback)
        cache.truncate(N + 1 + a)
        for j, c in enumerate(st.mtp_caches):
            keep = min(c.length, N + a - j, N) if chain else min(c.length, N)
            c.truncate(max(keep, 0))
        tokens += [gen[-1]] + drafts[:a]
        gen += drafts[:a] + [am[a]]
        hist[a] += 1
        cycles.append((drafts, am))
        dec.stats.target_forwards += 1
        dec.stats.mtp_forwards += k
        N += a + 1
    dec.tokens, dec.pending = tokens, gen[-1]
    return gen


def _verify_launches(cm, st, k):
    s, H = cm.stream, cm.config.hidden_size
    cm._trunk_launches(st.cache, k + 1)
    cm._argmax_launches(k + 1)
    loop_accept[1, 1, s](cm.meta, st.tok, cm.am_dev, k, st.cyc)
    g, t = _threads((k + 1) * H)
    save_rows[g, t, s](cm.meta, cm.HOUT, st.Hh, (k + 1) * H, H)
