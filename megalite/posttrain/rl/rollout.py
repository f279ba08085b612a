"""Rollouts: completions generated inside the training job, by the model being trained, in its
training layout, and the training rows they become.

Every rank of one model replica (its tensor and pipeline ranks) runs the same KV-cache decoding
loop (megalite.eval.generate over megalite.model.decoding); each data-parallel rank generates
for its own rows. Decoding runs with dropout off and without sequence parallelism (a one-token
step cannot be split along the sequence). Each row's sampling generator is seeded by the run's seed and
the row's sample index: every layout samples the same completions, and a resumed run samples
what the uninterrupted one did without storing generator state.
"""

from typing import Dict, List, Optional, Sequence

import torch

from megalite.eval.generate import generate
from megalite.eval.sampling import Sampling
from megalite.parallel import state
from megalite.parallel.cross_entropy import IGNORE_INDEX


@torch.no_grad()
def sample_completions(model, prompts: List[List[int]], rl_cfg, stop_ids: Sequence[int], pad_id: int,
                       seeds: List[int]) -> List[List[int]]:
    """One completion per prompt (ending at a stop id, which it includes, or after
    --max-completion-length tokens); row i samples from a generator seeded by ``seeds[i]``."""
    sampling = Sampling(temperature=rl_cfg.temperature, top_k=rl_cfg.top_k, top_p=rl_cfg.top_p,
                        stop_ids=tuple(stop_ids))
    was_training = model.training
    model.eval()
    try:
        with state.sequence_parallel_off():
            return generate(model, prompts, rl_cfg.max_completion_length, sampling, pad_id=pad_id, row_seeds=seeds)
    finally:
        model.train(was_training)


def row_seeds(seed: int, samples: Sequence[int]) -> List[int]:
    """A sampling seed per row from the run's seed and the row's sample index: each completion draws
    the same tokens whatever the data-parallel layout, and again after a resume."""
    return [(seed * 1_000_003 + int(j) * 7919 + 17) % 2**63 for j in samples]


def training_rows(prompts: List[List[int]], completions: List[List[int]], seq_length: int, pad_id: int,
                  pad_to: Optional[int] = None, multiple_of: int = 1) -> Dict[str, torch.Tensor]:
    """Rows of prompt + completion, right-padded to ``pad_to`` (pipeline stages exchange fixed
    shapes) or else to the longest row, rounded up to ``multiple_of`` (training.data.row_padding):
    next-token labels at the positions that predict completion tokens (IGNORE_INDEX elsewhere: the
    output layer skips prompts and padding) and the loss mask over those positions."""
    n = len(prompts)
    longest = max(len(p) + len(c) - 1 for p, c in zip(prompts, completions))
    width = pad_to or min(-(-longest // multiple_of) * multiple_of, seq_length)
    tokens = torch.full((n, width + 1), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        row = (list(p) + list(c))[: width + 1]
        tokens[i, : len(row)] = torch.tensor(row)
        mask[i, len(p) - 1 : len(row) - 1] = 1.0
    labels = tokens[:, 1:].masked_fill(mask == 0, IGNORE_INDEX)
    return {"tokens": tokens[:, :-1].contiguous(), "labels": labels.contiguous(), "loss_mask": mask}
