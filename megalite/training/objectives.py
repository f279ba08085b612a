"""What the train step minimises: the ``loss_fn`` handed to ``forward_backward``, and what
it is normalised by. A stage builds its objective (training.stage); this is pretraining's.

An objective names the batch keys whose global sums it needs (``count_keys``); the trainer
all-reduces them over data-parallel ranks before the step and hands them to ``begin_step``,
so every micro-batch's loss is already its share of the global-batch mean and the step does
not depend on micro-batch or data-parallel sizes. ``prepare`` runs first and may rewrite the
micro-batches (the DPO reference pass adds to them; online RL generates the rows they hold);
``metrics`` are this rank's shares of extra per-step metrics, summed over ranks (or reduced with
the ``torch.distributed.ReduceOp`` an objective names in ``metric_ops``). An objective that trains
a model of its own (PPO's critic) has ``save(root, iteration, consumed samples, consumed tokens)``,
which the trainer calls before each checkpoint of the run.
"""

from typing import Dict

import torch


class TokenMean:
    """Language modelling (pretraining, SFT): the mean over the global batch's loss tokens."""

    count_keys = ("loss_mask",)

    def prepare(self, batch) -> None:
        pass

    def begin_step(self, counts: Dict[str, float]) -> None:
        self.tokens = counts["loss_mask"]

    def __call__(self, per_token_losses: torch.Tensor, mb: Dict[str, torch.Tensor]) -> torch.Tensor:
        return (per_token_losses * mb["loss_mask"]).sum() / self.tokens

    def metrics(self) -> Dict[str, float]:
        return {}
