"""Weights & Biases logging: what a run logs offline is what metrics.jsonl holds, with the run's
config; a restart continues the same W&B run; an unreachable server changes nothing."""

import glob
import json
import os
import subprocess
import sys

import pytest

from megalite.config import parse_config
from megalite.training.metrics_log import WANDB_ID_FILE, scalars
from megalite.training.trainer import pretrain
from tests.conftest import tiny_model_args

pytest.importorskip("wandb")


def wandb_records(run_dir):
    """The records of a run's .wandb transaction log, as wandb's own reader decodes them
    (`wandb leet inspect --json`: one JSON object per record)."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", run_dir],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "WANDB_SILENT": "true"})
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def read_run(run_dir):
    """(run id, config, history rows) of one offline run folder."""
    run_id, config, rows = None, {}, []
    for r in wandb_records(run_dir):
        if r["type"] == "run":
            run_id = r["run"]["run_id"]
            config.update(r["run"].get("config", {}).get("update", {}))
        elif r["type"] == "config":
            config.update(r["config"].get("update", {}))
        elif r["type"] == "history":
            rows.append(r["history"]["item"])
    config.pop("_wandb", None)
    return run_id, config, rows


def offline_runs(folder):
    return sorted(glob.glob(os.path.join(folder, "wandb", "offline-run-*")))


def run(tmp_path, corpus, name, **kw):
    metrics = tmp_path / f"{name}.jsonl"
    cfg = parse_config(tiny_model_args(*corpus, metrics_file=str(metrics), **kw))
    pretrain(cfg)
    return cfg, [json.loads(line) for line in open(metrics)]


def logged(rows):
    """Every (iteration, tag) -> value of the W&B history rows, W&B's own keys left out."""
    return {(r["iteration"], k): v for r in rows for k, v in r.items() if not k.startswith("_") and k != "iteration"}


def expected(records):
    """What the trackers get from metrics.jsonl's lines (less the file's own wall-clock stamp)."""
    return {(m["iteration"], tag): v for m in records for tag, v in scalars(m).items() if not tag.endswith("/time")}


def test_offline_run_holds_the_metrics_and_config_and_a_restart_continues_it(tmp_path, tiny_corpus, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    save = tmp_path / "ck"
    common = dict(train_iters=8, eval_interval=4, save=str(save), load=str(save), wandb_project="megalite-test",
                  wandb_exp_name="tiny")
    cfg, first = run(tmp_path, tiny_corpus, "first", exit_interval=4, **common)
    (run_dir,) = offline_runs(save)
    run_id, config, rows = read_run(run_dir)
    assert open(save / WANDB_ID_FILE).read().strip() == run_id
    assert config == json.loads(json.dumps(cfg.to_dict()))
    assert config["logging"]["wandb_project"] == "megalite-test" and config["model"]["hidden_size"] == 64
    want = expected(first)
    assert ("valid", 4) in {(m.get("split"), m["iteration"]) for m in first}
    assert {(4, "train/lm_loss"), (4, "valid/ppl"), (4, "train/ms_per_iteration"), (4, "train/memory_gb")} <= set(want)
    assert logged(rows) == want

    _, second = run(tmp_path, tiny_corpus, "second", **common)
    runs = offline_runs(save)
    assert len(runs) == 2
    resumed_id, _, resumed_rows = read_run(runs[1])
    assert resumed_id == run_id
    assert min(r["iteration"] for r in second) == 5
    assert logged(resumed_rows) == expected(second)


def test_unreachable_server_trains_exactly_as_without_wandb(tmp_path, tiny_corpus, monkeypatch, capsys):
    _, plain = run(tmp_path, tiny_corpus, "plain", train_iters=4)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("HOME", str(tmp_path))
    _, tracked = run(tmp_path, tiny_corpus, "tracked", train_iters=4, wandb_project="p", save=str(tmp_path / "ck"))
    assert "W&B: logging offline (127.0.0.1:9 unreachable" in capsys.readouterr().out
    assert [r["lm_loss"] for r in tracked if "lm_loss" in r] == [r["lm_loss"] for r in plain if "lm_loss" in r]
    (run_dir,) = offline_runs(tmp_path / "ck")
    assert logged(read_run(run_dir)[2]) == expected(tracked)
