import json

import pytest
import torch

from megalite.checkpoint.reshard import load_full_state
from megalite.config import parse_config
from megalite.errors import MegaliteError
from megalite.eval.loading import load_model
from megalite.hf.convert import export_hf, import_hf
from megalite.training.trainer import pretrain
from tests.conftest import run_main, run_tool, tiny_model_args

transformers = pytest.importorskip("transformers")


def trained_checkpoint(tmp_path, corpus, **kw):
    ck = tmp_path / "ck"
    pretrain(parse_config(tiny_model_args(*corpus, save=str(ck), train_iters=3, **kw)))
    return str(ck)


@pytest.mark.parametrize("kw, arch", [
    ({}, "LlamaForCausalLM"),
    ({"untie_embeddings_and_output_weights": True, "num_query_groups": 1}, "LlamaForCausalLM"),
    ({"add_qkv_bias": True, "num_query_groups": 4}, "Qwen2ForCausalLM"),
    ({"normalization": "LayerNorm", "position_embedding_type": "learned_absolute", "swiglu": False,
      "disable_bias_linear": False, "group_query_attention": False, "num_query_groups": None,
      "max_position_embeddings": 64}, "GPT2LMHeadModel"),
], ids=["llama-gqa-tied", "llama-mqa-untied", "qwen2", "gpt2"])
def test_export_matches_transformers_and_round_trips(tmp_path, tiny_corpus, kw, arch):
    ck = trained_checkpoint(tmp_path, tiny_corpus, **kw)
    run = run_tool if not kw else run_main  # the default model converts on the real command line
    run("tools/convert_checkpoint.py", "--to-hf", "--load", ck, "--save", str(tmp_path / "hf"), "--dtype", "fp32")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [arch]
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), torch_dtype=torch.float32).eval()
    ours, _ = load_model(ck)
    tokens = torch.randint(0, 1000, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, ours(tokens), rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["eos_token_id"] == 2
    # megalite -> HF -> megalite is bitwise
    run("tools/convert_checkpoint.py", "--from-hf", "--load", str(tmp_path / "hf"), "--save", str(tmp_path / "back"))
    original, _ = load_full_state(ck)
    back, _ = load_full_state(str(tmp_path / "back"))
    assert original.keys() == back.keys()
    for name in original:
        assert torch.equal(original[name], back[name]), name


def test_import_then_export_reproduces_hf_safetensors(tmp_path):
    from safetensors.torch import load_file

    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(tmp_path / "orig"))
    import_hf(str(tmp_path / "orig"), str(tmp_path / "ck"))
    export_hf(str(tmp_path / "ck"), str(tmp_path / "again"), dtype="fp32", max_shard_bytes=100_000)
    index = json.loads((tmp_path / "again" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    before = load_file(str(tmp_path / "orig" / "model.safetensors"))
    after = {}
    for f in set(index["weight_map"].values()):
        after.update(load_file(str(tmp_path / "again" / f)))
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_unsupported_and_bad_input(tmp_path, tiny_corpus):
    ck = trained_checkpoint(tmp_path, tiny_corpus, normalization="LayerNorm", swiglu=False)
    proc = run_main("tools/convert_checkpoint.py", "--to-hf", "--load", ck, "--save", str(tmp_path / "hf"), check=False)
    assert proc.returncode == 1 and "no Llama/Qwen2 equivalent" in proc.stderr and proc.stderr.count("\n") == 1
    ck = trained_checkpoint(tmp_path / "g", tiny_corpus, normalization="LayerNorm",
                            position_embedding_type="learned_absolute", max_position_embeddings=64)
    proc = run_main("tools/convert_checkpoint.py", "--to-hf", "--load", ck, "--save", str(tmp_path / "hf"), check=False)
    assert proc.returncode == 1 and "no GPT-2 equivalent: a SwiGLU MLP, linear layers without biases" in proc.stderr
    proc = run_main("tools/convert_checkpoint.py", "--from-hf", "--load", str(tmp_path / "nothing"),
                    "--save", str(tmp_path / "x"), check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "config.json" in proc.stderr
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(MegaliteError, match="model_type 'bert' is not supported"):
        import_hf(str(tmp_path / "gpt"), str(tmp_path / "y"))


def _train_tp(rank, world, argv):
    pretrain(parse_config(argv))


@pytest.mark.dist
def test_export_gathers_tensor_parallel_shards(tmp_path, tiny_corpus):
    from megalite.config import Config
    from megalite.model import GPTModel
    from megalite.parallel import state
    from tests.dist_utils import run_distributed

    argv = tiny_model_args(*tiny_corpus, save=str(tmp_path / "ck"), train_iters=3, tensor_model_parallel_size=2,
                           sequence_parallel=True)
    run_distributed(_train_tp, 2, argv)
    export_hf(str(tmp_path / "ck"), str(tmp_path / "hf"), dtype="fp32")
    full, args = load_full_state(str(tmp_path / "ck"))
    state.initialize()
    ours = GPTModel(Config.from_dict(args).model)
    ours.load_state_dict(full)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), torch_dtype=torch.float32).eval()
    tokens = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, ours.eval()(tokens), rtol=1e-5, atol=1e-5)


def test_exported_tokenizer_encodes_like_ours(tmp_path, spm_model):
    from megalite.data.tokenizer import build_tokenizer
    from megalite.hf.tokenizer import export_tokenizer
    from tests.conftest import english_documents

    ours = build_tokenizer("SentencePieceTokenizer", spm_model)
    export_tokenizer(ours, str(tmp_path / "tok"))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    texts = english_documents()[:80] + [
        "In 1987, the café served 12345 croissants — naïve 日本語 text 🙂 stays\nexact.  Two  spaces.",
        "trailing spaces  ", "tab\there\n\nand a user token <|im_start|> mid-text\n<|im_start|>x", ""]
    # (a text starting with a user token gets no dummy prefix, as in transformers: docs/hf.md)
    for text in texts:
        ids = ours.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, text[:60]
        assert hf.decode(ids) == text
    assert (hf.eos_token_id, hf.bos_token_id, hf.pad_token_id) == (ours.eod, ours.bos, ours.pad)


def test_finetune_from_imported_model_needs_no_model_flags(tmp_path, tiny_corpus):
    from tests.conftest import read_metrics

    cfg = transformers.LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rope_theta=50000.0, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(tmp_path / "orig"))
    import_hf(str(tmp_path / "orig"), str(tmp_path / "ck"))
    data_prefix, tok = tiny_corpus
    argv = ["--data-path", data_prefix, "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tok,
            "--seq-length", "32", "--micro-batch-size", "4", "--train-iters", "3", "--lr", "1e-3", "--split", "90,5,5",
            "--num-workers", "0", "--eval-iters", "1", "--log-interval", "1", "--load", str(tmp_path / "ck"),
            "--finetune", "--save", str(tmp_path / "ft")]
    pretrain(parse_config(argv))
    rows, _ = read_metrics(tmp_path / "ft" / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    _, args = load_full_state(str(tmp_path / "ft"))
    m = args["model"]
    assert (m["num_layers"], m["hidden_size"], m["num_query_groups"], m["rotary_base"], m["padded_vocab_size"],
            m["normalization"], m["swiglu"]) == (2, 64, 2, 50000.0, 1024, "RMSNorm", True)


def test_import_mistral_matches_transformers(tmp_path):
    cfg = transformers.MistralConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                                     sliding_window=4096, rope_theta=1e6)
    torch.manual_seed(0)
    hf = transformers.MistralForCausalLM(cfg).eval()
    hf.save_pretrained(str(tmp_path / "orig"))
    import_hf(str(tmp_path / "orig"), str(tmp_path / "ck"))
    ours, _ = load_model(str(tmp_path / "ck"))
    tokens = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, rtol=1e-5, atol=1e-5)


def test_import_rejects_shape_mismatch(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(tmp_path / "m"))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["intermediate_size"] = 128  # the weights say 96
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    proc = run_tool("tools/convert_checkpoint.py", "--from-hf", "--load", str(tmp_path / "m"), "--save",
                    str(tmp_path / "ck"), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("layers.0.mlp.gate.weight has shape (96, 64), the config implies (128, 64)")
