"""Datasets and loaders for training: sample counts per split, resumable data-parallel loaders."""

import functools
from typing import Iterator, List, Optional

import torch
from torch.utils.data import DataLoader

from megalite.config import Config
from megalite.data.blended import build_gpt_datasets
from megalite.data.gpt_dataset import GPTDatasetConfig
from megalite.data.mock import MockGPTDataset
from megalite.data.sampler import PretrainingSampler
from megalite.data.tokenizer import Tokenizer, build_tokenizer
from megalite.errors import MegaliteError
from megalite.parallel import state


def build_tokenizer_from(cfg: Config) -> Optional[Tokenizer]:
    d = cfg.data
    if d.tokenizer_type is None:
        return None
    return build_tokenizer(d.tokenizer_type, d.tokenizer_model, d.vocab_file, d.merge_file)


def padded_vocab_size(vocab_size: int, multiple: int, tp_size: int) -> int:
    m = multiple * tp_size
    return -(-vocab_size // m) * m


def build_datasets(cfg: Config, tokenizer: Optional[Tokenizer], train_samples: int):
    """[train, valid, test]; every evaluation reads the same first --eval-iters batches.
    With --sft-data: chat examples (megalite.data.sft) instead of a token stream."""
    t, d = cfg.training, cfg.data
    eval_samples = t.eval_iters * t.global_batch_size
    if cfg.dpo.pref_data:  # DPO pairs (megalite.data.preference), KTO examples (.unpaired), RM pairs (.reward)
        if cfg.dpo.pref_valid_data and cfg.dpo.pref_valid_fraction:
            raise MegaliteError("give --pref-valid-data or --pref-valid-fraction, not both")
        if cfg.dpo.stage == "kto":
            from megalite.data.unpaired import UnpairedDataset as Dataset
            from megalite.data.unpaired import build_examples as build
        elif cfg.dpo.stage == "rm":  # pairs scored whole
            from megalite.data.reward import RewardPairs as Dataset
            from megalite.data.reward import build_reward_pairs as build
        else:
            from megalite.data.preference import PreferenceDataset as Dataset
            from megalite.data.preference import build_pairs as build
        items, stats = build(cfg.dpo, cfg.chat.chat_template, d.seq_length, tokenizer)
        train, valid = items.split(cfg.dpo.pref_valid_fraction, t.seed)
        if cfg.dpo.pref_valid_data:
            valid, _ = build(cfg.dpo, cfg.chat.chat_template, d.seq_length, tokenizer, cfg.dpo.pref_valid_data)
        return [Dataset(train, train_samples, t.seed, stats),
                Dataset(valid, eval_samples, t.seed, held_out=True) if valid is not None else None, None]
    if cfg.sft.sft_data:
        from megalite.data.sft import build_sft_datasets

        return [*build_sft_datasets(cfg.sft, d.seq_length, tokenizer, train_samples, eval_samples, t.seed,
                                    chat_template=cfg.chat.chat_template), None]
    wanted = [0 if t.skip_train else train_samples, eval_samples, eval_samples]  # --skip-train: no train split
    ds_cfg = GPTDatasetConfig(
        seq_length=d.seq_length, seed=t.seed, split=d.split, data_cache_path=d.data_cache_path,
        eod_id=tokenizer.eod if tokenizer else None, pad_id=(tokenizer.pad or 0) if tokenizer else 0,
        eod_mask_loss=d.eod_mask_loss,
        vocab_size=tokenizer.vocab_size if tokenizer else cfg.model.padded_vocab_size,  # what the ids may reach
    )
    if d.mock_data:
        vocab = tokenizer.vocab_size if tokenizer else cfg.model.vocab_size
        return [MockGPTDataset(n, vocab, ds_cfg, split) for n, split in zip(wanted, ("train", "valid", "test"))]
    return build_gpt_datasets(d.data_path, wanted, ds_cfg)


def build_loader(dataset, consumed_samples: int, cfg: Config, total: Optional[int] = None) -> DataLoader:
    s = state.get()
    sampler = PretrainingSampler(total or len(dataset), consumed_samples, cfg.training.micro_batch_size,
                                 s.dp_rank, s.dp_size)
    workers = cfg.data.num_workers
    # Its own generator: creating a loader must not draw from the global RNG (dropout's),
    # or a resumed run would diverge from an uninterrupted one.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(0),
                      collate_fn=row_collate(cfg))


def row_collate(cfg: Config):
    """SFT rows have their own lengths: pad each micro-batch to its longest row (a multiple of
    8, and of TP with sequence parallelism), or to --seq-length when packing or pipelining
    (stages exchange fixed shapes). Positions travel only with packing, where they mark the
    documents; an unpacked row is one example starting at position 0."""
    if not (cfg.sft.sft_data or cfg.dpo.pref_data):
        return None
    s = state.get()
    packing = cfg.sft.packing
    pad_to = cfg.data.seq_length if packing or s.pp_size > 1 else None
    multiple = 8 * (s.tp_size if s.sequence_parallel else 1)
    if cfg.dpo.pref_data and cfg.dpo.stage == "kto":
        from megalite.data.unpaired import collate_unpaired

        return functools.partial(collate_unpaired, seq_length=cfg.data.seq_length, pad_to=pad_to,
                                 multiple_of=multiple, kl_rows=cfg.kto.kto_loss_type == "kto")
    if cfg.dpo.pref_data:
        from megalite.data.preference import collate_pairs
        from megalite.data.reward import collate_reward_pairs

        collate = collate_reward_pairs if cfg.dpo.stage == "rm" else collate_pairs
        return functools.partial(collate, pad_to=pad_to, multiple_of=multiple)
    return functools.partial(_collate_rows, pad_to=pad_to, multiple_of=multiple, keep_positions=packing)


def _collate_rows(rows, pad_to, multiple_of, keep_positions):
    from megalite.data.sft import collate_sft

    batch = collate_sft(rows, pad_to=pad_to, multiple_of=multiple_of)  # padding carries no loss
    if not keep_positions:
        batch.pop("position_ids")
    return batch


def microbatches(it: Iterator, n: int, device) -> List[dict]:
    """The next ``n`` micro-batches, on ``device``."""
    out = []
    for _ in range(n):
        try:
            mb = next(it)
        except MegaliteError as e:
            raise _own_line(e) from None
        out.append({k: v.to(device, non_blocking=True) for k, v in mb.items()})
    return out


def _own_line(e: MegaliteError) -> MegaliteError:
    """A dataset's MegaliteError raised in a loader worker arrives wrapped in torch's report
    ("Caught MegaliteError in DataLoader worker ...", the worker's traceback, then the error's
    own line); the user gets that one line."""
    text, marker = str(e), f"{MegaliteError.__name__}: "
    last = text.rstrip().splitlines()[-1] if text.strip() else ""
    return MegaliteError(last.split(marker, 1)[1]) if text.startswith("Caught ") and marker in last else e
