"""Context parallelism on gloo: CP=2 and CP=4, alone (dropout on, sliding window) and with
TP=2 + SP, PP=2 and DP=2 + ZeRO-1, and on packed SFT documents, reproduce the one-process
losses and gradient norms over 20 steps; a CP=2 x DP=2 ZeRO-1 checkpoint resumes at CP=2
alone; CP=2 with the ring's blocks in the Triton kernel matches too (3 steps). Several
layouts share one process launch."""

import os

import pytest
import torch

from megalite.config import parse_config
from megalite.errors import MegaliteError
from megalite.parallel.context import chunk_indices
from megalite.parallel.state import layout
from megalite.training.trainer import pretrain
from sft_gpt import main as sft_main
from tests.conftest import read_metrics, tiny_model_args, write_jsonl
from tests.dist_utils import run_distributed

ITERS = 20
# the sequence (32 tokens) crosses chunk borders with a window of 5 and documents of any length
DROPOUT_WINDOW = {"hidden_dropout": 0.1, "window_size": "5,0"}
# the ring's blocks through the Triton kernel: under the interpreter, so a few steps of one sequence
FUSED_SHORT = {"train_iters": 3, "micro_batch_size": 1, "global_batch_size": 1, **DROPOUT_WINDOW}


def test_rank_layout_is_megatrons_tp_cp_dp_pp():
    g = layout(16, tp=2, pp=2, cp=2)
    assert g["tp"][:2] == [[0, 1], [2, 3]]
    assert g["cp"][:2] == [[0, 2], [1, 3]]
    assert g["dp"][:2] == [[0, 4], [1, 5]]
    assert g["dp_cp"][:2] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert g["pp"][0] == [0, 8]
    with pytest.raises(MegaliteError, match="x context \\(2\\)"):
        layout(12, tp=2, pp=2, cp=2)


def test_chunks_balance_the_causal_mask():
    assert [chunk_indices(16, 2, r).tolist() for r in range(2)] == [[0, 1, 2, 3, 12, 13, 14, 15],
                                                                    [4, 5, 6, 7, 8, 9, 10, 11]]


def test_sequence_must_split_into_two_chunks_per_rank(tiny_corpus):
    from megalite.config import validate

    cfg = parse_config(tiny_model_args(*tiny_corpus, context_parallel_size=2, seq_length=30))
    with pytest.raises(MegaliteError, match="--seq-length 30 is not divisible by 4"):
        validate(cfg, 2)


def _packed_positions(seq, batch):
    positions = torch.arange(seq).repeat(batch, 1)
    positions[0, 5:] -= 5  # documents of 5, 9, ... tokens in row 0, of 3, 13, ... in row 1
    positions[0, 14:] = torch.arange(seq - 14)
    positions[1, 3:] = torch.arange(seq - 3)
    return positions


def test_ring_block_math_and_backward_equal_attention(one_thread, monkeypatch):
    """One rank's ring (the per-block math in tiles of query rows, the log-sum-exp merge, the
    hand-written backward) against the reference attention, in fp64, with documents, a window
    and grouped heads; with dropout, the backward is the gradient of the forward (masks redrawn
    from the saved state). The multi-rank rings are the training runs below."""
    from megalite.kernels.reference import attention
    from megalite.model.gpt import document_boundaries
    from megalite.parallel import context
    from megalite.parallel.context import document_starts, ring_attention

    monkeypatch.setattr(context, "TILE_ELEMENTS", 300)  # tiles of two or three query rows

    torch.manual_seed(0)
    seq, batch = 16, 2
    q = torch.randn(seq, batch, 4, 8, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(seq, batch, 2, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    positions = _packed_positions(seq, batch)
    grad = torch.randn(seq, batch, 4, 8, dtype=torch.float64)
    for window in (None, 3):
        want = attention(q, k, v, document_boundaries(positions), window=window)
        got = ring_attention(q, k, v, document_starts(positions), window)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(torch.autograd.grad(got, (q, k, v), grad),
                                   torch.autograd.grad(want, (q, k, v), grad))

    def dropped(q, k, v):
        with torch.random.fork_rng():
            torch.manual_seed(1)
            return ring_attention(q, k, v, document_starts(positions), 3, dropout_p=0.3)

    out = dropped(q, k, v)
    assert not torch.allclose(out, ring_attention(q, k, v, document_starts(positions), 3))
    analytic = torch.autograd.grad(out, (q, k, v), grad)
    direction = [torch.randn_like(t) for t in (q, k, v)]  # a central difference along one direction
    with torch.no_grad():
        plus = dropped(*(t + 1e-6 * d for t, d in zip((q, k, v), direction)))
        minus = dropped(*(t - 1e-6 * d for t, d in zip((q, k, v), direction)))
    numeric = ((plus - minus) / 2e-6 * grad).sum()
    assert float(sum((g * d).sum() for g, d in zip(analytic, direction))) == pytest.approx(float(numeric), rel=1e-6)


@pytest.mark.parametrize("rank, source, window, documents", [
    (0, 0, None, False),  # a diagonal block: two causal chunk pairs and one wholly visible
    (1, 0, None, False),  # an earlier rank's block: half of it masked (this rank's chunks over its first)
    (0, 1, None, True),  # a later rank's block (this rank's second chunk over it), documents across chunk borders
    (0, 0, 30, True),  # the window and documents together
    (1, 0, 5, False),  # a window that skips one chunk pair of the half left
], ids=["diagonal", "off-diagonal", "later-with-documents", "window-with-documents", "short-window"])
def test_kernel_block_equals_torch_block(monkeypatch, rank, source, window, documents):
    """One ring block (CP=2, 96 tokens: chunks of 24) through the Triton kernel in fp32 and the
    torch tiles in fp64: output and log-sum-exp forward; dq, dk, dv from a final log-sum-exp
    and delta, as the ring's backward gives them. Tiles of 16 keep several kernel blocks and
    chunk offsets off the block edges."""
    pytest.importorskip("triton")
    from megalite.kernels import dispatch
    from megalite.parallel.context import _Block, _merge

    flash = dispatch.triton_module("flash_attention")
    for table in ("FORWARD", "BACKWARD_DKDV", "BACKWARD_DQ"):
        monkeypatch.setattr(flash, table, {64: (16, 16, 1)})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    seq, size, batch, length = 96, 2, 2, 48
    q, dout = torch.randn(length, batch, 2, 16), torch.randn(length, batch, 2, 16)
    kv = torch.randn(2, batch, 1, length, 16)
    doc_start = None
    if documents:  # row 0: documents from 0, 10, 30, 50 and 70 (over the chunk borders 24, 48 and 72); row 1: 0, 90
        starts = torch.tensor([[0, 10, 30, 50, 70], [0, 90, 90, 90, 90]])
        everywhere = starts.gather(1, torch.searchsorted(starts, torch.arange(seq).repeat(batch, 1), right=True) - 1)
        doc_start = everywhere[:, chunk_indices(seq, size, rank)].to(device)
    other_blocks, delta_all = torch.randn(batch, 2, length), torch.randn(batch, 2, length)
    block = _Block(seq, size, rank, source, window, device)
    results = []
    for fused, dtype in ((True, torch.float32), (False, torch.float64)):
        qd, doutd, kvd = (t.to(device, dtype) for t in (q, dout, kv))
        out = torch.zeros(batch, 2, length, 16, dtype=dtype, device=device)
        lse = torch.full(out.shape[:3], float("-inf"), dtype=dtype, device=device)
        for part, o, block_lse in block.forward(qd, kvd, doc_start, 0.0, fused):
            _merge(out, lse, part, o, block_lse)
        final = torch.logaddexp(lse, other_blocks.to(device, dtype))  # as if merged with the other blocks
        delta = delta_all.to(device, dtype)
        dq, dkv = torch.zeros_like(out), torch.zeros_like(kvd)
        block.backward(qd, kvd, doutd, final, delta, doc_start, 0.0, fused, dq, dkv)
        results.append((out, lse, dq, dkv[0], dkv[1]))
    (out, lse, *grads), (out_ref, lse_ref, *grads_ref) = results
    assert torch.equal(lse.isinf(), lse_ref.isinf())  # rows that see no key of the block
    seen = ~lse_ref.isinf()
    assert float((lse - lse_ref)[seen].abs().max()) < 1e-5
    for name, got, want in zip(["out", "dq", "dk", "dv"], [out, *grads], [out_ref, *grads_ref]):
        assert float((got.double() - want).abs().max() / want.abs().max()) < 1e-5, name


def _pretrain_args(corpus, folder, name, **kw):
    kw = {"train_iters": ITERS, "lr": 1e-3, "min_lr": 1e-4, "hidden_size": 64, "num_attention_heads": 8,
          "num_query_groups": 4, "ffn_hidden_size": 128, "eval_iters": 0, "micro_batch_size": 4,
          "global_batch_size": 4, "lr_decay_iters": ITERS, "metrics_file": os.path.join(folder, f"{name}.jsonl"),
          **kw}
    return tiny_model_args(*corpus, **kw)


def _sft_args(corpus, data, folder, name, **kw):
    kw = {"sft_data": data, "data_path": None, "split": None, "seq_length": 32, "train_iters": ITERS,
          "micro_batch_size": 4, "global_batch_size": 4, "chat_template": "alpaca", "eval_iters": 0,
          "packing": True, "metrics_file": os.path.join(folder, f"{name}.jsonl"), "lr_warmup_iters": 0, **kw}
    return tiny_model_args(*corpus, **kw)


def _runs(rank, world, runs):
    torch.set_num_threads(1)
    for entry, argv in runs:
        (sft_main if entry == "sft" else lambda a: pretrain(parse_config(a)))(argv)


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    from megalite.data.demo_sft import instruction_pairs

    return write_jsonl(tmp_path_factory.mktemp("cp_sft") / "train.jsonl", instruction_pairs()[:96])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_corpus, sft_file):
    """Every layout's metrics, by name: the one-process references here, the CP layouts in one
    launch of two and one of four processes."""
    folder = str(tmp_path_factory.mktemp("cp"))
    torch.set_num_threads(1)
    try:
        pretrain(parse_config(_pretrain_args(tiny_corpus, folder, "one", **DROPOUT_WINDOW)))
        pretrain(parse_config(_pretrain_args(tiny_corpus, folder, "one_plain")))
        pretrain(parse_config(_pretrain_args(tiny_corpus, folder, "one_short", **FUSED_SHORT)))
        sft_main(_sft_args(tiny_corpus, sft_file, folder, "one_packed"))
    finally:
        torch.set_num_threads(2)
    zero1 = os.path.join(folder, "cp2_dp2_zero1")
    run_distributed(_runs, 4, [
        ("pretrain", _pretrain_args(tiny_corpus, folder, "cp4", context_parallel_size=4, **DROPOUT_WINDOW)),
        ("pretrain", _pretrain_args(tiny_corpus, folder, "cp2_dp2_zero1", context_parallel_size=2,
                                    use_distributed_optimizer=True, micro_batch_size=2, train_iters=ITERS // 2,
                                    save=zero1)),
        ("pretrain", _pretrain_args(tiny_corpus, folder, "cp2_tp2_sp", context_parallel_size=2,
                                    tensor_model_parallel_size=2, sequence_parallel=True)),
        ("pretrain", _pretrain_args(tiny_corpus, folder, "cp2_pp2", context_parallel_size=2,
                                    pipeline_model_parallel_size=2)),
    ])
    run_distributed(_runs, 2, [
        ("pretrain", _pretrain_args(tiny_corpus, folder, "cp2", context_parallel_size=2, **DROPOUT_WINDOW)),
        ("sft", _sft_args(tiny_corpus, sft_file, folder, "cp2_packed", context_parallel_size=2)),
        ("pretrain", _pretrain_args(tiny_corpus, folder, "cp2_resumed", context_parallel_size=2, load=zero1)),
        ("pretrain", _pretrain_args(tiny_corpus, folder, "cp2_fused", context_parallel_size=2, fused_kernels=True,
                                    **FUSED_SHORT)),
    ])
    return folder, {f[:-6]: read_metrics(os.path.join(folder, f))[0] for f in os.listdir(folder)
                    if f.endswith(".jsonl")}


@pytest.mark.dist
@pytest.mark.parametrize("name, reference", [
    ("cp2", "one"), ("cp4", "one"),  # hidden dropout on, sliding window
    ("cp2_packed", "one_packed"),  # SFT --packing: documents restart inside the chunks
    ("cp2_dp2_zero1", "one_plain"),  # iterations 1-10, then 11-20 resumed from its checkpoint at CP=2
    ("cp2_tp2_sp", "one_plain"), ("cp2_pp2", "one_plain"),
])
def test_context_parallel_matches_one_process(runs, name, reference):
    rows, ref = runs[1][name], runs[1][reference]
    if name == "cp2_dp2_zero1":  # trained half way, saved, resumed at CP=2 alone (no ZeRO)
        rows = rows + runs[1]["cp2_resumed"]
    assert len(rows) == len(ref) == ITERS
    for a, b in zip(ref, rows):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5), a["iteration"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5), a["iteration"]


@pytest.mark.dist
def test_fused_ring_blocks_match_one_process(runs):
    """CP=2 with --fused-kernels (the ring's blocks through the Triton kernel, a window of 5
    across chunks of 8 tokens, hidden dropout) gives the losses and gradient norms of one
    process without fused kernels."""
    rows, ref = runs[1]["cp2_fused"], runs[1]["one_short"]
    assert len(rows) == len(ref) == FUSED_SHORT["train_iters"]
    for a, b in zip(ref, rows):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5), a["iteration"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5), a["iteration"]


@pytest.mark.dist
def test_context_parallel_checkpoint_reshards_offline(runs, tmp_path):
    """The CP=2 x DP=2 checkpoint holds one whole model (CP does not shard weights): resharded
    offline to TP=2, its two files hold the halves of the saved weights."""
    from megalite.checkpoint.rewrite import reshard_offline

    saved = os.path.join(runs[0], "cp2_dp2_zero1")
    reshard_offline(saved, str(tmp_path / "tp2"), tp=2, pp=1)
    one = torch.load(os.path.join(saved, "iter_0000010", "mp_rank_00", "model_optim_rng.pt"), weights_only=True)
    assert one["parallel"]["cp_size"] == 2
    halves = [torch.load(tmp_path / "tp2" / "iter_0000010" / f"mp_rank_{r:02d}" / "model_optim_rng.pt",
                         weights_only=True)["model"] for r in range(2)]
    name = "layers.1.mlp.fc2.weight"  # row-parallel: split along its input dimension
    torch.testing.assert_close(torch.cat([h[name] for h in halves], dim=1), one["model"][name], rtol=0, atol=0)
