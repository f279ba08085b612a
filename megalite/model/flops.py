"""Model FLOPs of a training step, counted from the architecture (matmuls only).

Forward, per sequence of s tokens and per layer: QKV 2*s*h*(n_q + 2*n_kv)*d, attention
scores and weighted values 2 * 2*d*n_q per query-key pair (causal: token i attends to i+1
keys, s(s+1)/2 pairs; with a sliding window of W keys before each query, min(i, W)+1 keys),
output projection 2*s*n_q*d*h, MLP 2*s*h*f*(3 with SwiGLU, else 2); then the output layer
2*s*h*V. Backward costs twice the forward. Recomputation is not counted (model FLOPs).
"""

from megalite.config import ModelConfig, windowed_layers

# Dense bf16/fp16 tensor-core peaks, TFLOP/s, for MFU.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "V100": 125.0,
}


def forward_flops_per_sequence(cfg: ModelConfig, seq_length: int) -> int:
    s, h, d = seq_length, cfg.hidden_size, cfg.kv_channels
    nq, nkv, f = cfg.num_attention_heads, cfg.num_query_groups, cfg.ffn_hidden_size
    qkv = 2 * s * h * (nq + 2 * nkv) * d
    proj = 2 * s * nq * d * h
    mlp = 2 * s * h * f * (3 if cfg.swiglu else 2)
    pairs = 0  # query-key pairs over all layers
    for windowed in windowed_layers(cfg):
        w = min(cfg.window_size[0], s - 1) if windowed else s - 1  # keys before the last query
        pairs += (w + 1) * (w + 2) // 2 + (s - w - 1) * (w + 1)  # the ramp up to w + 1 keys, then w + 1 each
    return cfg.num_layers * (qkv + proj + mlp) + 2 * (2 * d * nq) * pairs + 2 * s * h * cfg.padded_vocab_size


def train_flops(cfg: ModelConfig, seq_length: int, num_sequences: int) -> int:
    return 3 * forward_flops_per_sequence(cfg, seq_length) * num_sequences


def peak_tflops(device_name: str):
    """Peak TFLOP/s of a known GPU by name, else None."""
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.replace(" ", "").lower() in device_name.replace(" ", "").lower():
            return PEAK_TFLOPS[key]
    return None
