"""What a run trains, as one object the trainer is given: ``pretrain(cfg, stage)``.

The trainer owns what every run shares (the model's parallel layout, gradient buffers, the
optimizer, schedules, checkpoints, logging); a ``Stage`` says what differs between pretraining,
SFT, DPO, KTO, reward models and later stages:

- ``prepare(cfg)``: settle the settings before they are validated (where the starting weights
  come from, the tokenizer, settings inherited from a checkpoint);
- ``head``: the model head the last pipeline stage computes (megalite.model.heads);
- ``rows_per_sample``: the rows of a micro-batch one sample becomes (a preference pair: two);
- ``transforms``: model transforms chosen by config (``ModelTransform``: LoRA adapters, in
  megalite/posttrain), given to the stage by its entrypoint and applied before initialisation;
  an active one decides what checkpoints hold and how they load;
- ``weights_fit(model)``: what loaded weights go through first (a reward model started from a
  language model's weights);
- ``datasets(cfg, tokenizer, train_samples)`` and ``collate(cfg)``: the data and its batching;
- ``objective(cfg, context)``: the loss of the train step (training.objectives), given a narrow
  ``StepContext`` rather than the trainer.

``Stage`` itself is pretraining: next-token loss on a token stream. Post-training stages live in
megalite/posttrain and override what differs; docs/architecture.md shows how to add one.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence, Tuple

import torch

from megalite.checkpoint.load import load_checkpoint
from megalite.config import Config
from megalite.data.tokenizer import Tokenizer
from megalite.model.heads import LMHead
from megalite.training.data import gpt_datasets
from megalite.training.objectives import TokenMean


@dataclass
class StepContext:
    """What an objective may read about the run it is built for."""

    model: torch.nn.Module  # this rank's stage of the policy being trained
    activation_shape: Tuple[int, int, int]  # what pipeline stages pass on: [seq, rows, hidden]
    dtype: torch.dtype
    device: torch.device
    train_ds: object  # the training and held-out datasets the stage built (or None)
    valid_ds: object
    collate: Optional[Callable]  # the stage's collate function (None: torch's default)
    iteration: int = 0  # the iteration the run starts from (a resumed run's)
    lr: Optional[Callable[[], float]] = None  # the learning rate of the step being taken


class ModelTransform(Protocol):
    """A change to the model chosen by config (LoRA: megalite.posttrain.lora_io.LoRA)."""

    def prepare(self, cfg: Config) -> None:
        """Settle its settings (those of a run being resumed, say) before validation."""

    def active(self, cfg: Config) -> bool: ...

    def apply(self, model: torch.nn.Module, cfg: Config) -> None:
        """Change the freshly built model in place, before its weights are initialised."""

    def checkpointed(self, model: torch.nn.Module, cfg: Config):
        """What a checkpoint of the transformed model holds (a module-like object with
        ``named_parameters``, ``state_dict`` and ``load_state_dict``)."""

    def load(self, cfg: Config, model, optimizer, fit_for: Optional[Callable] = None) -> Tuple[int, int, int]:
        """Restore what --load names into the transformed model."""


class Stage:
    """Pretraining, and the base of every post-training stage; see the module docstring."""

    name = "pretrain"
    head = LMHead
    counts_loss_tokens = False  # tokens/s counts every token (post-training: only those with a loss)
    per_token_loss = True  # context parallelism may split sequences (not for losses over whole sequences)

    def __init__(self, transforms: Sequence[ModelTransform] = ()):
        self.transforms = list(transforms)

    def prepare(self, cfg: Config) -> None:
        """Settle ``cfg`` in place before validation."""
        for t in self.transforms:
            t.prepare(cfg)

    def rows_per_sample(self, cfg: Config) -> int:
        return 1

    def active_transforms(self, cfg: Config) -> list:
        return [t for t in self.transforms if t.active(cfg)]

    def transform(self, model: torch.nn.Module, cfg: Config) -> None:
        for t in self.active_transforms(cfg):
            t.apply(model, cfg)

    def checkpointed(self, model: torch.nn.Module, cfg: Config):
        """What a checkpoint of the run holds: the whole model unless a transform says otherwise."""
        for t in self.active_transforms(cfg):
            model = t.checkpointed(model, cfg)
        return model

    def load(self, cfg: Config, model, optimizer) -> Tuple[int, int, int]:
        """Restore what --load names; (iteration, consumed samples, consumed tokens)."""
        active = self.active_transforms(cfg)
        load = active[-1].load if active else load_checkpoint
        return load(cfg, model, optimizer, fit_for=self.weights_fit)

    def weights_fit(self, model) -> Optional[Callable]:
        """What loaded weights go through before they fill ``model`` (None: nothing)."""
        return None

    def datasets(self, cfg: Config, tokenizer: Optional[Tokenizer], train_samples: int) -> list:
        """[train, valid, test]."""
        return gpt_datasets(cfg, tokenizer, train_samples)

    def collate(self, cfg: Config) -> Optional[Callable]:
        return None

    def objective(self, cfg: Config, context: StepContext):
        return TokenMean()
