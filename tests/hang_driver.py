"""Run pretrain_gpt.py's training with rank 1 stuck inside iteration 3 (for test_restart.py)."""

import sys
import time

import torch.distributed as dist

from megalite.config import parse_config
from megalite.model.gpt import GPTModel
from megalite.training.trainer import pretrain

forward, calls = GPTModel.forward, [0]


def stuck_forward(self, *args, **kwargs):
    calls[0] += 1
    if dist.get_rank() == 1 and calls[0] == 5:  # iteration 3 with two micro-batches per step
        time.sleep(600)
    return forward(self, *args, **kwargs)


GPTModel.forward = stuck_forward
pretrain(parse_config(sys.argv[1:]))
