"""Log-probabilities of token sequences under a loaded model: the one scoring primitive that
perplexity, lm-eval's loglikelihood requests and the exam runner share.

Sequences of different lengths are right-padded into one batch and run in one causal
forward pass (across pipeline stages, through the decoding API that generation uses too,
megalite.model.decoding), so the score of a token is the same under any tensor / pipeline
layout: the last stage's full-vocabulary logits, gathered over tensor-parallel ranks, then
handed to every rank.
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megalite.model.decoding import attention_mask, decode_step, new_cache
from megalite.parallel import state
from megalite.parallel.mappings import gather_from_tp
from megalite.parallel.pipeline import model_chunks

Scores = Tuple[torch.Tensor, torch.Tensor]  # (log-probability of each next token, was it the argmax)


@torch.no_grad()
def token_logprobs(model, sequences: Sequence[Sequence[int]], pad_id: int = 0) -> List[Scores]:
    """For each sequence of n tokens: the log-probability of tokens 1..n-1, each given the
    tokens before it, and whether each was the model's greedy choice (CPU tensors, length n-1)."""
    device = next(model.parameters()).device
    b, n = len(sequences), max(map(len, sequences))
    if n < 2:
        return [(torch.zeros(0), torch.zeros(0, dtype=torch.bool)) for _ in sequences]
    tokens = torch.full((b, n), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros((b, n - 1), dtype=torch.bool, device=device)
    for i, seq in enumerate(sequences):
        tokens[i, : len(seq)] = torch.as_tensor(list(seq), device=device)
        valid[i, : len(seq) - 1] = True
    # the last token of each sequence is only a target: the model reads the n - 1 before it
    inputs, s = tokens[:, :-1], state.get()
    if s.pp_size == 1:
        # one plain causal forward (flash / fused attention where available): with the padding on
        # the right, no real token ever attends to it (nor to the extra padding that sequence
        # parallelism needs to split the sequence evenly over the tensor-parallel ranks)
        if s.sequence_parallel and (n - 1) % s.tp_size:
            inputs = F.pad(inputs, (0, s.tp_size - (n - 1) % s.tp_size), value=pad_id)
        logits = gather_from_tp(model(inputs))[:, : n - 1]
    else:  # stage to stage, as generation passes hidden states
        cache = new_cache(model, b, n - 1, device)
        positions = torch.arange(n - 1, device=device).expand(b, n - 1)
        logits = decode_step(model, inputs, positions, cache, attention_mask(valid), every_position=True)
    scores = None
    if logits is not None:
        logprobs = logits.float().log_softmax(-1)
        targets = tokens[:, 1:]
        picked = logprobs.gather(-1, targets[..., None]).squeeze(-1).cpu()
        greedy = (logprobs.argmax(-1) == targets).cpu()
        scores = [(picked[i, : len(s) - 1], greedy[i, : len(s) - 1]) for i, s in enumerate(sequences)]
    return _from_last_stage(scores)


def model_positions(model) -> int:
    """The longest sequence the model was configured for (its --max-position-embeddings)."""
    return model_chunks(model)[0].cfg.max_position_embeddings


def _from_last_stage(obj: Optional[list]) -> list:
    """What the last pipeline stage computed, on every rank of its pipeline (tensor-parallel
    ranks of the last stage hold the same gathered logits, so each pipeline has its copy)."""
    s = state.get()
    if s.pp_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=s.pp_ranks[-1], group=s.pp_group)
    return box[0]
