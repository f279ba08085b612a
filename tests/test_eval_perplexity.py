import json
import math

import numpy as np
import pytest
import torch

from megalite.config import parse_config
from megalite.data.indexed import IndexedDataset, IndexedDatasetBuilder
from megalite.eval.loading import load_model
from megalite.eval.perplexity import perplexity, text_file_source, windows
from megalite.hf.convert import export_hf
from megalite.training.trainer import pretrain
from tests.conftest import english_documents, read_metrics, run_tool, tiny_model_args, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_corpus):
    tmp = tmp_path_factory.mktemp("ppl")
    pretrain(parse_config(tiny_model_args(*tiny_corpus, save=str(tmp / "ck"), train_iters=3)))
    export_hf(str(tmp / "ck"), str(tmp / "hf"), dtype="fp32")
    return tmp


def test_windows_score_every_token_once():
    for n, length, stride in ((100, 32, 32), (100, 32, 7), (33, 32, 32), (34, 32, 1), (5, 32, 8)):
        scored = [t for _, end, first in windows(n, length, stride) for t in range(first, end)]
        assert scored == list(range(1, n))
        assert all(end - begin <= length + 1 for begin, end, _ in windows(n, length, stride))


def test_fixed_windows_equal_the_trainers_evaluation_loss(trained, tiny_corpus):
    """One document of 2 x 8 x 32 + 1 tokens is exactly the trainer's 2 validation batches of 8
    samples (whatever their shuffled order), so both losses must agree."""
    data_prefix, spm = tiny_corpus
    stream = np.concatenate([IndexedDataset(data_prefix).document(d) for d in range(40)])[: 2 * 8 * 32 + 1]
    with IndexedDatasetBuilder(str(trained / "held_out")) as b:
        b.add_item(stream)
        b.end_document()
    metrics = trained / "eval_metrics.jsonl"
    pretrain(parse_config(tiny_model_args(str(trained / "held_out"), spm, load=str(trained / "ck"), skip_train=True,
                                          split="0,1,0", eval_iters=2, metrics_file=str(metrics))))
    _, evals = read_metrics(metrics)
    trainer_loss = evals[-1]["loss"]

    out = trained / "ppl.json"
    run_tool("eval_gpt.py", "--load", str(trained / "ck"), "--perplexity", "--data-path", str(trained / "held_out"),
             "--output-path", str(out))
    result = json.loads(out.read_text())["overall"]
    assert result["tokens"] == 2 * 8 * 32
    assert result["loss"] == pytest.approx(trainer_loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(trainer_loss), rel=1e-5)


def test_sliding_windows_equal_transformers_on_the_export(trained, tiny_corpus):
    docs = english_documents()[100:104]
    jsonl = write_jsonl(trained / "docs.jsonl", [{"text": d} for d in docs])
    model, cfg = load_model(str(trained / "ck"))
    from megalite.data.tokenizer import build_tokenizer

    tok = build_tokenizer("SentencePieceTokenizer", tiny_corpus[1])
    result = perplexity(model, [text_file_source(jsonl, tok)], seq_length=32, stride=8, batch_size=5)

    hf_tok = transformers.AutoTokenizer.from_pretrained(str(trained / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(trained / "hf"), torch_dtype=torch.float32).eval()
    ids = [t for d in docs for t in hf_tok.encode(d, add_special_tokens=False) + [hf_tok.eos_token_id]]
    nll, scored_upto, begin = 0.0, 1, 0
    with torch.no_grad():
        while scored_upto < len(ids):
            end = min(begin + 33, len(ids))
            logprobs = hf(torch.tensor([ids[begin:end]])).logits[0].double().log_softmax(-1)
            nll -= sum(float(logprobs[t - begin - 1, ids[t]]) for t in range(scored_upto, end))
            scored_upto, begin = end, begin + 8
    r = result["overall"]
    assert r["tokens"] == len(ids) - 1
    assert r["loss"] == pytest.approx(nll / (len(ids) - 1), rel=1e-5)
    assert r["bits_per_byte"] == pytest.approx(nll / math.log(2) / sum(len(d.encode()) for d in docs), rel=1e-5)


def test_per_dataset_and_overall_of_a_blend(trained, tiny_corpus):
    from megalite.data.tokenizer import build_tokenizer

    tok = build_tokenizer("SentencePieceTokenizer", tiny_corpus[1])
    model, _ = load_model(str(trained / "ck"))
    sources = [text_file_source(write_jsonl(trained / f"part{i}.jsonl", [{"text": d} for d in docs]), tok)
               for i, docs in enumerate((english_documents()[10:12], english_documents()[40:43]))]
    pooled = perplexity(model, sources, seq_length=32, batch_size=4)
    a, b = (pooled["datasets"][s.name] for s in sources)
    assert pooled["overall"]["tokens"] == a["tokens"] + b["tokens"]
    assert pooled["overall"]["loss"] == pytest.approx((a["loss"] * a["tokens"] + b["loss"] * b["tokens"])
                                                      / (a["tokens"] + b["tokens"]))
    blend = perplexity(model, sources, seq_length=32, batch_size=4, weights=[1.0, 3.0])
    assert blend["overall"]["loss"] == pytest.approx((a["loss"] + 3 * b["loss"]) / 4)
    assert blend["overall"]["bits_per_byte"] == pytest.approx((a["bits_per_byte"] + 3 * b["bits_per_byte"]) / 4)
