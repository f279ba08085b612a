"""Synthetic samples for benchmarks and smoke tests (``--mock-data``): random ids, no files."""

import numpy as np

from megalite.data.gpt_dataset import GPTDatasetConfig, make_lm_sample


class MockGPTDataset:
    def __init__(self, num_samples: int, vocab_size: int, config: GPTDatasetConfig, split: str = "train"):
        self.num_samples, self.vocab_size, self.config = num_samples, vocab_size, config
        self.offset = {"train": 0, "valid": 1 << 40, "test": 2 << 40}[split]

    def __len__(self) -> int:
        return self.num_samples

    def sample_tokens(self, i: int) -> np.ndarray:
        rng = np.random.default_rng(self.config.seed + self.offset + i)
        return rng.integers(0, self.vocab_size, size=self.config.seq_length + 1, dtype=np.int64)

    def __getitem__(self, i: int):
        return make_lm_sample(self.sample_tokens(i), self.config)
