import math

import pytest

from megalite.config import Config, TrainingConfig, step_batch_sizes
from megalite.errors import MegaliteError
from megalite.training.schedules import BatchSchedule, LRSchedule, lr_schedule


def test_warmup_then_cosine():
    # s(consumed): the lr of the step that starts after `consumed` samples (steps 1, 5 and 10 here)
    s = LRSchedule(1.0, 0.1, warmup=10, decay=110, style="cosine")
    assert [s(i - 1) for i in (1, 5, 10)] == [0.1, 0.5, 1.0]
    assert s(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)


def test_linear_constant_and_wsd():
    assert LRSchedule(1.0, 0.0, 0, 100, "linear")(25) == pytest.approx(0.75)
    assert LRSchedule(1.0, 0.0, 5, 100, "constant")(99) == 1.0
    wsd = LRSchedule(1.0, 0.0, warmup=10, decay=110, style="WSD", wsd_decay=20, wsd_style="cosine")
    assert wsd(50) == 1.0 and wsd(90) == 1.0
    assert wsd(100) == pytest.approx(0.5 * (math.cos(math.pi * 0.5) + 1))
    assert wsd(110) == pytest.approx(0.0)


def test_batch_rampup_and_sample_budget():
    b = BatchSchedule(global_batch_size=32, micro_batch_size=2, dp_size=2, rampup=[8, 8, 300])
    # 3 increments spread over 300 samples: 8 until 100 samples, 16 until 200, 24 until 300, then 32
    assert [b.global_batch_size(c) for c in (0, 99, 100, 199, 200, 299, 300, 10_000)] == [8, 8, 16, 16, 24, 24, 32, 32]
    assert b.num_microbatches(0) == 2 and b.num_microbatches(300) == 8
    assert b.samples_for(b.iterations_for(1000)) >= 1000
    assert b.samples_for(b.iterations_for(1000) - 1) < 1000
    assert BatchSchedule(16, 4, 1).iterations_for(160) == 10


def test_one_step_run_is_not_at_lr_0():
    """Megatron's counting: the first step decays from 0 consumed samples, so a one-step run (decay
    over that one step) runs at the peak, not at --min-lr; a warm-up's first step counts itself."""
    assert LRSchedule(1.0, 0.0, 0, 1, "linear")(0) == 1.0
    assert LRSchedule(1.0, 0.0, 1, 1, "cosine")(0) == 1.0
    one = lr_schedule(TrainingConfig(lr=1e-3, train_iters=1, global_batch_size=4, lr_warmup_fraction=0.01), 1)
    assert one(0, 4) == pytest.approx(1e-3)


def test_sample_flags_convert_as_megatron():
    """--train-samples with --lr-*-samples equals --train-iters with --lr-*-iters times the batch;
    --lr-warmup-fraction is a share of the decay."""
    by_samples = lr_schedule(TrainingConfig(lr=1.0, train_samples=1000, global_batch_size=10, lr_decay_samples=800,
                                            lr_warmup_samples=100), 100)
    by_iters = lr_schedule(TrainingConfig(lr=1.0, train_iters=100, global_batch_size=10, lr_decay_iters=80,
                                          lr_warmup_iters=10), 100)
    by_fraction = lr_schedule(TrainingConfig(lr=1.0, train_iters=100, global_batch_size=10, lr_decay_iters=80,
                                             lr_warmup_fraction=0.125), 100)
    lrs = [[s(10 * k, 10) for k in range(100)] for s in (by_samples, by_iters, by_fraction)]
    assert lrs[0] == lrs[1] == lrs[2]
    assert lrs[0][0] == pytest.approx(0.1) and lrs[0][9] == 1.0  # linear (the default) warm-up over 10 steps
    assert by_samples(450, 10) == pytest.approx(0.5) and by_samples(800, 10) == 0.0
    # --decoupled-lr: the same shape between other bounds
    assert by_samples(450, 10, max_lr=5.0, min_lr=1.0) == pytest.approx(3.0)


def test_step_batch_size_schedule():
    cfg = Config()
    cfg.data.seq_length = 2048
    cfg.training.step_batch_size_schedule = ["0:16", "2.4B:320", "12B:1536"]  # a launch script's words
    assert step_batch_sizes(cfg) == [(0, 16), (2_400_000_000 // 2048, 320), (12_000_000_000 // 2048, 1536)]
    cfg.training.step_batch_size_schedule = ["0:16 2.4B:320 12B:1536"]  # one quoted string
    assert step_batch_sizes(cfg)[1] == (1171875, 320)
    b = BatchSchedule(4, 1, 1, steps=[(0, 2), (8, 4)])
    assert [b.global_batch_size(c) for c in (0, 6, 8, 12)] == [2, 2, 4, 4]
    assert b.iterations_for(16) == 6  # 2+2+2+2, then 4+4
    cfg.training.step_batch_size_schedule = ["8K:4"]  # thresholds are tokens: 8192 / 2048 = 4 samples
    with pytest.raises(MegaliteError, match="start at 0"):
        step_batch_sizes(cfg)
