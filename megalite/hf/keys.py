"""Every config.json key an import meets is either read into our model settings or listed
here as harmless; any other key is refused with one line, so a setting we do not model is
never silently dropped (a model that imports computes what transformers computes).

Harmless means: transformers' network computes the same function whatever the value
(bookkeeping, token ids, generation defaults, dropout rates that do not act at inference,
implementation switches), or the value is checked to be the one that changes nothing.
"""

from typing import Callable, Dict, Tuple

from megalite.errors import MegaliteError

# Read by every import or written by every transformers version, and changing nothing.
BOOKKEEPING = {
    "architectures", "model_type", "transformers_version", "_name_or_path", "_commit_hash", "torch_dtype", "dtype",
    "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "tokenizer_class", "prefix", "finetuning_task", "id2label", "label2id", "problem_type", "task_specific_params",
    "return_dict", "output_hidden_states", "output_attentions", "torchscript", "use_bfloat16", "tf_legacy_loss",
    "_attn_implementation_autoset", "chunk_size_feed_forward", "tie_encoder_decoder",
    # generation defaults (generation_config.json's business)
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
}

# Keys read into ModelConfig by megalite.hf.config for each model_type.
_LLAMA_FAMILY = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
    "rope_parameters", "original_max_position_embeddings", "tie_word_embeddings", "attention_dropout",
    "initializer_range", "hidden_act",
}
_QWEN_WINDOWS = {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"}
READ = {
    "llama": _LLAMA_FAMILY | {"attention_bias", "mlp_bias"},
    "mistral": _LLAMA_FAMILY | {"sliding_window"},
    "qwen2": _LLAMA_FAMILY | _QWEN_WINDOWS,
    "qwen3": _LLAMA_FAMILY | _QWEN_WINDOWS | {"attention_bias"},
    "gpt2": {"vocab_size", "n_embd", "n_head", "n_layer", "n_positions", "n_inner", "activation_function",
             "layer_norm_epsilon", "initializer_range", "tie_word_embeddings"},
}

# Harmless for one family: transformers' network ignores the key, or only its default is accepted.
_false = (lambda v: not v, "only false is supported")
HARMLESS: Dict[str, Dict[str, Tuple[Callable, str]]] = {
    "llama": {
        "pretraining_tp": (lambda v: True, ""),  # Llama 2's sliced matmuls: the same product
        "is_llama_config": (lambda v: True, ""),  # SmolLM's marker
        "rope_interleaved": _false,  # transformers always rotates halves
    },
    "mistral": {},
    "qwen2": {
        "attention_bias": (lambda v: True, ""),  # Qwen2's q/k/v always have biases; the key is not read
        "use_mrope": _false,
    },
    "qwen3": {},
    "gpt2": {
        "n_ctx": (lambda v: True, ""),  # the old name of n_positions' context
        "resid_pdrop": (lambda v: True, ""), "embd_pdrop": (lambda v: True, ""), "attn_pdrop": (lambda v: True, ""),
        "summary_type": (lambda v: True, ""), "summary_use_proj": (lambda v: True, ""),  # the double-heads model's
        "summary_activation": (lambda v: True, ""), "summary_proj_to_labels": (lambda v: True, ""),
        "summary_first_dropout": (lambda v: True, ""),
        "reorder_and_upcast_attn": (lambda v: True, ""),  # fp32 softmax order: the same result in fp32
        "scale_attn_weights": (lambda v: v, "only true (scores divided by sqrt(head dim)) is supported"),
        "scale_attn_by_inverse_layer_idx": _false,
    },
}
for _family in HARMLESS.values():
    _family.update(is_decoder=(lambda v: True, ""), is_encoder_decoder=_false, add_cross_attention=_false,
                   pruned_heads=(lambda v: not v, "pruned heads are not supported"))


def check_keys(hf: Dict, kind: str) -> None:
    """Refuse the first key of ``hf`` (a ``kind`` config.json) that is neither read nor harmless."""
    harmless = HARMLESS[kind]
    for key, value in hf.items():
        if key in BOOKKEEPING or key in READ[kind]:
            continue
        if key not in harmless:
            raise MegaliteError(f"config.json: key {key!r} ({value!r}) is not modelled by megalite's {kind} import "
                                "(docs/hf.md lists the keys it reads)")
        ok, why = harmless[key]
        if not ok(value):
            raise MegaliteError(f"config.json: {key}: {value!r} is not supported ({why})")
