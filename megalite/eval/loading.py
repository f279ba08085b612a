"""Loading a checkpoint (or a Hugging Face folder) for inference: its model, the tokenizer it was
trained with, the device.

A checkpoint saved with tensor / pipeline parallelism loads either in one process (its shards
gathered) or across T x P ranks under torchrun, each rank holding its shard and stage.
"""

import argparse
import os
from typing import Optional, Tuple

import torch

from megalite.checkpoint.layout import find_checkpoint, read_checkpoint, saved_settings
from megalite.checkpoint.load import load_model_state
from megalite.checkpoint.reshard import load_full_state
from megalite.config import Config
from megalite.data.tokenizer import Tokenizer, build_tokenizer
from megalite.errors import MegaliteError
from megalite.hf.source import megalite_checkpoint
from megalite.model import GPTModel
from megalite.model.gpt import build_stage_model
from megalite.parallel import state
from megalite.parallel.bootstrap import setup_distributed
from megalite.posttrain.lora_io import load_lora_weights


def load_model(load: str, device: Optional[torch.device] = None) -> Tuple[torch.nn.Module, Config]:
    """The model a checkpoint holds, for inference. In one process the whole model (tensor- and
    pipeline-parallel files gathered); under torchrun with T x P ranks (the checkpoint's own
    layout) this rank's shard of its pipeline stage. ``load`` may be a Hugging Face model folder
    (imported once: megalite.hf.source)."""
    folder = find_checkpoint(megalite_checkpoint(load))
    cfg = Config.from_dict(saved_settings(folder))
    p = cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        full, _ = load_full_state(folder)
        p.tensor_model_parallel_size = p.pipeline_model_parallel_size = 1
        p.num_layers_per_virtual_pipeline_stage = None
        state.initialize()
        model = GPTModel(cfg.model)
        if cfg.lora.lora_rank:  # a LoRA run's checkpoint: its base, and its adapters unmerged
            load_lora_weights(model, cfg, full, folder)
        else:
            load_model_state(model, {"model": dict(full)}, folder)
    elif cfg.lora.lora_rank:
        raise MegaliteError(f"{folder} holds LoRA adapters: decode it in one process, or export it merged with "
                            "tools/convert_checkpoint.py --to-hf and convert that back with --from-hf")
    elif world == tp * pp:
        default = setup_distributed(p.distributed_backend)
        device = device or default
        state.initialize(tp, pp)
        model = build_stage_model(cfg, None)
        load_model_state(model, read_checkpoint(folder), folder)
    else:
        raise MegaliteError(f"{folder} was saved with tensor-parallel size {tp} and pipeline-parallel size {pp}: "
                            f"generate in one process or on {tp * pp} (torchrun --nproc-per-node {tp * pp}), "
                            f"not {world}")
    return model.to(device or torch.device("cpu")).eval(), cfg


def checkpoint_tokenizer(cfg, a: Optional[argparse.Namespace] = None) -> Tokenizer:
    """The tokenizer the checkpoint was trained with, unless flags name another."""
    d = cfg.data

    def pick(name):
        return getattr(a, name, None) or getattr(d, name)

    if pick("tokenizer_type") is None:
        raise MegaliteError("the checkpoint names no tokenizer; pass --tokenizer-type / --tokenizer-model")
    return build_tokenizer(pick("tokenizer_type"), pick("tokenizer_model"), pick("vocab_file"), pick("merge_file"))


def default_device() -> Optional[torch.device]:
    """The GPU in one process when there is one (under torchrun the rank's own, chosen on load)."""
    return torch.device("cuda") if torch.cuda.is_available() else None
