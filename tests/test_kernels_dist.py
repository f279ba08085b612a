"""The fused cross-entropy kernels inside the vocab-parallel loss: two gloo ranks, each with
half the vocabulary, give the loss and logit gradients of torch's cross entropy on the
whole vocabulary (with ignored labels, label smoothing and z-loss)."""

import pytest
import torch

from tests.dist_utils import run_distributed

pytestmark = pytest.mark.dist


def _fused_loss_on_a_vocabulary_shard(rank, world):
    from megalite.kernels import fused_kernels
    from megalite.parallel import state
    from megalite.parallel.cross_entropy import vocab_parallel_cross_entropy
    from tests.test_kernels import TOL, cross_entropy_by_hand, relative_error

    state.initialize(tp=world)
    torch.manual_seed(0)  # the same full logits and targets on every rank
    logits, target = torch.randn(9, 2, 300) * 3, torch.randint(0, 300, (9, 2))
    target[0, 0] = target[4, 1] = -100
    full = logits.double().requires_grad_()
    ref = cross_entropy_by_hand(full, target, -100, 0.1, 1e-3)
    grad_loss = torch.randn(9, 2, dtype=torch.float64)
    ref.backward(grad_loss)
    mine = logits.chunk(world, dim=-1)[rank].clone().requires_grad_()
    with fused_kernels(True):
        loss = vocab_parallel_cross_entropy(mine, target, -100, 0.1, 1e-3)
        loss.backward(grad_loss.float())
    assert relative_error(loss.detach(), ref.detach()) < TOL
    assert relative_error(mine.grad, full.grad.chunk(world, dim=-1)[rank]) < TOL


def test_fused_cross_entropy_with_tensor_parallel_vocabulary():
    pytest.importorskip("triton")
    run_distributed(_fused_loss_on_a_vocabulary_shard, 2)
