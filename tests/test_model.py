import math

import pytest
import torch
import torch.nn.functional as F

from megalite.config import ModelConfig
from megalite.kernels import reference
from megalite.kernels.reference import apply_rotary
from megalite.model import GPTModel
from megalite.model.flops import forward_flops_per_sequence, peak_tflops, train_flops
from megalite.model.rotary import RotaryEmbedding
from megalite.parallel.cross_entropy import vocab_parallel_cross_entropy, vocab_parallel_entropy
from megalite.parallel.init import initialize


def model_config(**kw):
    base = dict(num_layers=4, hidden_size=64, num_attention_heads=4, ffn_hidden_size=96, kv_channels=16,
                num_query_groups=2, normalization="RMSNorm", position_embedding_type="rope", swiglu=True,
                add_bias_linear=False, padded_vocab_size=128, max_position_embeddings=32, hidden_dropout=0.0,
                attention_dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("chunk", [None, 120], ids=["whole", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_matches_torch(dtype, chunk, monkeypatch):
    """Loss, gradient and entropy against torch's; ``chunked``: the CPU reference walks the 15 rows
    2 at a time (the last chunk a single row), as it walks a long batch's logits."""
    if chunk:
        monkeypatch.setattr(reference, "CPU_CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    logits = (torch.randn(5, 3, 50) * 3).to(dtype).requires_grad_(True)
    target = torch.randint(0, 50, (5, 3))
    ref_logits = logits.detach().float().clone().requires_grad_(True)
    ref = F.cross_entropy(ref_logits.view(-1, 50), target.view(-1), reduction="none").view(5, 3)
    got = vocab_parallel_cross_entropy(logits.clone(), target)
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
    w = torch.randn(5, 3)
    (got * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad, atol=tol, rtol=tol)
    p = ref_logits.detach().log_softmax(-1)
    entropy_tol = max(tol, 1e-5)  # lse - sum(p x) / sum(p) cancels more digits than -sum(p log p)
    torch.testing.assert_close(vocab_parallel_entropy(logits.detach()), -(p.exp() * p).sum(-1), atol=entropy_tol,
                               rtol=entropy_tol)


def test_initialisation_depends_on_seed_and_name_only():
    cfg = model_config()
    full = GPTModel(cfg)
    initialize(full, 3)
    first = GPTModel(cfg, pre_process=True, post_process=False, layers=range(0, 2))
    last = GPTModel(cfg, pre_process=False, post_process=True, layers=range(2, 4))
    initialize(first, 3)
    initialize(last, 3)
    params = dict(full.named_parameters())
    for part in (first, last):
        for name, p in part.named_parameters():
            assert torch.equal(p, params[name]), name
    other = GPTModel(cfg)
    initialize(other, 4)
    assert not torch.equal(other.layers["0"].mlp.fc1.weight, full.layers["0"].mlp.fc1.weight)
    # output projections get the depth-scaled std, norms start at one
    assert full.layers["1"].attention.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.15)
    assert torch.all(full.final_norm.weight == 1)


def test_pipeline_stages_compose_to_the_full_model():
    cfg = model_config()
    full, first, last = GPTModel(cfg), GPTModel(cfg, True, False, range(0, 1)), GPTModel(cfg, False, True, range(1, 4))
    for m in (full, first, last):
        initialize(m, 11)
    tokens = torch.randint(0, 128, (2, 16))
    torch.testing.assert_close(last(hidden=first(tokens)), full(tokens))


def reference_attention_model(model, tokens):
    """The same network written out naively (explicit softmax, repeated KV heads, rotate-half RoPE)."""
    cfg = model.cfg
    x = model.embedding.weight[tokens]  # [b, s, h]
    s = tokens.shape[1]
    pos = torch.arange(s).float()
    inv = 1.0 / (cfg.rotary_base ** (torch.arange(0, cfg.kv_channels, 2).float() / cfg.kv_channels))
    ang = torch.cat([pos[:, None] * inv, pos[:, None] * inv], -1)
    cos, sin = ang.cos(), ang.sin()

    def rope(t):  # [b, heads, s, d]
        t1, t2 = t.chunk(2, -1)
        return t * cos + torch.cat([-t2, t1], -1) * sin

    def rms(t, w):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + cfg.norm_epsilon) * w

    nq, ng, d = cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
    for layer in model.layers.values():
        h = rms(x, layer.input_norm.weight)
        qkv = (h @ layer.attention.qkv.weight.t()).view(*h.shape[:2], ng, nq // ng + 2, d)
        q = qkv[..., : nq // ng, :].reshape(*h.shape[:2], nq, d).transpose(1, 2)
        k = qkv[..., nq // ng, :].transpose(1, 2).repeat_interleave(nq // ng, dim=1)
        v = qkv[..., nq // ng + 1, :].transpose(1, 2).repeat_interleave(nq // ng, dim=1)
        q, k = rope(q), rope(k)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        att = att.masked_fill(torch.triu(torch.ones(s, s, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(*h.shape[:2], nq * d)
        x = x + o @ layer.attention.proj.weight.t()
        h = rms(x, layer.post_attention_norm.weight)
        gate, up = h @ layer.mlp.gate.weight.t(), h @ layer.mlp.fc1.weight.t()
        x = x + (F.silu(gate) * up) @ layer.mlp.fc2.weight.t()
    return rms(x, model.final_norm.weight) @ model.embedding.weight.t()


def test_model_matches_naive_reference():
    model = GPTModel(model_config())
    initialize(model, 5)
    tokens = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference_attention_model(model, tokens), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kw", [
    dict(normalization="LayerNorm", position_embedding_type="learned_absolute", swiglu=False, add_bias_linear=True,
         untie_embeddings_and_output_weights=True),
    dict(add_qkv_bias=True, num_query_groups=4),
    dict(rotary_percent=0.5),
])
def test_variants_train(kw):
    model = GPTModel(model_config(**kw))
    initialize(model, 1)
    names = {n for n, _ in model.named_parameters()}
    if kw.get("add_qkv_bias"):
        assert "layers.0.attention.qkv.bias" in names and "layers.0.attention.proj.bias" not in names
    if kw.get("untie_embeddings_and_output_weights"):
        assert "output_layer.weight" in names and "position_embedding.weight" in names
    tokens = torch.randint(0, 128, (2, 16))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = model(tokens, labels=tokens).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_partial_rotary_leaves_the_rest():
    rot = RotaryEmbedding(16, ModelConfig(rotary_percent=0.5))
    cos, sin = rot(torch.arange(4), torch.float32)
    x = torch.randn(4, 1, 2, 16)
    y = apply_rotary(x, cos, sin)
    assert torch.equal(y[..., 8:], x[..., 8:]) and not torch.allclose(y[..., :8], x[..., :8])


def test_flops_hand_count():
    # h=64, 4 query heads / 2 kv groups of d=16, f=96 SwiGLU, 2 layers, V=128, s=8
    cfg = model_config(num_layers=2)
    s = 8
    qkv = 2 * s * 64 * (4 + 2 * 2) * 16  # 131,072
    scores_and_values = 2 * 2 * 16 * 4 * (8 * 9 // 2)  # 9,216 (causal: 36 query-key pairs)
    proj = 2 * s * 64 * 64  # 65,536
    mlp = 2 * s * 64 * 96 * 3  # 294,912
    logits = 2 * s * 64 * 128  # 131,072
    per_seq = 2 * (qkv + scores_and_values + proj + mlp) + logits
    assert per_seq == 1_132_544
    assert forward_flops_per_sequence(cfg, s) == per_seq
    assert train_flops(cfg, s, 5) == 3 * 5 * per_seq
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("Intel Xeon") is None



def check_packed_documents(cfg):
    """Rows packed from several documents, positions restarting at each: every document's
    per-token losses and the gradients equal those of the documents run one by one."""
    model = GPTModel(cfg)
    initialize(model, 0)
    torch.manual_seed(1)
    lengths = [[5, 9, 2], [11, 5]]  # two packed rows of 16 tokens each
    docs = [[torch.randint(0, 128, (n + 1,)) for n in row] for row in lengths]
    alone = [model(d[None, :-1], labels=d[None, 1:])[0] for row in docs for d in row]
    (sum(x.sum() for x in alone)).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    tokens = torch.stack([torch.cat([d[:-1] for d in row]) for row in docs])
    labels = torch.stack([torch.cat([d[1:] for d in row]) for row in docs])
    positions = torch.stack([torch.cat([torch.arange(len(d) - 1) for d in row]) for row in docs])
    packed = model(tokens, labels=labels, positions=positions)
    packed.sum().backward()
    torch.testing.assert_close(packed.flatten(), torch.cat(alone), rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        assert (p.grad - grads[n]).abs().max() <= 1e-5 * grads[n].abs().max(), n


# longrope over an original context of 8: the documents of 9 and 11 tokens take the long set, their
# row-mates the short one (as each does alone)
LONGROPE = dict(use_rope_scaling=True, rope_type="longrope", rope_scaling_factor=4.0,
                original_max_position_embeddings=8, short_factor=[1.0, 1.2, 1.1, 1.5, 1.3, 1.8, 1.6, 2.0],
                long_factor=[1.0, 2.0, 3.0, 5.0, 7.0, 9.0, 12.0, 16.0])


DYNAMIC = dict(use_rope_scaling=True, rope_type="dynamic", rope_scaling_factor=2.0, max_position_embeddings=8)


@pytest.mark.parametrize("kw", [{}, {"position_embedding_type": "learned_absolute"}, LONGROPE, DYNAMIC],
                         ids=["rope", "learned", "longrope", "dynamic"])
def test_packed_documents_get_the_loss_they_get_alone(kw):
    check_packed_documents(model_config(**kw))


def test_rope_scaling_flags_resolve():
    from megalite.config import parse_config, validate
    from megalite.errors import MegaliteError

    base = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
            "--mock-data", "--vocab-size", "128", "--train-iters", "1"]
    m = validate(parse_config(base + ["--position-embedding-type", "rope", "--use-rope-scaling"])).model
    assert (m.rope_type, m.rope_scaling_factor, m.original_max_position_embeddings) == ("llama3", 8.0, 8192)
    m = validate(parse_config(base + ["--position-embedding-type", "rope", "--rope-type", "yarn",
                                      "--rope-scaling-factor", "4", "--max-position-embeddings", "128"])).model
    assert m.use_rope_scaling and m.original_max_position_embeddings == 128
    longrope = base + ["--position-embedding-type", "rope", "--rope-type", "longrope", "--max-position-embeddings",
                       "128", "--short-factor", *["1"] * 8, "--long-factor", *["2.5"] * 8]
    m = validate(parse_config(longrope)).model
    assert m.original_max_position_embeddings == 128 and m.long_factor == [2.5] * 8
    with pytest.raises(MegaliteError, match=r"--rope-type longrope needs --long-factor with 8 values \(one per pair "
                                            r"of rotated dimensions\), got 7"):
        validate(parse_config(longrope[:-1]))
    with pytest.raises(MegaliteError, match="--rope-type linear needs --position-embedding-type rope"):
        validate(parse_config(base + ["--rope-type", "linear"]))


def test_window_flags():
    from megalite.config import parse_config, validate, windowed_layers
    from megalite.errors import MegaliteError

    base = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
            "--mock-data", "--vocab-size", "128", "--train-iters", "1"]
    m = validate(parse_config(base + ["--window-size", "(7, 0)", "--window-attn-skip-freq", "2"])).model
    assert m.window_size == [7, 0] and windowed_layers(m) == [True, False, True, False]
    m = validate(parse_config(base + ["--window-size", "7,0", "--window-attn-skip-freq", "[0,1]*2"])).model
    assert windowed_layers(m) == [False, True, False, True]
    with pytest.raises(MegaliteError, match=r"gives 3 layers, not --num-layers 4"):
        validate(parse_config(base + ["--window-size", "7,0", "--window-attn-skip-freq", "[1,1,0]"]))
    with pytest.raises(MegaliteError, match="--window-attn-skip-freq needs --window-size"):
        validate(parse_config(base + ["--window-attn-skip-freq", "2"]))
    with pytest.raises(SystemExit):  # argparse: "--window-size '8,8': expected LEFT,0"
        parse_config(base + ["--window-size", "8,8"])


def test_flops_count_the_window():
    cfg = model_config(num_layers=2)
    full = forward_flops_per_sequence(cfg, 8)
    windowed = forward_flops_per_sequence(model_config(num_layers=2, window_size=[2, 0], window_attn_skip_freq="2"), 8)
    # layer 0 windowed: 1 + 2 + 3 * 6 = 21 query-key pairs instead of 36 (layer 1 full)
    assert full - windowed == 2 * 2 * 16 * 4 * (36 - 21)


def test_ignored_labels_skip_the_output_layer_with_the_same_numbers():
    """Positions labelled IGNORE_INDEX (online RL's prompts and padding) skip the output layer: the
    other positions' losses and entropies, and every gradient, are those of the full computation."""
    from megalite.model.heads import LMHead
    from megalite.parallel.cross_entropy import IGNORE_INDEX

    torch.manual_seed(0)
    head = LMHead(model_config())
    head.weight.data.normal_()
    head.entropy, head.temperature, head.labelled_only = True, 0.7, True
    x = torch.randn(6, 3, 64, requires_grad=True)  # [seq, batch, hidden]
    labels = torch.randint(0, 128, (3, 6))
    keep = torch.rand(3, 6) > 0.4
    out = head(x, labels.masked_fill(~keep, IGNORE_INDEX))  # [batch, seq, 2]
    out[..., 0].sum().backward()
    grads = x.grad.clone(), head.weight.grad.clone()
    x.grad, head.weight.grad = None, None
    full = head(x, labels) * keep[..., None]
    full[..., 0].sum().backward()
    torch.testing.assert_close(out, full)
    torch.testing.assert_close(grads[0], x.grad)
    torch.testing.assert_close(grads[1], head.weight.grad)
    assert (out[~keep] == 0).all() and (out[keep] != 0).all()
