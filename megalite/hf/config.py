"""Model settings <-> Hugging Face config.json for the Llama family (Llama, Qwen2, Mistral)."""

from typing import Dict

from megalite.config import ModelConfig
from megalite.errors import MegaliteError

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


def hf_config(cfg: ModelConfig, dtype: str) -> Dict:
    """config.json for our model; Qwen2 when the QKV projection has a bias, else Llama."""
    unsupported = []
    if cfg.normalization != "RMSNorm":
        unsupported.append("--normalization LayerNorm")
    if cfg.position_embedding_type != "rope" or cfg.rotary_percent != 1.0:
        unsupported.append("positions other than full RoPE")
    if not cfg.swiglu:
        unsupported.append("a GELU MLP")
    if cfg.add_bias_linear:
        unsupported.append("biases in linear layers (use --disable-bias-linear)")
    if unsupported:
        raise MegaliteError("this model has no Llama/Qwen2 equivalent: " + ", ".join(unsupported))
    model_type = "qwen2" if cfg.add_qkv_bias else "llama"
    out = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.padded_vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_query_groups,
        "head_dim": cfg.kv_channels,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.norm_epsilon,
        "rope_theta": float(cfg.rotary_base),
        "hidden_act": "silu",
        "tie_word_embeddings": not cfg.untie_embeddings_and_output_weights,
        "attention_dropout": cfg.attention_dropout,
        "initializer_range": cfg.init_method_std,
        "torch_dtype": dtype,
        "use_cache": True,
    }
    if model_type == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    else:
        out.update(use_sliding_window=False)
    return out


def model_config(hf: Dict) -> ModelConfig:
    """Our model settings for a Llama / Qwen2 / Mistral config.json."""
    kind = hf.get("model_type")
    if kind not in ARCHITECTURES:
        raise MegaliteError(f"model_type {kind!r} is not supported; expected one of {', '.join(ARCHITECTURES)}")
    if hf.get("rope_scaling") or (hf.get("rope_parameters") or {}).get("rope_type", "default") != "default":
        raise MegaliteError("RoPE scaling is not supported yet")
    heads = hf["num_attention_heads"]
    groups = hf.get("num_key_value_heads") or heads
    rope = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return ModelConfig(
        num_layers=hf["num_hidden_layers"], hidden_size=hf["hidden_size"], num_attention_heads=heads,
        ffn_hidden_size=hf["intermediate_size"], kv_channels=hf.get("head_dim") or hf["hidden_size"] // heads,
        group_query_attention=groups != heads, num_query_groups=groups, normalization="RMSNorm",
        norm_epsilon=hf.get("rms_norm_eps", 1e-6), position_embedding_type="rope", rotary_base=rope,
        max_position_embeddings=hf.get("max_position_embeddings", 4096), swiglu=True, add_bias_linear=False,
        add_qkv_bias=kind == "qwen2" or bool(hf.get("attention_bias")),
        untie_embeddings_and_output_weights=not hf.get("tie_word_embeddings", False),
        hidden_dropout=0.0, attention_dropout=hf.get("attention_dropout", 0.0),
        init_method_std=hf.get("initializer_range", 0.02), padded_vocab_size=hf["vocab_size"],
        make_vocab_size_divisible_by=1,
    )
