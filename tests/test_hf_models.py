"""Published architectures with tiny random weights: after --from-hf our logits and greedy
generation equal transformers', past the original context (scaled RoPE) and the window
(sliding attention); export then re-import is bitwise."""

import dataclasses
import json
import re

import pytest
import torch

from megalite.checkpoint.reshard import load_full_state
from megalite.errors import MegaliteError
from megalite.eval.generate import generate
from megalite.eval.loading import load_model
from megalite.eval.sampling import Sampling
from megalite.hf.convert import export_hf, import_hf
from megalite.model import GPTModel

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, initializer_range=0.1)


def hf_model(tmp_path, config):
    """A random transformers model saved to tmp_path/orig; ``config`` a config object or the
    config.json dict of a published model (kept as the folder's config.json, old keys and all)."""
    published = config if isinstance(config, dict) else None
    if published is not None:
        config = transformers.AutoConfig.for_model(**published)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():  # norms start at one: make them count, so a misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
    model.save_pretrained(str(tmp_path / "orig"))
    if published is not None:
        (tmp_path / "orig" / "config.json").write_text(json.dumps(published))
    return model


def fresh_hf(folder):
    """A newly loaded transformers model (dynamic RoPE keeps state between calls)."""
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def check_logits_generation_round_trip(tmp_path, config, length, prompt_length):
    """Logits over ``length`` tokens, greedy generation from ``prompt_length`` to ``length``,
    and the export's weights and config: all as transformers has them."""
    hf_model(tmp_path, config)
    orig = str(tmp_path / "orig")
    import_hf(orig, str(tmp_path / "ck"))
    ours, _ = load_model(str(tmp_path / "ck"))
    vocab = config["vocab_size"] if isinstance(config, dict) else config.vocab_size
    tokens = torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), fresh_hf(orig)(tokens).logits, rtol=1e-5, atol=1e-5)
    prompt = tokens[0, :prompt_length].tolist()
    theirs = fresh_hf(orig).generate(torch.tensor([prompt]), max_new_tokens=length - prompt_length, do_sample=False,
                                     min_new_tokens=length - prompt_length, pad_token_id=0)[0, prompt_length:].tolist()
    assert generate(ours, [prompt], length - prompt_length, Sampling())[0] == theirs
    if not any(kind in str(config) for kind in ("dynamic", "longrope")):  # (cached keys keep the angles they had)
        assert generate(ours, [prompt], length - prompt_length, Sampling(), use_cache=False)[0] == theirs
    export_hf(str(tmp_path / "ck"), str(tmp_path / "hf"), dtype="fp32")
    with torch.no_grad():
        torch.testing.assert_close(fresh_hf(str(tmp_path / "hf"))(tokens).logits, ours(tokens), rtol=1e-5, atol=1e-5)
    import_hf(str(tmp_path / "hf"), str(tmp_path / "back"))
    (first, args), (back, back_args) = load_full_state(str(tmp_path / "ck")), load_full_state(str(tmp_path / "back"))
    assert first.keys() == back.keys() and all(torch.equal(first[k], back[k]) for k in first)
    assert back_args["model"] == args["model"]
    return json.loads((tmp_path / "hf" / "config.json").read_text())


ROPE_SCALINGS = {
    # Llama 3.1+: wavelengths 6-20k with theta 100 and head_dim 16 span all three bands over 64 positions
    "llama3": dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64),
    "linear": dict(rope_type="linear", factor=2.5),
    "dynamic": dict(rope_type="dynamic", factor=2.0),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64),
    "yarn-mscale": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, beta_fast=16.0,
                        beta_slow=2.0, mscale=0.8, mscale_all_dim=0.5),
    "yarn-attention-factor": dict(rope_type="yarn", factor=3.0, original_max_position_embeddings=64,
                                  attention_factor=1.25),
    # Phi-3 style: per-frequency divisors (head_dim 16: 8 of each), the long set once a sequence outgrows 64
    # positions (generation crosses it: keys cached before keep the short set); default attention factor from factor
    "longrope": dict(rope_type="longrope", factor=4.0, original_max_position_embeddings=64,
                     short_factor=[1.0, 1.1, 1.3, 1.2, 1.6, 1.4, 1.9, 1.7],
                     long_factor=[1.0, 1.5, 2.5, 4.0, 6.5, 9.0, 14.0, 20.0]),
}


@pytest.mark.parametrize("name", list(ROPE_SCALINGS))
def test_llama_rope_scaling_matches_transformers(tmp_path, name):
    scaling = ROPE_SCALINGS[name]
    config = transformers.LlamaConfig(**SMALL, rope_theta=100.0, max_position_embeddings=64,
                                      rope_scaling=dict(scaling))
    exported = check_logits_generation_round_trip(tmp_path, config, length=100, prompt_length=40)
    assert exported["rope_scaling"].items() >= scaling.items()


def test_rope_scaling_changes_the_logits_past_the_original_context(tmp_path):
    """The scaled types are not the default RoPE in disguise: the test above can fail."""
    config = transformers.LlamaConfig(**SMALL, rope_theta=100.0, max_position_embeddings=64,
                                      rope_scaling=dict(ROPE_SCALINGS["llama3"]))
    hf_model(tmp_path, config)
    import_hf(str(tmp_path / "orig"), str(tmp_path / "ck"))
    ours, cfg = load_model(str(tmp_path / "ck"))
    plain = GPTModel(dataclasses.replace(cfg.model, use_rope_scaling=False, rope_type=None))
    plain.load_state_dict(ours.state_dict())
    tokens = torch.randint(0, 256, (1, 100), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (plain(tokens) - ours(tokens)).abs().max() > 1e-2


def test_unknown_rope_settings_are_refused(tmp_path):
    config = transformers.LlamaConfig(**SMALL, max_position_embeddings=64).to_dict()
    config.pop("rope_parameters")
    for scaling, message in [
        ({"rope_type": "proportional", "factor": 2.0}, "rope_type 'proportional' is not supported"),
        ({"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0},
         "rope_scaling key 'low_freq_factor' is not supported with rope_type 'linear'"),
        ({"rope_type": "yarn", "factor": 2.0, "truncate": False}, "yarn with truncate: false"),
    ]:
        (tmp_path / "m").mkdir(exist_ok=True)
        (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "rope_scaling": scaling}))
        with pytest.raises(MegaliteError, match=message):
            import_hf(str(tmp_path / "m"), str(tmp_path / "ck"))


@pytest.mark.parametrize("kind, extra", [("qwen2", {}), ("qwen3", {"attention_factor": 1.3})])
def test_longrope_on_qwen_matches_transformers(tmp_path, kind, extra):
    """Qwen2/3 carry longrope too (Mistral's RoPE is Llama's, here and in transformers); no factor:
    max_position_embeddings / original_max_position_embeddings sets the attention factor. Logits
    below the original context too (the short set), and a generation that crosses it (its
    cached keys keep the short set: recomputing without the cache gives other tokens)."""
    cls = transformers.Qwen2Config if kind == "qwen2" else transformers.Qwen3Config
    scaling = dict(ROPE_SCALINGS["longrope"], original_max_position_embeddings=24, **extra)
    del scaling["factor"]
    config = cls(**SMALL, head_dim=16, rope_theta=100.0, max_position_embeddings=96, rope_scaling=dict(scaling),
                 tie_word_embeddings=True)
    exported = check_logits_generation_round_trip(tmp_path, config, length=40, prompt_length=16)
    assert exported["rope_scaling"].items() >= scaling.items() and exported["rope_scaling"]["factor"] == 4.0
    ours, _ = load_model(str(tmp_path / "ck"))
    tokens = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), fresh_hf(str(tmp_path / "orig"))(tokens).logits, rtol=1e-5,
                                   atol=1e-5)


def test_qwen3_matches_transformers(tmp_path):
    """Qwen3-0.6B's settings scaled down: per-head q/k RMSNorm, head_dim above hidden / heads, tied."""
    config = transformers.Qwen3Config(**{**SMALL, "num_attention_heads": 4, "num_key_value_heads": 2}, head_dim=32,
                                      tie_word_embeddings=True, rope_theta=1e6, max_position_embeddings=128,
                                      rms_norm_eps=1e-6, use_sliding_window=False, attention_bias=False)
    exported = check_logits_generation_round_trip(tmp_path, config, length=48, prompt_length=16)
    assert exported["architectures"] == ["Qwen3ForCausalLM"] and exported["head_dim"] == 32
    _, args = load_full_state(str(tmp_path / "ck"))
    assert args["model"]["qk_layernorm"] and not args["model"]["add_qkv_bias"]


def test_mistral_sliding_window_matches_transformers(tmp_path):
    """Mistral-7B-v0.1's settings scaled down, with a window far shorter than the inputs."""
    config = transformers.MistralConfig(**{**SMALL, "num_key_value_heads": 1}, sliding_window=4, rope_theta=1e4,
                                        max_position_embeddings=64, tie_word_embeddings=False)
    exported = check_logits_generation_round_trip(tmp_path, config, length=24, prompt_length=6)
    assert exported["architectures"] == ["MistralForCausalLM"] and exported["sliding_window"] == 4
    _, args = load_full_state(str(tmp_path / "ck"))
    assert args["model"]["window_size"] == [3, 0] and args["model"]["window_attn_skip_freq"] is None


@pytest.mark.parametrize("kind, windows", [
    ("qwen2", dict(use_sliding_window=True, sliding_window=5, max_window_layers=1)),  # layer 0 full, 1 windowed
    ("qwen3", dict(use_sliding_window=True, sliding_window=3, layer_types=["sliding_attention", "full_attention",
                                                                          "sliding_attention"])),
], ids=["qwen2-max-window-layers", "qwen3-layer-types"])
def test_qwen_layer_windows_match_transformers(tmp_path, kind, windows):
    cls = transformers.Qwen2Config if kind == "qwen2" else transformers.Qwen3Config
    config = cls(**{**SMALL, "num_hidden_layers": len(windows.get("layer_types", [0, 0]))}, rope_theta=1e4,
                 max_position_embeddings=64, tie_word_embeddings=True, **windows)
    exported = check_logits_generation_round_trip(tmp_path, config, length=24, prompt_length=6)
    assert exported["layer_types"] == config.layer_types and exported["sliding_window"] == windows["sliding_window"]
    _, args = load_full_state(str(tmp_path / "ck"))
    assert args["model"]["window_attn_skip_freq"] == ("[0,1]" if kind == "qwen2" else "[1,0,1]")


@pytest.mark.parametrize("edit, message", [
    ({"quantization_config": {"quant_method": "gptq"}}, "key 'quantization_config' ({'quant_method': 'gptq'}) is "
                                                        "not modelled by megalite's llama import"),
    ({"attention_bias": True}, "attention_bias: True is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act: 'gelu' is not supported"),
    ({"rope_interleaved": True}, "rope_interleaved: True is not supported"),
    ({"partial_rotary_factor": 0.5}, "key 'partial_rotary_factor'"),
])
def test_config_keys_we_do_not_model_are_refused(tmp_path, edit, message):
    config = transformers.LlamaConfig(**SMALL, max_position_embeddings=64)
    hf_model(tmp_path, config)
    path = tmp_path / "orig" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(MegaliteError, match=re.escape(message)):
        import_hf(str(tmp_path / "orig"), str(tmp_path / "ck"))


def test_harmless_keys_of_published_configs_import(tmp_path):
    """Keys found in published configs (SmolLM2, Llama 2, Qwen2.5) that change nothing are accepted."""
    config = transformers.LlamaConfig(**SMALL, max_position_embeddings=64)
    hf_model(tmp_path, config)
    path = tmp_path / "orig" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "is_llama_config": True, "rope_interleaved": False,
                                "pretraining_tp": 1, "_name_or_path": "x", "torch_dtype": "bfloat16"}))
    import_hf(str(tmp_path / "orig"), str(tmp_path / "ck"))


def test_tensors_the_config_does_not_describe_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    config = transformers.LlamaConfig(**SMALL, max_position_embeddings=64)
    hf_model(tmp_path, config)
    weights = load_file(str(tmp_path / "orig" / "model.safetensors"))
    weights["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(64)
    save_file(weights, str(tmp_path / "orig" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MegaliteError, match="1 tensors are not part of the model config.json describes "
                                            r"\(first: model.layers.0.self_attn.o_proj.bias\)"):
        import_hf(str(tmp_path / "orig"), str(tmp_path / "ck"))


def test_imported_checkpoint_evaluates_and_generates_without_flags(tmp_path):
    """The folder's tokenizer (copied: the download may go) and a default --seq-length travel with the import."""
    import shutil

    from tests.conftest import run_main, run_tool
    from tests.tokenizers_zoo import bytelevel

    config = transformers.LlamaConfig(**{**SMALL, "vocab_size": 384}, max_position_embeddings=131072,
                                      rope_scaling=dict(ROPE_SCALINGS["llama3"], original_max_position_embeddings=8192))
    hf_model(tmp_path, config)
    bytelevel(tmp_path / "orig")
    run_main("tools/convert_checkpoint.py", "--from-hf", "--load", str(tmp_path / "orig"), "--save",
             str(tmp_path / "ck"))
    shutil.rmtree(tmp_path / "orig")
    _, args = load_full_state(str(tmp_path / "ck"))
    assert args["data"]["seq_length"] == 8192 and args["data"]["tokenizer_type"] == "HuggingFaceTokenizer"
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog.\n" * 20)
    proc = run_tool("eval_gpt.py", "--load", str(tmp_path / "ck"), "--perplexity", "--text-file",
                    str(tmp_path / "text.txt"), "--output-path", str(tmp_path / "ppl.json"))
    result = json.loads((tmp_path / "ppl.json").read_text())
    assert result["seq_length"] == 8192 and result["overall"]["perplexity"] > 1, proc.stdout
    proc = run_tool("tools/generate.py", "--load", str(tmp_path / "ck"), "--prompt", "The quick",
                    "--max-new-tokens", "4")
    assert "--- 'The quick' ->" in proc.stdout


# config.json of published model cards, scaled down in width, depth, vocabulary and context (the
# original context, the window) but keeping every RoPE, norm, bias, window and tying setting and
# the keys their files carry.
_TINY = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
         "vocab_size": 256, "initializer_range": 0.1, "torch_dtype": "bfloat16", "use_cache": True,
         "attention_dropout": 0.0, "hidden_act": "silu"}
PUBLISHED = {
    "Llama-3.2-1B": ({**_TINY, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
                      "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 16, "max_position_embeddings": 512,
                      "mlp_bias": False, "num_key_value_heads": 1, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
                      "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                       "original_max_position_embeddings": 32, "rope_type": "llama3"},
                      "rope_theta": 500000.0, "tie_word_embeddings": True, "transformers_version": "4.45.0.dev0"},
                     48),
    "Llama-3.1-8B": ({**_TINY, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
                      "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "max_position_embeddings": 512,
                      "mlp_bias": False, "num_key_value_heads": 1, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
                      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 32, "rope_type": "llama3"},
                      "rope_theta": 500000.0, "tie_word_embeddings": False, "transformers_version": "4.43.0.dev0"},
                     48),
    "Qwen2.5-0.5B": ({**_TINY, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "bos_token_id": 151643,
                      "eos_token_id": 151643, "max_position_embeddings": 32768, "max_window_layers": 24,
                      "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
                      "sliding_window": 32768, "tie_word_embeddings": True, "transformers_version": "4.40.1",
                      "use_sliding_window": False, "use_mrope": False}, 24),
    "Qwen3-0.6B": ({**_TINY, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False,
                    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 32, "max_position_embeddings": 40960,
                    "max_window_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_scaling": None,
                    "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
                    "transformers_version": "4.51.0", "use_sliding_window": False}, 24),
    "Mistral-7B-v0.1": ({**_TINY, "architectures": ["MistralForCausalLM"], "model_type": "mistral", "bos_token_id": 1,
                         "eos_token_id": 2, "max_position_embeddings": 32768, "num_key_value_heads": 1,
                         "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 8,
                         "tie_word_embeddings": False, "transformers_version": "4.34.0.dev0"}, 24),
    "SmolLM2-135M": ({**_TINY, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
                      "bos_token_id": 0, "eos_token_id": 0, "hidden_size": 48, "num_attention_heads": 3,
                      "num_key_value_heads": 1, "is_llama_config": True, "max_position_embeddings": 8192,
                      "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None,
                      "rope_theta": 100000, "tie_word_embeddings": True, "transformers_version": "4.42.3"}, 24),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configs_match_transformers(tmp_path, name):
    config, length = PUBLISHED[name]
    check_logits_generation_round_trip(tmp_path, config, length=length, prompt_length=length // 4)
