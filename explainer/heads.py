"""Chapter 3's computations: the MTP modules' tensors, and every intermediate of one module at the current row.

The intermediates are recomputed step by step with the engine's own building blocks (embed, rms_norm,
linear, block, head) and checked against Model.mtp_forward, so what the page draws is what runs.
"""

from __future__ import annotations

import numpy as np

from mtp_ref import ops
from mtp_ref.cache import LayerCache
from mtp_ref.families import mtp_tensors
from mtp_ref.model import Model, Prefixed
from mtp_ref.sampling import SamplingParams, probs_from_logits
from mtp_ref.speculative import SpeculativeDecoder


def module_tensors(model: Model, j: int) -> list[dict]:
    """Tensors of MTP module j as stored: name, shape, dtype, bytes, share of all checkpoint bytes."""
    ck = model.ckpt
    total = sum(i.nbytes for i in ck.infos.values())
    rows = []
    for name in mtp_tensors(model.config, model.spec, j):
        if name in ck:
            b = ck.stored_nbytes(name)
            rows.append({"tensor": name, "shape": list(ck.shape(name)), "dtype": ck.dtype(name),
                         "bytes": b, "share of checkpoint": b / total})
    return rows


def copies_of_main(model: Model, j: int) -> dict[str, bool]:
    """Whether the module's own embedding / head equal the main model's (DeepSeek ships copies)."""
    lay, cfg, ck = model.spec.mtp, model.config, model.ckpt
    p = lay.module_prefix(cfg, j)
    main_head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    out = {}
    for own, main in ((lay.embed, "model.embed_tokens.weight"), (lay.head, main_head)):
        if own and p + own in ck:
            out[p + own] = bool(np.array_equal(ck.get(p + own), ck.get(main)))
    return out


def top5(p: np.ndarray) -> list[tuple[int, float]]:
    idx = np.argsort(-p)[:5]
    return [(int(t), float(p[t])) for t in idx]


def live_values(model: Model, prompt: list[int]) -> dict:
    """Drafts after the prompt (greedy, chain) and every intermediate of each module at the current row."""
    cfg, lay = model.config, model.spec.mtp
    K = cfg.num_mtp_modules
    dec = SpeculativeDecoder(model, K, "chain", SamplingParams(0.0), 0)
    pending = dec.prefill(list(prompt))
    drafts, _, infos = dec.draft()
    T = len(prompt)
    ext = list(prompt) + [pending] + drafts
    h, logits = model.forward(np.asarray(prompt), model.new_cache())    # [T, H], [T, V]
    out = {"pending": pending, "drafts": drafts, "draft_top": [i.top for i in infos],
           "main_top": top5(probs_from_logits(logits[-1], SamplingParams(1.0))), "modules": []}
    prev = h
    for j in range(K):
        p = lay.module_prefix(cfg, j)
        W = Prefixed(model, p)
        toks = np.asarray(ext[j + 1: j + 1 + T])                          # row i feeds token t_{i+j+1}
        pos = np.arange(T) + j + 1                                        # at rotary position i+j+1
        own_embed = lay.embed and (p + lay.embed) in model.ckpt
        e = model.embed(toks, p + lay.embed if own_embed else "model.embed_tokens.weight")   # [T, H]
        en = model.rms_norm(e, W[lay.emb_norm])      # the family's norm (Qwen: zero-centred)
        hn = model.rms_norm(prev, W[lay.hid_norm])
        cat = np.concatenate([hn, en] if lay.hidden_first else [en, hn], axis=-1)          # [T, 2H]
        x = ops.linear(cat, W[lay.proj])                                                   # [T, H]
        cos, sin = model.rope(pos)
        xb = model.block(x, Prefixed(model, lay.block_prefix(cfg, j)), cfg.num_hidden_layers + j, LayerCache(), 0,
                         cos, sin)                                                    # [T, H]
        g = model.rms_norm(xb, W[lay.out_norm])
        own_head = lay.head and (p + lay.head) in model.ckpt
        lg = model.head(g, p + lay.head if own_head else None)                             # [T, V]
        g_ref, lg_ref = model.mtp_forward(j, toks, prev, LayerCache(), pos)
        out["modules"].append({
            "token_in": int(toks[-1]), "position": int(pos[-1]),
            "vectors": {"E[t] embedding": e[-1], "emb_norm(E[t])": en[-1],
                        "h (previous hidden)": prev[-1], "hid_norm(h)": hn[-1],
                        "concat": cat[-1], "proj(concat)": x[-1], "block(x)": xb[-1], "out_norm -> g": g[-1]},
            "top": top5(probs_from_logits(lg[-1], SamplingParams(1.0))),
            "max_abs_diff": float(max(np.abs(g - g_ref).max(), np.abs(lg - lg_ref).max())),
        })
        prev = g
    return out
