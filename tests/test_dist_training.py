import os
import subprocess
import sys

import pytest

from megalite.config import parse_config
from megalite.training.trainer import pretrain
from tests.conftest import REPO, read_metrics, tiny_model_args
from tests.dist_utils import free_port

pytestmark = pytest.mark.dist


def test_data_parallel_under_torchrun_matches_one_process(tmp_path, tiny_corpus):
    """torchrun with 2 ranks (small buckets: several overlapped all-reduces) gives the
    single-process losses for the same global batch."""
    common = dict(train_iters=8, micro_batch_size=2, global_batch_size=8, ddp_bucket_size=5000)
    pretrain(parse_config(tiny_model_args(*tiny_corpus, metrics_file=str(tmp_path / "one.jsonl"), **common)))
    argv = tiny_model_args(*tiny_corpus, metrics_file=str(tmp_path / "two.jsonl"), save=str(tmp_path / "ck"), **common)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), "pretrain_gpt.py", *argv],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 2 (dp 2)" in proc.stdout
    one, _ = read_metrics(tmp_path / "one.jsonl")
    two, _ = read_metrics(tmp_path / "two.jsonl")
    assert len(one) == len(two) == 8
    for a, b in zip(one, two):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert os.path.isfile(tmp_path / "ck" / "iter_0000008" / "mp_rank_00" / "model_optim_rng.pt")
    assert all(r["slowest_rank"] in (0, 1) and r["compute_spread"] >= 0 for r in two)  # straggler report
