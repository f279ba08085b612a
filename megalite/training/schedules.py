"""Learning-rate schedule (warm-up, then constant / linear / cosine / WSD) and batch-size schedules
(``--rampup-batch-size``, ``--step-batch-size-schedule``)."""

import math
from typing import List, Optional, Sequence, Tuple

from megalite.config import TrainingConfig


class LRSchedule:
    """Megatron's learning-rate schedule, counted in samples: the step that starts with
    ``consumed`` samples behind it decays as Megatron's scheduler at ``consumed`` (so the first
    step runs at the peak when there is no warm-up, and the step after ``decay`` samples at
    ``min_lr``). Warm-up is linear from ``init_lr`` and counts the step being taken, so the first
    step of a warm-up already moves the weights (Megatron's first step runs at ``init_lr``, which
    leaves a one-step run at lr 0); it reaches ``max_lr`` at the step that completes ``warmup``
    samples. WSD holds ``max_lr`` and decays only over its last ``wsd_decay`` samples."""

    def __init__(self, max_lr: float, min_lr: float, warmup: float, decay: float, style: str,
                 wsd_decay: Optional[float] = None, wsd_style: str = "linear", init_lr: float = 0.0):
        self.max_lr, self.min_lr, self.warmup, self.init_lr = max_lr, min_lr, warmup, init_lr
        self.decay, self.style = max(decay, warmup), style
        self.wsd_decay = wsd_decay or max(1, (self.decay - warmup) // 10)
        self.wsd_style = wsd_style

    def __call__(self, consumed: float, batch: float = 1, max_lr: Optional[float] = None,
                 min_lr: Optional[float] = None) -> float:
        """The lr of the step that starts after ``consumed`` samples and takes ``batch`` more;
        ``max_lr`` / ``min_lr`` override the peak and floor (--decoupled-lr's parameters)."""
        top = self.max_lr if max_lr is None else max_lr
        bottom = self.min_lr if min_lr is None else min_lr
        if self.warmup and consumed < self.warmup:
            return self.init_lr + (top - self.init_lr) * min(1.0, (consumed + batch) / self.warmup)
        if self.style == "constant":
            return top
        if consumed >= self.decay:
            return bottom
        if self.style == "WSD":
            stable_end = self.decay - self.wsd_decay
            if consumed <= stable_end:
                return top
            return bottom + (top - bottom) * _decay((consumed - stable_end) / self.wsd_decay, self.wsd_style)
        return bottom + (top - bottom) * _decay((consumed - self.warmup) / (self.decay - self.warmup), self.style)


def lr_schedule(t: TrainingConfig, train_iters: int) -> LRSchedule:
    """The schedule of a run, in samples as Megatron counts them: with --train-iters the
    iteration flags times --global-batch-size; with --train-samples the sample flags (iteration
    flags times --global-batch-size where given instead); --lr-warmup-fraction is a share of
    the decay."""
    gbs = t.global_batch_size

    def samples(sample_value, iter_value, default=None):
        if sample_value is not None:
            return sample_value
        return iter_value * gbs if iter_value is not None else default

    decay = samples(t.lr_decay_samples, t.lr_decay_iters,
                    t.train_samples if t.train_samples is not None else train_iters * gbs)
    warmup = samples(t.lr_warmup_samples, t.lr_warmup_iters, 0)
    if t.lr_warmup_fraction is not None:
        warmup = t.lr_warmup_fraction * decay
    return LRSchedule(t.lr, t.min_lr, warmup, decay, t.lr_decay_style,
                      samples(t.lr_wsd_decay_samples, t.lr_wsd_decay_iters), t.lr_wsd_decay_style, t.lr_warmup_init)


def _decay(ratio: float, style: str) -> float:
    """Fraction of the learning-rate range left at ``ratio`` of the way through a decay."""
    if style == "linear":
        return 1.0 - ratio
    if style == "cosine":
        return 0.5 * (math.cos(math.pi * ratio) + 1.0)
    if style == "exponential":
        return 2.0 * 0.5**ratio - 1.0  # Megatron's: 1 down to 0
    if style == "minus_sqrt":
        return 1.0 - math.sqrt(ratio)
    raise ValueError(style)


class BatchSchedule:
    """Global batch size as a function of consumed samples: ``--rampup-batch-size`` (linear
    steps) or ``steps``, --step-batch-size-schedule's (first sample, batch size) pairs."""

    def __init__(self, global_batch_size: int, micro_batch_size: int, dp_size: int,
                 rampup: Optional[Sequence[int]] = None, steps: Optional[List[Tuple[int, int]]] = None):
        self.gbs, self.mbs, self.dp = global_batch_size, micro_batch_size, dp_size
        self.rampup, self.steps = rampup, steps

    def global_batch_size(self, consumed_samples: int) -> int:
        if self.steps:
            return [size for first, size in self.steps if consumed_samples >= first][-1]
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
