"""Cross entropy over logits whose vocabulary is split across tensor-parallel ranks.

The full logits are never gathered: ranks exchange only the per-token max, the sum of
exponentials and the target logit. Computed in fp32; the gradient (softmax - one_hot) is
formed in place of the saved softmax, so the loss costs one vocabulary-sized buffer.
"""

import torch
import torch.distributed as dist

from megalite.parallel import state


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group):
        ctx.in_dtype = logits.dtype
        logits = logits.float()  # note: for fp32 input this is the caller's tensor, reused in place
        vocab_per_rank = logits.shape[-1]
        start = (dist.get_rank(group) if group is not None else 0) * vocab_per_rank
        local = target - start
        outside = (local < 0) | (local >= vocab_per_rank)
        local = local.masked_fill(outside, 0)

        row_max = logits.max(dim=-1).values
        if group is not None:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        logits.sub_(row_max.unsqueeze(-1))
        target_logit = logits.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        exp = logits.exp_()
        sum_exp = exp.sum(dim=-1)
        if group is not None:
            dist.all_reduce(target_logit, group=group)
            dist.all_reduce(sum_exp, group=group)
        loss = torch.log(sum_exp) - target_logit
        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local, outside)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local, outside = ctx.saved_tensors
        grad = softmax
        grad.scatter_add_(-1, local.unsqueeze(-1), (outside.to(grad.dtype) - 1.0).unsqueeze(-1))
        grad.mul_(grad_loss.unsqueeze(-1))
        return grad.to(ctx.in_dtype), None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token loss (fp32, shape of ``target``) from this rank's slice of the logits."""
    return _VocabParallelCrossEntropy.apply(logits, target, state.get().tp_group)
