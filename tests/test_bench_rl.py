"""bench/bench_rl.py on a tiny model, both sides in this process: megalite's GRPO step and trl's
GRPOTrainer generate the same number of tokens (every completion full length) from prompts of the
same token counts every step (the proof the benchmark compares the same work), and the report
holds the step-rate and memory ratios. The model's weights are edited so that it predicts EOS
almost surely: a side that stopped at EOS would generate one token a completion."""

import importlib.util
import os

import pytest

pytest.importorskip("trl")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--layers", "2", "--hidden-size", "64", "--heads", "4", "--kv-heads", "2", "--ffn-hidden-size", "128",
        "--vocab-size", "500", "--prompts-per-step", "2", "--num-generations", "2", "--prompt-length", "16",
        "--completion-length", "8", "--steps", "1"]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_rl", os.path.join(REPO, "bench", "bench_rl.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def eos_everywhere(folder: str) -> None:
    """Make the model put nearly all probability on EOS after any prefix: a large constant in the
    first hidden dimension of every embedding dominates the normalised final hidden state, and
    the output layer maps that dimension onto EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 100.0
        model.lm_head.weight[tok.eos_token_id, 0] = 5.0
        probs = model(torch.tensor([tok("In the beginning")["input_ids"]])).logits[0, -1].softmax(-1)
    assert probs[tok.eos_token_id] > 0.99
    model.save_pretrained(folder)


def test_both_sides_generate_the_same_tokens(tmp_path, capsys):
    bench = load_bench()
    a = bench.parse_args(TINY)
    paths = bench.build_model(a, str(tmp_path))
    eos_everywhere(paths["hf"])
    assert paths["num_prompts"] == 4  # (warm-up + timed steps) x prompts a step
    results = {}
    for side in bench.SIDES:
        bench.keep_fastest(results, side, bench.measure(a, side, paths), "steps_per_s")
    out = bench.report(a, paths, results)
    table = capsys.readouterr().out
    assert out["same_tokens"], table
    for side in bench.SIDES:
        assert results[side]["generated_tokens"] == [2 * 2 * 8] * 2  # prompts x G x completion length, each step
        assert results[side]["prompt_tokens"] == [2 * 2 * 16] * 2
        assert results[side]["generation_s"] > 0 and results[side]["training_s"] > 0
    assert out["ratios"]["step_rate"] > 0 and out["ratios"]["memory"] > 0
    assert "megalite/trl: step rate" in table
