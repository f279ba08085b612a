"""Datasets and loaders for training: sample counts per split, resumable data-parallel loaders."""

from typing import Callable, Iterator, List, Optional, Tuple

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


def gpt_datasets(cfg: Config, tokenizer: Optional[Tokenizer], train_samples: int) -> list:
    """[train, valid, test] token streams (pretraining); every evaluation reads the same first
    --eval-iters batches."""
    t, d = cfg.training, cfg.data
    eval_samples = t.eval_iters * t.global_batch_size
    wanted = [0 if t.skip_train else train_samples, eval_samples, eval_samples]  # --skip-train: no train split
    ds_cfg = GPTDatasetConfig(
        seq_length=d.seq_length, seed=t.seed, split=d.split, data_cache_path=d.data_cache_path,
        eod_id=tokenizer.eod if tokenizer else None, pad_id=(tokenizer.pad or 0) if tokenizer else 0,
        eod_mask_loss=d.eod_mask_loss, mmap_bin_files=d.mmap_bin_files,
        vocab_size=tokenizer.vocab_size if tokenizer else cfg.model.padded_vocab_size,  # what the ids may reach
    )
    if d.mock_data:
        vocab = tokenizer.vocab_size if tokenizer else cfg.model.vocab_size
        return [MockGPTDataset(n, vocab, ds_cfg, split) for n, split in zip(wanted, ("train", "valid", "test"))]
    return build_gpt_datasets(d.data_path, wanted, ds_cfg)


def build_loader(dataset, consumed_samples: int, cfg: Config, total: Optional[int] = None,
                 collate: Optional[Callable] = None) -> DataLoader:
    s = state.get()
    sampler = PretrainingSampler(total or len(dataset), consumed_samples, cfg.training.micro_batch_size,
                                 s.dp_rank, s.dp_size)
    workers = cfg.data.num_workers
    # Its own generator: creating a loader must not draw from the global RNG (dropout's),
    # or a resumed run would diverge from an uninterrupted one.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(0),
                      collate_fn=collate)


def row_padding(cfg: Config, packing: bool = False) -> Tuple[Optional[int], int]:
    """(pad_to, multiple_of) for rows of their own lengths (SFT examples, preference pairs): a
    micro-batch is padded to its longest row (a multiple of 8, and of TP with sequence
    parallelism), or to --seq-length when packing or pipelining (stages exchange fixed shapes)."""
    s = state.get()
    pad_to = cfg.data.seq_length if packing or s.pp_size > 1 else None
    return pad_to, 8 * (s.tp_size if s.sequence_parallel else 1)


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
