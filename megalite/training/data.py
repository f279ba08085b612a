"""Datasets and loaders for training: sample counts per split, resumable data-parallel loaders."""

from typing import Iterator, List, Optional

import torch
from torch.utils.data import DataLoader

from megalite.config import Config
from megalite.data.blended import build_gpt_datasets
from megalite.data.gpt_dataset import GPTDatasetConfig
from megalite.data.mock import MockGPTDataset
from megalite.data.sampler import PretrainingSampler
from megalite.data.tokenizer import Tokenizer, build_tokenizer
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
    """[train, valid, test]; every evaluation reads the same first --eval-iters batches."""
    t, d = cfg.training, cfg.data
    eval_samples = t.eval_iters * t.global_batch_size
    wanted = [train_samples, eval_samples, eval_samples]
    ds_cfg = GPTDatasetConfig(
        seq_length=d.seq_length, seed=t.seed, split=d.split, data_cache_path=d.data_cache_path,
        eod_id=tokenizer.eod if tokenizer else None, pad_id=(tokenizer.pad or 0) if tokenizer else 0,
        eod_mask_loss=d.eod_mask_loss,
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
                      prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(0))


def microbatches(it: Iterator, n: int, device) -> List[dict]:
    """The next ``n`` micro-batches, on ``device``."""
    out = []
    for _ in range(n):
        mb = next(it)
        out.append({k: v.to(device, non_blocking=True) for k, v in mb.items()})
    return out
