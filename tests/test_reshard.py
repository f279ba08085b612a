"""Checkpoints load into any parallel layout: weights and optimizer state saved at
TP=2 x PP=2 x DP=2 (distributed optimizer) continue in other layouts with the losses of an
uninterrupted run."""

import pytest

from tests.conftest import read_metrics, tiny_model_args
from tests.test_zero import run

pytestmark = pytest.mark.dist

COMMON = dict(num_layers=8, train_iters=8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_corpus):
    """(uninterrupted one-process losses, checkpoint at iteration 4 saved by 8 ranks)."""
    tmp = tmp_path_factory.mktemp("reshard")
    full = run(tmp, tiny_corpus, "full", 1, **COMMON)
    first = run(tmp, tiny_corpus, "first", 8, save=str(tmp / "ck"), exit_interval=4, tensor_model_parallel_size=2,
                pipeline_model_parallel_size=2, sequence_parallel=True, use_distributed_optimizer=True, **COMMON)
    assert [r["lm_loss"] for r in first] == pytest.approx([r["lm_loss"] for r in full[:4]], rel=1e-5)
    return full, str(tmp / "ck")


@pytest.mark.parametrize("world, layout", [
    (1, {}),
    (4, {"tensor_model_parallel_size": 4}),  # 2 key/value heads over 4 ranks: replicated heads
    (4, {"pipeline_model_parallel_size": 4, "num_layers_per_virtual_pipeline_stage": 1}),  # 2 chunks per stage
    (4, {"zero_stage": 2}),
    (4, {"zero_stage": 3}),
], ids=["one-process", "tp4", "pp4-virtual", "dp4-zero2", "dp4-zero3"])
def test_continues_in_another_layout(tmp_path, tiny_corpus, saved, world, layout):
    full, ck = saved
    rows = run(tmp_path, tiny_corpus, "resumed", world, load=ck, **layout, **COMMON)
    assert [r["iteration"] for r in rows] == [5, 6, 7, 8]
    for a, b in zip(full[4:], rows):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5), a["iteration"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), a["iteration"]


def test_finetune_from_another_layout_loads_weights_only(tmp_path, tiny_corpus, saved):
    from megalite.config import parse_config
    from megalite.training.trainer import pretrain

    _, ck = saved
    metrics = tmp_path / "ft.jsonl"
    pretrain(parse_config(tiny_model_args(*tiny_corpus, load=ck, finetune=True, metrics_file=str(metrics),
                                          **{**COMMON, "train_iters": 2})))
    rows, _ = read_metrics(metrics)
    assert [r["iteration"] for r in rows] == [1, 2]


def test_offline_reshard_writes_a_checkpoint_for_another_layout(tmp_path, tiny_corpus, saved):
    """tools/convert_checkpoint.py --reshard TP=2 x PP=2 -> TP=1 x PP=2: the new files are each
    stage's plain tensors, and training from them continues with the uninterrupted losses."""
    import torch

    from tests.conftest import run_main

    full, ck = saved
    run_main("tools/convert_checkpoint.py", "--reshard", "--load", ck, "--save", str(tmp_path / "pp2"),
             "--target-pipeline-parallel-size", "2")
    folder = tmp_path / "pp2" / "iter_0000004"
    assert sorted(p.name for p in folder.iterdir()) == ["checksums.json", "mp_rank_00_000", "mp_rank_00_001"]
    last = torch.load(folder / "mp_rank_00_001" / "model_optim_rng.pt", weights_only=True)
    assert last["layers"] == [4, 5, 6, 7] and last["parallel"]["tp_size"] == 1
    rows = run(tmp_path, tiny_corpus, "offline", 2, load=str(tmp_path / "pp2"), pipeline_model_parallel_size=2,
               **COMMON)
    for a, b in zip(full[4:], rows):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5), a["iteration"]
