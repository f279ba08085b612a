"""AdamW over fp32 master weights, with loss scaling, inf checks and global-norm clipping.

The optimizer works on *pieces*: the flat element ranges of parameters that this rank
updates. Without sharding a piece is a whole parameter; with the distributed optimizer
(ZeRO-1) it is the part of a parameter inside the 1/DP slice of the buffers this rank owns
(see megalite.parallel.data_parallel), so master weights and Adam moments exist once across
the data-parallel group. In fp32 a piece's master is a view of the parameter itself; with
--bf16/--fp16 it is an fp32 copy, and after each step the masters are copied back into the
model (and, sharded, all-gathered). Gradients are the fp32 ``main_grad`` buffers. Weight
decay skips norms and biases (1-D parameters).

The state dict lists pieces by (parameter name, flat range), so a checkpoint written with
one data-parallel size or sharding loads into any other.
"""

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import torch

from megalite.errors import MegaliteError
from megalite.parallel.grads import counted_ranges, global_grad_norm


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


@dataclass
class _Piece:
    name: str
    lo: int
    hi: int
    param: torch.nn.Parameter
    model: torch.Tensor  # flat view of the parameter's elements [lo, hi)
    grad: torch.Tensor  # the same elements of main_grad
    master: torch.Tensor  # fp32: ``model`` itself; else an fp32 copy
    decay: bool


def is_decoupled(name: str) -> bool:
    """The input embedding (not the position embedding) and the output layer: what Megatron's
    --decoupled-lr applies to."""
    return name.split(".")[-2:] in (["embedding", "weight"], ["output_layer", "weight"])


class Optimizer:
    def __init__(self, named_params, grad_buffer, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 clip_grad: float = 0.0, scaler=None, model_parallel_group=None, decoupled: bool = False):
        """``decoupled``: the input embedding and output layer get their own param groups, whose
        lr ``set_lr`` sets apart (Megatron's --decoupled-lr)."""
        named = [(n, p) for n, p in named_params if p.requires_grad]
        self.buffer = grad_buffer
        self.device = named[0][1].device if named else None
        self.mixed = any(p.dtype != torch.float32 for _, p in named)
        self.pieces: List[_Piece] = []
        for name, p in named:
            owned = grad_buffer.owned_range(p)
            if owned is None:
                continue
            lo, hi = owned
            model = grad_buffer.param_view(p, lo, hi)
            master = model.detach().float().clone() if self.mixed else model
            self.pieces.append(_Piece(name, lo, hi, p, model, grad_buffer.grad_view(p, lo, hi), master, p.ndim >= 2))
        self.norm_grads = grad_buffer.owned_grads(counted_ranges([p for _, p in named]))
        self.norm_groups = [model_parallel_group] + ([grad_buffer.dp_group] if grad_buffer.distributed else [])
        kinds = [(own, d, wd) for own in ((False, True) if decoupled else (False,))
                 for d, wd in ((True, weight_decay), (False, 0.0))]
        groups = [{"params": [x.master for x in self.pieces
                              if x.decay == d and (decoupled and is_decoupled(x.name)) == own],
                   "weight_decay": wd, "decoupled": own} for own, d, wd in kinds]
        # a rank whose share holds only bucket padding still keeps a (no-op) param group for its lr
        groups = [g for g in groups if g["params"]] or [{"params": [torch.zeros(0)], "weight_decay": 0.0}]
        self.adam = _make_adamw(groups, lr=0.0, betas=betas, eps=eps)
        self.clip_grad, self.scaler = clip_grad, scaler or ConstantLossScaler(1.0)

    @property
    def loss_scale(self) -> float:
        return self.scaler.scale

    def set_lr(self, lr: float, decoupled_lr: Optional[float] = None) -> None:
        for g in self.adam.param_groups:
            g["lr"] = decoupled_lr if g.get("decoupled") and decoupled_lr is not None else lr

    @torch.no_grad()
    def step(self):
        """Unscale, check for inf/nan, clip and update. Returns (stepped, grad_norm)."""
        grads = [x.grad for x in self.pieces]
        if self.scaler.scale != 1.0 and grads:
            torch._foreach_mul_(grads, 1.0 / self.scaler.scale)
        norm = global_grad_norm(self.norm_grads, self.norm_groups, self.device)
        found_inf = not math.isfinite(norm)
        self.scaler.update(found_inf)
        if found_inf:
            return False, norm
        if self.clip_grad > 0 and norm > self.clip_grad and grads:
            torch._foreach_mul_(grads, self.clip_grad / (norm + 1e-6))
        for x in self.pieces:
            x.master.grad = x.grad
        self.adam.step()
        for x in self.pieces:
            x.master.grad = None
        if self.mixed and self.pieces:
            torch._foreach_copy_([x.model for x in self.pieces], [x.master for x in self.pieces])
        self.buffer.gather_params()
        return True, norm

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> Dict:
        """The loss scaler and every piece's Adam moments (and fp32 master when mixed)."""
        pieces = []
        for x in self.pieces:
            st = self.adam.state.get(x.master, {})
            entry = {"name": x.name, "range": [x.lo, x.hi], "shape": list(x.param.shape)}
            if st:
                entry.update(step=float(st["step"]), exp_avg=st["exp_avg"], exp_avg_sq=st["exp_avg_sq"])
            if self.mixed:
                entry["master"] = x.master
            pieces.append(entry)
        return {"scaler": self.scaler.state_dict(), "pieces": pieces}

    @torch.no_grad()
    def masters_from_model(self) -> None:
        """Make the fp32 masters the model's current weights (after loading weights into the
        model: otherwise the first step would write the masters' old values back)."""
        if self.mixed:
            for x in self.pieces:
                x.master.copy_(x.param.detach().view(-1)[x.lo : x.hi])

    @torch.no_grad()
    def load_state_dict(self, sd: Dict, more_pieces: Iterable[Dict] = ()) -> None:
        """Restore from saved pieces (this dict's and ``more_pieces``, e.g. other ranks'
        shards): each of this rank's pieces is assembled from the saved pieces covering it."""
        if "pieces" not in sd:
            raise MegaliteError("the checkpoint's optimizer state has an older format; load with --no-load-optim")
        self.scaler.load_state_dict(sd["scaler"])
        saved: Dict[str, List[Dict]] = {}
        for entry in list(sd["pieces"]) + list(more_pieces):
            saved.setdefault(entry["name"], []).append(entry)
        fused = bool(self.adam.defaults.get("fused"))
        for x in self.pieces:
            entries = saved.get(x.name, [])
            if self.mixed and all("master" in e for e in entries):
                x.master.copy_(_assemble(entries, "master", x))
            if entries and all("exp_avg" in e for e in entries):
                step = entries[0]["step"]
                self.adam.state[x.master] = {
                    "step": torch.tensor(step, dtype=torch.float32, device=x.master.device if fused else "cpu"),
                    "exp_avg": _assemble(entries, "exp_avg", x),
                    "exp_avg_sq": _assemble(entries, "exp_avg_sq", x),
                }


def _assemble(entries: List[Dict], key: str, piece: _Piece) -> torch.Tensor:
    """Elements [lo, hi) of one parameter's ``key`` state from saved pieces that cover them."""
    out = torch.empty(piece.hi - piece.lo, dtype=torch.float32, device=piece.master.device)
    covered = 0
    for e in entries:
        lo, hi = max(e["range"][0], piece.lo), min(e["range"][1], piece.hi)
        if lo < hi:
            out[lo - piece.lo : hi - piece.lo] = e[key][lo - e["range"][0] : hi - e["range"][0]]
            covered += hi - lo
    if covered != piece.hi - piece.lo:
        raise MegaliteError(f"the checkpoint's optimizer state covers {covered} of the {piece.hi - piece.lo} "
                            f"elements of {piece.name}[{piece.lo}:{piece.hi}] (missing shard files?)")
    return out
