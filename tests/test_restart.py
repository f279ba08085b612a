"""A run survives a worker killed mid-training: torchrun restarts it, it resumes from the
newest complete checkpoint and finishes with the losses of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from megalite.config import parse_config
from megalite.training.trainer import pretrain
from tests.conftest import REPO, read_metrics, tiny_model_args
from tests.dist_utils import free_port

pytestmark = pytest.mark.dist


def _iterations(path) -> list:
    if not os.path.exists(path):
        return []
    return [json.loads(line)["iteration"] for line in open(path) if '"lm_loss"' in line]


@pytest.mark.parametrize("async_save", [False, True], ids=["sync-save", "async-save"])
def test_sigkilled_worker_restarts_and_matches_uninterrupted_run(tmp_path, tiny_corpus, async_save):
    common = dict(train_iters=60, micro_batch_size=2, global_batch_size=8, eval_iters=0)
    pretrain(parse_config(tiny_model_args(*tiny_corpus, metrics_file=str(tmp_path / "ref.jsonl"), **common)))
    metrics, ck = str(tmp_path / "run.jsonl"), str(tmp_path / "ck")
    argv = tiny_model_args(*tiny_corpus, save=ck, load=ck, save_interval=5, async_save=async_save,
                           metrics_file=metrics, **common)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                 "--max-restarts", "1", "--master-port", str(free_port()), "pretrain_gpt.py", *argv],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while max(_iterations(metrics), default=0) < 12:
            assert proc.poll() is None and time.time() < deadline, open(tmp_path / "out.txt").read()[-3000:]
            time.sleep(0.02)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        os.kill(int(workers[0]), signal.SIGKILL)  # mid-training, any step
        assert proc.wait(timeout=180) == 0, open(tmp_path / "out.txt").read()[-3000:]
    seen = _iterations(metrics)
    assert len(seen) > len(set(seen)) == 60  # some iterations ran again after the restart
    ref, _ = read_metrics(tmp_path / "ref.jsonl")
    last = {r["iteration"]: r for r in read_metrics(metrics)[0]}  # the later line wins
    for r in ref:
        assert last[r["iteration"]]["lm_loss"] == pytest.approx(r["lm_loss"], rel=1e-5), r["iteration"]


def test_hung_rank_is_reported_and_exits_within_the_timeout(tmp_path, tiny_corpus):
    argv = tiny_model_args(*tiny_corpus, train_iters=10, micro_batch_size=2, global_batch_size=8, eval_iters=0,
                           distributed_timeout_minutes=0.1)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(free_port()), "tests/hang_driver.py", *argv],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and time.time() - start < 60
    assert "watchdog: iteration 3 has not finished after" in proc.stderr
    assert "time.sleep(600)" in proc.stderr or "stuck_forward" in proc.stderr  # the stuck rank's stack


@pytest.mark.parametrize("async_save", [False, True], ids=["sync-save", "async-save"])
def test_sigkill_during_a_save_keeps_the_previous_checkpoint(tmp_path, tiny_corpus, async_save):
    common = dict(train_iters=6, eval_iters=0)
    pretrain(parse_config(tiny_model_args(*tiny_corpus, metrics_file=str(tmp_path / "ref.jsonl"), **common)))
    ck = str(tmp_path / "ck")
    argv = tiny_model_args(*tiny_corpus, save=ck, load=ck, save_interval=2, async_save=async_save,
                           metrics_file=str(tmp_path / "run.jsonl"), **common)
    proc = subprocess.Popen([sys.executable, "tests/slow_save_driver.py", *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "writing iteration 4" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert open(os.path.join(ck, "latest_checkpointed_iteration.txt")).read() == "2"
    assert not os.path.exists(os.path.join(ck, "iter_0000004"))
    pretrain(parse_config(argv))  # resumes from iteration 2
    ref, _ = read_metrics(tmp_path / "ref.jsonl")
    last = {r["iteration"]: r["lm_loss"] for r in read_metrics(tmp_path / "run.jsonl")[0]}
    assert [last[i] for i in range(1, 7)] == [r["lm_loss"] for r in ref]  # bitwise, one process
