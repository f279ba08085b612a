import math

import pytest

from megalite.training.schedules import BatchSchedule, LRSchedule


def test_warmup_then_cosine():
    s = LRSchedule(1.0, 0.1, warmup=10, decay_iters=110, style="cosine")
    assert [s(i) for i in (1, 5, 10)] == [0.1, 0.5, 1.0]
    assert s(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)


def test_linear_constant_and_wsd():
    assert LRSchedule(1.0, 0.0, 0, 100, "linear")(25) == pytest.approx(0.75)
    assert LRSchedule(1.0, 0.0, 5, 100, "constant")(99) == 1.0
    wsd = LRSchedule(1.0, 0.0, warmup=10, decay_iters=110, style="WSD", wsd_decay_iters=20, wsd_style="cosine")
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
