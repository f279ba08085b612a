import json
import os

import pytest

from megalite.checkpoint.rewrite import reshard_offline
from megalite.config import parse_config
from megalite.training.trainer import pretrain
from tests.conftest import REPO, english_documents, tiny_model_args, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")

pytest.importorskip("lm_eval")
TASKS = os.path.join(REPO, "examples", "eval_tasks")


def _evaluate(load: str, text_file: str, out: str, sequence_parallel: bool = False) -> None:
    """Perplexity (sliding windows), harness loglikelihoods and generations of one checkpoint
    (scoring with the sequence split over tensor-parallel ranks, as during training, if asked)."""
    import torch.distributed as dist

    from megalite.eval.harness import run_harness_tasks
    from megalite.eval.loading import checkpoint_tokenizer, load_model
    from megalite.eval.perplexity import perplexity, text_file_source
    from megalite.parallel import state

    model, cfg = load_model(load)
    if sequence_parallel:
        state.initialize(cfg.parallel.tensor_model_parallel_size, 1, sequence_parallel=True)
    tok = checkpoint_tokenizer(cfg)
    ppl = perplexity(model, [text_file_source(text_file, tok)], seq_length=31, stride=8,  # odd: padded for SP
                     batch_size=3)
    if sequence_parallel:  # generation has no sequence-parallel path: back to plain tensor parallelism
        state.initialize(cfg.parallel.tensor_model_parallel_size, 1)
    harness = run_harness_tasks(model, ["pydoc_next_sentence", "pydoc_continue"], num_fewshot=1, batch_size=4,
                                limit=2, include_path=TASKS, log_samples=True, tokenizer=tok,
                                bootstrap_iters=0)
    if not dist.is_initialized() or dist.get_rank() == 0:  # lm-eval returns results on rank 0 only
        samples = {task: [s["resps"] for s in sorted(rows, key=lambda s: s["doc_id"])]
                   for task, rows in harness["samples"].items()}
        with open(out, "w") as f:
            json.dump({"perplexity": ppl["overall"], "samples": samples}, f)


def _evaluate_on_ranks(rank, world, load, text_file, out, sequence_parallel):
    _evaluate(load, text_file, out, sequence_parallel)


@pytest.mark.dist
@pytest.mark.parametrize("tp, pp, sp", [(2, 1, True), (1, 2, False)], ids=["tp2-sp", "pp2"])
def test_parallel_evaluation_equals_one_process(tmp_path, tiny_corpus, tp, pp, sp):
    from tests.dist_utils import run_distributed

    pretrain(parse_config(tiny_model_args(*tiny_corpus, save=str(tmp_path / "ck"), train_iters=3,
                                          max_position_embeddings=128, init_method_std=0.3)))
    reshard_offline(str(tmp_path / "ck"), str(tmp_path / "ck_2"), tp=tp, pp=pp)
    text = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in english_documents()[200:203]])
    _evaluate(str(tmp_path / "ck"), text, str(tmp_path / "one.json"))
    run_distributed(_evaluate_on_ranks, 2, str(tmp_path / "ck_2"), text, str(tmp_path / "parallel.json"), sp)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "parallel.json"))
    assert two["perplexity"]["tokens"] == one["perplexity"]["tokens"]
    assert two["perplexity"]["loss"] == pytest.approx(one["perplexity"]["loss"], rel=1e-5)
    choices = [sum(run["samples"]["pydoc_next_sentence"], []) for run in (one, two)]
    for (a,), (b,) in zip(*choices):
        assert a[0] == pytest.approx(b[0], abs=1e-4) and a[1] == b[1]
    assert one["samples"]["pydoc_continue"] == two["samples"]["pydoc_continue"]
