import errno
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from megalite.config import parse_config, validate
from megalite.errors import MegaliteError
from megalite.training.trainer import Trainer, pretrain
from tests.conftest import REPO, read_metrics, run_main, run_tool, tiny_model_args


def train(tmp_path, corpus, name="run", **kw):
    metrics = str(tmp_path / f"{name}.jsonl")
    pretrain(parse_config(tiny_model_args(*corpus, metrics_file=metrics, **kw)))
    return read_metrics(metrics)


def losses(records):
    return {r["iteration"]: r["lm_loss"] for r in records}


def test_loss_falls_on_real_text(tmp_path, tiny_corpus):
    rows, evals = train(tmp_path, tiny_corpus, train_iters=40, eval_interval=20, tensorboard_dir=str(tmp_path / "tb"))
    assert rows[-1]["lm_loss"] < rows[0]["lm_loss"] - 1.0, (rows[0]["lm_loss"], rows[-1]["lm_loss"])
    for key in ("iteration", "lm_loss", "lr", "grad_norm", "tokens_per_sec", "consumed_samples"):
        assert key in rows[-1]
    assert rows[-1]["consumed_samples"] == 40 * 8
    assert [(e["split"], e["iteration"]) for e in evals] == [("valid", 20), ("valid", 40), ("test", 40)]
    assert evals[1]["loss"] < evals[0]["loss"] and evals[1]["ppl"] == pytest.approx(2.718281828 ** evals[1]["loss"])
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_resume_is_bitwise_exact(tmp_path, tiny_corpus, async_save):
    """Dropout on, so random states matter: iterations after the resume equal the uninterrupted run."""
    common = dict(train_iters=10, hidden_dropout=0.1, attention_dropout=0.1, async_save=async_save)
    full, _ = train(tmp_path, tiny_corpus, "full", save=str(tmp_path / "a"), save_interval=5, **common)
    first, _ = train(tmp_path, tiny_corpus, "first", save=str(tmp_path / "b"), exit_interval=5, **common)
    assert max(losses(first)) == 5
    assert open(tmp_path / "b" / "latest_checkpointed_iteration.txt").read() == "5"
    resumed, _ = train(tmp_path, tiny_corpus, "resumed", save=str(tmp_path / "b"), load=str(tmp_path / "b"), **common)
    assert sorted(losses(resumed)) == list(range(6, 11))
    for it in range(6, 11):
        assert losses(resumed)[it] == losses(full)[it], it  # bitwise
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in full[5:]]


def test_gradient_accumulation_equivalence(tmp_path, tiny_corpus):
    one, _ = train(tmp_path, tiny_corpus, "mb1", micro_batch_size=1, global_batch_size=4, train_iters=6)
    four, _ = train(tmp_path, tiny_corpus, "mb4", micro_batch_size=4, global_batch_size=4, train_iters=6)
    for a, b in zip(one, four):
        assert a["lm_loss"] == pytest.approx(b["lm_loss"], rel=1e-5)


def make_trainer(tiny_corpus, **kw):
    cfg = validate(parse_config(tiny_model_args(*tiny_corpus, **kw)))
    return Trainer(cfg, torch.device("cpu"))


def test_fp16_skips_a_step_with_inf_gradients(tiny_corpus):
    from megalite.training.data import microbatches

    tr = make_trainer(tiny_corpus, fp16=True, initial_loss_scale=1024, hysteresis=1)
    batch = microbatches(tr.train_iter, 2, tr.device)
    out = tr.train_step(batch)
    assert not out["skipped"] and tr.optimizer.loss_scale == 1024
    before = [p.detach().clone() for p in tr.model.parameters()]
    masters = [m.detach().clone() for m in (x.master for x in tr.optimizer.pieces)]
    victim = tr.model.layers["0"].mlp.fc2.weight
    handle = victim.register_hook(lambda g: torch.full_like(g, float("inf")))
    out = tr.train_step(batch)
    handle.remove()
    assert out["skipped"] and tr.optimizer.loss_scale == 512
    assert all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(masters, (x.master for x in tr.optimizer.pieces)))
    assert not tr.train_step(batch)["skipped"]
    assert all(p.dtype == torch.float16 for p in tr.model.parameters())


def test_non_finite_loss_stops_with_clear_error(tiny_corpus, monkeypatch):
    from megalite.training.data import microbatches

    tr = make_trainer(tiny_corpus)
    forward = tr.model.forward
    monkeypatch.setattr(tr.model, "forward", lambda *a, **k: forward(*a, **k) * float("nan"))
    with pytest.raises(MegaliteError, match="loss is nan at iteration 1"):
        tr.train_step(microbatches(tr.train_iter, 2, tr.device))


def test_bf16_mixed_precision_tracks_fp32(tmp_path, tiny_corpus):
    bf16, _ = train(tmp_path, tiny_corpus, "bf16", bf16=True, train_iters=20)
    fp32, _ = train(tmp_path, tiny_corpus, "fp32", train_iters=20)
    assert bf16[-1]["lm_loss"] < bf16[0]["lm_loss"] - 0.5
    for a, b in zip(bf16, fp32):
        assert a["lm_loss"] == pytest.approx(b["lm_loss"], rel=1e-2)


def test_bf16_finetune_continues_from_the_loaded_weights(tmp_path, tiny_corpus):
    """The fp32 masters follow the weights loaded without optimizer state (--finetune): the
    second fine-tuning step must not jump back to the initial weights."""
    first, _ = train(tmp_path, tiny_corpus, "a", bf16=True, train_iters=30, save=str(tmp_path / "ck"))
    tuned, _ = train(tmp_path, tiny_corpus, "b", bf16=True, train_iters=3, load=str(tmp_path / "ck"), finetune=True)
    assert all(r["lm_loss"] < first[0]["lm_loss"] - 0.5 for r in tuned), [r["lm_loss"] for r in tuned]


@pytest.mark.parametrize("overrides, message", [
    (dict(global_batch_size=6), "--global-batch-size 6 is not divisible by --micro-batch-size 4"),
    (dict(num_attention_heads=3), "--hidden-size 64 is not divisible by --num-attention-heads 3"),
    (dict(num_query_groups=3), "--num-attention-heads 4 is not divisible by --num-query-groups 3"),
    (dict(data_path=None), "one source of training data"),
    (dict(train_iters=None), "give exactly one of --train-iters and --train-samples"),
    (dict(bf16=True, fp16=True), "mutually exclusive"),
])
def test_config_errors_are_one_clear_line(tiny_corpus, overrides, message):
    """In-process: the command line's own start-up is test_missing_data_file_is_one_clear_line's."""
    proc = run_main("pretrain_gpt.py", *tiny_model_args(*tiny_corpus, **overrides), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr
    assert proc.stderr.startswith("error: ")


def test_missing_data_file_is_one_clear_line(tmp_path, tiny_corpus):
    proc = run_tool("pretrain_gpt.py", *tiny_model_args(str(tmp_path / "nope"), tiny_corpus[1]), check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {tmp_path / 'nope'}.idx: no such file"


def test_yaml_config_with_cli_override(tmp_path, tiny_corpus):
    (tmp_path / "c.yaml").write_text("num-layers: 3\nhidden_size: 48\nswiglu: true\ndisable-bias-linear: true\n")
    cfg = parse_config(["--config", str(tmp_path / "c.yaml"), "--num-layers", "5"])
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.swiglu, m.add_bias_linear) == (5, 48, True, False)
    (tmp_path / "bad.yaml").write_text("num-layerz: 3\n")
    with pytest.raises(MegaliteError, match="unknown setting 'num-layerz'"):
        parse_config(["--config", str(tmp_path / "bad.yaml")])


def test_yaml_values_are_typed_as_their_flags(tmp_path):
    # YAML reads 3e-4 as a string; the command line would read it as the float it is.
    (tmp_path / "c.yaml").write_text("lr: 3e-4\nmin-lr: 1e-5\nseq-length: '64'\ndata-path: 0.3 a 0.7 b\n"
                                     "rampup-batch-size: [4, 4, 100]\nnormalization: RMSNorm\n")
    cfg = parse_config(["--config", str(tmp_path / "c.yaml")])
    assert (cfg.training.lr, cfg.training.min_lr, cfg.data.seq_length) == (3e-4, 1e-5, 64)
    assert cfg.data.data_path == ["0.3", "a", "0.7", "b"] and cfg.training.rampup_batch_size == [4, 4, 100]
    for text, line in [("num-layers: two", "num-layers: expected an integer, got 'two'"),
                       ("num-layers: 2.5", "num-layers: expected an integer, got 2.5"),
                       ("swiglu: 'yes'", "swiglu: expected true or false, got 'yes'"),
                       ("normalization: rmsnorm", "normalization: 'rmsnorm' is not one of LayerNorm, RMSNorm"),
                       ("rampup-batch-size: [4, 4]", "rampup-batch-size: expected 3 values, got [4, 4]"),
                       ("lr: [1, 2]", "lr: expected a number, got [1, 2]")]:
        (tmp_path / "bad.yaml").write_text(text + "\n")
        with pytest.raises(MegaliteError) as e:
            parse_config(["--config", str(tmp_path / "bad.yaml")])
        assert str(e.value) == f"--config {tmp_path / 'bad.yaml'}: {line}"


def test_load_refuses_other_architecture_and_finetune_loads_weights(tmp_path, tiny_corpus):
    train(tmp_path, tiny_corpus, "a", save=str(tmp_path / "ck"), train_iters=3)
    with pytest.raises(MegaliteError, match=r"--num-layers 2 in the checkpoint vs 3"):
        train(tmp_path, tiny_corpus, "b", load=str(tmp_path / "ck"), num_layers=3)
    rows, _ = train(tmp_path, tiny_corpus, "c", load=str(tmp_path / "ck"), finetune=True, train_iters=2)
    assert [r["iteration"] for r in rows] == [1, 2]
    fresh, _ = train(tmp_path, tiny_corpus, "d", train_iters=2)
    assert rows[0]["lm_loss"] < fresh[0]["lm_loss"]  # started from the trained weights


def test_sigterm_saves_and_exits_zero(tmp_path, tiny_corpus):
    metrics = tmp_path / "m.jsonl"
    argv = tiny_model_args(*tiny_corpus, train_iters=100000, save=str(tmp_path / "ck"), metrics_file=str(metrics))
    proc = subprocess.Popen([sys.executable, "pretrain_gpt.py", *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    saved = int(open(tmp_path / "ck" / "latest_checkpointed_iteration.txt").read())
    assert saved >= 3 and f"exiting at iteration {saved}" in out
    assert os.path.isfile(tmp_path / "ck" / f"iter_{saved:07d}" / "mp_rank_00" / "model_optim_rng.pt")


def test_generate_from_checkpoint(tmp_path, tiny_corpus):
    train(tmp_path, tiny_corpus, save=str(tmp_path / "ck"), train_iters=30)
    proc = run_tool("tools/generate.py", "--load", str(tmp_path / "ck"), "--prompt", "The class",
                    "--max-new-tokens", "8")
    lines = proc.stdout.splitlines()
    assert lines[0] == "--- 'The class' ->" and lines[1].startswith("The class") and len(proc.stdout) > 30
    proc = run_main("tools/generate.py", "--load", str(tmp_path / "nothing"), "--prompt", "x", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: --load") and "no checkpoint" in proc.stderr


@pytest.mark.parametrize("granularity", ["full", "selective"])
def test_recomputation_gives_the_same_losses(tmp_path, tiny_corpus, granularity):
    """Dropout on: recomputation must replay the same random masks."""
    kw = dict(train_iters=4, hidden_dropout=0.1, attention_dropout=0.1)
    plain, _ = train(tmp_path, tiny_corpus, "plain", **kw)
    recomputed, _ = train(tmp_path, tiny_corpus, granularity, recompute_granularity=granularity, **kw)
    for a, b in zip(plain, recomputed):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, tiny_corpus, monkeypatch):
    import megalite.checkpoint.save as ckpt

    train(tmp_path, tiny_corpus, "a", save=str(tmp_path / "ck"), train_iters=2)
    good = (tmp_path / "ck" / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt").read_bytes()

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(MegaliteError, match="cannot write .*model_optim_rng.pt: No space left on device$"):
        train(tmp_path, tiny_corpus, "b", save=str(tmp_path / "ck"), load=str(tmp_path / "ck"), train_iters=4)
    monkeypatch.undo()
    assert (tmp_path / "ck" / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert (tmp_path / "ck" / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt").read_bytes() == good
    assert not (tmp_path / "ck" / "iter_0000004").exists()
    rows, _ = train(tmp_path, tiny_corpus, "c", save=str(tmp_path / "ck"), load=str(tmp_path / "ck"), train_iters=4)
    assert [r["iteration"] for r in rows] == [3, 4]


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "bytes, but the save wrote"),
    (lambda b: b[:1000] + bytes([b[1000] ^ 0xFF]) + b[1001:], "checksum mismatch"),
], ids=["truncated", "bit-flip"])
def test_damaged_checkpoint_is_refused_by_name(tmp_path, tiny_corpus, damage, message):
    train(tmp_path, tiny_corpus, "a", save=str(tmp_path / "ck"), train_iters=2)
    path = tmp_path / "ck" / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(MegaliteError, match=f"{path}: .*{message}"):
        train(tmp_path, tiny_corpus, "b", load=str(tmp_path / "ck"), train_iters=3)


def test_keep_last_retains_the_newest_checkpoints(tmp_path, tiny_corpus):
    train(tmp_path, tiny_corpus, save=str(tmp_path / "ck"), save_interval=1, keep_last=2, train_iters=4)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir() if p.name.startswith("iter_")) == \
        ["iter_0000003", "iter_0000004"]
    assert (tmp_path / "ck" / "latest_checkpointed_iteration.txt").read_text() == "4"


def _nan_on_step(tr, monkeypatch, step, per_step=2):
    """Make the model's forward give nan losses during optimizer step ``step`` (1-based)."""
    forward, calls = tr.model.forward, [0]

    def poisoned(*a, **k):
        calls[0] += 1
        out = forward(*a, **k)
        return out * float("nan") if (calls[0] - 1) // per_step == step - 1 else out

    monkeypatch.setattr(tr.model, "forward", poisoned)


def test_nan_policy_skip_drops_the_update(tiny_corpus, monkeypatch):
    from megalite.training.data import microbatches

    tr = make_trainer(tiny_corpus, nan_policy="skip")
    _nan_on_step(tr, monkeypatch, 2)
    assert not tr.train_step(microbatches(tr.train_iter, 2, tr.device))["non_finite"]
    before = [p.detach().clone() for p in tr.model.parameters()]
    out = tr.train_step(microbatches(tr.train_iter, 2, tr.device))
    assert out["non_finite"] and out["skipped"]
    assert all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    out = tr.train_step(microbatches(tr.train_iter, 2, tr.device))
    assert not out["non_finite"] and not out["skipped"]
    assert not all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


def test_nan_policy_rollback_restores_the_checkpoint_and_skips_its_data(tmp_path, tiny_corpus, monkeypatch):
    from megalite.training.data import build_loader, microbatches

    tr = make_trainer(tiny_corpus, nan_policy="rollback", save=str(tmp_path / "ck"), save_interval=2, train_iters=5,
                      metrics_file=str(tmp_path / "m.jsonl"))
    _nan_on_step(tr, monkeypatch, 3)
    tr.train()
    rows = [json.loads(line) for line in open(tmp_path / "m.jsonl")]
    rollback = [r for r in rows if "restored_iteration" in r]
    assert rollback == [{**rollback[0], "iteration": 3, "restored_iteration": 2, "skipped_samples": [16, 24]}]
    trained = [r for r in rows if "lm_loss" in r]
    assert [r["iteration"] for r in trained] == [1, 2, 3, 4, 5]
    assert trained[2]["skipped_iterations"] == 1 and math.isfinite(trained[3]["lm_loss"])
    # iteration 4 starts from iteration 2's weights: its loss is what a fresh resume from there gives
    ref = make_trainer(tiny_corpus, load=str(tmp_path / "ck" / "iter_0000002"), train_iters=5)
    ref.consumed_samples = 24
    ref.train_iter = iter(build_loader(ref.train_ds, 24, ref.cfg, 5 * 8))
    ref.iteration = 3
    assert ref.train_step(microbatches(ref.train_iter, 2, ref.device))["lm_loss"] == trained[3]["lm_loss"]


def test_async_save_tracks_the_checkpoint_only_once_written(tmp_path, tiny_corpus, monkeypatch):
    import threading

    import megalite.checkpoint.save as ckpt
    from megalite.training.data import microbatches

    tr = make_trainer(tiny_corpus, save=str(tmp_path / "ck"), async_save=True)
    tr.train_step(microbatches(tr.train_iter, 2, tr.device))
    tr.iteration = 1
    expected = {k: v.clone() for k, v in tr.model.state_dict().items()}
    gate, real_save = threading.Event(), torch.save
    monkeypatch.setattr(ckpt.torch, "save", lambda obj, path: (gate.wait(), real_save(obj, path)))
    tr.save()
    tr.train_step(microbatches(tr.train_iter, 2, tr.device))  # training goes on and changes the weights
    assert not (tmp_path / "ck" / "latest_checkpointed_iteration.txt").exists()
    tr.finish_save(only_if_written=True)  # not written yet: returns without waiting
    assert tr.pending_save is not None
    gate.set()
    tr.finish_save()
    assert (tmp_path / "ck" / "latest_checkpointed_iteration.txt").read_text() == "1"
    saved = torch.load(tmp_path / "ck" / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt", weights_only=True)
    assert all(torch.equal(saved["model"][k], v) for k, v in expected.items())  # the state at save time
