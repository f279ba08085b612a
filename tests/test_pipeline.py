"""Pipeline parallelism on gloo: 1F1B over P stages reproduces the one-process run."""

import pytest

from megalite.config import parse_config
from megalite.errors import MegaliteError
from megalite.parallel.pipeline import stage_layers
from megalite.training.trainer import pretrain
from tests.conftest import read_metrics, tiny_model_args
from tests.dist_utils import run_distributed


def test_stage_split():
    assert [stage_layers(8, 4, r) for r in range(4)] == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    with pytest.raises(MegaliteError, match="--num-layers 6 is not divisible by --pipeline-model-parallel-size 4"):
        stage_layers(6, 4, 0)


def _pretrain(rank, world, argv):
    pretrain(parse_config(argv))


def run(tmp_path, corpus, name, world, **kw):
    metrics = str(tmp_path / f"{name}.jsonl")
    kw = {"train_iters": 20, "lr": 1e-3, "min_lr": 1e-4, "num_layers": 4, "micro_batch_size": 2,
          "global_batch_size": 8, "eval_interval": 10, "eval_iters": 1, **kw}
    argv = tiny_model_args(*corpus, metrics_file=metrics, **kw)
    if world == 1:
        pretrain(parse_config(argv))
    else:
        run_distributed(_pretrain, world, argv)
    return read_metrics(metrics)


@pytest.mark.dist
@pytest.mark.parametrize("world, extra", [
    (2, {"pipeline_model_parallel_size": 2}),  # tied embeddings shared by first and last stage
    (4, {"pipeline_model_parallel_size": 4, "untie_embeddings_and_output_weights": True}),
    (4, {"pipeline_model_parallel_size": 2, "tensor_model_parallel_size": 2, "sequence_parallel": True}),
], ids=["pp2-tied", "pp4-untied", "pp2xtp2-sp"])
def test_pipeline_matches_one_process(tmp_path, tiny_corpus, world, extra):
    model_kw = {k: v for k, v in extra.items() if k == "untie_embeddings_and_output_weights"}
    ref, ref_evals = run(tmp_path, tiny_corpus, "ref", 1, **model_kw)
    rows, evals = run(tmp_path, tiny_corpus, "pp", world, **extra)
    assert len(rows) == len(ref) == 20
    for a, b in zip(ref, rows):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5), a["iteration"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), a["iteration"]
    assert [e["split"] for e in evals] == [e["split"] for e in ref_evals]
    for a, b in zip(ref_evals, evals):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
