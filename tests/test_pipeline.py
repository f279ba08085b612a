"""Pipeline parallelism on gloo: 1F1B over P stages reproduces the one-process run."""

import pytest

from megalite.config import parse_config, stage_layers
from megalite.errors import MegaliteError
from megalite.training.trainer import pretrain
from tests.conftest import once_per_settings, read_metrics, tiny_model_args
from tests.dist_utils import free_port, run_distributed


def test_stage_split():
    assert [stage_layers(8, 4, r) for r in range(4)] == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    assert [stage_layers(8, 4, r, first=1, last=1) for r in range(4)] == [range(0, 1), range(1, 4), range(4, 7),
                                                                           range(7, 8)]
    assert [stage_layers(5, 2, r, last=1) for r in range(2)] == [range(0, 4), range(4, 5)]
    with pytest.raises(MegaliteError, match="--num-layers 6 cannot be split over --pipeline-model-parallel-size 4"):
        stage_layers(6, 4, 0)


def _pretrain(rank, world, argv):
    pretrain(parse_config(argv))


def run(tmp_path, corpus, name, world, **kw):
    metrics = str(tmp_path / f"{name}.jsonl")
    kw = {"train_iters": 20, "lr": 1e-3, "min_lr": 1e-4, "num_layers": 4, "micro_batch_size": 2,
          "global_batch_size": 8, "eval_interval": 10, "eval_iters": 1, **kw}
    argv = tiny_model_args(*corpus, metrics_file=metrics, **kw)
    run_distributed(_pretrain, world, argv)
    return read_metrics(metrics)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_corpus):
    """One-process (train, eval) records, by model settings (run once each)."""
    return once_per_settings(lambda **model: run(tmp_path_factory.mktemp("ref"), tiny_corpus, "ref", 1, **model))


@pytest.mark.dist
@pytest.mark.parametrize("world, extra", [
    (2, {"pipeline_model_parallel_size": 2}),  # tied embeddings shared by first and last stage
    (4, {"pipeline_model_parallel_size": 4, "untie_embeddings_and_output_weights": True}),
    (4, {"pipeline_model_parallel_size": 2, "tensor_model_parallel_size": 2, "sequence_parallel": True}),
    (2, {"pipeline_model_parallel_size": 2, "decoder_first_pipeline_num_layers": 1}),  # uneven: 1 + 3 layers
    (2, {"pipeline_model_parallel_size": 2, "recompute_granularity": "full"}),
    (8, {"pipeline_model_parallel_size": 2, "tensor_model_parallel_size": 2, "sequence_parallel": True}),  # 3D, dp=2
], ids=["pp2-tied", "pp4-untied", "pp2xtp2-sp", "pp2-uneven", "pp2-recompute", "3d-tp2-pp2-dp2"])
def test_pipeline_matches_one_process(tmp_path, tiny_corpus, reference, world, extra):
    model_kw = {k: v for k, v in extra.items() if k == "untie_embeddings_and_output_weights"}
    ref, ref_evals = reference(**model_kw)
    rows, evals = run(tmp_path, tiny_corpus, "pp", world, **extra)
    assert len(rows) == len(ref) == 20
    for a, b in zip(ref, rows):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5), a["iteration"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), a["iteration"]
    assert [e["split"] for e in evals] == [e["split"] for e in ref_evals]
    for a, b in zip(ref_evals, evals):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def _count_live_activations(rank, world, m, out_file):
    import torch

    from megalite.parallel import state
    from megalite.parallel.pipeline import forward_backward

    s = state.initialize(pp=world)
    live, peak = [0], [0]

    class Stage(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.full((3,), 0.5))

        def forward(self, tokens, labels=None, hidden=None, positions=None, shared_prefix=None):
            x = tokens.t().unsqueeze(-1).float() * self.w if hidden is None else hidden * self.w
            live[0] += 1
            peak[0] = max(peak[0], live[0])
            x.register_hook(lambda g: live.__setitem__(0, live[0] - 1))  # freed once its backward ran
            return x.sum(-1).t() if s.is_last_stage else x

    batch = [{"tokens": torch.ones(2, 4, dtype=torch.long), "labels": torch.zeros(2, 4, dtype=torch.long)}
             for _ in range(m)]
    forward_backward(Stage(), batch, lambda losses, mb: losses.sum(), (4, 2, 3), torch.float32)
    assert live[0] == 0
    open(f"{out_file}.{rank}", "w").write(str(peak[0]))
    state.destroy()


@pytest.mark.dist
def test_one_f_one_b_bounds_live_activations(tmp_path):
    """Stage r of P never holds more than P - r micro-batches' activations (GPipe would hold all m)."""
    run_distributed(_count_live_activations, 4, 8, str(tmp_path / "peak"))
    assert [int((tmp_path / f"peak.{r}").read_text()) for r in range(4)] == [4, 3, 2, 1]


@pytest.mark.dist
def test_pipeline_checkpoint_resumes_and_exports(tmp_path, tiny_corpus):
    """Save on 2 stages, resume there bitwise, and export the stages as one HF model."""
    import torch

    from megalite.checkpoint.reshard import load_full_state

    kw = dict(pipeline_model_parallel_size=2, train_iters=6, eval_iters=0)
    full, _ = run(tmp_path, tiny_corpus, "full", 2, save=str(tmp_path / "a"), save_interval=3, **kw)
    run(tmp_path, tiny_corpus, "first", 2, save=str(tmp_path / "b"), exit_interval=3, **kw)
    resumed, _ = run(tmp_path, tiny_corpus, "resumed", 2, save=str(tmp_path / "b"), load=str(tmp_path / "b"), **kw)
    assert [r["lm_loss"] for r in resumed] == [r["lm_loss"] for r in full[3:]]
    assert sorted(p.name for p in (tmp_path / "a" / "iter_0000006").iterdir()) == \
        ["checksums.json", "mp_rank_00_000", "mp_rank_00_001"]
    state, _ = load_full_state(str(tmp_path / "a"))
    assert {"embedding.weight", "layers.0.attention.qkv.weight", "layers.3.mlp.fc2.weight",
            "final_norm.weight"} <= set(state)
    last = torch.load(tmp_path / "a" / "iter_0000006" / "mp_rank_00_001" / "model_optim_rng.pt", weights_only=True)
    assert last["layers"] == [2, 3]  # the checkpoint names the stage's layers
    assert torch.equal(last["model"]["embedding.weight"], state["embedding.weight"])  # tied copies stayed equal


@pytest.mark.dist
@pytest.mark.parametrize("world, extra", [
    (2, {"pipeline_model_parallel_size": 2, "num_layers_per_virtual_pipeline_stage": 1}),  # 2 chunks per stage
    (4, {"pipeline_model_parallel_size": 2, "num_layers_per_virtual_pipeline_stage": 1, "tensor_model_parallel_size": 2,
         "sequence_parallel": True}),
    (4, {"pipeline_model_parallel_size": 4, "num_layers_per_virtual_pipeline_stage": 1, "num_layers": 8}),
], ids=["pp2-v2", "pp2-v2-tp2-sp", "pp4-v2"])
def test_interleaved_pipeline_matches_one_process(tmp_path, tiny_corpus, reference, world, extra):
    ref, _ = reference(**{k: v for k, v in extra.items() if k == "num_layers"})
    rows, _ = run(tmp_path, tiny_corpus, "vpp", world, save=str(tmp_path / "ck"), **extra)
    for a, b in zip(ref, rows):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5), a["iteration"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), a["iteration"]


def test_interleaving_errors():
    from megalite.config import validate

    def check(**kw):
        validate(parse_config(tiny_model_args("d", "t", num_layers=4, **kw)), world_size=2)

    with pytest.raises(MegaliteError, match="micro-batches per step \\(1\\) to be a multiple of"):
        check(pipeline_model_parallel_size=2, num_layers_per_virtual_pipeline_stage=1, micro_batch_size=8,
              global_batch_size=8)
    with pytest.raises(MegaliteError, match="--num-layers 4 is not divisible by --pipeline-model-parallel-size 2 x"):
        check(pipeline_model_parallel_size=2, num_layers_per_virtual_pipeline_stage=3)


@pytest.mark.dist
def test_bf16_pipeline(tmp_path, tiny_corpus):
    one, _ = run(tmp_path, tiny_corpus, "one", 1, bf16=True, train_iters=10)
    two, _ = run(tmp_path, tiny_corpus, "two", 2, bf16=True, train_iters=10, pipeline_model_parallel_size=2)
    for a, b in zip(one, two):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-2)


@pytest.mark.dist
def test_generation_across_tensor_and_pipeline_ranks(tmp_path, tiny_corpus, monkeypatch):
    """A TP=2 x PP=2 checkpoint with virtual stages decodes on its 4 ranks under torchrun (hidden
    states passed stage to stage, the last stage's sampled tokens shared) exactly as it does
    gathered into one process."""
    import subprocess
    import sys

    from megalite.eval.loading import load_model
    from tests.conftest import REPO, run_tool

    ck = str(tmp_path / "ck")
    run(tmp_path, tiny_corpus, "train", 4, save=ck, train_iters=6, eval_iters=0, pipeline_model_parallel_size=2,
        tensor_model_parallel_size=2, sequence_parallel=True, num_layers_per_virtual_pipeline_stage=1)
    args = ["tools/generate.py", "--load", ck, "--prompt", "The class", "--prompt", "A", "--max-new-tokens", "10"]
    greedy = run_tool(*args).stdout
    sampled = run_tool(*args, "--temperature", "0.9", "--top-k", "50", "--seed", "3").stdout
    assert greedy != sampled
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4",
                "--master-port", str(free_port())]
    spread = subprocess.run(launcher + args + ["--temperature", "0.9", "--top-k", "50", "--seed", "3"], cwd=REPO,
                            capture_output=True, text=True)
    assert spread.returncode == 0, spread.stderr[-3000:]
    assert spread.stdout == sampled  # printed once, by rank 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MegaliteError, match="saved with tensor-parallel size 2 and pipeline-parallel size 2: "
                                            "generate in one process or on 4"):
        load_model(ck)
