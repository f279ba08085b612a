"""Learning-rate schedule (warm-up, then constant / linear / cosine / WSD) and batch-size ramp-up."""

import math
from typing import Optional, Sequence


class LRSchedule:
    """Learning rate of iteration ``it`` (1-based): linear warm-up to ``max_lr`` over
    ``warmup`` iterations, then decay to ``min_lr`` by ``decay_iters``; WSD holds ``max_lr``
    and decays only over its last ``wsd_decay_iters``."""

    def __init__(self, max_lr: float, min_lr: float, warmup: int, decay_iters: int, style: str,
                 wsd_decay_iters: Optional[int] = None, wsd_style: str = "linear"):
        self.max_lr, self.min_lr, self.warmup = max_lr, min_lr, warmup
        self.decay_iters, self.style = max(decay_iters, warmup), style
        self.wsd_decay_iters = wsd_decay_iters or max(1, (self.decay_iters - warmup) // 10)
        self.wsd_style = wsd_style

    def __call__(self, it: int) -> float:
        if self.warmup and it <= self.warmup:
            return self.max_lr * it / self.warmup
        if self.style == "constant":
            return self.max_lr
        if it >= self.decay_iters:
            return self.min_lr
        span = self.max_lr - self.min_lr
        if self.style == "WSD":
            stable_end = self.decay_iters - self.wsd_decay_iters
            if it <= stable_end:
                return self.max_lr
            return self.min_lr + span * _decay((it - stable_end) / self.wsd_decay_iters, self.wsd_style)
        return self.min_lr + span * _decay((it - self.warmup) / (self.decay_iters - self.warmup), self.style)


def _decay(ratio: float, style: str) -> float:
    """Fraction of the learning-rate range left at ``ratio`` of the way through a decay."""
    if style == "linear":
        return 1.0 - ratio
    if style == "cosine":
        return 0.5 * (math.cos(math.pi * ratio) + 1.0)
    if style == "exponential":
        return 2.0 ** (-ratio * 10)  # down to ~0.1% of the range
    raise ValueError(style)


class BatchSchedule:
    """Global batch size as a function of consumed samples (``--rampup-batch-size``)."""

    def __init__(self, global_batch_size: int, micro_batch_size: int, dp_size: int,
                 rampup: Optional[Sequence[int]] = None):
        self.gbs, self.mbs, self.dp = global_batch_size, micro_batch_size, dp_size
        self.rampup = rampup

    def global_batch_size(self, consumed_samples: int) -> int:
        if not self.rampup:
            return self.gbs
        start, increment, ramp_samples = self.rampup
        steps = (self.gbs - start) // increment
        if steps == 0 or consumed_samples >= ramp_samples:
            return self.gbs
        return start + increment * int(consumed_samples / (ramp_samples / steps))

    def num_microbatches(self, consumed_samples: int) -> int:
        return self.global_batch_size(consumed_samples) // (self.mbs * self.dp)

    def iterations_for(self, samples: int) -> int:
        """Iterations needed to consume ``samples`` samples."""
        it, consumed = 0, 0
        while consumed < samples:
            consumed += self.global_batch_size(consumed)
            it += 1
        return it

    def samples_for(self, iterations: int) -> int:
        consumed = 0
        for _ in range(iterations):
            consumed += self.global_batch_size(consumed)
        return consumed
