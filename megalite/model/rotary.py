"""Rotary position embeddings (RoPE), rotate-half convention as in Llama / GPT-NeoX.

With rotary_percent < 1 only the first part of each head's dimensions is rotated. The
rotation itself is ``megalite.kernels.rotary_qk``.

RoPE scaling (``--rope-type``) changes the inverse frequencies as transformers'
``ROPE_INIT_FUNCTIONS`` do, operation for operation in float32, so an imported model
computes the same angles: ``linear`` divides every frequency by the factor, ``llama3``
(Llama 3.1+) divides the low frequencies and blends the middle band, ``yarn`` blends
interpolated and original frequencies by a ramp over dimensions and scales cos and sin by
its attention factor, ``dynamic`` (NTK) raises the base once a sequence outgrows
``max_position_embeddings`` (transformers keeps the longest length seen until a call falls back
inside the original context; one generation sees the same angles either way). ``longrope``
(Phi-3 style) divides each frequency by its entry of ``short_factor``, or of ``long_factor`` for
a sequence longer than the original context, and scales cos and sin by its attention factor.
For both the choice goes by the largest position a call sees of each sequence (a packed
document, a batch row), so keys already in a KV cache keep the angles they were written with
when a generation crosses the original context; transformers takes the largest position of the
whole batch, which is the same for one sequence, and we keep each sequence's choice its own
so a batched or packed sequence (a request served beside others) gets what it gets alone.
"""

import math
from typing import Tuple

import torch
from torch import nn

from megalite.config import ModelConfig


def _default_inv_freq(dim: int, base) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3(inv_freq: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    factor, low, high = cfg.rope_scaling_factor, cfg.low_freq_factor, cfg.high_freq_factor
    old_context = cfg.original_max_position_embeddings
    low_wavelen, high_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def yarn_attention_factor(cfg: ModelConfig) -> float:
    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if cfg.attention_factor is not None:
        return cfg.attention_factor
    if cfg.mscale and cfg.mscale_all_dim:
        return float(mscale(cfg.rope_scaling_factor, cfg.mscale) / mscale(cfg.rope_scaling_factor, cfg.mscale_all_dim))
    return mscale(cfg.rope_scaling_factor)


def _yarn(dim: int, cfg: ModelConfig) -> torch.Tensor:
    base, factor, original = cfg.rotary_base, cfg.rope_scaling_factor, cfg.original_max_position_embeddings

    def correction_dim(rotations):  # the dimension that turns ``rotations`` times over the original context
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(cfg.beta_fast)), 0)
    high = min(math.ceil(correction_dim(cfg.beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolated, interpolated = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # share of the original frequency
    return interpolated * (1 - keep) + extrapolated * keep


def longrope_attention_factor(cfg: ModelConfig) -> float:
    if cfg.attention_factor is not None:
        return cfg.attention_factor
    factor, original = cfg.rope_scaling_factor, cfg.original_max_position_embeddings
    return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))


def _longrope(dim: int, cfg: ModelConfig, factors) -> torch.Tensor:
    """The default frequencies, each divided by its factor (longrope's short or long set)."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (torch.tensor(factors, dtype=torch.float32) * cfg.rotary_base ** exponents)


def sequence_lengths(positions: torch.Tensor) -> torch.Tensor:
    """How long the sequence each token belongs to is, as far as this call sees it (its largest
    position + 1): a scalar for ``positions`` [seq], else [seq, batch] for each column's packed
    documents (each restart at 0 begins one)."""
    if positions.dim() == 1:
        return positions.max() + 1
    document = (positions == 0).cumsum(0)
    ends = torch.zeros(positions.shape[0] + 1, positions.shape[1], dtype=positions.dtype, device=positions.device)
    ends = ends.scatter_reduce(0, document, positions, "amax")
    return ends.gather(0, document) + 1


def _dynamic_inv_freq(dim: int, cfg: ModelConfig, seq_len: torch.Tensor) -> torch.Tensor:
    """NTK: the base grows with the sequence past max_position_embeddings (float32 tensors, as
    transformers); [..., dim / 2] for sequence lengths of any shape."""
    factor, longest = cfg.rope_scaling_factor, cfg.max_position_embeddings
    base = cfg.rotary_base * ((factor * seq_len / longest) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base[..., None] ** (torch.arange(0, dim, 2, dtype=torch.int64).to(seq_len.device).float() / dim))


def inverse_frequencies(dim: int, cfg: ModelConfig) -> Tuple[torch.Tensor, float]:
    """(inverse frequencies [dim / 2], factor on cos and sin) for the static RoPE types."""
    kind = cfg.rope_type if cfg.use_rope_scaling else None
    if kind == "yarn":
        return _yarn(dim, cfg), yarn_attention_factor(cfg)
    if kind == "longrope":
        return _longrope(dim, cfg, cfg.short_factor), longrope_attention_factor(cfg)
    inv_freq = _default_inv_freq(dim, cfg.rotary_base)
    if kind == "linear":
        inv_freq = inv_freq / cfg.rope_scaling_factor
    elif kind == "llama3":
        inv_freq = _llama3(inv_freq, cfg)
    return inv_freq, 1.0


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, cfg: ModelConfig):
        super().__init__()
        self.rot_dim = int(head_dim * cfg.rotary_percent)
        self.cfg = cfg
        self.dynamic = cfg.use_rope_scaling and cfg.rope_type == "dynamic"
        self.longrope = cfg.use_rope_scaling and cfg.rope_type == "longrope"
        if self.cfg.use_rope_scaling and cfg.rope_type in ("llama3", "yarn", "longrope"):
            assert cfg.original_max_position_embeddings, "validate_rope_scaling sets the original context"
        inv_freq, self.attention_factor = inverse_frequencies(self.rot_dim, cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        if self.longrope:
            self.register_buffer("long_inv_freq", _longrope(self.rot_dim, cfg, cfg.long_factor), persistent=False)

    def _inv_freq(self, positions: torch.Tensor) -> torch.Tensor:
        """[rot_dim / 2], or with longrope and dynamic [seq, batch, rot_dim / 2]: each token its
        sequence's frequencies."""
        if self.longrope:
            longer = sequence_lengths(positions) > self.cfg.original_max_position_embeddings
            return torch.where(longer[..., None], self.long_inv_freq, self.inv_freq)
        if self.dynamic:
            seq_len = sequence_lengths(positions)
            longer = seq_len > self.cfg.max_position_embeddings
            if bool(longer.any()):
                grown = _dynamic_inv_freq(self.rot_dim, self.cfg, seq_len.clamp(min=self.cfg.max_position_embeddings))
                return torch.where(longer[..., None], grown, self.inv_freq)
        return self.inv_freq

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos, sin for ``positions`` [seq] (shape [seq, 1, 1, rot_dim]) or [seq, batch]
        (shape [seq, batch, 1, rot_dim]), ready to broadcast over [seq, batch, heads, dim]."""
        freqs = positions.float()[..., None] * self._inv_freq(positions).float()
        emb = torch.cat((freqs, freqs), dim=-1)
        emb = emb[:, None, None, :] if positions.dim() == 1 else emb[:, :, None, :]
        cos, sin = emb.cos(), emb.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos.to(dtype), sin.to(dtype)
