"""Which samples each data-parallel rank reads, resumable from a consumed-sample count.

A global batch is ``micro_batch_size * dp_size`` consecutive samples; rank r takes the r-th
micro-batch of each. Reading the ranks' micro-batches in rank order gives back the single-rank
sequence, so the data order does not depend on the data-parallel size.
"""

from typing import Iterator, List


class PretrainingSampler:
    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int, drop_last: bool = True):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"data-parallel rank {dp_rank} outside [0, {dp_size})")
        if micro_batch_size < 1:
            raise ValueError("micro batch size must be positive")
        self.total, self.consumed = total_samples, consumed_samples
        self.mbs, self.rank, self.size, self.drop_last = micro_batch_size, dp_rank, dp_size, drop_last

    def __len__(self) -> int:
        step = self.mbs * self.size
        remaining = max(self.total - self.consumed, 0)
        return remaining // step if self.drop_last else -(-remaining // step)

    def __iter__(self) -> Iterator[List[int]]:
        step = self.mbs * self.size
        lo = self.rank * self.mbs
        for start in range(self.consumed, self.total, step):
            end = min(start + step, self.total)
            if end - start < step and self.drop_last:
                return
            mine = list(range(start + lo, min(start + lo + self.mbs, end)))
            if mine:
                yield mine
