"""Loading a checkpoint (or a Hugging Face folder) for inference: its model, the tokenizer it was
trained with, the device.

A checkpoint saved with tensor / pipeline parallelism loads either in one process (its shards
gathered) or across T x P ranks under torchrun, each rank holding its shard and stage; or,
asked for tensor-parallel size N (a server), across N ranks whatever layout it was saved in
(its tensors gathered and cut again for each rank).
"""

import argparse
import os
from typing import Optional, Tuple

import torch

from megalite.checkpoint.layout import find_checkpoint, read_checkpoint, saved_settings
from megalite.checkpoint.load import load_model_state
from megalite.checkpoint.reshard import SavedCheckpoint, load_full_state
from megalite.config import Config
from megalite.data.tokenizer import Tokenizer, build_tokenizer
from megalite.errors import MegaliteError
from megalite.hf.source import megalite_checkpoint
from megalite.model import GPTModel
from megalite.model.gpt import build_stage_model
from megalite.parallel import state
from megalite.parallel.bootstrap import setup_distributed
from megalite.posttrain.lora_io import load_lora_weights


def load_model(load: str, device: Optional[torch.device] = None,
               tensor_parallel: Optional[int] = None) -> Tuple[torch.nn.Module, Config]:
    """The model a checkpoint holds, for inference. In one process the whole model (tensor- and
    pipeline-parallel files gathered); under torchrun with T x P ranks (the checkpoint's own
    layout) this rank's shard of its pipeline stage; with ``tensor_parallel`` N under torchrun
    with N ranks, this rank's tensor-parallel shard of the whole model, from any saved layout.
    ``load`` may be a Hugging Face model folder (imported once: megalite.hf.source)."""
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
    elif tensor_parallel is not None:
        _check_tensor_parallel(cfg, folder, tensor_parallel, world)
        default = setup_distributed(p.distributed_backend)
        device = device or default
        saved = (tp, pp, p.num_layers_per_virtual_pipeline_stage)
        p.tensor_model_parallel_size, p.pipeline_model_parallel_size = tensor_parallel, 1
        p.num_layers_per_virtual_pipeline_stage = p.decoder_first_pipeline_num_layers = None
        p.decoder_last_pipeline_num_layers = None
        state.initialize(tensor_parallel, 1)
        model = build_stage_model(cfg, None)
        if saved == (tensor_parallel, 1, None):
            load_model_state(model, read_checkpoint(folder), folder)
        else:
            weights, _ = SavedCheckpoint(folder, with_optimizer=False).cut_for(model, folder)
            load_model_state(model, {"model": weights}, folder)
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


def _check_tensor_parallel(cfg: Config, folder: str, n: int, world: int) -> None:
    m = cfg.model
    if world != n:
        raise MegaliteError(f"--tensor-model-parallel-size {n} needs {n} ranks (torchrun --nproc-per-node {n}), "
                            f"not {world}")
    if cfg.lora.lora_rank:
        raise MegaliteError(f"{folder} holds LoRA adapters: serve it in one process, or export it merged with "
                            "tools/convert_checkpoint.py --to-hf and serve that folder")
    for what, count in (("attention heads", m.num_attention_heads), ("padded vocabulary", m.padded_vocab_size),
                        ("FFN width", m.ffn_hidden_size)):
        if count % n:
            raise MegaliteError(f"--tensor-model-parallel-size {n}: {folder} has {count} {what}, not divisible by {n}")
    groups = m.num_query_groups or m.num_attention_heads
    if groups % n and n % groups:
        raise MegaliteError(f"--tensor-model-parallel-size {n}: {folder} has {groups} key/value heads, which neither "
                            f"divide by {n} nor divide {n}")


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
