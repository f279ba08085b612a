"""Who talks to whom: the tensor-, pipeline- and data-parallel process groups.

Ranks are laid out as Megatron does, tensor-parallel fastest, then data-parallel, then
pipeline: ``rank = tp_rank + tp * (dp_rank + dp * pp_rank)``. Every module asks this one
place for its ranks and groups; with every size at 1 (or no torch.distributed at all) the
groups are None and every collective in megalite is a no-op.
"""

import contextlib
from dataclasses import dataclass
from typing import List, Optional

import torch.distributed as dist

from megalite.errors import MegaliteError


@dataclass
class ParallelState:
    world_size: int = 1
    rank: int = 0
    tp_size: int = 1
    pp_size: int = 1
    dp_size: int = 1
    tp_rank: int = 0
    pp_rank: int = 0
    dp_rank: int = 0
    tp_group: Optional[object] = None
    pp_group: Optional[object] = None
    dp_group: Optional[object] = None
    model_parallel_group: Optional[object] = None  # tp x pp: ranks holding one model replica
    pp_ranks: Optional[List[int]] = None
    embedding_group: Optional[object] = None  # first + last pipeline stage: tied embedding copies
    sequence_parallel: bool = False  # activations outside attention/MLP split along the sequence

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


_state = ParallelState()


def get() -> ParallelState:
    return _state


def layout(world_size: int, tp: int, pp: int):
    """Rank lists of every tp, dp, pp and model-parallel group, Megatron's order."""
    if tp < 1 or pp < 1 or world_size % (tp * pp):
        raise MegaliteError(
            f"world size {world_size} is not divisible by tensor ({tp}) x pipeline ({pp}) parallel size"
        )
    dp = world_size // (tp * pp)

    def rank(t, d, p):
        return t + tp * (d + dp * p)

    return {
        "tp": [[rank(t, d, p) for t in range(tp)] for p in range(pp) for d in range(dp)],
        "dp": [[rank(t, d, p) for d in range(dp)] for p in range(pp) for t in range(tp)],
        "pp": [[rank(t, d, p) for p in range(pp)] for d in range(dp) for t in range(tp)],
        "mp": [[rank(t, d, p) for p in range(pp) for t in range(tp)] for d in range(dp)],
    }


def initialize(tp: int = 1, pp: int = 1, sequence_parallel: bool = False) -> ParallelState:
    """Create the groups for the running torch.distributed world (or a single process)."""
    global _state
    if not (dist.is_available() and dist.is_initialized()):
        layout(1, tp, pp)
        _state = ParallelState()
        return _state
    world, me = dist.get_world_size(), dist.get_rank()
    groups = layout(world, tp, pp)
    s = ParallelState(world_size=world, rank=me, tp_size=tp, pp_size=pp, dp_size=world // (tp * pp),
                      sequence_parallel=sequence_parallel and tp > 1)
    for kind, lists in groups.items():
        for ranks in lists:
            group = dist.new_group(ranks) if len(ranks) > 1 else None  # every rank must call new_group
            if me in ranks:
                idx = ranks.index(me)
                if kind == "tp":
                    s.tp_group, s.tp_rank = group, idx
                elif kind == "dp":
                    s.dp_group, s.dp_rank = group, idx
                elif kind == "pp":
                    s.pp_group, s.pp_rank, s.pp_ranks = group, idx, ranks
                else:
                    s.model_parallel_group = group
    if pp > 1:  # the ranks holding the two copies of a tied embedding (every rank creates every group)
        for ranks in groups["pp"]:
            group = dist.new_group([ranks[0], ranks[-1]])
            if me in (ranks[0], ranks[-1]):
                s.embedding_group = group
    _state = s
    return s


_subgroups = {}


def tp_subgroup(size: int):
    """(group, rank in it) for blocks of ``size`` consecutive ranks within each TP group, e.g.
    the ranks that share one replicated key/value head. Collective on first use."""
    s = _state
    if size == 1 or s.tp_group is None:
        return None, 0
    if size not in _subgroups:
        mine = None
        for tp_ranks in layout(s.world_size, s.tp_size, s.pp_size)["tp"]:
            for i in range(0, len(tp_ranks), size):
                ranks = tp_ranks[i : i + size]
                group = dist.new_group(ranks)
                if s.rank in ranks:
                    mine = (group, ranks.index(s.rank))
        _subgroups[size] = mine
    return _subgroups[size]


@contextlib.contextmanager
def planning(tp: int, pp: int, tp_rank: int, pp_rank: int):
    """Lay out one (tensor, pipeline) rank's part of a model in this single process, with no
    groups (to write checkpoints for another layout); the previous state returns after."""
    global _state
    saved = _state
    _state = ParallelState(world_size=tp * pp, tp_size=tp, pp_size=pp, tp_rank=tp_rank, pp_rank=pp_rank)
    try:
        yield _state
    finally:
        _state = saved


def destroy() -> None:
    global _state
    _state = ParallelState()
    _subgroups.clear()


@contextlib.contextmanager
def sequence_parallel_off():
    """Run the model without sequence parallelism (decoding steps of one token cannot be split
    along the sequence); the weights and their sharding are the same either way."""
    was = _state.sequence_parallel
    _state.sequence_parallel = False
    try:
        yield
    finally:
        _state.sequence_parallel = was
