"""Load a checkpoint for inference and continue text greedily.

The model is rebuilt from the settings stored in the checkpoint, so only its folder is
needed. Generation recomputes the whole context each step (no KV cache yet): fine for
short demos and tests.
"""

from typing import List, Optional, Tuple

import torch

from megalite.config import Config
from megalite.errors import MegaliteError
from megalite.model import GPTModel
from megalite.parallel import state
from megalite.training.checkpointing import find_checkpoint, load_model_state, read_checkpoint


def load_model(load: str, device: torch.device = torch.device("cpu")) -> Tuple[GPTModel, Config]:
    state.initialize()
    folder = find_checkpoint(load)
    if folder is None:
        raise MegaliteError(f"--load {load}: no checkpoint found (no latest_checkpointed_iteration.txt)")
    sd = read_checkpoint(folder)
    cfg = Config.from_dict(sd["args"])
    model = GPTModel(cfg.model)
    load_model_state(model, sd, folder)
    return model.to(device).eval(), cfg


@torch.no_grad()
def greedy_generate(model: GPTModel, prompt: List[int], max_new_tokens: int, eod: Optional[int] = None,
                    max_length: Optional[int] = None) -> List[int]:
    """``prompt`` followed by up to ``max_new_tokens`` argmax tokens (stops at ``eod``)."""
    max_length = max_length or model.cfg.max_position_embeddings
    ids = list(prompt)
    device = next(model.parameters()).device
    for _ in range(max_new_tokens):
        context = torch.tensor([ids[-max_length:]], device=device)
        nxt = int(model(context)[0, -1].argmax())
        ids.append(nxt)
        if nxt == eod:
            break
    return ids
