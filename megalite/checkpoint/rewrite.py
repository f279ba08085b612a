"""Writing a checkpoint again for another tensor / pipeline layout, offline, one target rank
at a time (``tools/convert_checkpoint.py --reshard``)."""

import os
from typing import Callable, Optional

import torch

from megalite.checkpoint.layout import rank_file
from megalite.checkpoint.reshard import SavedCheckpoint
from megalite.checkpoint.save import PendingSave, saved_layers, split_metadata
from megalite.config import Config, validate
from megalite.errors import MegaliteError
from megalite.model.gpt import build_stage_model
from megalite.parallel import state
from megalite.utils.progress import Progress


def reshard_offline(load: str, save: str, tp: int, pp: int, virtual_layers: Optional[int] = None,
                    checkpointed_model: Optional[Callable] = None) -> str:
    """Write the checkpoint ``load`` names as one for tensor-parallel size ``tp`` and pipeline
    size ``pp`` (with ``virtual_layers`` layers per virtual stage), weights and optimizer state,
    one target rank at a time (nothing runs in parallel; the model is laid out on the meta
    device, so memory stays near one gathered tensor plus one rank's state). ``checkpointed_model(cfg)``:
    what a checkpoint of the run ``cfg`` holds of a pipeline stage's model, built by the run's stage
    (its head, its transforms: a LoRA run's adapters); without it, a language model."""
    saved = SavedCheckpoint(load)
    cfg = Config.from_dict(saved.first["args"])
    p = cfg.parallel
    p.tensor_model_parallel_size, p.pipeline_model_parallel_size = tp, pp
    p.num_layers_per_virtual_pipeline_stage = virtual_layers
    p.decoder_first_pipeline_num_layers = p.decoder_last_pipeline_num_layers = None
    p.sequence_parallel = p.sequence_parallel and tp > 1
    p.context_parallel_size = 1  # weights do not depend on it: the run that loads the files picks its own
    validate(cfg, world_size=tp * pp)
    if cfg.model.padded_vocab_size % tp:
        raise MegaliteError(f"the padded vocabulary ({cfg.model.padded_vocab_size}) does not divide by "
                            f"--target-tensor-parallel-size {tp}")
    iteration = saved.first["iteration"]
    pending = PendingSave(save, iteration, os.path.join(save, f".tmp_iter_{iteration:07d}"), None)
    progress = Progress("reshard")
    for pp_rank in range(pp):
        for tp_rank in range(tp):
            with state.planning(tp, pp, tp_rank, pp_rank), torch.device("meta"):
                model = checkpointed_model(cfg) if checkpointed_model else build_stage_model(cfg, None)
                weights, pieces = saved.cut_for(model, load)
                payload = {**saved.first, "args": cfg.to_dict(), "model": weights,
                           "optimizer": {"scaler": saved.first["optimizer"]["scaler"], "pieces": pieces},
                           "parallel": {"tp_size": tp, "pp_size": pp, "dp_size": 1},
                           "tensor_parallel": split_metadata(model), "layers": saved_layers(weights)}
                pending.write({rank_file(pending.tmp): payload})
            progress.update(ranks=1)
    progress.close()
    return pending.finish()
