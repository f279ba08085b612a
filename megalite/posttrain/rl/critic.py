"""PPO's critic: a value model trained next to the policy, in the same parallel layout.

It is our model with a score head (megalite.model.heads.ScoreHead): the value of a position is
its score, read at the positions that predict completion tokens (the state before each token).
It starts from ``--critic-load`` (a reward model, as InstructGPT's value function does, or a
language model, whose output layer is then replaced by a fresh score head), has its own gradient
buffer and optimizer (the run's settings; ``--critic-lr`` or the policy's learning rate, on the
policy's schedule) and is checkpointed as a reward-model checkpoint in ``SAVE/critic`` at the
policy's iterations, so the same command resumes both and the critic exports like any reward model.
With --lora-rank the critic is a LoRA run too (the --lora-* settings; its score head trains in full),
its frozen base the weights it started from.
"""

import copy
import dataclasses
import os
from typing import Dict

from megalite.checkpoint.layout import iteration_dir
from megalite.checkpoint.load import load_checkpoint
from megalite.checkpoint.save import save_checkpoint
from megalite.errors import MegaliteError
from megalite.model.gpt import build_stage_model
from megalite.model.heads import ScoreHead
from megalite.parallel import state
from megalite.parallel.init import initialize
from megalite.parallel.pipeline import forward_backward
from megalite.posttrain.dpo import reference_pass
from megalite.posttrain.lora_io import LoRA, load_lora_run
from megalite.posttrain.reward import score_head_fit
from megalite.posttrain.rl import ppo
from megalite.training.trainer import gradients_and_optimizer

FOLDER = "critic"


class Critic:
    """See the module docstring. ``values(batch)`` fills ``mb["values"]``; ``train_step(batch, lr)``
    takes one optimizer step on the clipped value loss against ``mb["returns"]``."""

    def __init__(self, cfg, ctx):
        t, c = cfg.training, cfg.checkpoint
        self.cfg = copy.deepcopy(cfg)
        self.cfg.dpo.pref_method = "rm"  # its checkpoints are reward models' (tools/convert_checkpoint.py)
        self.cfg.lora.load_adapter = None  # the policy's adapters are not the critic's
        lora = LoRA() if cfg.lora.lora_rank > 0 else None
        self.shape, self.dtype = ctx.activation_shape, ctx.dtype
        self.clip = cfg.rl.cliprange_value
        self.lr_scale = (cfg.rl.critic_lr / t.lr) if cfg.rl.critic_lr is not None and t.lr else 1.0
        self.model = build_stage_model(self.cfg, t.recompute_granularity, ScoreHead)
        if lora is not None:
            lora.apply(self.model, self.cfg)
        self.saved = lora.checkpointed(self.model, self.cfg) if lora is not None else self.model
        self.load = load_lora_run if lora is not None else load_checkpoint
        initialize(self.model, t.seed)
        self.model.to(device=ctx.device, dtype=ctx.dtype)
        self.grads, self.optimizer = gradients_and_optimizer(self.cfg, self.model)
        # values(batch): each micro-batch's values [rows, seq] (zero outside the completion), on the last stage
        self.values = reference_pass(self.model, self.shape, self.dtype, key="values",
                                     score=lambda scores, mb: scores.float() * mb["loss_mask"])
        if c.load and not c.finetune:  # the run resumes: its critic of the same iteration
            folder = iteration_dir(os.path.join(c.load, FOLDER), ctx.iteration)
            if not os.path.isdir(folder):
                raise MegaliteError(f"{folder}: no critic of iteration {ctx.iteration} to resume (a PPO run saves "
                                    f"its critic in {FOLDER}/ next to the policy)")
            self._load(folder, finetune=False)
        else:
            self._load(cfg.rl.critic_load, finetune=True)

    def _load(self, load: str, finetune: bool) -> None:
        ckpt = dataclasses.replace(self.cfg.checkpoint, load=load, finetune=finetune, no_load_optim=finetune,
                                   no_load_rng=True)  # the sampling and dropout streams are the policy's
        self.load(dataclasses.replace(self.cfg, checkpoint=ckpt), self.model, self.optimizer, fit_for=score_head_fit)

    def train_step(self, batch, lr: float, tokens: float) -> Dict[str, float]:
        """One step on the global batch (``tokens`` completion tokens in all); this rank's shares of
        ``loss/value_avg`` and ``val/clipfrac_avg``."""
        sums = {"loss/value_avg": 0.0, "val/clipfrac_avg": 0.0}

        def loss_fn(scores, mb):
            loss, clipped = ppo.value_loss(scores.float(), mb["values"], mb["returns"], mb["loss_mask"], self.clip,
                                           tokens)
            sums["loss/value_avg"] += loss.item()
            sums["val/clipfrac_avg"] += clipped.item()
            return loss

        self.grads.zero()
        self.model.train()
        forward_backward(self.model, batch, loss_fn, self.shape, self.dtype, grad_buffer=self.grads,
                         loss_scale=self.optimizer.loss_scale)
        self.grads.finish_sync()
        self.optimizer.set_lr(lr * self.lr_scale, None)
        self.optimizer.step()
        if not state.get().is_last_stage:
            sums = {k: 0.0 for k in sums}
        return sums

    def save(self, root: str, iteration: int, consumed_samples: int, consumed_tokens: int) -> None:
        keep = self.cfg.checkpoint.keep_last
        save_checkpoint(os.path.join(root, FOLDER), iteration, self.saved, self.optimizer, self.cfg,
                        consumed_samples, consumed_tokens, keep + 1 if keep else keep)
