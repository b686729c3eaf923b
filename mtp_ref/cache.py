"""KV caches with rollback to any length.

A LayerCache keeps named per-token arrays (k and v for GQA; the compressed latent c_kv and the
rotated k_pe for MLA, which is what DeepSeek really caches). Rolling back is setting `length`:
rejected rows stay in memory as garbage and are overwritten by the next append, exactly like
vLLM lowering seq_lens or gpt-fast moving input_pos.
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


class KVCache:
    """One LayerCache per decoder layer; all layers always hold the same number of tokens."""

    def __init__(self, n_layers: int):
        self.layers = [LayerCache() for _ in range(n_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def truncate(self, length: int) -> None:
        for layer in self.layers:
            layer.truncate(length)

    def snapshot(self) -> list[dict[str, np.ndarray]]:
        """Copies of the valid rows, for tests and the explainer."""
        return [{n: l.view(n).copy() for n in l.names()} for l in self.layers]
