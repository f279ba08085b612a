"""The distributed optimizer (ZeRO-1) on gloo: the losses of plain data parallelism, sharded
checkpoints that resume bitwise and reshard to another data-parallel size, and the memory
each rank keeps."""

import pytest

from megalite.config import parse_config
from megalite.training.trainer import pretrain
from tests.conftest import read_metrics, tiny_model_args
from tests.dist_utils import run_distributed

pytestmark = pytest.mark.dist

ZERO = {"use_distributed_optimizer": True, "ddp_bucket_size": 3000}  # several buckets, each sharded


def _pretrain(rank, world, argv):
    pretrain(parse_config(argv))


def run(tmp_path, corpus, name, world, **kw):
    metrics = str(tmp_path / f"{name}.jsonl")
    kw = {"train_iters": 20, "lr": 1e-3, "min_lr": 1e-4, "num_layers": 2, "micro_batch_size": 2,
          "global_batch_size": 16, "eval_iters": 0, **kw}
    argv = tiny_model_args(*corpus, metrics_file=metrics, **kw)
    if world == 1:
        pretrain(parse_config(argv))
    else:
        run_distributed(_pretrain, world, argv)
    return read_metrics(metrics)[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_corpus):
    return run(tmp_path_factory.mktemp("ref"), tiny_corpus, "ref", 1)


@pytest.mark.parametrize("world, extra", [
    (2, {}),
    (4, {}),
    (4, {"overlap_param_gather": True}),
    (4, {"tensor_model_parallel_size": 2, "sequence_parallel": True}),
    # tied embedding on both stages, bucketed with different neighbours: the stages own different parts
    (4, {"pipeline_model_parallel_size": 2, "decoder_first_pipeline_num_layers": 0, "ddp_bucket_size": 200_000}),
], ids=["dp2", "dp4", "dp4-overlap-param-gather", "dp2-tp2-sp", "dp2-pp2"])
def test_distributed_optimizer_matches_one_process(tmp_path, tiny_corpus, reference, world, extra):
    rows = run(tmp_path, tiny_corpus, "zero", world, **{**ZERO, **extra})
    assert len(rows) == len(reference) == 20
    for a, b in zip(reference, rows):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5), a["iteration"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), a["iteration"]


def test_sharded_checkpoint_resumes_bitwise_and_reshards(tmp_path, tiny_corpus):
    """Saved on DP=4 (one optimizer shard per rank): resumed on DP=4 it repeats the
    uninterrupted run bit for bit; on DP=2, sharded or not, it continues with its losses."""
    import os

    kw = dict(train_iters=8, **ZERO)
    full = run(tmp_path, tiny_corpus, "full", 4, **kw)
    run(tmp_path, tiny_corpus, "first", 4, save=str(tmp_path / "a"), exit_interval=4, **kw)
    files = sorted(os.listdir(tmp_path / "a" / "iter_0000004" / "mp_rank_00"))
    assert files == [f"distrib_optim_{r:03d}.pt" for r in range(4)] + ["model_optim_rng.pt"]
    resumed = run(tmp_path, tiny_corpus, "resumed", 4, load=str(tmp_path / "a"), **kw)
    assert [r["lm_loss"] for r in resumed] == [r["lm_loss"] for r in full[4:]]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in full[4:]]
    for name, extra in (("dp2-zero", ZERO), ("dp2-plain", {})):
        rows = run(tmp_path, tiny_corpus, name, 2, load=str(tmp_path / "a"), train_iters=8, **extra)
        assert len(rows) == 4
        for a, b in zip(full[4:], rows):
            assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5), (name, a["iteration"])


def _count_bytes(rank, world, argv, out):
    import json

    import torch

    from megalite.config import validate
    from megalite.parallel import state
    from megalite.training.data import microbatches
    from megalite.training.trainer import Trainer
    from megalite.utils.memory import training_state_bytes

    cfg = validate(parse_config(argv), world)
    tr = Trainer(cfg, torch.device("cpu"))
    tr.train_step(microbatches(tr.train_iter, 2, tr.device))  # Adam's moments exist from the first step
    opt, buf = tr.optimizer, tr.grads

    def nbytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    masters = [x.master for x in opt.pieces]
    actual = {"params": nbytes([buf.param_buffer]), "grads": nbytes([buf.buffer]),
              "master": nbytes(masters) if opt.mixed else 0,
              "adam": nbytes([v for m in masters for k, v in opt.adam.state[m].items() if k != "step"])}
    numels = [p.numel() for p in reversed(list(tr.model.parameters()))]
    planned = training_state_bytes(numels, state.get().dp_size, cfg.parallel.use_distributed_optimizer,
                                   buf.param_buffer.element_size(), cfg.parallel.ddp_bucket_size,
                                   state.get().dp_rank)
    open(f"{out}.{rank}", "w").write(json.dumps({"actual": actual, "planned": planned, "numel": sum(numels),
                                                 "buckets": len(buf.buckets)}))
    state.destroy()


@pytest.mark.parametrize("distributed", [False, True], ids=["plain", "zero1"])
def test_memory_per_rank_follows_the_zero_formula(tmp_path, tiny_corpus, distributed):
    """bf16 parameters on DP=4: every rank holds 2 (params) + 4 (fp32 grads) bytes per parameter,
    plus 12 (fp32 master + two Adam moments) without sharding or 12 / DP with it; the planner
    (bench/bench_zero.py) predicts each rank's bytes exactly."""
    import json

    argv = tiny_model_args(*tiny_corpus, bf16=True, micro_batch_size=2, global_batch_size=16,
                           use_distributed_optimizer=distributed, ddp_bucket_size=3000)
    run_distributed(_count_bytes, 4, argv, str(tmp_path / "bytes"))
    ranks = [json.loads((tmp_path / f"bytes.{r}").read_text()) for r in range(4)]
    for r in ranks:
        planned = {k: v for k, v in r["planned"].items() if k != "total"}
        assert r["actual"] == planned
        n, dp = r["numel"], 4
        per_param = (2 + 4) + (12 / dp if distributed else 12)
        padding = r["buckets"] * dp * 18  # < DP padding elements per bucket, 18 bytes each at most
        assert abs(sum(planned.values()) - per_param * n) <= padding
