"""sft_gpt.py end to end on tiny models: the masked loss does not depend on how the global
batch is cut (micro-batches, accumulation, data parallelism), equals transformers' loss on the
HF export with -100 labels, the run's ids (a sentencepiece tokenizer) equal apply_chat_template's
on the export, resumes bit for bit, and starts from a local HF folder."""

import itertools

import pytest
import torch

from megalite.config import parse_config, validate
from megalite.data.demo_sft import instruction_pairs
from sft_gpt import main as sft_main
from tests.conftest import read_metrics, tiny_model_args, write_jsonl
from tests.dist_utils import run_distributed


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("sft") / "train.jsonl", instruction_pairs()[:96])


def sft_args(corpus, data, tmp_path, name, **kw):
    kw = {"sft_data": data, "data_path": None, "split": None, "seq_length": 64, "train_iters": 4,
          "micro_batch_size": 4, "global_batch_size": 8, "chat_template": "alpaca", "eval_iters": 0,
          "metrics_file": str(tmp_path / f"{name}.jsonl"), "lr_warmup_iters": 0, **kw}
    return tiny_model_args(*corpus, **kw)


def _sft(rank, world, argv):
    sft_main(argv)


def train(corpus, data, tmp_path, name, world=1, **kw):
    argv = sft_args(corpus, data, tmp_path, name, **kw)
    run_distributed(_sft, world, argv)
    return read_metrics(str(tmp_path / f"{name}.jsonl"))[0]


@pytest.mark.dist
def test_loss_does_not_depend_on_how_the_batch_is_cut(tmp_path, tiny_corpus, sft_file):
    """Sum over the global batch's trainable tokens / their count: micro-batch 8 x 1, 1 x 8
    accumulation steps and two data-parallel ranks give the same losses and updates."""
    one = train(tiny_corpus, sft_file, tmp_path, "mb8", micro_batch_size=8)
    accumulated = train(tiny_corpus, sft_file, tmp_path, "mb1", micro_batch_size=1)
    dp2 = train(tiny_corpus, sft_file, tmp_path, "dp2", world=2, micro_batch_size=2)
    assert len(one) == 4
    for rows in (accumulated, dp2):
        for a, b in zip(one, rows):
            assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-6), a["iteration"]
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5), a["iteration"]


@pytest.mark.dist
@pytest.mark.parametrize("layout", [
    {"tensor_model_parallel_size": 2, "sequence_parallel": True, "packing": True},
    {"pipeline_model_parallel_size": 2},  # rows padded to --seq-length: stages exchange fixed shapes
], ids=["tp2-sp-packed", "pp2-padded"])
def test_model_parallel_sft_matches_one_process(tmp_path, tiny_corpus, sft_file, layout):
    one = train(tiny_corpus, sft_file, tmp_path, "one", packing=layout.get("packing", False))
    two = train(tiny_corpus, sft_file, tmp_path, "two", world=2, **layout)
    for a, b in zip(one, two):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5), a["iteration"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), a["iteration"]


def test_packing_trains_like_padding_on_the_same_examples(tmp_path, tiny_corpus, sft_file):
    """Packed rows hold several examples each; with the whole set in one global batch the
    trainable tokens are the same, so the first loss and gradient norm are too."""
    kw = dict(train_iters=1, micro_batch_size=1, seq_length=256)
    n = 96
    padded = train(tiny_corpus, sft_file, tmp_path, "pad", global_batch_size=n, **kw)
    from megalite.data.sft import build_sft_datasets  # how many packed rows hold the 96 examples

    cfg = parse_config(sft_args(tiny_corpus, sft_file, tmp_path, "x", packing=True, **kw))
    from megalite.training.data import build_tokenizer_from

    rows, _ = build_sft_datasets(cfg.sft, 256, build_tokenizer_from(cfg), 1, 0, cfg.training.seed,
                                 chat_template=cfg.chat.chat_template)
    packed_rows = rows.num_rows
    assert packed_rows < n
    packed = train(tiny_corpus, sft_file, tmp_path, "packed", global_batch_size=packed_rows, packing=True, **kw)
    assert packed[0]["lm_loss"] == pytest.approx(padded[0]["lm_loss"], rel=1e-5)
    assert packed[0]["grad_norm"] == pytest.approx(padded[0]["grad_norm"], rel=1e-4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_corpus, sft_file):
    """Four steps of SFT (alpaca template, the sentencepiece test tokenizer) saved, and its HF export."""
    from megalite.hf.convert import export_hf

    tmp = tmp_path_factory.mktemp("exported")
    train(tiny_corpus, sft_file, tmp, "run", save=str(tmp / "ckpt"))
    export_hf(str(tmp / "ckpt"), str(tmp / "hf"), dtype="fp32")
    return str(tmp / "ckpt"), str(tmp / "hf")


def test_ids_equal_apply_chat_template_of_the_export(tmp_path, tiny_corpus, sft_file, exported):
    """A --tokenizer-type SentencePieceTokenizer run tokenizes its examples as transformers does on the
    exported folder (its tokenizer and template): the alpaca template's eos_token text ends each answer
    with the one EOS id, not the pieces of '</s>'."""
    from transformers import AutoTokenizer

    from megalite.data.chat import tokenize_chat
    from megalite.data.sft_formats import SFTSource, load_conversations
    from megalite.posttrain.sft import SFTStage
    from megalite.training.data import build_tokenizer_from

    cfg = parse_config(sft_args(tiny_corpus, sft_file, tmp_path, "ids", load=exported[0]))
    SFTStage().prepare(cfg)
    tok, hf = build_tokenizer_from(cfg), AutoTokenizer.from_pretrained(exported[1])
    for _, _, messages in itertools.islice(load_conversations(SFTSource(sft_file)), 8):
        ids, _ = tokenize_chat(tok, cfg.chat.chat_template, messages)
        assert ids.tolist() == list(hf.apply_chat_template(messages, tokenize=True, return_dict=False))
        assert ids.tolist().count(tok.eod) == 1  # one assistant turn


def test_sft_loss_equals_transformers_with_masked_labels(tmp_path, tiny_corpus, sft_file, exported):
    from transformers import AutoModelForCausalLM

    from megalite.data.sft import build_sft_datasets, collate_sft
    from megalite.training.data import build_tokenizer_from
    from megalite.training.trainer import Trainer

    hf = AutoModelForCausalLM.from_pretrained(exported[1]).eval()

    cfg = parse_config(sft_args(tiny_corpus, sft_file, tmp_path, "eval", load=exported[0]))
    from megalite.posttrain.sft import SFTStage

    stage = SFTStage()
    stage.prepare(cfg)
    trainer = Trainer(validate(cfg), torch.device("cpu"), stage)
    ds, _ = build_sft_datasets(cfg.sft, 64, build_tokenizer_from(cfg), 4, 0, cfg.training.seed,
                               chat_template=cfg.chat.chat_template)
    batch = collate_sft([ds[i] for i in range(4)])
    trainer.model.eval()
    with torch.no_grad():
        ours = trainer.model(batch["tokens"], labels=batch["labels"])
        ours = ((ours * batch["loss_mask"]).sum() / batch["loss_mask"].sum()).item()
        ids = torch.cat([batch["tokens"], batch["labels"][:, -1:]], dim=1)
        labels = torch.cat([batch["tokens"][:, :1], batch["labels"]], dim=1)
        labels[:, 1:][batch["loss_mask"] == 0] = -100
        theirs = hf(input_ids=ids, labels=labels).loss.item()
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_resume_is_bit_exact_with_the_same_command(tmp_path, tiny_corpus, sft_file):
    full = train(tiny_corpus, sft_file, tmp_path, "full", train_iters=6)
    save = str(tmp_path / "run")
    train(tiny_corpus, sft_file, tmp_path, "first", train_iters=6, save=save, exit_interval=3)
    resumed = train(tiny_corpus, sft_file, tmp_path, "second", train_iters=6, save=save)
    assert [r["iteration"] for r in resumed] == [4, 5, 6]
    assert [r["lm_loss"] for r in resumed] == [r["lm_loss"] for r in full[3:]]


def test_load_accepts_a_hugging_face_folder(tmp_path, tiny_corpus, sft_file):
    """--load HF_DIR imports the model once (into --save) and fine-tunes it exactly as the
    megalite checkpoint it was exported from."""
    from megalite.hf.convert import export_hf

    train(tiny_corpus, sft_file, tmp_path, "base", save=str(tmp_path / "base"))
    export_hf(str(tmp_path / "base"), str(tmp_path / "hf"), dtype="fp32")
    from_ckpt = train(tiny_corpus, sft_file, tmp_path, "from_ckpt", load=str(tmp_path / "base"),
                      save=str(tmp_path / "a"))
    from_hf = train(tiny_corpus, sft_file, tmp_path, "from_hf", load=str(tmp_path / "hf"), save=str(tmp_path / "b"))
    assert [r["lm_loss"] for r in from_hf] == pytest.approx([r["lm_loss"] for r in from_ckpt], rel=1e-6)
    assert from_hf[0]["iteration"] == 1  # weights only: a fresh run


def test_skip_train_reports_the_validation_loss(tmp_path, tiny_corpus, sft_file):
    """--skip-train only evaluates (how examples/sft_lora.sh measures the base model first)."""
    from tests.conftest import read_metrics as metrics

    train(tiny_corpus, sft_file, tmp_path, "eval_only", skip_train=True, eval_iters=2, sft_valid_fraction=0.25)
    rows, evals = metrics(str(tmp_path / "eval_only.jsonl"))
    assert rows == [] and [e["split"] for e in evals] == ["valid"] and evals[0]["iteration"] == 0
