import os

import pytest

from megalite.config import parse_config
from megalite.eval.during_training import evaluators
from megalite.eval.harness import run_harness_tasks, task_manager
from megalite.hf.convert import export_hf
from megalite.training.trainer import pretrain
from tests.conftest import REPO, tiny_model_args

pytestmark = pytest.mark.usefixtures("one_thread")

pytest.importorskip("lm_eval")
TASKS = os.path.join(REPO, "examples", "eval_tasks")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_corpus):
    """A barely trained model with widely spread weights, so that greedy generation picks
    varied tokens, and the HF form of its tokenizer (same ids, and the same decoding as the
    export's: generations compare as strings)."""
    from megalite.data.tokenizer import build_tokenizer
    from megalite.hf.tokenizer import export_tokenizer

    tmp = tmp_path_factory.mktemp("harness")
    data_prefix, spm = tiny_corpus
    export_tokenizer(build_tokenizer("SentencePieceTokenizer", spm), str(tmp / "tok"))
    pretrain(parse_config(tiny_model_args(data_prefix, str(tmp / "tok"), tokenizer_type="HuggingFaceTokenizer",
                                          save=str(tmp / "ck"), train_iters=3, max_position_embeddings=128,
                                          init_method_std=0.3)))
    export_hf(str(tmp / "ck"), str(tmp / "hf"), dtype="fp32")
    return tmp


def _responses(results, task):
    """Per document, the response to each of its requests (one per choice)."""
    return [[r[0] for r in s["resps"]] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def test_megalite_model_matches_lm_evals_hf_model_on_the_export(trained):
    """Same requests, same numbers: per-request loglikelihoods (1e-4), accuracy, rolling
    perplexities and greedy generations of our model on the checkpoint and of lm-eval's
    own `hf` model on its HF export."""
    from lm_eval import simple_evaluate

    tasks = ["pydoc_next_sentence", "pydoc_paragraphs", "pydoc_continue"]
    ours = run_harness_tasks(str(trained / "ck"), tasks, num_fewshot=1, batch_size=4, limit=6,
                             include_path=TASKS, log_samples=True, bootstrap_iters=0)
    theirs = simple_evaluate(model="hf", model_args=f"pretrained={trained / 'hf'},dtype=float32", device="cpu",
                             tasks=tasks, num_fewshot=1, batch_size=4, limit=6, task_manager=task_manager(tasks, TASKS),
                             log_samples=True, bootstrap_iters=0, random_seed=1234, numpy_random_seed=1234,
                             torch_random_seed=1234, fewshot_random_seed=1234)
    mc_ours, mc_theirs = _responses(ours, "pydoc_next_sentence"), _responses(theirs, "pydoc_next_sentence")
    assert len(mc_ours) == 6 and all(len(r) == 4 for r in mc_ours)
    for a, b in zip(mc_ours, mc_theirs):
        for (ll_a, greedy_a), (ll_b, greedy_b) in zip(a, b):
            assert ll_a == pytest.approx(ll_b, abs=1e-4) and greedy_a == greedy_b
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["pydoc_next_sentence"][metric] == theirs["results"]["pydoc_next_sentence"][metric]
    for metric in ("word_perplexity,none", "bits_per_byte,none"):
        assert ours["results"]["pydoc_paragraphs"][metric] == pytest.approx(
            theirs["results"]["pydoc_paragraphs"][metric], rel=1e-4)
    generations = _responses(ours, "pydoc_continue")
    assert generations == _responses(theirs, "pydoc_continue")
    assert any(g[0].strip() for g in generations)


def test_eval_gpt_and_lm_evals_own_command_line(trained, tmp_path, monkeypatch):
    import json
    import runpy
    import sys

    from megalite.eval.cli import main

    main(["--load", str(trained / "ck"), "--tasks", "pydoc_next_word", "--include-path", TASKS, "--limit", "4",
          "--log-samples", "--bootstrap-iters", "0", "--output-path", str(tmp_path / "ours")])
    results = json.loads((tmp_path / "ours" / "results.json").read_text())
    assert set(results["results"]["pydoc_next_word"]) >= {"acc,none", "perplexity,none"}
    assert len((tmp_path / "ours" / "samples_pydoc_next_word.jsonl").read_text().splitlines()) == 4
    # python -m megalite.eval.lm_eval ..., in this process
    monkeypatch.setattr(sys, "argv", ["megalite.eval.lm_eval", "--model", "megalite", "--model_args",
                                      f"load={trained / 'ck'}", "--tasks", "pydoc_next_word", "--include_path",
                                      TASKS, "--limit", "4", "--output_path", str(tmp_path / "theirs")])
    runpy.run_module("megalite.eval.lm_eval", run_name="__main__")
    [written] = (tmp_path / "theirs").rglob("results_*.json")
    theirs, ours = json.loads(written.read_text())["results"]["pydoc_next_word"], results["results"]["pydoc_next_word"]
    assert theirs["acc,none"] == ours["acc,none"]
    assert theirs["perplexity,none"] == pytest.approx(ours["perplexity,none"], rel=1e-5)
    main(["--load", str(trained / "ck"), "--tasks", "pydoc_continue", "--include-path", TASKS, "--limit", "2",
          "--num-fewshot", "1", "--apply-chat-template", "--chat-template", "chatml", "--log-samples",
          "--output-path", str(tmp_path / "chat")])
    first = json.loads((tmp_path / "chat" / "samples_pydoc_continue.jsonl").read_text().splitlines()[0])
    prompt = first["arguments"][0][0]
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    assert prompt.count("<|im_start|>assistant\n") == 2  # the few-shot example is a turn of its own


def test_eval_tasks_during_training_match_the_saved_checkpoint(tmp_path, tiny_corpus):
    """--eval-tasks scores the model in memory every --eval-interval: the last scores logged
    equal lm-eval on the checkpoint saved at that iteration."""
    from tests.conftest import read_metrics

    metrics = str(tmp_path / "m.jsonl")
    cfg = parse_config(tiny_model_args(*tiny_corpus, train_iters=4, eval_interval=2, eval_iters=1,
                                       eval_tasks="pydoc_next_sentence", eval_tasks_include_path=TASKS,
                                       eval_tasks_limit=8, max_position_embeddings=128, save=str(tmp_path / "ck"),
                                       metrics_file=metrics))
    pretrain(cfg, evaluators=evaluators(cfg))
    tasks = [r for r in read_metrics(metrics)[1] if r["split"] == "tasks"]
    assert [(r["iteration"], r["task"]) for r in tasks] == [(2, "pydoc_next_sentence"), (4, "pydoc_next_sentence")]
    saved = run_harness_tasks(str(tmp_path / "ck"), "pydoc_next_sentence", include_path=TASKS, limit=8,
                              bootstrap_iters=0)["results"]["pydoc_next_sentence"]
    assert tasks[-1]["acc"] == saved["acc,none"] and tasks[-1]["acc_norm"] == saved["acc_norm,none"]
