"""Restoring a run from the checkpoint --load names: weights, optimizer state, random states
and position. A checkpoint of this run's parallel layout is read rank file by rank file;
one of another layout goes through megalite.checkpoint.reshard. Weights the caller's model
variant must adapt first (a reward model started from a language model's) pass through the
``fit`` the caller gives."""

import dataclasses
from typing import Callable, Dict, Optional

from megalite.checkpoint.layout import (
    find_checkpoint,
    load_file,
    optimizer_shards,
    rank_file,
    read_checkpoint,
    saved_settings,
)
from megalite.checkpoint.reshard import load_resharded
from megalite.checkpoint.rng import set_rng_state
from megalite.config import ARCHITECTURE_FIELDS, Config, ModelConfig
from megalite.errors import MegaliteError
from megalite.parallel import state

LAYOUT_FIELDS = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "num_layers_per_virtual_pipeline_stage",
                 "decoder_first_pipeline_num_layers", "decoder_last_pipeline_num_layers")


def check_architecture(saved_args: Dict, cfg: Config, where: str) -> None:
    saved = {**dataclasses.asdict(ModelConfig()), **saved_args.get("model", {})}  # a setting added later: its default
    diffs = [f"--{k.replace('_', '-')} {saved.get(k)!r} in the checkpoint vs {getattr(cfg.model, k)!r}"
             for k in ARCHITECTURE_FIELDS if saved.get(k) != getattr(cfg.model, k)]
    if diffs:
        raise MegaliteError(f"{where}: model does not match the checkpoint: " + "; ".join(diffs))


def load_model_state(model, sd: Dict, where: str, fit=None) -> None:
    """``fit``: what the weights go through first (a reward model started from a language model's)."""
    try:
        model.load_state_dict(fit(sd["model"]) if fit else sd["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise MegaliteError(f"{where}: weights do not fit this model ({first[0].strip()})") from None


def _same_layout(saved_args: Dict, cfg: Config) -> bool:
    """Whether this rank's model file holds exactly this rank's parameters (any DP size does)."""
    saved = saved_args.get("parallel", {})
    return all(saved.get(k) == getattr(cfg.parallel, k) for k in LAYOUT_FIELDS)


def _shard_pieces(folder: str):
    """The distributed-optimizer pieces saved beside this rank's model file (any DP size)."""
    for path in optimizer_shards(rank_file(folder)):
        yield from load_file(path)["pieces"]


def load_checkpoint(cfg: Config, model, optimizer, fit_for: Optional[Callable] = None):
    """Restore what --load names. Returns (iteration, consumed_samples, consumed_tokens).
    ``fit_for(model)``: the function the checkpoint's weights go through before they load into
    ``model`` (see load_model_state); given the model so that a caller loading parts of one
    model (LoRA's frozen base, then its adapters) gets each part's own."""
    c = cfg.checkpoint
    folder = find_checkpoint(c.load)
    if folder is None:
        if state.get().rank == 0:
            print(f"no checkpoint in {c.load}; starting from scratch", flush=True)
        return 0, 0, 0
    saved = saved_settings(folder)
    check_architecture(saved, cfg, folder)
    load_optim = not (c.finetune or c.no_load_optim)
    fit = fit_for(model) if fit_for else None
    if _same_layout(saved, cfg):
        sd = read_checkpoint(folder)
        load_model_state(model, sd, folder, fit)
        optimizer.masters_from_model()
        if load_optim:  # exact fp32 masters and moments
            optimizer.load_state_dict(sd["optimizer"], _shard_pieces(folder))
    else:  # saved with other tensor / pipeline sizes: gather and re-cut
        sd = load_resharded(folder, model, optimizer, load_optim, fit)
    if c.finetune:
        return 0, 0, 0
    if not c.no_load_rng:
        rngs = sd["rng"]
        s = state.get()
        set_rng_state(rngs[s.dp_rank] if s.dp_rank < len(rngs) else rngs[0])
    if state.get().rank == 0:
        print(f"loaded {folder} (iteration {sd['iteration']})", flush=True)
    return sd["iteration"], sd["consumed_samples"], sd["consumed_tokens"]
