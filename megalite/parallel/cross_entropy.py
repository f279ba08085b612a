"""Cross entropy over logits whose vocabulary is split across tensor-parallel ranks.

The full logits are never gathered: each rank reduces its shard to per-token statistics
(max, sum of exponentials, target logit, sum of logits) and the ranks exchange only those.
The statistics and the gradient come from ``megalite.kernels`` (fused Triton kernels that
stream the logits in their own dtype, or the fp32 torch reference), so the loss saves only
the logits and one log-sum-exp per token. Optional label smoothing (over the whole
vocabulary), z-loss (``z * lse^2``, as in PaLM) and an ignore index (zero loss and gradient). The
per-token mean logit over the vocabulary comes free from the same statistics (trl logs it
as ``logits/chosen``).
"""

import torch
import torch.distributed as dist

from megalite import kernels
from megalite.kernels.reference import compute_dtype, row_chunks
from megalite.parallel import state

IGNORE_INDEX = -100  # a label with no loss (PyTorch's and HF's convention)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group, ignore_index, label_smoothing, z_loss):
        vocab_per_rank = logits.shape[-1]
        rank, ranks = (dist.get_rank(group), dist.get_world_size(group)) if group is not None else (0, 1)
        local = target - rank * vocab_per_rank  # outside [0, vocab_per_rank) when another rank holds it
        shard_max, sum_exp, target_logit, sum_logits = kernels.cross_entropy_statistics(logits, local)
        row_max = shard_max.clone()
        if group is not None:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        sums = torch.stack([sum_exp * torch.exp(shard_max - row_max), target_logit, sum_logits])
        if group is not None:
            dist.all_reduce(sums, group=group)
        sum_exp, target_logit, sum_logits = sums
        lse = row_max + torch.log(sum_exp)
        vocab = vocab_per_rank * ranks
        loss = lse - (1.0 - label_smoothing) * target_logit - label_smoothing * sum_logits / vocab
        if z_loss:
            loss = loss + z_loss * lse.square()
        ignored = target == ignore_index
        ctx.save_for_backward(logits, local, lse, ignored)
        ctx.label_smoothing, ctx.vocab, ctx.z_loss = label_smoothing, vocab, z_loss
        mean_logit = sum_logits / vocab
        ctx.mark_non_differentiable(mean_logit)
        return loss.masked_fill(ignored, 0.0), mean_logit

    @staticmethod
    def backward(ctx, grad_loss, grad_mean_logit):
        logits, local, lse, ignored = ctx.saved_tensors
        grad = kernels.cross_entropy_gradient(logits, local, lse, grad_loss.masked_fill(ignored, 0.0),
                                              ctx.label_smoothing, ctx.vocab, ctx.z_loss)
        return grad, None, None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                                 label_smoothing: float = 0.0, z_loss: float = 0.0, mean_logits: bool = False):
    """Per-token loss (fp32, shape of ``target``) from this rank's slice of the logits; with
    ``mean_logits`` also each token's mean logit over the whole vocabulary (no gradient)."""
    loss, mean_logit = _VocabParallelCrossEntropy.apply(logits, target, state.get().tp_group, ignore_index,
                                                        label_smoothing, z_loss)
    return (loss, mean_logit) if mean_logits else loss


def softmax_statistics(logits: torch.Tensor):
    """Per-row (max, sum of exp(logit - max), sum of exp(logit - max) * logit) of one vocabulary
    shard, fp32 at least: the entropy's terms, which ranks combine like the cross entropy's (in CPU row
    chunks, as the loss's statistics: kernels/reference.py)."""
    flat, chunks = row_chunks(logits)
    out = torch.empty(3, flat.shape[0], dtype=compute_dtype(logits), device=logits.device)
    for rows in chunks:
        x = flat[rows].to(out.dtype)
        row_max = x.amax(dim=-1)
        e = torch.sub(x, row_max.unsqueeze(-1)).exp_()
        out[0, rows], out[1, rows], out[2, rows] = row_max, e.sum(dim=-1), e.mul_(x).sum(dim=-1)
    return tuple(o.view(logits.shape[:-1]) for o in out)


@torch.no_grad()
def vocab_parallel_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the whole vocabulary (fp32, no gradient) from this rank's slice
    of the logits [..., vocab / tp]: H = lse - sum(p * logit), from per-rank sums rescaled to the
    global maximum, like the cross entropy's statistics."""
    group = state.get().tp_group
    shard_max, sum_exp, weighted = softmax_statistics(logits)
    row_max = shard_max.clone()
    if group is not None:
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
    sums = torch.stack([sum_exp, weighted]) * torch.exp(shard_max - row_max)
    if group is not None:
        dist.all_reduce(sums, group=group)
    sum_exp, weighted = sums
    return row_max + torch.log(sum_exp) - weighted / sum_exp
