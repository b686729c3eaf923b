"""Chapter 2's race: plain decoding against MTP drafting on the same prompt, one trunk forward at a time.

Both runs use the engine's SpeculativeDecoder (k = 0 is plain decoding) and its byte meter, so the counts on screen
are what the engine did: trunk forwards, MTP forwards, and weight bytes read.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtp_ref.model import Model
from mtp_ref.sampling import SamplingParams
from mtp_ref.speculative import SpeculativeDecoder


@dataclass
class Lane:
    name: str
    tokens: list[int]            # generated tokens, in order
    cycle_of: list[int]          # per token: the trunk forward (1-based; 0 = prefill) that produced it
    accepted_draft: list[bool]   # per token: it was a draft the trunk accepted
    bytes_after: list[int]       # weight bytes read after each trunk forward (cumulative, prefill excluded)
    mtp_forwards: int = 0

    @property
    def forwards(self) -> int:
        return len(self.bytes_after)

    def tokens_after(self, f: int) -> int:
        """Tokens written once trunk forward f has finished (f = 0: after prefill)."""
        return sum(1 for c in self.cycle_of if c <= f)


def run_lane(model: Model, ids: list[int], n_tokens: int, k: int, mode: str = "chain") -> Lane:
    dec = SpeculativeDecoder(model, k, mode, SamplingParams(0.0), 0)
    first = dec.prefill(list(ids))
    lane = Lane("plain decoding" if k == 0 else f"MTP, k = {k} ({mode})", [first], [0], [False], [])
    total = 0
    while len(lane.tokens) < n_tokens:
        rec = dec.step()
        total += model.bytes_read                      # step() metered this cycle's drafts + verify
        f = len(lane.bytes_after) + 1
        lane.bytes_after.append(total)
        for i, t in enumerate(rec.new_tokens):
            lane.tokens.append(t)
            lane.cycle_of.append(f)
            lane.accepted_draft.append(i < rec.accepted)
    lane.mtp_forwards = dec.stats.mtp_forwards
    n = n_tokens
    lane.tokens, lane.cycle_of, lane.accepted_draft = lane.tokens[:n], lane.cycle_of[:n], lane.accepted_draft[:n]
    lane.bytes_after = lane.bytes_after[: max(lane.cycle_of)]
    return lane
