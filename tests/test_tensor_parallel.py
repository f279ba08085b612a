"""Tensor and sequence parallelism on gloo: every layout must reproduce the one-process run."""

import os

import pytest
import torch

from megalite.checkpoint.reshard import gather_replicated_qkv
from megalite.config import ModelConfig, parse_config
from megalite.errors import MegaliteError
from megalite.parallel.state import layout
from megalite.training.trainer import pretrain
from tests.conftest import read_metrics, tiny_model_args
from tests.dist_utils import run_distributed


def test_rank_layout_is_megatrons():
    g = layout(8, tp=2, pp=2)
    assert g["tp"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert g["dp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert g["pp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    with pytest.raises(MegaliteError, match="world size 6 is not divisible by tensor \\(4\\)"):
        layout(6, tp=4, pp=1)


def _pretrain(rank, world_size, argv):
    pretrain(parse_config(argv))


def run_layout(tmp_path, corpus, name, world, **kw):
    metrics = str(tmp_path / f"{name}.jsonl")
    kw = {"train_iters": 20, "lr": 1e-3, "min_lr": 1e-4, "hidden_size": 64, "num_attention_heads": 8,
          "num_query_groups": 4, "ffn_hidden_size": 128, **kw}
    argv = tiny_model_args(*corpus, metrics_file=metrics, save=str(tmp_path / name), **kw)
    run_distributed(_pretrain, world, argv)
    return read_metrics(metrics)[0]


def final_weights(folder, tp, with_metadata=False):
    files = [os.path.join(folder, "iter_0000020", f"mp_rank_{r:02d}", "model_optim_rng.pt") for r in range(tp)]
    payloads = [torch.load(f, weights_only=True) for f in files]
    models = [p["model"] for p in payloads]
    return (models, payloads[0]["tensor_parallel"]) if with_metadata else models


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_corpus):
    tmp = tmp_path_factory.mktemp("tp_reference")
    return run_layout(tmp, tiny_corpus, "ref", 1), final_weights(str(tmp / "ref"), 1)[0]


MODEL_SETTINGS = ("untie_embeddings_and_output_weights", "num_query_groups", "qk_layernorm")


@pytest.mark.dist
@pytest.mark.parametrize("world, tp, extra", [
    (2, 2, {"num_query_groups": 8}),  # plain multi-head attention
    (2, 2, {"sequence_parallel": True}),
    (4, 4, {"sequence_parallel": True, "untie_embeddings_and_output_weights": True}),
    (4, 2, {"sequence_parallel": True}),  # tp=2 x dp=2
    (2, 2, {"sequence_parallel": True, "num_query_groups": 1}),  # one key/value head, replicated
    (4, 4, {"num_query_groups": 2}),
    (2, 2, {"qk_layernorm": True, "num_query_groups": 1}),  # per-head norms shared by the ranks' heads
], ids=["tp2-mha", "tp2-sp", "tp4-sp-untied", "tp2xdp2-sp", "tp2-sp-mqa", "tp4-kv2", "tp2-qk-norm-mqa"])
def test_tensor_parallel_matches_one_process(tmp_path, tiny_corpus, reference, world, tp, extra):
    ref_rows, ref_weights = reference
    model_kw = {k: v for k, v in extra.items() if k in MODEL_SETTINGS}
    if model_kw:
        ref_rows = run_layout(tmp_path, tiny_corpus, "ref_variant", 1, **model_kw)
        ref_weights = final_weights(str(tmp_path / "ref_variant"), 1)[0]
    rows = run_layout(tmp_path, tiny_corpus, "tp", world, tensor_model_parallel_size=tp, **extra)
    assert len(rows) == len(ref_rows) == 20
    for a, b in zip(ref_rows, rows):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5), a["iteration"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), a["iteration"]
    shards, splits = final_weights(str(tmp_path / "tp"), tp, with_metadata=True)
    replicas = tp // extra.get("num_query_groups", 4)
    assert splits["layers.0.attention.qkv.weight"] == (
        {"dim": 0, "parts": tp, "kv_head_replicas": replicas} if replicas > 1 else {"dim": 0, "parts": tp})
    assert splits["layers.0.mlp.fc2.weight"] == {"dim": 1, "parts": tp}
    assert "layers.0.input_norm.weight" not in splits
    for name, full in ref_weights.items():
        if splits.get(name, {}).get("kv_head_replicas"):
            kv = slice(8 // tp * 8, None)  # rows after this rank's query heads: the shared key/value head
            for i in range(0, tp, splits[name]["kv_head_replicas"]):  # the copies agree
                for other in shards[i + 1 : i + splits[name]["kv_head_replicas"]]:
                    torch.testing.assert_close(other[name][kv], shards[i][name][kv])
            gathered = gather_replicated_qkv([s[name] for s in shards], ModelConfig(
                num_attention_heads=8, num_query_groups=extra["num_query_groups"], kv_channels=8))
        elif name in splits:  # gathered with the checkpoint's own split metadata
            gathered = torch.cat([s[name] for s in shards], dim=splits[name]["dim"])
        else:
            gathered = shards[0][name]
            assert all(torch.equal(gathered, s[name]) for s in shards[1:]), name
        torch.testing.assert_close(gathered, full, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.dist
def test_recomputation_under_tensor_parallelism_with_dropout(tmp_path, tiny_corpus):
    kw = dict(tensor_model_parallel_size=2, sequence_parallel=True, hidden_dropout=0.1, attention_dropout=0.1,
              train_iters=5)
    plain = run_layout(tmp_path, tiny_corpus, "plain", 2, **kw)
    full = run_layout(tmp_path, tiny_corpus, "full", 2, recompute_granularity="full", **kw)
    for a, b in zip(plain, full):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-6)


@pytest.mark.dist
def test_bf16_under_tensor_parallelism(tmp_path, tiny_corpus):
    one = run_layout(tmp_path, tiny_corpus, "bf16_tp1", 1, bf16=True, train_iters=10)
    two = run_layout(tmp_path, tiny_corpus, "bf16_tp2", 2, bf16=True, train_iters=10, tensor_model_parallel_size=2,
                     sequence_parallel=True)
    assert two[-1]["lm_loss"] < two[0]["lm_loss"]
    for a, b in zip(one, two):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-2)
