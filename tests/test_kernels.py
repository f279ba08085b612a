"""Every Triton kernel, forward and backward, against its torch reference run in float64.

Without CUDA the kernels run under Triton's interpreter: TRITON_INTERPRET must be set
before triton is imported (conftest.py sets it, as peft imports triton at collection) and
before megalite's Triton modules create their @triton.jit functions (set here again for a
run of this file alone; those modules are imported only after it). Shapes are small, odd (not
multiples of any block) and fp32; the bound is a relative error under 1e-5, measured as
max |fused - reference| / max |reference| for the outputs and for every gradient.
"""

import importlib
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from megalite.config import ModelConfig  # noqa: E402
from megalite.kernels import dispatch, fused_kernels, reference  # noqa: E402
from megalite.model import GPTModel  # noqa: E402
from megalite.model.rotary import RotaryEmbedding  # noqa: E402
from megalite.parallel.cross_entropy import vocab_parallel_cross_entropy  # noqa: E402
from megalite.parallel.init import initialize  # noqa: E402

norm, rope, silu_mul, cross_entropy, flash = (importlib.import_module(f"megalite.kernels.{m}") for m in
                                            ("norm", "rope", "silu_mul", "cross_entropy", "flash_attention"))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-5


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


def compare(fused, ref, *inputs, dtype=torch.float32, tol=TOL):
    """Run ``fused`` on ``dtype`` copies and ``ref`` on float64 copies of ``inputs``, backpropagate
    the same random output gradients, and check outputs and input gradients."""
    torch.manual_seed(1)
    ins32 = [t.detach().to(DEVICE, dtype).requires_grad_() for t in inputs]
    ins64 = [t.detach().to(DEVICE, torch.float64).requires_grad_() for t in inputs]
    out32, out64 = fused(*ins32), ref(*ins64)
    out32, out64 = (o if isinstance(o, tuple) else (o,) for o in (out32, out64))
    grads = [torch.randn_like(o) for o in out64]
    torch.autograd.backward(out32, [g.to(o.dtype) for g, o in zip(grads, out32)])
    torch.autograd.backward(out64, grads)
    for i, (a, b) in enumerate(zip(out32, out64)):
        assert relative_error(a, b) < tol, f"output {i}"
    for i, (a, b) in enumerate(zip(ins32, ins64)):
        assert relative_error(a.grad, b.grad) < tol, f"gradient of input {i}"


@pytest.mark.parametrize("kind", ["rms", "layer"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_norms(kind, with_residual):
    torch.manual_seed(0)
    rows, dim = 37, 100  # more rows than backward bands, so each band reduces several rows' weight gradients
    x, residual, w, b = torch.randn(rows, dim), torch.randn(rows, dim), torch.randn(dim), torch.randn(dim)
    fused, ref = (norm.rms_norm, reference.rms_norm) if kind == "rms" else (norm.layer_norm, reference.layer_norm)
    params = [w] if kind == "rms" else [w, b]

    def run(fn):
        if with_residual:
            return lambda x, r, *p: fn(x, *p, 1e-5, r)
        return lambda x, *p: fn(x, *p, 1e-5)

    compare(run(fused), run(ref), x, *([residual] if with_residual else []), *params)


@pytest.mark.parametrize("percent", [1.0, 0.5])
@pytest.mark.parametrize("per_token_positions", [False, True])
def test_rotary_q_and_k(percent, per_token_positions):
    torch.manual_seed(0)
    seq, batch, dim = 13, 3, 24
    rotary = RotaryEmbedding(dim, ModelConfig(rotary_percent=percent))
    # packed sequences restart positions at each document: one position per (token, row)
    positions = torch.randint(0, 50, (seq, batch)) if per_token_positions else torch.arange(seq)
    cos, sin = (t.to(DEVICE) for t in rotary(positions, torch.float64))
    qkv = torch.randn(seq, batch, 2, 5, dim)  # q and k as strided views, as the model slices its fused QKV
    q, k = qkv[:, :, 0], qkv[:, :, 1, :2]
    compare(lambda q, k: rope.rotary_qk(q, k, cos.float(), sin.float()),
            lambda q, k: reference.rotary_qk(q, k, cos, sin), q, k)


def test_swiglu():
    torch.manual_seed(0)
    compare(silu_mul.swiglu, reference.swiglu, torch.randn(7, 333) * 3, torch.randn(7, 333))


def test_cross_entropy_shard_statistics_and_gradient():
    torch.manual_seed(0)
    logits = torch.randn(11, 3, 5000) * 4  # a vocabulary longer than one block: several chunks per row
    target = torch.randint(-100, 5100, (11, 3))  # some targets on other shards
    got = cross_entropy.cross_entropy_statistics(logits.to(DEVICE), target.to(DEVICE))
    ref = reference.cross_entropy_statistics(logits.double(), target)
    for name, a, b in zip(["max", "sum_exp", "target_logit", "sum_logits"], got, ref):
        assert relative_error(a.cpu(), b) < TOL, name
    lse, grad_loss = torch.randn(11, 3) + 9, torch.randn(11, 3)
    args = (target, lse, grad_loss, 0.1, 10000, 1e-3)
    got = cross_entropy.cross_entropy_gradient(logits.to(DEVICE), *(a.to(DEVICE) for a in args[:3]), *args[3:])
    ref = reference.cross_entropy_gradient(logits.double(), target, lse.double(), grad_loss.double(), *args[3:])
    assert relative_error(got.cpu(), ref) < TOL


def cross_entropy_by_hand(logits, target, ignore_index, smoothing, z_loss):
    """Label-smoothed cross entropy plus z * lse^2, from torch's own cross entropy."""
    flat, t = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    loss = F.cross_entropy(flat, t, ignore_index=ignore_index, label_smoothing=smoothing, reduction="none")
    lse = flat.logsumexp(-1)
    return (loss + z_loss * lse.square() * (t != ignore_index)).view(target.shape)


def test_fused_loss_matches_torch_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(9, 2, 300) * 3, torch.randint(0, 300, (9, 2))
    target[0, 0] = target[4, 1] = -100
    with fused_kernels(True):
        compare(lambda x: vocab_parallel_cross_entropy(x, target.to(DEVICE), -100, 0.1, 1e-3),
                lambda x: cross_entropy_by_hand(x, target.to(DEVICE), -100, 0.1, 1e-3), logits)


@pytest.mark.parametrize("seq,batch,heads,kv_heads,dim", [
    (150, 2, 4, 2, 64),  # GQA 2:1, two query blocks, tails in every kernel
    (130, 1, 6, 1, 128),  # multi-query, the larger head dim
    (77, 2, 3, 3, 16),  # plain multi-head attention, a head dim the blocks pad
])
def test_flash_attention(seq, batch, heads, kv_heads, dim):
    torch.manual_seed(0)
    q = torch.randn(seq, batch, heads, dim)
    k, v = torch.randn(seq, batch, kv_heads, dim), torch.randn(seq, batch, kv_heads, dim)
    compare(flash.attention, reference.attention, q, k, v)


def test_flash_attention_document_masking():
    torch.manual_seed(0)
    seq, batch = 150, 2
    # documents over the two rows laid end to end: one crosses a key block, one is a single token
    cu = torch.tensor([0, 40, 150, 151, 230, 300])
    q, k, v = torch.randn(seq, batch, 4, 32), torch.randn(seq, batch, 2, 32), torch.randn(seq, batch, 2, 32)
    compare(lambda q, k, v: flash.attention(q, k, v, cu.to(DEVICE)),
            lambda q, k, v: reference.attention(q, k, v, cu.to(DEVICE)), q, k, v)
    with pytest.raises(ValueError, match="every row start"):  # a document may not run across rows
        flash.attention(q, k, v, torch.tensor([0, 100, 300]))


@pytest.mark.parametrize("window, documents", [
    (1, False),  # each query sees itself and one key before
    (5, False),  # shorter than a block: most key blocks skipped
    (70, False),  # the window's edge inside a key block, query blocks straddling it
    (40, True),  # windows and packed documents at once
], ids=["one-back", "short", "block-edge", "with-documents"])
def test_flash_attention_sliding_window(window, documents):
    torch.manual_seed(0)
    seq, batch = 150, 2
    cu = torch.tensor([0, 40, 150, 151, 230, 300]).to(DEVICE) if documents else None
    q, k, v = torch.randn(seq, batch, 4, 32), torch.randn(seq, batch, 2, 32), torch.randn(seq, batch, 2, 32)
    compare(lambda q, k, v: flash.attention(q, k, v, cu, window),
            lambda q, k, v: reference.attention(q, k, v, cu, window=window), q, k, v)
    full, windowed = (reference.attention(q, k, v, cu, window=w) for w in (None, window))
    assert torch.equal(full[: window + 1], windowed[: window + 1]) and not torch.allclose(full, windowed)


@pytest.mark.parametrize("op", ["rms_norm", "rotary_qk", "swiglu", "attention"])
def test_half_precision(op):
    """fp16 in and out, fp32 inside: within fp16's rounding of the float64 reference. (bf16 takes
    the same code; the interpreter's tl.dot cannot multiply bf16, a GPU's can.)"""
    torch.manual_seed(0)
    cos, sin = (t.to(DEVICE) for t in RotaryEmbedding(32, ModelConfig())(torch.arange(40), torch.float64))
    x, w = torch.randn(40, 2, 4, 32), torch.randn(40, 2, 2, 32)
    fused, ref, inputs = {
        "rms_norm": (lambda x, w: norm.rms_norm(x, w, 1e-5), lambda x, w: reference.rms_norm(x, w, 1e-5),
                     (x, x[0, 0, 0])),
        "rotary_qk": (lambda q, k: rope.rotary_qk(q, k, cos.half(), sin.half()),
                      lambda q, k: reference.rotary_qk(q, k, cos, sin), (x, w)),
        "swiglu": (silu_mul.swiglu, reference.swiglu, (x, x.flip(0))),
        "attention": (flash.attention, reference.attention, (x, w, w.flip(0))),
    }[op]
    compare(fused, ref, *inputs, dtype=torch.float16, tol=1e-2)


def tiny_config(**kw):
    base = dict(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=96, kv_channels=16,
                num_query_groups=2, normalization="RMSNorm", position_embedding_type="rope", swiglu=True,
                add_bias_linear=False, padded_vocab_size=128, max_position_embeddings=32, hidden_dropout=0.0,
                attention_dropout=0.0, init_method_std=0.15)  # wide enough for sharp attention: every path matters
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("kw", [{}, dict(normalization="LayerNorm", rotary_percent=0.5),
                                dict(window_size=[5, 0], window_attn_skip_freq="2", qk_layernorm=True)])
def test_model_with_every_fused_kernel_matches_reference(kw):
    """Loss and every parameter gradient of a tiny model: all kernels in fp32 vs the torch path in float64."""
    tokens = torch.randint(0, 128, (2, 24))
    losses, grads = [], []
    for fused, backend, dtype in ((True, "triton", torch.float32), (False, "sdpa", torch.float64)):
        model = GPTModel(tiny_config(attention_backend=backend, **kw))
        initialize(model, 3)
        model.to(DEVICE, dtype)
        with fused_kernels(fused):
            loss = model(tokens.to(DEVICE), labels=tokens.to(DEVICE))
            loss.mean().backward()
        losses.append(loss)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert relative_error(*losses) < TOL
    for name in grads[1]:
        assert relative_error(grads[0][name], grads[1][name]) < TOL, name


def test_packed_documents_with_every_fused_kernel():
    """Packed rows (positions restarting per document) through the Triton kernels: each
    document's losses and the gradients equal running the documents one by one."""
    from tests.test_model import check_packed_documents

    with fused_kernels(True):
        check_packed_documents(tiny_config(attention_backend="triton", init_method_std=0.02))


def test_shared_prefixes_with_every_fused_kernel():
    """Rows sharing their prompts (online RL) through the Triton kernels: RoPE per compact token, flash
    attention on the rows gathered back, the fused loss: the rows' own numbers and gradients."""
    from tests.test_shared_prefix import check_shared_equals_rows

    with fused_kernels(True):
        model = GPTModel(tiny_config(attention_backend="triton"))
        initialize(model, 3)
        check_shared_equals_rows(model.to(DEVICE), device=DEVICE)


def test_dispatch_falls_back_where_triton_cannot_run(monkeypatch):
    monkeypatch.setattr(dispatch, "flash_attn_installed", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.randn(8, 1, 2, 16)
    assert dispatch.attention_implementation("flash_attn", q) == "triton"  # no flash-attn package
    assert dispatch.attention_implementation("triton", q, dropout_p=0.1) == "sdpa"  # the kernel has no dropout
    assert dispatch.attention_implementation("triton", q, mask=torch.ones(1, 1, 8, 8, dtype=torch.bool)) == "sdpa"
    with fused_kernels(True):
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # a CPU tensor without the interpreter: references only
        assert dispatch.attention_implementation("triton", q) == "sdpa"
        x, w = torch.randn(3, 8), torch.randn(8)
        assert torch.equal(dispatch.rms_norm(x, w, 1e-5), reference.rms_norm(x, w, 1e-5))


def test_attention_backend_flags_are_validated():
    from megalite.config import parse_config, validate
    from megalite.errors import MegaliteError

    base = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
            "--mock-data", "--vocab-size", "128", "--train-iters", "1"]
    with pytest.raises(MegaliteError, match="--attention-dropout 0"):
        validate(parse_config(base + ["--attention-backend", "triton"]))
    cfg = validate(parse_config(base + ["--attention-backend", "triton", "--attention-dropout", "0",
                                        "--no-fused-kernels"]))
    assert cfg.model.attention_backend == "triton" and cfg.training.fused_kernels is False


def test_kernel_benchmark_dry_run(capsys):
    """bench/bench_kernels.py end to end on tiny shapes: every kernel timed, fused and eager agree."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "bench_kernels.py")
    spec = importlib.util.spec_from_file_location("bench_kernels", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    for name in bench.CASES:
        for impl in ("megalite", "eager"):
            [line] = [x for x in lines if x.startswith(f"bench_kernels: {name} ") and f"| {impl} |" in x]
            assert float(line.split("max diff vs eager ")[1].split()[0]) < 1e-5, line
        assert any(x.startswith(f"bench_kernels: {name} | megalite speed vs") for x in lines), name
