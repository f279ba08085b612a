"""Weights & Biases logging: what a run logs offline is what metrics.jsonl holds, with the run's
config; a restart continues the same W&B run; an unreachable server changes nothing."""

import glob
import json
import os
import struct

import pytest

from megalite.config import parse_config
from megalite.training.metrics_log import WANDB_ID_FILE, scalars
from megalite.training.trainer import pretrain
from tests.conftest import tiny_model_args

wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")


def wandb_records(path):
    """The records of a run's .wandb file, decoded with wandb's own protobuf messages (wandb
    >= 0.20 ships no Python reader for its LevelDB-log framing: 32 KiB blocks, a 7-byte header
    per chunk, chunks FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", path
    pos, pending, block = 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:  # zero padding to the end of a block
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = wandb_pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_run(run_dir):
    """(run id, config, history rows) of one offline run folder."""
    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    run_id, config, rows = None, {}, []
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run_id = r.run.run_id
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
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
