"""A new stage plugs into the training core without touching it: docs/architecture.md's example
(``CopyStage`` below, the same source) trains through ``pretrain(cfg, stage)``, its data, rows and
objective are the ones the trainer uses, and its loss falls."""

import inspect
import os
import re

import torch
import torch.utils.data

from megalite.config import parse_config, validate
from megalite.training.data import microbatches
from megalite.training.objectives import TokenMean
from megalite.training.stage import Stage
from megalite.training.trainer import Trainer, pretrain
from tests.conftest import REPO, read_metrics, tiny_model_args

# --- docs/architecture.md: the example stage -------------------------------------------------

class CopyRows(torch.utils.data.Dataset):
    """Rows of 16 random tokens from a small alphabet, then the same tokens again; only the copy
    has a loss. Sample ``i`` is the same row in every run (its own seed)."""

    def __init__(self, n: int, seq_length: int, seed: int, alphabet: int = 16):
        self.n, self.seq, self.seed, self.alphabet = n, seq_length, seed, alphabet

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        half = torch.randint(self.alphabet, (self.seq // 2,), generator=torch.Generator().manual_seed(self.seed + i))
        ids = torch.cat([half, half, half[:1]])  # seq + 1 ids: inputs and their next tokens
        mask = torch.zeros(self.seq)
        mask[self.seq // 2:] = 1.0  # predicting the second half
        return {"tokens": ids[:-1], "labels": ids[1:], "loss_mask": mask}


class CopyStage(Stage):
    """Learn to repeat a sequence: pretraining's model and step, its own data and loss mask."""

    name = "copy"

    def datasets(self, cfg, tokenizer, train_samples):
        eval_samples = cfg.training.eval_iters * cfg.training.global_batch_size
        seq, seed = cfg.data.seq_length, cfg.training.seed
        return [CopyRows(train_samples, seq, seed), CopyRows(eval_samples, seq, seed + 10**6), None]

    def objective(self, cfg, context):
        return TokenMean()  # the mean over the loss-mask tokens of the global batch
# --- end of the example ----------------------------------------------------------------------


def copy_args(tmp_path, tiny_corpus, **kw):
    return tiny_model_args(*tiny_corpus, metrics_file=str(tmp_path / "m.jsonl"), **kw)


def test_the_documented_example_is_this_stage():
    doc = open(f"{REPO}/docs/architecture.md", encoding="utf-8").read()
    block = re.search(r"```python\n(.*?)```", doc[doc.index("## Adding a stage"):], re.S).group(1)
    mine = "\n\n".join(inspect.getsource(c) for c in (CopyRows, CopyStage))
    assert block.strip().endswith(mine.strip())


def test_the_trainer_steps_on_the_stages_rows_and_loss(tmp_path, tiny_corpus):
    """The first step's loss is the mean cross entropy over the copied halves only, computed
    here from the initial model on the stage's own first micro-batches."""
    cfg = validate(parse_config(copy_args(tmp_path, tiny_corpus, train_iters=2)))
    tr = Trainer(cfg, torch.device("cpu"), CopyStage())
    assert isinstance(tr.train_ds, CopyRows) and isinstance(tr.valid_ds, CopyRows)
    batch = microbatches(tr.train_iter, 2, tr.device)
    assert torch.equal(batch[0]["tokens"][:, :16], batch[0]["tokens"][:, 16:])
    with torch.no_grad():
        losses = [tr.model(mb["tokens"], labels=mb["labels"]) for mb in batch]
    expected = sum((l * mb["loss_mask"]).sum() for l, mb in zip(losses, batch)) / sum(
        mb["loss_mask"].sum() for mb in batch)
    assert abs(tr.train_step(batch)["lm_loss"] - expected.item()) < 1e-5


def test_a_new_stage_trains_through_pretrain(tmp_path, tiny_corpus):
    pretrain(parse_config(copy_args(tmp_path, tiny_corpus, train_iters=30, eval_interval=30, lr=1e-2)), CopyStage())
    train, evals = read_metrics(tmp_path / "m.jsonl")
    assert [r["iteration"] for r in train] == list(range(1, 31))
    assert train[-1]["lm_loss"] < 0.8 * train[0]["lm_loss"]  # at least the 16-token alphabet is learnt
    assert [r["split"] for r in evals] == ["valid"] and evals[0]["loss"] < 0.8 * train[0]["lm_loss"]
    assert train[0]["tokens_per_sec"] > 0


def test_an_hf_folder_is_imported_once_into_itself(tmp_path, monkeypatch):
    """Without --save the import goes into <hf folder>/.megalite_base; writing it must not make
    the folder look changed, or every run would convert the model again."""
    from megalite.hf import source as stage

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    calls = []

    def fake_import(src, dest, dtype):
        calls.append(src)
        os.makedirs(dest, exist_ok=True)
        (tmp_path / "hf" / stage.IMPORT_CACHE / "weights").write_text("w")

    monkeypatch.setattr(stage, "import_hf", fake_import)
    for _ in range(2):
        stage.import_hf_once(str(hf), str(hf / stage.IMPORT_CACHE))
    assert calls == [str(hf)]
    (hf / "config.json").write_text('{"changed": 1}')
    stage.import_hf_once(str(hf), str(hf / stage.IMPORT_CACHE))
    assert len(calls) == 2
