"""The stage a run was trained with, from its settings: for the entrypoints, and for tools that
rebuild the model a checkpoint holds (offline resharding)."""

from megalite.config import Config
from megalite.model.gpt import build_stage_model
from megalite.posttrain.dpo import DPOStage
from megalite.posttrain.kto import KTOStage
from megalite.posttrain.lora_io import LoRA
from megalite.posttrain.reward import RewardStage
from megalite.posttrain.sft import SFTStage
from megalite.training.stage import Stage

PREFERENCE_STAGES = {"dpo": DPOStage, "kto": KTOStage, "rm": RewardStage}


def stage_of(cfg: Config) -> Stage:
    """The stage of the run ``cfg`` describes, with the model transforms its settings may turn on."""
    transforms = [LoRA()]
    if cfg.dpo.pref_data:
        return PREFERENCE_STAGES[cfg.dpo.pref_method](transforms)
    if cfg.sft.sft_data:
        return SFTStage(transforms)
    return Stage(transforms)


def checkpointed_model(cfg: Config):
    """What a checkpoint of the run ``cfg`` holds of this pipeline stage's model (its head, its
    transforms applied): checkpoint.rewrite.reshard_offline's ``checkpointed_model``."""
    stage = stage_of(cfg)
    model = build_stage_model(cfg, None, stage.head)
    stage.transform(model, cfg)
    return stage.checkpointed(model, cfg)
