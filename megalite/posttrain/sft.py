"""Supervised fine-tuning as a stage: the pretraining step on chat examples (megalite.data.sft).

Rows have their own lengths: a micro-batch is padded to its longest row, or packed to
--seq-length with --packing (positions then travel with the rows and mark the documents; an
unpacked row is one example starting at position 0). The loss is the token mean over the
completion tokens the template marks trainable.
"""

import functools

from megalite.config import Config
from megalite.data.sft import build_sft_datasets, collate_sft
from megalite.model.heads import skip_unlabelled
from megalite.posttrain.stage import PostTrainStage


def collate_rows(rows, pad_to, multiple_of, keep_positions):
    batch = collate_sft(rows, pad_to=pad_to, multiple_of=multiple_of)  # padding carries no loss
    if not keep_positions:
        batch.pop("position_ids")
    return batch


class SFTStage(PostTrainStage):
    name = "sft"

    def packed(self, cfg: Config) -> bool:
        return cfg.sft.packing

    def datasets(self, cfg: Config, tokenizer, train_samples: int) -> list:
        t = cfg.training
        return [*build_sft_datasets(cfg.sft, cfg.data.seq_length, tokenizer, train_samples,
                                    t.eval_iters * t.global_batch_size, t.seed, chat_template=cfg.chat.chat_template),
                None]

    def collate(self, cfg: Config):
        pad_to, multiple = self.padding(cfg)
        return functools.partial(collate_rows, pad_to=pad_to, multiple_of=multiple, keep_positions=self.packed(cfg))

    def objective(self, cfg: Config, context):
        skip_unlabelled(context.model)  # collate_sft labels prompts and padding IGNORE_INDEX
        return super().objective(cfg, context)
