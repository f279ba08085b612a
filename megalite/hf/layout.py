"""How our parameters map onto Hugging Face's Llama / Qwen2 / Qwen3 / Mistral names, both ways.

Every difference is an explicit function here:
- our fused QKV holds, for each key/value group, its query heads then its key and value
  head; HF keeps separate q_proj / k_proj / v_proj;
- SwiGLU: our ``gate`` / ``fc1`` / ``fc2`` are HF's gate_proj / up_proj / down_proj;
- RoPE: both use the rotate-half convention on each head, so no permutation is needed;
- tied embeddings: HF has no lm_head tensor, only ``tie_word_embeddings``;
- a reward model (``score.weight``) is a ``...ForSequenceClassification``: the same body and
  ``score.weight`` instead of an lm_head.
"""

from typing import Dict, Iterator, Tuple

import torch

from megalite.config import ModelConfig


def split_qkv(qkv: torch.Tensor, cfg: ModelConfig) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our grouped [g0: q.., k, v | g1: q.., k, v | ...] rows -> (q, k, v) rows."""
    ng, d = cfg.num_query_groups, cfg.kv_channels
    per_group = cfg.num_attention_heads // ng
    rows = qkv.reshape(ng, per_group + 2, d, *qkv.shape[1:])
    q = rows[:, :per_group].reshape(ng * per_group * d, *qkv.shape[1:])
    k = rows[:, per_group].reshape(ng * d, *qkv.shape[1:])
    v = rows[:, per_group + 1].reshape(ng * d, *qkv.shape[1:])
    return q, k, v


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Inverse of ``split_qkv``."""
    ng, d = cfg.num_query_groups, cfg.kv_channels
    per_group = cfg.num_attention_heads // ng
    tail = q.shape[1:]
    rows = torch.cat([q.reshape(ng, per_group, d, *tail), k.reshape(ng, 1, d, *tail), v.reshape(ng, 1, d, *tail)],
                     dim=1)
    return rows.reshape(-1, *tail)


def to_hf(sd: Dict[str, torch.Tensor], cfg: ModelConfig) -> Iterator[Tuple[str, torch.Tensor]]:
    """Our state dict -> (HF name, tensor) for LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM."""
    yield "model.embed_tokens.weight", sd["embedding.weight"]
    for i in range(cfg.num_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        yield hf + "input_layernorm.weight", sd[ours + "input_norm.weight"]
        for kind in ("weight", "bias"):
            if ours + f"attention.qkv.{kind}" in sd:
                q, k, v = split_qkv(sd[ours + f"attention.qkv.{kind}"], cfg)
                yield hf + f"self_attn.q_proj.{kind}", q
                yield hf + f"self_attn.k_proj.{kind}", k
                yield hf + f"self_attn.v_proj.{kind}", v
        for norm in ("q_norm", "k_norm"):  # Qwen3's per-head query/key norms
            if ours + f"attention.{norm}.weight" in sd:
                yield hf + f"self_attn.{norm}.weight", sd[ours + f"attention.{norm}.weight"]
        yield hf + "self_attn.o_proj.weight", sd[ours + "attention.proj.weight"]
        yield hf + "post_attention_layernorm.weight", sd[ours + "post_attention_norm.weight"]
        yield hf + "mlp.gate_proj.weight", sd[ours + "mlp.gate.weight"]
        yield hf + "mlp.up_proj.weight", sd[ours + "mlp.fc1.weight"]
        yield hf + "mlp.down_proj.weight", sd[ours + "mlp.fc2.weight"]
    yield "model.norm.weight", sd["final_norm.weight"]
    if "score.weight" in sd:
        yield "score.weight", sd["score.weight"]
    elif cfg.untie_embeddings_and_output_weights:
        yield "lm_head.weight", sd["output_layer.weight"]


def from_hf(get, cfg: ModelConfig) -> Iterator[Tuple[str, torch.Tensor]]:
    """HF tensors (``get(name)``, None when absent) -> (our name, tensor)."""
    yield "embedding.weight", get("model.embed_tokens.weight")
    for i in range(cfg.num_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        yield ours + "input_norm.weight", get(hf + "input_layernorm.weight")
        for kind in ("weight", "bias"):
            q = get(hf + f"self_attn.q_proj.{kind}")
            if q is not None:
                yield ours + f"attention.qkv.{kind}", fuse_qkv(q, get(hf + f"self_attn.k_proj.{kind}"),
                                                               get(hf + f"self_attn.v_proj.{kind}"), cfg)
        if cfg.qk_layernorm:
            yield ours + "attention.q_norm.weight", get(hf + "self_attn.q_norm.weight")
            yield ours + "attention.k_norm.weight", get(hf + "self_attn.k_norm.weight")
        yield ours + "attention.proj.weight", get(hf + "self_attn.o_proj.weight")
        yield ours + "post_attention_norm.weight", get(hf + "post_attention_layernorm.weight")
        yield ours + "mlp.gate.weight", get(hf + "mlp.gate_proj.weight")
        yield ours + "mlp.fc1.weight", get(hf + "mlp.up_proj.weight")
        yield ours + "mlp.fc2.weight", get(hf + "mlp.down_proj.weight")
    yield "final_norm.weight", get("model.norm.weight")
    if cfg.untie_embeddings_and_output_weights:
        yield "output_layer.weight", get("lm_head.weight")


# GPT-2 keeps q, k, v side by side in one Conv1D (weights stored [in, out], i.e. transposed)
# and always ties the output layer to the embedding; it needs plain multi-head attention.


def gpt2_to_hf(sd: Dict[str, torch.Tensor], cfg: ModelConfig) -> Iterator[Tuple[str, torch.Tensor]]:
    yield "transformer.wte.weight", sd["embedding.weight"]
    yield "transformer.wpe.weight", sd["position_embedding.weight"]
    for i in range(cfg.num_layers):
        ours, hf = f"layers.{i}.", f"transformer.h.{i}."
        yield hf + "ln_1.weight", sd[ours + "input_norm.weight"]
        yield hf + "ln_1.bias", sd[ours + "input_norm.bias"]
        q, k, v = split_qkv(sd[ours + "attention.qkv.weight"], cfg)
        yield hf + "attn.c_attn.weight", torch.cat([q, k, v]).t()
        q, k, v = split_qkv(sd[ours + "attention.qkv.bias"], cfg)
        yield hf + "attn.c_attn.bias", torch.cat([q, k, v])
        yield hf + "attn.c_proj.weight", sd[ours + "attention.proj.weight"].t()
        yield hf + "attn.c_proj.bias", sd[ours + "attention.proj.bias"]
        yield hf + "ln_2.weight", sd[ours + "post_attention_norm.weight"]
        yield hf + "ln_2.bias", sd[ours + "post_attention_norm.bias"]
        yield hf + "mlp.c_fc.weight", sd[ours + "mlp.fc1.weight"].t()
        yield hf + "mlp.c_fc.bias", sd[ours + "mlp.fc1.bias"]
        yield hf + "mlp.c_proj.weight", sd[ours + "mlp.fc2.weight"].t()
        yield hf + "mlp.c_proj.bias", sd[ours + "mlp.fc2.bias"]
    yield "transformer.ln_f.weight", sd["final_norm.weight"]
    yield "transformer.ln_f.bias", sd["final_norm.bias"]
    if "score.weight" in sd:
        yield "score.weight", sd["score.weight"]


def gpt2_from_hf(get, cfg: ModelConfig) -> Iterator[Tuple[str, torch.Tensor]]:
    yield "embedding.weight", get("transformer.wte.weight")
    yield "position_embedding.weight", get("transformer.wpe.weight")
    h = cfg.hidden_size
    for i in range(cfg.num_layers):
        ours, hf = f"layers.{i}.", f"transformer.h.{i}."
        yield ours + "input_norm.weight", get(hf + "ln_1.weight")
        yield ours + "input_norm.bias", get(hf + "ln_1.bias")
        w = get(hf + "attn.c_attn.weight").t()
        yield ours + "attention.qkv.weight", fuse_qkv(w[:h], w[h : 2 * h], w[2 * h :], cfg)
        b = get(hf + "attn.c_attn.bias")
        yield ours + "attention.qkv.bias", fuse_qkv(b[:h], b[h : 2 * h], b[2 * h :], cfg)
        yield ours + "attention.proj.weight", get(hf + "attn.c_proj.weight").t()
        yield ours + "attention.proj.bias", get(hf + "attn.c_proj.bias")
        yield ours + "post_attention_norm.weight", get(hf + "ln_2.weight")
        yield ours + "post_attention_norm.bias", get(hf + "ln_2.bias")
        yield ours + "mlp.fc1.weight", get(hf + "mlp.c_fc.weight").t()
        yield ours + "mlp.fc1.bias", get(hf + "mlp.c_fc.bias")
        yield ours + "mlp.fc2.weight", get(hf + "mlp.c_proj.weight").t()
        yield ours + "mlp.fc2.bias", get(hf + "mlp.c_proj.bias")
    yield "final_norm.weight", get("transformer.ln_f.weight")
    yield "final_norm.bias", get("transformer.ln_f.bias")
