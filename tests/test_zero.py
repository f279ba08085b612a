"""ZeRO on gloo: the distributed optimizer (stage 1) and sharded parameters (stage 3) give
the one-process losses, their checkpoints resume bitwise and reshard to another
data-parallel size, and each rank keeps the memory the formulas say."""

import pytest

from megalite.config import parse_config
from megalite.training.trainer import pretrain
from tests.conftest import once_per_settings, read_metrics, tiny_model_args
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
    run_distributed(_pretrain, world, argv)
    return read_metrics(metrics)[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_corpus):
    """One-process losses, by model settings (run once each)."""
    return once_per_settings(lambda **model: run(tmp_path_factory.mktemp("ref"), tiny_corpus, "ref", 1, **model))


ZERO3 = {"zero_stage": 3}
UNTIED = {"untie_embeddings_and_output_weights": True}


@pytest.mark.parametrize("world, extra", [
    (2, ZERO),
    (4, {**ZERO, "overlap_param_gather": True}),
    (4, {**ZERO, "tensor_model_parallel_size": 2, "sequence_parallel": True}),
    # tied embedding on both stages, bucketed with different neighbours: the stages own different parts
    (4, {**ZERO, "pipeline_model_parallel_size": 2, "decoder_first_pipeline_num_layers": 0,
         "ddp_bucket_size": 200_000}),
    (4, {"zero_stage": 2, "tensor_model_parallel_size": 2, "sequence_parallel": True}),
    (4, {"zero_stage": 2, "pipeline_model_parallel_size": 2, **UNTIED}),
    (4, {**ZERO3, "recompute_granularity": "full"}),
    (4, {**ZERO3, "tensor_model_parallel_size": 2, "sequence_parallel": True}),
    (4, {**ZERO3, "pipeline_model_parallel_size": 2, **UNTIED}),
], ids=["z1-dp2", "z1-dp4-overlap-param-gather", "z1-dp2-tp2-sp", "z1-dp2-pp2", "z2-dp2-tp2-sp", "z2-dp2-pp2",
        "z3-dp4-recompute", "z3-dp2-tp2-sp", "z3-dp2-pp2"])
def test_sharded_training_matches_one_process(tmp_path, tiny_corpus, reference, world, extra):
    expected = reference(**{k: v for k, v in extra.items() if k in UNTIED})
    rows = run(tmp_path, tiny_corpus, "zero", world, **extra)
    assert len(rows) == len(expected) == 20
    for a, b in zip(expected, rows):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5), a["iteration"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), a["iteration"]


@pytest.mark.parametrize("stage, other", [(1, {}), (3, ZERO)], ids=["zero1", "zero3"])
def test_sharded_checkpoint_resumes_bitwise_and_reshards(tmp_path, tiny_corpus, stage, other):
    """Saved on DP=4 (one optimizer shard per rank): resumed on DP=4 it repeats the
    uninterrupted run bit for bit; on DP=2 with another layout of the optimizer it continues
    with its losses."""
    import os

    kw = dict(train_iters=8, zero_stage=stage, ddp_bucket_size=3000)
    full = run(tmp_path, tiny_corpus, "full", 4, **kw)
    run(tmp_path, tiny_corpus, "first", 4, save=str(tmp_path / "a"), exit_interval=4, **kw)
    files = sorted(os.listdir(tmp_path / "a" / "iter_0000004" / "mp_rank_00"))
    assert files == [f"distrib_optim_{r:03d}.pt" for r in range(4)] + ["model_optim_rng.pt"]
    resumed = run(tmp_path, tiny_corpus, "resumed", 4, load=str(tmp_path / "a"), **kw)
    assert [r["lm_loss"] for r in resumed] == [r["lm_loss"] for r in full[4:]]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in full[4:]]
    rows = run(tmp_path, tiny_corpus, "dp2", 2, load=str(tmp_path / "a"), train_iters=8, **other)
    assert len(rows) == 4
    for a, b in zip(full[4:], rows):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5), a["iteration"]
    if stage == 3:  # a ZeRO checkpoint exports to HF like any other
        import torch
        from transformers import AutoModelForCausalLM

        from megalite.checkpoint.reshard import load_full_state
        from megalite.hf.convert import export_hf

        export_hf(str(tmp_path / "a"), str(tmp_path / "hf"), dtype="fp32")
        hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
        ours, _ = load_full_state(str(tmp_path / "a"))
        assert torch.equal(hf.model.embed_tokens.weight, ours["embedding.weight"][: hf.config.vocab_size])


def _count_bytes(rank, world, argv, out):
    import json

    import torch

    from megalite.config import validate
    from megalite.parallel import state
    from megalite.parallel.memory import training_state_bytes
    from megalite.parallel.zero import FullyShardedBuffer, unit_layout
    from megalite.training.data import microbatches
    from megalite.training.trainer import Trainer

    cfg = validate(parse_config(argv), world)
    tr = Trainer(cfg, torch.device("cpu"))
    tr.train_step(microbatches(tr.train_iter, 2, tr.device))  # Adam's moments exist from the first step
    opt, buf = tr.optimizer, tr.grads

    def nbytes(tensors):  # distinct storages
        return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())

    masters = [x.master for x in opt.pieces]
    if isinstance(buf, FullyShardedBuffer):  # shards, plus whole units that should all be freed now
        params, grads = [b.param_shard for b in buf.buckets] + [b.full for b in buf.buckets], \
            [b.grad_shard for b in buf.buckets]
        numels, ends = unit_layout([tr.model], list(tr.model.layers.values()))
    else:
        params, grads = [buf.param_buffer], [buf.buffer]
        numels, ends = [p.numel() for p in reversed(list(tr.model.parameters()))], ()
    actual = {"params": nbytes(params), "grads": nbytes(grads), "master": nbytes(masters) if opt.mixed else 0,
              "adam": nbytes([v for m in masters for k, v in opt.adam.state[m].items() if k != "step"])}
    planned = training_state_bytes(numels, state.get().dp_size, cfg.parallel.zero_stage, 2,
                                   cfg.parallel.ddp_bucket_size, state.get().dp_rank, ends)
    open(f"{out}.{rank}", "w").write(json.dumps({"actual": actual, "planned": planned, "numel": sum(numels),
                                                 "buckets": len(buf.buckets)}))
    state.destroy()


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_memory_per_rank_follows_the_zero_formulas(tmp_path, tiny_corpus, stage):
    """bf16 parameters on DP=4, bytes per parameter on every rank: 2 (params) + 4 (fp32 grads)
    + 12 (fp32 master + two Adam moments) without sharding, 2 + 4 + 12 / DP with ZeRO-1,
    2 + (4 + 12) / DP with ZeRO-2 and (2 + 4 + 12) / DP with ZeRO-3; the planner (bench/bench_zero.py)
    predicts each rank's allocations exactly."""
    import json

    argv = tiny_model_args(*tiny_corpus, bf16=True, micro_batch_size=2, global_batch_size=16, zero_stage=stage,
                           ddp_bucket_size=3000)
    run_distributed(_count_bytes, 4, argv, str(tmp_path / "bytes"))
    ranks = [json.loads((tmp_path / f"bytes.{r}").read_text()) for r in range(4)]
    dp = 4
    per_param = {0: 2 + 4 + 12, 1: 2 + 4 + 12 / dp, 2: 2 + (4 + 12) / dp, 3: (2 + 4 + 12) / dp}[stage]
    for r in ranks:
        planned = {k: v for k, v in r["planned"].items() if k != "total"}
        assert r["actual"] == planned
        padding = r["buckets"] * dp * 18  # < DP padding elements per bucket, 18 bytes each at most
        assert abs(sum(planned.values()) - per_param * r["numel"]) <= padding
