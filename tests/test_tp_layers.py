"""Each tensor-parallel layer and mapping, forward and backward, against its one-process twin."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from tests.dist_utils import run_distributed

pytestmark = pytest.mark.dist


@contextlib.contextmanager
def single_process():
    """Build and run the reference layer as if there were one rank."""
    from megalite.parallel import state

    saved, state._state = state._state, state.ParallelState()
    try:
        yield
    finally:
        state._state = saved


def _twins(make, seed):
    """(this rank's layer, the full one-process layer), initialised from the same seed."""
    from megalite.parallel.init import initialize

    layer = make()
    initialize(layer, seed)
    with single_process():
        ref = make()
        initialize(ref, seed)
    return layer, ref


def _check_layers(rank, world, sequence_parallel):
    from megalite.parallel import mappings, state
    from megalite.parallel.cross_entropy import vocab_parallel_cross_entropy, vocab_parallel_entropy
    from megalite.parallel.layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

    state.initialize(tp=world, sequence_parallel=sequence_parallel)
    torch.manual_seed(0)  # the same inputs on every rank
    seq, batch, hin, hout, vocab = 8, 3, 12, 16, 20

    def mine(t, dim):  # this rank's slice of a full tensor
        return t.chunk(world, dim=dim)[rank]

    def sp(t):  # a sequence slice with sequence parallelism, else the whole tensor
        return mine(t, 0) if sequence_parallel else t

    def run_ref(ref, x, g):
        with single_process():
            x = x.clone().requires_grad_()
            y = ref(x)
            y.backward(g)
        return y.detach(), x.grad

    # Column-parallel: output left split (the usual case), and gathered.
    for gather in (False, True):
        layer, ref = _twins(lambda: ColumnParallelLinear(hin, hout, bias=True, gather_output=gather, init_std=0.5), 1)
        x, g = torch.randn(seq, batch, hin), torch.randn(seq, batch, hout)
        yr, gxr = run_ref(ref, x, g)
        xl = sp(x).clone().requires_grad_()
        yl = layer(xl)
        torch.testing.assert_close(yl, yr if gather else mine(yr, -1))
        yl.backward(g if gather else mine(g, -1))
        torch.testing.assert_close(xl.grad, sp(gxr))
        torch.testing.assert_close(layer.weight.grad, mine(ref.weight.grad, 0))
        torch.testing.assert_close(layer.bias.grad, mine(ref.bias.grad, 0))

    # Row-parallel: input already split (the usual case), and split by the layer.
    for input_is_parallel in ((True,) if sequence_parallel else (True, False)):
        layer, ref = _twins(lambda: RowParallelLinear(hout, hin, bias=True, input_is_parallel=input_is_parallel,
                                                      init_std=0.5), 2)
        x, g = torch.randn(seq, batch, hout), torch.randn(seq, batch, hin)
        yr, gxr = run_ref(ref, x, g)
        xl = (mine(x, -1) if input_is_parallel else x).clone().requires_grad_()
        yl = layer(xl)
        torch.testing.assert_close(yl, sp(yr))
        yl.backward(sp(g))
        torch.testing.assert_close(xl.grad, mine(gxr, -1) if input_is_parallel else gxr)
        torch.testing.assert_close(layer.weight.grad, mine(ref.weight.grad, 1))
        bias_grad = layer.bias.grad.clone()
        if sequence_parallel:  # each rank saw a slice of the sequence: the parts sum to the whole
            torch.distributed.all_reduce(bias_grad)
        torch.testing.assert_close(bias_grad, ref.bias.grad)

    # Vocab-parallel embedding.
    emb, ref = _twins(lambda: VocabParallelEmbedding(vocab, hin, init_std=1.0), 3)
    ids = torch.randint(0, vocab, (seq, batch))
    g = torch.randn(seq, batch, hin)
    with single_process():
        ref_out = ref(ids)
        ref_out.backward(g)
    out = emb(ids)
    torch.testing.assert_close(out, ref_out.detach())
    out.backward(g)
    torch.testing.assert_close(emb.weight.grad, mine(ref.weight.grad, 0))

    # Vocab-parallel cross entropy: no rank ever holds the full logits.
    logits, target = torch.randn(seq, batch, vocab) * 3, torch.randint(0, vocab, (seq, batch))
    w = torch.randn(seq, batch)
    lr, ll = logits.clone().requires_grad_(), mine(logits, -1).clone().requires_grad_()
    ref_loss = F.cross_entropy(lr.view(-1, vocab), target.view(-1), reduction="none").view(seq, batch)
    loss = vocab_parallel_cross_entropy(ll.clone(), target)
    torch.testing.assert_close(loss, ref_loss.detach())
    (ref_loss * w).sum().backward()
    (loss * w).sum().backward()
    torch.testing.assert_close(ll.grad, mine(lr.grad, -1))
    p = logits.log_softmax(-1)
    torch.testing.assert_close(vocab_parallel_entropy(mine(logits, -1)), -(p.exp() * p).sum(-1))

    # The mappings on their own: forward result and what backward does to a gradient of ones.
    x = torch.randn(seq, batch, hin)
    ones = world * torch.ones(1)
    for fn, fwd, bwd in [
        (mappings.copy_to_tp, x, ones),                            # identity / all-reduce
        (mappings.reduce_from_tp, x * world, 1.0),                 # all-reduce / identity
        (mappings.scatter_to_tp, mine(x, -1), 1.0),                # split / gather
        (mappings.gather_from_tp, x.repeat(1, 1, world), 1.0),     # gather / split
        (mappings.scatter_to_sequence, mine(x, 0), 1.0),           # split / gather
        (mappings.gather_from_sequence, x.repeat(world, 1, 1), ones),   # gather / reduce-scatter
        (mappings.reduce_scatter_to_sequence, mine(x * world, 0), 1.0),  # reduce-scatter / gather
    ]:
        xi = x.clone().requires_grad_()
        y = fn(xi)
        torch.testing.assert_close(y, fwd, msg=fn.__name__)
        y.backward(torch.ones_like(y))
        torch.testing.assert_close(xi.grad, torch.ones_like(x) * bwd, msg=fn.__name__)
    state.destroy()


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["plain", "sp"])
def test_layers_match_single_process(world, sequence_parallel):
    run_distributed(_check_layers, world, sequence_parallel)


def _check_dropout_streams(rank, world):
    import torch.distributed as dist

    from megalite.parallel import state
    from megalite.parallel.random import SequenceDropout, recompute, seed_tp_rng, tp_rng

    def gathered(t):
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        return parts

    for sequence_parallel in (False, True):
        state.initialize(tp=world, sequence_parallel=sequence_parallel)
        torch.manual_seed(5)
        seed_tp_rng(5)
        masks = gathered(SequenceDropout(0.5).train()(torch.ones(64)))
        same = all(torch.equal(masks[0], m) for m in masks[1:])
        assert same != sequence_parallel, "residual dropout: equal masks unless the sequence is split"
        with tp_rng():
            per_rank = gathered(torch.rand(64))
        assert not torch.equal(per_rank[0], per_rank[1]), "the tensor-parallel stream differs per rank"
        after = gathered(torch.rand(8))
        assert all(torch.equal(after[0], a) for a in after[1:]), "forking left the global stream alone"

    def block(x):
        with tp_rng():
            x = torch.nn.functional.dropout(x, 0.5, True)
        return torch.nn.functional.dropout(x * 2, 0.3, True)

    x = torch.randn(32, requires_grad=True)
    torch.manual_seed(9)
    seed_tp_rng(9)
    block(x).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    torch.manual_seed(9)
    seed_tp_rng(9)
    recompute(block, x).sum().backward()
    torch.testing.assert_close(x.grad, plain)  # recomputation replayed both streams
    state.destroy()


def test_dropout_random_streams():
    run_distributed(_check_dropout_streams, 2)


def _layer_activation_bytes(rank, world, sequence_parallel, out_file):
    from megalite.config import ModelConfig
    from megalite.model.gpt import TransformerLayer
    from megalite.parallel import state
    from megalite.parallel.init import initialize
    from megalite.parallel.memory import saved_activation_bytes
    from megalite.parallel.random import seed_tp_rng

    state.initialize(tp=world, sequence_parallel=sequence_parallel)
    seed_tp_rng(0)
    cfg = ModelConfig(num_layers=1, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256, kv_channels=16,
                      num_query_groups=4, hidden_dropout=0.1, attention_dropout=0.0, padded_vocab_size=64)
    layer = TransformerLayer(cfg)
    initialize(layer, 0)
    seq = 64 // world if sequence_parallel else 64
    n = saved_activation_bytes(lambda: layer(torch.randn(seq, 2, 64, requires_grad=True)), layer.parameters())
    if rank == 0:
        open(out_file, "w").write(str(n))
    state.destroy()


def test_sequence_parallelism_divides_activation_memory(tmp_path):
    """Bytes autograd keeps per layer: SP cuts all of it by TP; TP alone only the inner part."""
    sizes = {}
    for world, sp in ((1, False), (2, False), (2, True), (4, True)):
        f = tmp_path / f"{world}{sp}"
        if world == 1:
            _layer_activation_bytes(0, 1, False, f)
        else:
            run_distributed(_layer_activation_bytes, world, sp, str(f))
        sizes[(world, sp)] = int(f.read_text())
    base = sizes[(1, False)]
    assert sizes[(2, True)] * 2 == base and sizes[(4, True)] * 4 == base
    assert base / 2 < sizes[(2, False)] < base
