"""The random states a checkpoint carries, as plain Python values (safe to gather, and to
load with weights_only): Python's, NumPy's, torch's CPU and CUDA generators and the
tensor-parallel stream's."""

import random
from typing import Dict

import numpy as np
import torch

from megalite.parallel.random import get_tp_rng_state, set_tp_rng_state


def rng_state() -> Dict:
    """This process's random states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state().tolist()
    tp = get_tp_rng_state()
    if tp is not None:
        out["tp_stream"] = {k: v.tolist() for k, v in tp.items()}
    return out


def set_rng_state(sd: Dict) -> None:
    random.setstate(_to_tuple(sd["python"]))
    name, keys, pos, has_gauss, cached = sd["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(sd["torch"], dtype=torch.uint8))
    if "cuda" in sd and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(sd["cuda"], dtype=torch.uint8))
    if "tp_stream" in sd:
        set_tp_rng_state({k: torch.tensor(v, dtype=torch.uint8) for k, v in sd["tp_stream"].items()})


def _to_tuple(x):
    return tuple(_to_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x
