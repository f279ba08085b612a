import json
import os

import numpy as np
import pytest

from tests.dist_utils import run_distributed

pytestmark = pytest.mark.dist


def _build_on_each_rank(rank, world_size, data_prefix, cache, out_dir):
    from megalite.data.blended import build_gpt_datasets
    from megalite.data.gpt_dataset import GPTDatasetConfig

    train, _, _ = build_gpt_datasets([data_prefix], [64, 0, 0], GPTDatasetConfig(seq_length=8, data_cache_path=cache))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"built": train.built_indices, "first": train.sample_tokens(0).tolist()}, f)


def test_only_rank0_builds_the_index_cache(tmp_path):
    from megalite.data.indexed import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    with IndexedDatasetBuilder(str(tmp_path / "d"), np.uint16) as b:
        for _ in range(50):
            b.add_item(rng.integers(0, 100, size=30))
            b.end_document()
    run_distributed(_build_on_each_rank, 3, str(tmp_path / "d"), str(tmp_path / "cache"), str(tmp_path))
    results = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(3)]
    assert [r["built"] for r in results] == [True, False, False]
    assert results[0]["first"] == results[1]["first"] == results[2]["first"]
