"""Golden traces for porters: every intermediate a port needs to diff against, teacher forced.

Keys (see docs/trace-format.md):
  input_ids           [T]          int64
  embed               [T, H]       trunk input embeddings
  layers.{i}.out      [T, H]       residual stream after decoder block i
  hidden              [T, H]       trunk output after the final norm (what MTP depth 0 takes)
  logits              [T, V]       main-model logits, every position
  mtp.{d}.input_ids   [T-1-d]      token fed at depth d, row i: input_ids[i+d+1]
  mtp.{d}.positions   [T-1-d]      rotary position of row i: i+d+1
  mtp.{d}.hidden      [T-1-d, H]   post-norm output of module d (fed to depth d+1)
  mtp.{d}.logits      [T-1-d, V]   logits of module d (predicts input_ids[i+d+2])
With a separate drafter (--drafter, drafters.drafter_trace), one greedy round of K steps after the prompt:
  drafter.input_ids   [K]          step j's input token: the target's greedy t_T, then each step's greedy draft
  drafter.positions   [K]          the query position of each step (T for every step of a Gemma 4 assistant)
  drafter.hidden      [K, H]       the hidden carried to the next step (the assistant's post_projection output)
  drafter.logits      [K, V]       the drafter's logits (centroid head: unselected tokens hold the fill value)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cache import LayerCache
from .errors import MtpRefError
from .model import Model
from .safetensors_io import save_file


def build_trace(model: Model, ids: list[int], intermediates: bool = True) -> dict[str, np.ndarray]:
    ids = [int(t) for t in ids]
    T = len(ids)
    if T < 1:
        raise MtpRefError("the prompt is empty; a trace needs at least one token")
    collect: dict = {} if intermediates else None
    h, logits = model.forward(np.asarray(ids), model.new_cache(), collect=collect)
    out: dict[str, np.ndarray] = {"input_ids": np.asarray(ids, np.int64), "hidden": h, "logits": logits}
    if intermediates:
        out.update(collect)
    prev = h
    for d in range(model.config.num_mtp_modules):
        rows = T - 1 - d
        if rows <= 0:
            break
        toks = np.asarray(ids[d + 1 : d + 1 + rows], np.int64)
        pos = np.arange(rows) + d + 1
        g, lg = model.mtp_forward(d, toks, prev[:rows], LayerCache(), pos)
        out[f"mtp.{d}.input_ids"], out[f"mtp.{d}.positions"] = toks, pos.astype(np.int64)
        out[f"mtp.{d}.hidden"], out[f"mtp.{d}.logits"] = g, lg
        prev = g
    return {k: (v if v.dtype == np.int64 else v.astype(np.float32)) for k, v in out.items()}


def write_trace(model: Model, ids: list[int], path: Path, extra: dict | None = None) -> dict[str, np.ndarray]:
    """extra: more keys (a separate drafter's round, drafters.drafter_trace)."""
    tr = build_trace(model, ids)
    tr.update(extra or {})
    cfg = model.config
    save_file(tr, Path(path), metadata={"format": "mtp-ref-trace-1", "model_type": cfg.model_type,
                                        "checkpoint": str(model.path.name),
                                        "num_mtp_modules": str(cfg.num_mtp_modules)})
    return tr
