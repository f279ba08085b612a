"""What every post-training stage shares: where its weights start, LoRA, rows of their own lengths.

A post-training run starts from weights (a megalite checkpoint, or a local Hugging Face folder
imported once) and either starts fresh from them (weights only) or resumes a run of the same
stage from its --save (everything, exactly). The chat template's text is stored in the run's
settings, so the checkpoint and its HF export carry what training used. With --lora-rank the
model is transformed (adapters added, the base frozen) and checkpoints hold the adapters only.
Subclasses (SFT, DPO, KTO, reward models) say which data they read and what they minimise.
"""

import hashlib
import json
import os
import time
from typing import Optional, Tuple

from megalite.checkpoint.layout import TRACKER, find_checkpoint, saved_settings
from megalite.config import Config
from megalite.data.chat import resolve_template
from megalite.errors import MegaliteError
from megalite.hf.convert import import_hf
from megalite.training.data import build_tokenizer_from, row_padding
from megalite.training.stage import Stage


def is_hf_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and find_checkpoint(path) is None


IMPORT_CACHE = ".megalite_base"  # where an HF folder's import goes without --save: inside the folder


def _fingerprint(hf_dir: str) -> str:
    """Changes when any file of the folder does (name, size, modification time); our own import
    cache inside it does not count, or writing it would make the next run import again."""
    h = hashlib.sha1()
    for name in sorted(set(os.listdir(hf_dir)) - {IMPORT_CACHE}):
        st = os.stat(os.path.join(hf_dir, name))
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def import_hf_once(hf_dir: str, dest: str, timeout_s: float = 3600.0) -> str:
    """A megalite checkpoint of the HF folder at ``dest``, converted by rank 0 the first time
    (and again if the folder changed); the other ranks wait for it."""
    marker = os.path.join(dest, "source.json")
    want = {"hf_dir": os.path.abspath(hf_dir), "fingerprint": _fingerprint(hf_dir)}

    def ready():
        return os.path.isfile(marker) and json.load(open(marker)) == want

    if int(os.environ.get("RANK", "0")) == 0 and not ready():
        if os.path.isfile(marker):
            os.remove(marker)
        print(f"importing the Hugging Face model {hf_dir} into {dest}", flush=True)
        import_hf(hf_dir, dest, dtype="fp32")
        with open(marker + ".tmp", "w") as f:
            json.dump(want, f)
        os.replace(marker + ".tmp", marker)
    deadline = time.time() + timeout_s
    while not ready():
        if time.time() > deadline:
            raise MegaliteError(f"{dest}: rank 0 did not finish importing {hf_dir} within {timeout_s:.0f} s")
        time.sleep(1.0)
    return dest


class PostTrainStage(Stage):
    """The base of SFT, DPO, KTO and reward-model stages; see the module docstring."""

    counts_loss_tokens = True
    data = ("sft", "sft_data", "--sft-data")  # (config section, its data field, the flag)
    tool = "sft_gpt.py"

    def is_run_of(self, settings) -> bool:
        """Whether a checkpoint's settings are a run of this stage (which --save then resumes)."""
        section, field, _ = self.data
        saved = (settings or {}).get(section, {})
        method = saved.get("pref_method", saved.get("stage", self.name))  # "stage": before the rename
        return bool(saved.get(field)) and method == self.name

    def prepare(self, cfg: Config) -> None:
        """Resolve where the weights come from and how (in place); see the module docstring."""
        c, d = cfg.checkpoint, cfg.data
        section, field, flag = self.data
        if not getattr(getattr(cfg, section), field):
            raise MegaliteError(f"{self.tool} needs {flag} (files, or names registered in {flag[:-5]}-dataset-dir)")
        explicit = getattr(cfg, "explicit", set())
        if c.load and os.path.isdir(c.load) and is_hf_folder(c.load):
            hf_dir = c.load
            if d.tokenizer_type is None:  # the model's own tokenizer
                d.tokenizer_type, d.tokenizer_model = "HuggingFaceTokenizer", hf_dir
            dest = os.path.join(c.save, "hf_base") if c.save else os.path.join(hf_dir, IMPORT_CACHE)
            c.load = import_hf_once(hf_dir, dest)
        self.prepare_reference(cfg)
        if c.save and os.path.isfile(os.path.join(c.save, TRACKER)) and self.is_run_of(saved_settings(c.save)):
            c.load, c.finetune = c.save, False  # the same command line resumes the run it started
        elif c.load and "finetune" not in explicit:
            c.finetune = True  # a new run from those weights (a run resumes from its --save)
        saved = saved_settings(c.load) if c.load else None
        if saved and d.tokenizer_type is None:  # the tokenizer the base model was trained with
            for name in ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file"):
                setattr(d, name, saved.get("data", {}).get(name))
        if d.tokenizer_type is not None:  # the template's text goes into every checkpoint's settings
            cfg.chat.chat_template = resolve_template(cfg.chat.chat_template, build_tokenizer_from(cfg))
        super().prepare(cfg)  # the model transforms' settings (a resumed LoRA run's)

    def prepare_reference(self, cfg: Config) -> None:
        """Settle the reference model's weights (stages that have one)."""

    def packed(self, cfg: Config) -> bool:
        """Whether rows are packed to --seq-length (SFT's --packing; preference rows never are)."""
        return False

    def padding(self, cfg: Config) -> Tuple[Optional[int], int]:
        """(pad_to, multiple_of) of this stage's micro-batches (training.data.row_padding)."""
        return row_padding(cfg, self.packed(cfg))


class PreferenceStage(PostTrainStage):
    """DPO, KTO and reward models: items built from --pref-data (pairs, or KTO's single
    examples), held out by --pref-valid-data or a seeded --pref-valid-fraction share."""

    data = ("dpo", "pref_data", "--pref-data")
    build_items = None  # (dpo_cfg, chat template, seq length, tokenizer[, spec]) -> (StoreItems, stats)
    dataset = None  # the ItemDataset serving them
    per_token_loss = False  # a loss per pair or example: no context parallelism

    @property
    def tool(self) -> str:
        return f"dpo_gpt.py --pref-method {self.name}"

    def rows_per_sample(self, cfg: Config) -> int:
        return 2  # a pair: the chosen row, then the rejected one

    def datasets(self, cfg: Config, tokenizer, train_samples: int) -> list:
        t, p = cfg.training, cfg.dpo
        if p.pref_valid_data and p.pref_valid_fraction:
            raise MegaliteError("give --pref-valid-data or --pref-valid-fraction, not both")
        build = type(self).build_items
        items, stats = build(p, cfg.chat.chat_template, cfg.data.seq_length, tokenizer)
        train, valid = items.split(p.pref_valid_fraction, t.seed)
        if p.pref_valid_data:
            valid, _ = build(p, cfg.chat.chat_template, cfg.data.seq_length, tokenizer, p.pref_valid_data)
        eval_samples = t.eval_iters * t.global_batch_size
        return [self.dataset(train, train_samples, t.seed, stats),
                self.dataset(valid, eval_samples, t.seed, held_out=True) if valid is not None else None, None]
