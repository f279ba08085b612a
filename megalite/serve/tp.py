"""Tensor-parallel serving: rank 0 speaks HTTP and schedules (megalite.serve.engine), and before
each forward it sends the step to the other ranks, which run the same forward on their shards
(``follow``); the tensor-parallel layers' own collectives then give every rank the same logits,
and rank 0 alone chooses the tokens, which reach the others as part of the next step.

A step is two broadcasts from rank 0 over a gloo group of CPU tensors (even when the model's
group is NCCL, so an idle rank waits in a socket read, not in a spinning GPU kernel): a header
[kind, rows, width, ragged], then the slots, each row's real-token count, each slot's length
before the step (so the followers' caches never drift, freed slots included) and the tokens.
"""

import signal
import sys
from typing import List, Optional

import torch
import torch.distributed as dist

from megalite.model.kv_cache import SlotKVCache
from megalite.serve.engine import forward_slots

STEP, KEEPALIVE, STOP = 0, 1, 2


def control_group():
    """The group the steps travel in; every rank calls this once, in the same order."""
    return dist.new_group(backend="gloo")


class Leader:
    """Rank 0's end: the Engine's ``followers``."""

    def __init__(self, group):
        self.group = group

    def send(self, slots: List[int], tokens: torch.Tensor, counts, before: List[int]) -> None:
        rows, width = tokens.shape
        ragged = not isinstance(counts, int)
        self._header(STEP, rows, width, int(ragged))
        body = torch.cat([torch.tensor(slots), torch.tensor(counts if ragged else [counts] * rows),
                          torch.tensor(before), tokens.reshape(-1).cpu()])
        dist.broadcast(body, 0, group=self.group)

    def keepalive(self) -> None:
        self._header(KEEPALIVE)

    def stop(self) -> None:
        self._header(STOP)

    def _header(self, kind: int, rows: int = 0, width: int = 0, ragged: int = 0) -> None:
        dist.broadcast(torch.tensor([kind, rows, width, ragged]), 0, group=self.group)


def follow(model, cache: SlotKVCache, group, device: Optional[torch.device] = None) -> None:
    """A rank other than 0: run every step rank 0 sends until it says stop. Interrupts are left
    to rank 0 (Ctrl-C reaches every rank of a terminal's torchrun; rank 0 then drains its requests
    and stops the others), and a step that fails here is reported and skipped, as rank 0 does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    device = device or cache.lengths.device
    header = torch.zeros(4, dtype=torch.long)
    with torch.no_grad():
        while True:
            dist.broadcast(header, 0, group=group)
            kind, rows, width, ragged = header.tolist()
            if kind == STOP:
                return
            if kind == KEEPALIVE:
                continue
            body = torch.empty(3 * rows + rows * width, dtype=torch.long)
            dist.broadcast(body, 0, group=group)
            slots, counts, before, tokens = body.split([rows, rows, rows, rows * width])
            slots = slots.tolist()
            cache.lengths[slots] = before.to(device)
            try:
                forward_slots(model, cache, slots, tokens.view(rows, width).to(device),
                              counts.tolist() if ragged else width)
            except Exception as e:  # noqa: BLE001 (rank 0 ends that step's requests and goes on)
                print(f"rank {dist.get_rank()}: a step failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
