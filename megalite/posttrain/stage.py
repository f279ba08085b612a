"""What every post-training stage shares: where its weights start, LoRA, rows of their own lengths.

A post-training run starts from weights (a megalite checkpoint, or a local Hugging Face folder
imported once) and either starts fresh from them (weights only) or resumes a run of the same
stage from its --save (everything, exactly). The chat template's text is stored in the run's
settings, so the checkpoint and its HF export carry what training used. With --lora-rank the
model is transformed (adapters added, the base frozen) and checkpoints hold the adapters only.
Subclasses (SFT, DPO, KTO, reward models) say which data they read and what they minimise.
"""

import os
import sys
from typing import Optional, Tuple

from megalite.checkpoint.layout import TRACKER, saved_settings
from megalite.config import Config, inherit_model_settings
from megalite.data.chat import resolve_template
from megalite.errors import MegaliteError
from megalite.hf.source import import_load
from megalite.training.data import build_tokenizer_from, row_padding
from megalite.training.stage import Stage


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
        import_load(cfg)
        self.prepare_reference(cfg)
        if c.save and os.path.isfile(os.path.join(c.save, TRACKER)) and self.is_run_of(saved_settings(c.save)):
            c.load, c.finetune = c.save, False  # the same command line resumes the run it started
        elif c.load and "finetune" not in explicit:
            c.finetune = True  # a new run from those weights (a run resumes from its --save)
        saved = saved_settings(c.load) if c.load else None
        if saved:  # the base model's tokenizer and sequence length, unless given
            inherit_model_settings(cfg, saved)
        if not c.save and not cfg.training.skip_train and int(os.environ.get("RANK", "0")) == 0:
            print(f"warning: {self.tool} without --save: the trained weights will not be kept", file=sys.stderr,
                  flush=True)
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
