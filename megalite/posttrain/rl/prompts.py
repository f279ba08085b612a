"""The prompts online RL generates for, and which of them each sample of a step holds.

A prompt record has a ``prompt`` column, text or a list of chat messages (rendered with the
run's chat template and its generation prompt, as SFT does); every other column is handed to
the reward functions, as trl does. Files are JSON / JSON lines / Parquet, a folder of them, a
``datasets`` folder (``save_to_disk``) or names in a LLaMA-Factory ``dataset_info.json`` (whose
``columns`` may map ``prompt`` onto another column). Prompts longer than the budget (--seq-length
minus --max-completion-length) are dropped and counted.

Samples are completions: sample ``j`` of step ``b`` (``b = j // gbs``) is one of the G completions
of a prompt, and the G completions of a prompt are consecutive. With --num-iterations K, the K
steps of one rollout batch see the same prompts (trl's repeat sampler), so the data position of a
run, and its resume, are plain consumed-sample counts.
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from megalite.data.chat import render_chat
from megalite.data.sft_formats import read_records, resolve_sources
from megalite.errors import MegaliteError


@dataclass
class Prompt:
    prompt: Union[str, List[Dict[str, str]]]  # as the record holds it
    ids: List[int]
    columns: Dict[str, object]  # the record's other columns


def prompt_ids(tokenizer, template: Optional[str], prompt) -> List[int]:
    """Token ids as trl tokenizes a prompt: text with the tokenizer's own special tokens, messages
    rendered with the chat template and its generation prompt."""
    if isinstance(prompt, str):
        return tokenizer.encode_text(prompt)
    if not template:
        raise MegaliteError("conversational prompts need a chat template (--chat-template)")
    return tokenizer.encode(render_chat(template, prompt, True, **tokenizer.special_tokens))


def _records(path: str) -> List[dict]:
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "state.json")):
        import datasets  # a save_to_disk folder

        return list(datasets.load_from_disk(path))
    files = ([os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith((".json", ".jsonl", ".parquet"))]
             if os.path.isdir(path) else [path])
    return [r for f in files for r in read_records(f)]


def load_prompts(rl_cfg, template: Optional[str], tokenizer, budget: int) -> Tuple[List[Prompt], int]:
    """(the prompts that fit ``budget`` tokens, how many were dropped)."""
    prompts, dropped = [], 0
    for source in resolve_sources(rl_cfg.prompt_data, rl_cfg.prompt_dataset_dir, "--prompt-data"):
        column = source.columns.get("prompt", "prompt")
        records = _records(source.path)
        if not records:
            raise MegaliteError(f"--prompt-data {source.path}: holds no records")
        for i, record in enumerate(records):
            if column not in record or not isinstance(record[column], (str, list)) or not record[column]:
                raise MegaliteError(f"--prompt-data {source.path}: record {i} has no {column!r} column (text or a "
                                    "list of messages)")
            ids = prompt_ids(tokenizer, template, record[column])
            if len(ids) > budget:
                dropped += 1
                continue
            prompts.append(Prompt(record[column], ids, {k: v for k, v in record.items() if k != column}))
    if not prompts:
        raise MegaliteError(f"--prompt-data: no prompt fits the budget of {budget} tokens (--seq-length minus "
                            f"--max-completion-length); {dropped} dropped")
    return prompts, dropped


class PromptDataset(torch.utils.data.Dataset):
    """Sample ``j`` -> which prompt it completes (see the module docstring); prompts are visited in
    a seeded order, reshuffled every epoch."""

    def __init__(self, prompts: List[Prompt], num_samples: int, gbs: int, generations: int, iterations: int,
                 seed: int, held_out: bool = False):
        if gbs % generations:
            raise MegaliteError(f"--global-batch-size {gbs} must be a multiple of --num-generations {generations}")
        self.prompts, self.num_samples, self.held_out = prompts, num_samples, held_out
        self.gbs, self.g, self.k, self.seed = gbs, generations, iterations, seed
        self.orders = {}  # epoch -> its visiting order

    def __len__(self) -> int:
        return self.num_samples

    def prompt_index(self, j: int) -> int:
        step, within = divmod(j, self.gbs)
        rollout = step // self.k  # the rollout batch this step trains on
        n = rollout * (self.gbs // self.g) + within // self.g  # the n-th prompt visited
        epoch, i = divmod(n, len(self.prompts))
        if self.held_out:
            return i
        if epoch not in self.orders:
            self.orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))
        return int(self.orders[epoch][i])

    def __getitem__(self, j: int) -> Dict[str, torch.Tensor]:
        return {"prompt_index": torch.tensor(self.prompt_index(j)), "sample": torch.tensor(j),
                "held_out": torch.tensor(int(self.held_out))}
