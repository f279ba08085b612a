"""Run pretrain_gpt.py's training with the checkpoint of iteration 4 stuck mid-write, so a
test can kill the process during that save (for test_restart.py)."""

import sys
import time

import megalite.checkpoint.save as checkpointing
from megalite.config import parse_config
from megalite.training.trainer import pretrain

real_save = checkpointing.torch.save


def stuck_save(obj, f):
    if "iter_0000004" in f.name:
        f.write(b"the first bytes of a checkpoint")
        f.flush()
        print("writing iteration 4", flush=True)
        time.sleep(600)
    real_save(obj, f)


checkpointing.torch.save = stuck_save
pretrain(parse_config(sys.argv[1:]))
