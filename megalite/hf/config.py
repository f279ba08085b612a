"""Model settings <-> Hugging Face config.json: Llama, Qwen2, Qwen3, Mistral, and GPT-2."""

from typing import Dict

from megalite.config import ModelConfig, windowed_layers
from megalite.errors import MegaliteError
from megalite.hf.keys import check_keys

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "mistral": "MistralForCausalLM", "gpt2": "GPT2LMHeadModel"}


def is_gpt2_style(cfg: ModelConfig) -> bool:
    return cfg.normalization == "LayerNorm" and cfg.position_embedding_type == "learned_absolute"


def hf_config(cfg: ModelConfig, dtype: str) -> Dict:
    """config.json for our model: GPT-2 for LayerNorm + learned positions, else Qwen3 with
    per-head query/key norms, Qwen2 when the QKV projection alone has a bias, else Llama."""
    if is_gpt2_style(cfg):
        return _gpt2_config(cfg, dtype)
    unsupported = []
    if cfg.normalization != "RMSNorm":
        unsupported.append("--normalization LayerNorm")
    if cfg.position_embedding_type != "rope" or cfg.rotary_percent != 1.0:
        unsupported.append("positions other than full RoPE")
    if not cfg.swiglu:
        unsupported.append("a GELU MLP")
    if cfg.add_bias_linear:
        unsupported.append("biases in linear layers (use --disable-bias-linear)")
    if cfg.qk_layernorm and cfg.add_qkv_bias:
        unsupported.append("query/key norms with a QKV bias (Qwen3's bias is on the output projection too)")
    windows = windowed_layers(cfg)
    model_type = ("qwen3" if cfg.qk_layernorm else "qwen2" if cfg.add_qkv_bias else "mistral" if any(windows)
                  else "llama")
    if model_type == "mistral" and not all(windows):
        unsupported.append("sliding windows on some layers only, without a QKV bias or query/key norms (Mistral "
                           "windows every layer)")
    if unsupported:
        raise MegaliteError("this model has no Llama/Qwen2 equivalent: " + ", ".join(unsupported))
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
    if cfg.use_rope_scaling:
        out["rope_scaling"] = rope_scaling_dict(cfg)
    if model_type in ("llama", "qwen3"):
        out.update(attention_bias=False)
    if model_type == "llama":
        out.update(mlp_bias=False)
    elif model_type == "mistral":
        out.update(sliding_window=cfg.window_size[0] + 1)
    elif any(windows):  # Qwen2/3: both the old key (windowed from layer max_window_layers on) and layer_types
        out.update(use_sliding_window=True, sliding_window=cfg.window_size[0] + 1,
                   max_window_layers=windows.index(True), layer_types=[LAYER_TYPES[w] for w in windows])
    else:
        out.update(use_sliding_window=False)
    return out


LAYER_TYPES = {False: "full_attention", True: "sliding_attention"}


def _window_settings(hf: Dict, kind: str) -> Dict:
    """--window-size / --window-attn-skip-freq for Mistral's sliding window (every layer) or
    Qwen2/3's (with use_sliding_window: per layer_types, else from layer max_window_layers on)."""
    n, window = hf["num_hidden_layers"], hf.get("sliding_window")
    if kind == "mistral":
        if "layer_types" in hf:
            raise MegaliteError("config.json: layer_types is not supported on a Mistral model (transformers' "
                                "Mistral windows every layer)")
        windowed = [True] * n
    else:
        if not hf.get("use_sliding_window", False):
            window = None
        types = hf.get("layer_types") or [LAYER_TYPES[window is not None and i >= hf.get("max_window_layers", 28)]
                                          for i in range(n)]
        unknown = sorted(set(types) - set(LAYER_TYPES.values()))
        if unknown or len(types) != n:
            raise MegaliteError(f"config.json: layer_types must name {n} layers, each full_attention or "
                                f"sliding_attention (got {unknown[0] if unknown else len(types)!r})")
        windowed = [t == "sliding_attention" for t in types]
    if window is None or not any(windowed):
        return {}
    out = {"window_size": [window - 1, 0]}
    if not all(windowed):
        out["window_attn_skip_freq"] = "[" + ",".join("1" if w else "0" for w in windowed) + "]"
    return out


# transformers' rope_scaling keys of each type, beside rope_type (their ModelConfig fields).
ROPE_KEYS = {
    "linear": {"factor": "rope_scaling_factor"},
    "dynamic": {"factor": "rope_scaling_factor"},
    "llama3": {"factor": "rope_scaling_factor", "original_max_position_embeddings": "original_max_position_embeddings",
               "low_freq_factor": "low_freq_factor", "high_freq_factor": "high_freq_factor"},
    "yarn": {"factor": "rope_scaling_factor", "original_max_position_embeddings": "original_max_position_embeddings",
             "beta_fast": "beta_fast", "beta_slow": "beta_slow", "mscale": "mscale", "mscale_all_dim": "mscale_all_dim",
             "attention_factor": "attention_factor"},
    "longrope": {"factor": "rope_scaling_factor",
                 "original_max_position_embeddings": "original_max_position_embeddings", "short_factor": "short_factor",
                 "long_factor": "long_factor", "attention_factor": "attention_factor"},
}


def rope_scaling_dict(cfg: ModelConfig) -> Dict:
    """config.json's ``rope_scaling`` (read by transformers 4.x and 5.x alike) for our settings."""
    out = {"rope_type": cfg.rope_type}
    for key, name in ROPE_KEYS[cfg.rope_type].items():
        if getattr(cfg, name) is not None:
            out[key] = getattr(cfg, name)
    return out


def _rope_settings(hf: Dict) -> Dict:
    """ModelConfig settings for the RoPE of a config.json (``rope_theta`` + ``rope_scaling``, or
    transformers 5's ``rope_parameters``); a type or key we do not model is an error."""
    params = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    theta = params.pop("rope_theta", None) or hf.get("rope_theta") or 10000.0
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if params.get("partial_rotary_factor", 1.0) == 1.0:
        params.pop("partial_rotary_factor", None)
    out = {"rotary_base": theta}
    if kind == "default":
        keys = {}
    elif kind in ROPE_KEYS:
        keys = ROPE_KEYS[kind]
        out.update(use_rope_scaling=True, rope_type=kind)
    else:
        raise MegaliteError(f"config.json: rope_type {kind!r} is not supported; megalite models "
                            f"{', '.join(['default', *ROPE_KEYS])}")
    if kind == "yarn" and params.pop("truncate", True) is not True:
        raise MegaliteError("config.json: yarn with truncate: false is not supported")
    unknown = sorted(set(params) - set(keys))
    if unknown:
        raise MegaliteError(f"config.json: rope_scaling key {unknown[0]!r} is not supported with rope_type {kind!r}")
    for key, name in keys.items():
        if params.get(key) is not None:
            out[name] = params[key]
    if kind in ("llama3", "yarn", "longrope"):  # transformers: a top-level value wins, else max_position_embeddings
        out["original_max_position_embeddings"] = hf.get("original_max_position_embeddings") or params.get(
            "original_max_position_embeddings") or hf["max_position_embeddings"]
    if kind in ("yarn", "longrope") and params.get("factor") is None:
        out["rope_scaling_factor"] = hf["max_position_embeddings"] / out["original_max_position_embeddings"]
    return out


def reward_model_config(config: Dict, pad_token_id: int) -> Dict:
    """A causal LM's config.json made the ``...ForSequenceClassification`` of a reward model: one
    label (the score), and the pad token HF reads each row's score before (its last non-pad token)."""
    arch = config["architectures"][0].replace("LMHeadModel", "ForCausalLM").replace("ForCausalLM",
                                                                                 "ForSequenceClassification")
    return {**config, "architectures": [arch], "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
            "pad_token_id": pad_token_id}


def _gpt2_config(cfg: ModelConfig, dtype: str) -> Dict:
    unsupported = []
    if cfg.swiglu:
        unsupported.append("a SwiGLU MLP")
    if not cfg.add_bias_linear:
        unsupported.append("linear layers without biases")
    if cfg.untie_embeddings_and_output_weights:
        unsupported.append("untied embeddings")
    if cfg.num_query_groups != cfg.num_attention_heads or cfg.kv_channels * cfg.num_attention_heads != cfg.hidden_size:
        unsupported.append("grouped-query attention or a head size other than hidden / heads")
    if unsupported:
        raise MegaliteError("this model has no GPT-2 equivalent: " + ", ".join(unsupported))
    return {
        "architectures": [ARCHITECTURES["gpt2"]], "model_type": "gpt2", "vocab_size": cfg.padded_vocab_size,
        "n_positions": cfg.max_position_embeddings, "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers,
        "n_head": cfg.num_attention_heads, "n_inner": cfg.ffn_hidden_size, "activation_function": "gelu",
        "layer_norm_epsilon": cfg.norm_epsilon, "resid_pdrop": cfg.hidden_dropout, "embd_pdrop": cfg.hidden_dropout,
        "attn_pdrop": cfg.attention_dropout, "initializer_range": cfg.init_method_std, "tie_word_embeddings": True,
        "scale_attn_weights": True, "torch_dtype": dtype, "use_cache": True,
    }


def _gpt2_model_config(hf: Dict) -> ModelConfig:
    if not hf.get("tie_word_embeddings", True):
        raise MegaliteError("config.json: tie_word_embeddings: false is not supported for GPT-2")
    if hf.get("activation_function", "gelu_new") != "gelu":
        raise MegaliteError(f"GPT-2 activation {hf.get('activation_function', 'gelu_new')!r} is not supported "
                            "(megalite's GELU is the exact 'gelu')")
    h, heads = hf["n_embd"], hf["n_head"]
    return ModelConfig(
        num_layers=hf["n_layer"], hidden_size=h, num_attention_heads=heads, ffn_hidden_size=hf.get("n_inner") or 4 * h,
        kv_channels=h // heads, num_query_groups=heads, normalization="LayerNorm",
        norm_epsilon=hf.get("layer_norm_epsilon", 1e-5), position_embedding_type="learned_absolute",
        max_position_embeddings=hf["n_positions"], swiglu=False, add_bias_linear=True,
        untie_embeddings_and_output_weights=False, hidden_dropout=0.0, attention_dropout=0.0,
        init_method_std=hf.get("initializer_range", 0.02), padded_vocab_size=hf["vocab_size"],
        make_vocab_size_divisible_by=1,
    )


def model_config(hf: Dict) -> ModelConfig:
    """Our model settings for a Llama / Qwen2 / Mistral / GPT-2 config.json."""
    kind = hf.get("model_type")
    if kind not in ARCHITECTURES:
        raise MegaliteError(f"model_type {kind!r} is not supported; expected one of {', '.join(ARCHITECTURES)}")
    check_keys(hf, kind)
    if kind == "gpt2":
        return _gpt2_model_config(hf)
    for key, value, supported in (("hidden_act", hf.get("hidden_act", "silu"), "silu"),
                                  ("mlp_bias", bool(hf.get("mlp_bias")), False),
                                  ("attention_bias", bool(hf.get("attention_bias")) and kind != "qwen2", False)):
        if value != supported:
            raise MegaliteError(f"config.json: {key}: {hf[key]!r} is not supported (megalite models {supported!r}"
                                + ("; biases on q/k/v and o_proj alike have no megalite equivalent)"
                                   if key == "attention_bias" else ")"))
    heads = hf["num_attention_heads"]
    groups = hf.get("num_key_value_heads") or heads
    windows = _window_settings(hf, kind) if kind in ("mistral", "qwen2", "qwen3") else {}
    return ModelConfig(**_rope_settings(hf), **windows,
        num_layers=hf["num_hidden_layers"], hidden_size=hf["hidden_size"], num_attention_heads=heads,
        ffn_hidden_size=hf["intermediate_size"], kv_channels=hf.get("head_dim") or hf["hidden_size"] // heads,
        group_query_attention=groups != heads, num_query_groups=groups, normalization="RMSNorm",
        norm_epsilon=hf.get("rms_norm_eps", 1e-6), position_embedding_type="rope",
        max_position_embeddings=hf.get("max_position_embeddings", 4096), swiglu=True, add_bias_linear=False,
        add_qkv_bias=kind == "qwen2", qk_layernorm=kind == "qwen3",
        untie_embeddings_and_output_weights=not hf.get("tie_word_embeddings", False),
        hidden_dropout=0.0, attention_dropout=hf.get("attention_dropout", 0.0),
        init_method_std=hf.get("initializer_range", 0.02), padded_vocab_size=hf["vocab_size"],
        make_vocab_size_divisible_by=1,
    )
