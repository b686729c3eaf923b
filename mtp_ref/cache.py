"""KV caches with rollback to any length, and the recurrent state of Gated DeltaNet layers.

A LayerCache keeps named per-token arrays (k and v for GQA; the compressed latent c_kv and the
rotated k_pe for MLA, which is what DeepSeek really caches). Rolling back is setting `length`:
rejected rows stay in memory as garbage and are overwritten by the next append, exactly like
vLLM lowering seq_lens or gpt-fast moving input_pos.

A RecurrentCache (Qwen3-Next / Qwen3.5 linear-attention layers) holds one fixed-size state that
every token overwrites, so it has no rows to cut. It rolls back by restoring a per-token snapshot
kept during the last forward (what llama.cpp's rs_rollback does); `checkpoint()` / `restore()` give
the simpler checkpoint-and-redecode reference (SpeculativeDecoder(rollback="redecode")).
"""

from __future__ import annotations

import numpy as np


class LayerCache:
    def __init__(self):
        self.length = 0
        self._bufs: dict[str, np.ndarray] = {}

    def append(self, **rows: np.ndarray) -> dict[str, np.ndarray]:
        """Write n new rows per array at [length, length + n) and return views of rows [0, length + n)."""
        n = next(iter(rows.values())).shape[0]
        end = self.length + n
        out = {}
        for name, x in rows.items():
            buf = self._bufs.get(name)
            if buf is None or buf.shape[0] < end:
                grown = np.empty((max(end, 2 * (0 if buf is None else buf.shape[0]), 64),) + x.shape[1:], np.float32)
                if buf is not None:
                    grown[: self.length] = buf[: self.length]
                self._bufs[name] = buf = grown
            buf[self.length : end] = x
            out[name] = buf[:end]
        self.length = end
        return out

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back a cache of length {self.length} to {length}")
        self.length = length

    def view(self, name: str) -> np.ndarray:
        return self._bufs[name][: self.length] if name in self._bufs else np.zeros((0,), np.float32)

    def names(self) -> list[str]:
        return list(self._bufs)

    def checkpoint(self) -> int:
        return self.length              # rows below length are never written again

    def restore(self, saved: int) -> None:
        self.truncate(saved)


class RecurrentCache:
    """Conv state (the last K-1 conv inputs, [K-1, C]) and delta-rule state S ([h, dk, dv]) of one layer.

    `advance` records a forward over n tokens. With keep_snapshots and the per-token states of the
    recurrent form, the states after each of those tokens stay available, so `truncate(length)` works
    for any length from the forward's start to its end; the chunked form (long prefills) keeps the
    final state only, and then only truncate(self.length) is possible.
    """

    def __init__(self, keep_snapshots: bool = True):
        self.length = 0
        self.keep_snapshots = keep_snapshots
        self.conv: np.ndarray | None = None      # [K-1, C]
        self.state: np.ndarray | None = None     # [h, dk, dv]
        self._start = 0                          # snapshots cover lengths _start .. _start + len(_states) - 1
        self._window: np.ndarray | None = None   # [K-1+n, C] conv inputs of the last forward
        self._states: np.ndarray | None = None   # [n+1, h, dk, dv] S after the first t tokens of the last forward

    def initial(self, n_channels: int, kernel: int, state_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(conv state, S) to continue from: zeros before the first token."""
        if self.conv is None:
            return np.zeros((kernel - 1, n_channels), np.float32), np.zeros(state_shape, np.float32)
        return self.conv, self.state

    def advance(self, n: int, window: np.ndarray, states: np.ndarray) -> None:
        """Record a forward over n tokens: window [K-1+n, C] from ops.causal_conv1d; states [n+1, h, dk, dv]
        (recurrent form: S after each token) or [1, h, dk, dv] (chunked form: the final S only)."""
        keep = self.keep_snapshots and len(states) == n + 1
        self._start, self.length = self.length, self.length + n
        self.conv, self.state = window[n:].copy(), states[-1].copy()
        self._window, self._states = (window, states) if keep else (None, None)

    def truncate(self, length: int) -> None:
        if length == self.length:
            return
        t = length - self._start
        if self._states is None or not 0 <= t < len(self._states) or length > self.length:
            kept = (f"lengths {self._start}..{self._start + len(self._states) - 1}" if self._states is not None
                    else f"only its current length {self.length}")
            raise ValueError(f"cannot roll back a recurrent (Gated DeltaNet) state from {self.length} to {length}: "
                             f"the last forward kept snapshots for {kept}")
        km1 = self.conv.shape[0]
        self.conv, self.state = self._window[t : t + km1].copy(), self._states[t].copy()
        self.length = length

    def checkpoint(self) -> tuple:
        return (self.length, None if self.conv is None else self.conv.copy(),
                None if self.state is None else self.state.copy())

    def restore(self, saved: tuple) -> None:
        self.length, self.conv, self.state = saved
        self._window = self._states = None

    def view(self, name: str) -> np.ndarray:
        arr = {"conv": self.conv, "state": self.state}[name]
        return np.zeros((0,), np.float32) if arr is None else arr

    def names(self) -> list[str]:
        return [] if self.conv is None else ["conv", "state"]


class KVCache:
    """One cache per decoder layer (LayerCache, or RecurrentCache for the layers listed in `recurrent`);
    all layers always hold the same number of tokens."""

    def __init__(self, n_layers: int, recurrent=(), keep_snapshots: bool = True):
        self.layers = [RecurrentCache(keep_snapshots) if i in set(recurrent) else LayerCache() for i in range(n_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def truncate(self, length: int) -> None:
        for layer in self.layers:
            layer.truncate(length)

    def checkpoint(self) -> list:
        """What restore() needs to return to this point (recurrent states are copied)."""
        return [layer.checkpoint() for layer in self.layers]

    def restore(self, saved: list) -> None:
        for layer, s in zip(self.layers, saved, strict=True):
            layer.restore(s)

    def snapshot(self) -> list[dict[str, np.ndarray]]:
        """Copies of the valid rows, for tests and the explainer."""
        return [{n: l.view(n).copy() for n in l.names()} for l in self.layers]
