"""AdamW over fp32 master weights, with loss scaling, inf checks and global-norm clipping.

In fp32 the master weights are the model's parameters. With --bf16/--fp16 the model holds
low-precision copies and this optimizer owns fp32 masters whose gradients are the fp32
``main_grad`` buffers (see megalite.parallel.data_parallel); after each step the masters
are copied back into the model. Weight decay skips norms and biases (1-D parameters).
"""

import math
from typing import Dict, List

import torch

from megalite.parallel.grads import counted_grads, global_grad_norm


class DynamicLossScaler:
    """fp16 loss scale: halve after ``hysteresis`` overflowing steps, double after ``window`` good ones."""

    def __init__(self, initial: float = 2.0**32, minimum: float = 1.0, window: int = 1000, hysteresis: int = 2):
        self.scale, self.minimum, self.window, self.hysteresis = initial, minimum, window, hysteresis
        self._good_steps, self._hysteresis_left = 0, hysteresis

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self._good_steps = 0
            self._hysteresis_left -= 1
            if self._hysteresis_left <= 0:
                self.scale = max(self.scale / 2.0, self.minimum)
                self._hysteresis_left = self.hysteresis
        else:
            self._good_steps += 1
            if self._good_steps % self.window == 0:
                self.scale *= 2.0
                self._hysteresis_left = self.hysteresis

    def state_dict(self) -> Dict:
        return {"scale": self.scale, "good_steps": self._good_steps, "hysteresis_left": self._hysteresis_left}

    def load_state_dict(self, sd: Dict) -> None:
        self.scale, self._good_steps, self._hysteresis_left = sd["scale"], sd["good_steps"], sd["hysteresis_left"]


class ConstantLossScaler:
    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def update(self, found_inf: bool) -> None:
        pass

    def state_dict(self) -> Dict:
        return {"scale": self.scale}

    def load_state_dict(self, sd: Dict) -> None:
        self.scale = sd["scale"]


def _make_adamw(groups, lr, betas, eps):
    for impl in ("fused", "foreach"):
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **{impl: True})
        except (RuntimeError, TypeError, ValueError):
            continue
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


class Optimizer:
    def __init__(self, named_params, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 clip_grad: float = 0.0, scaler=None, model_parallel_group=None):
        self.names = [n for n, p in named_params if p.requires_grad]
        self.model_params: List[torch.nn.Parameter] = [p for _, p in named_params if p.requires_grad]
        self.mixed = any(p.dtype != torch.float32 for p in self.model_params)
        self.norm_grads = counted_grads(self.model_params)
        if self.mixed:
            self.masters = [p.detach().float().clone().requires_grad_(True) for p in self.model_params]
        else:
            self.masters = self.model_params
        for m, p in zip(self.masters, self.model_params):
            m.main_grad = p.main_grad
        decay = [m for m, p in zip(self.masters, self.model_params) if p.ndim >= 2]
        no_decay = [m for m, p in zip(self.masters, self.model_params) if p.ndim < 2]
        groups = [g for g in ({"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        self.adam = _make_adamw(groups, lr=0.0, betas=betas, eps=eps)
        self.clip_grad, self.scaler, self.mp_group = clip_grad, scaler or ConstantLossScaler(1.0), model_parallel_group

    @property
    def loss_scale(self) -> float:
        return self.scaler.scale

    def set_lr(self, lr: float) -> None:
        for g in self.adam.param_groups:
            g["lr"] = lr

    @torch.no_grad()
    def step(self):
        """Unscale, check for inf/nan, clip and update. Returns (stepped, grad_norm)."""
        grads = [m.main_grad for m in self.masters]
        if self.scaler.scale != 1.0:
            torch._foreach_mul_(grads, 1.0 / self.scaler.scale)
        norm = global_grad_norm(self.norm_grads, self.mp_group)
        found_inf = not math.isfinite(norm)
        self.scaler.update(found_inf)
        if found_inf:
            return False, norm
        if self.clip_grad > 0 and norm > self.clip_grad:
            torch._foreach_mul_(grads, self.clip_grad / (norm + 1e-6))
        for m in self.masters:
            m.grad = m.main_grad
        self.adam.step()
        for m in self.masters:
            m.grad = None if self.mixed else m.main_grad
        if self.mixed:
            torch._foreach_copy_(self.model_params, self.masters)
        return True, norm

    def state_dict(self) -> Dict:
        sd = {"adam": self.adam.state_dict(), "scaler": self.scaler.state_dict()}
        if self.mixed:
            sd["masters"] = {n: m for n, m in zip(self.names, self.masters)}
        return sd

    @torch.no_grad()
    def load_state_dict(self, sd: Dict) -> None:
        self.adam.load_state_dict(sd["adam"])
        self.scaler.load_state_dict(sd["scaler"])
        if self.mixed:
            for n, m in zip(self.names, self.masters):
                m.copy_(sd["masters"][n])
