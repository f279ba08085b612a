"""dpo_gpt.py --pref-method rm on tiny models: pairs tokenized exactly as trl's RewardTrainer does, the loss
and metrics equal to trl's on our HF export, export scores equal to ours, tensor- (with sequence-) and
data-parallel invariance, LoRA training the score head, tools/score.py, and clear errors."""

import json

import pytest
import torch

from megalite.config import inherit_model_settings, parse_config, validate
from megalite.errors import MegaliteError
from tests.conftest import assert_runs_match, write_jsonl
from tests.dist_utils import TWO_RANKS
from tests.test_dpo import TEMPLATE, chat_pairs, dpo_args, messy_pairs, models, plain_pairs, train  # noqa: F401 (models: a fixture)

transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")

CENTER = 0.01


def with_margins(pairs):
    return [dict(p, margin=0.25 * (i % 3)) for i, p in enumerate(pairs)]


def rm_train(models, data, tmp_path, name, world=1, **kw):
    return train(models, data, tmp_path, name, world, pref_method="rm", ref_load=None,
                 center_rewards_coefficient=CENTER, **kw)


@pytest.fixture(scope="module")
def rm_file(models):
    return write_jsonl(models["root"] / "rm.jsonl", with_margins(plain_pairs()))


@pytest.fixture(scope="module")
def rm_run(models, rm_file):
    """Three steps of a reward model started from the LM checkpoint (one process), saved."""
    save = str(models["root"] / "rm_ck")
    rows = rm_train(models, rm_file, models["root"], "rm_base", save=save)
    return rows, save


@pytest.fixture(scope="module")
def hf_rm(models, rm_run):
    from megalite.hf.convert import export_hf

    return export_hf(rm_run[1], str(models["root"] / "rm_hf"), dtype="fp32")


def trl_reward_trainer(folder, pairs, tokenizer_dir=None, **args):
    """trl's RewardTrainer on the model in ``folder`` with its tokenizer or the one in ``tokenizer_dir``."""
    from datasets import Dataset

    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir or folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32, num_labels=1)
    config = trl.RewardConfig(output_dir=folder + "_trl", report_to=[], use_cpu=True, bf16=False, max_length=None,
                              **args)
    return trl.RewardTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs), processing_class=tok)


# -- data --------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [plain_pairs, messy_pairs, chat_pairs])
def test_token_ids_equal_trl(models, zoo, make):
    """Each tokenizer of the zoo (megalite's --tokenizer-type, trl's HF folder), its own template; the
    model is the untrained policy with a fresh score head (only the tokenization is compared)."""
    from megalite.data.reward import tokenize_reward_pair

    pairs = make(6)
    tr = trl_reward_trainer(models["policy"], pairs, zoo.hf_dir)
    for pair, theirs in zip(pairs, tr.train_dataset):
        ours = tokenize_reward_pair(zoo.megalite, zoo.template, pair)
        assert ours == [theirs["chosen_ids"], theirs["rejected_ids"]]
    if make is not chat_pairs:  # the (appended) EOS text is the one EOS id
        assert all(ids[-1] == zoo.megalite.eod and zoo.megalite.eod not in ids[:-1] for ids in ours)


def test_long_pairs_are_dropped_and_counted(models):
    from megalite.config import DPOConfig
    from megalite.data.reward import build_reward_pairs, score_index
    from megalite.data.tokenizer import HuggingFaceTokenizer

    tok = HuggingFaceTokenizer(models["policy"])
    pair = plain_pairs(1)[0]
    path = write_jsonl(models["root"] / "long.jsonl", [pair, {**pair, "rejected": " sea" * 40}])
    pairs, stats = build_reward_pairs(DPOConfig(pref_data=str(path)), TEMPLATE, 32, tok)
    assert stats == {"pairs": 1, "dropped": 1}
    ids, index = pairs[0]["chosen"]
    assert ids[-1] == tok.eod == tok.pad and index == len(ids) - 2  # EOS is the pad: scored before it, as in HF
    assert score_index([5, 1, 6, 1, 1], 1) == 2
    again, _ = build_reward_pairs(DPOConfig(pref_data=str(path)), TEMPLATE, 32, tok)  # from the cache
    assert pairs.stores[0].built and not again.stores[0].built
    assert again[0]["chosen"][0].tolist() == ids.tolist() and again[0]["chosen"][1] == index


@pytest.mark.parametrize("record, message", [
    ({"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}, "'margin' must be a finite number"),
    ({"prompt": "a", "chosen": "b", "rejected": "b"}, "chosen is identical to rejected"),
])
def test_bad_pairs_name_file_and_record(tmp_path, models, record, message):
    from megalite.config import DPOConfig
    from megalite.data.reward import build_reward_pairs
    from megalite.data.tokenizer import HuggingFaceTokenizer

    path = write_jsonl(tmp_path / "bad.jsonl", [plain_pairs(1)[0], record])
    with pytest.raises(MegaliteError, match=f"bad.jsonl: record 1: {message}"):
        build_reward_pairs(DPOConfig(pref_data=str(path)), TEMPLATE, 64, HuggingFaceTokenizer(models["policy"]))
    with pytest.raises(MegaliteError, match="--max-prompt-length does not apply to reward models"):
        build_reward_pairs(DPOConfig(pref_data=str(path), max_prompt_length=8), TEMPLATE, 64, None)


# -- the loss --------------------------------------------------------------------------------------
def test_loss_and_metrics_equal_trl(models, rm_run, hf_rm):
    """Our objective on our model and trl's RewardTrainer.compute_loss on our export, same 8 pairs
    (margins, centering): loss, accuracy, margin, min / mean / max reward."""
    from megalite.checkpoint.layout import saved_settings
    from megalite.data.reward import build_reward_pairs, collate_reward_pairs
    from megalite.posttrain.reward import RewardStage
    from megalite.training.trainer import Trainer

    pairs = with_margins(plain_pairs())[:8]
    data = write_jsonl(models["root"] / "eight.jsonl", pairs)
    cfg = parse_config(dpo_args(models, data, models["root"], "both", load=rm_run[1], pref_method="rm", ref_load=None,
                                center_rewards_coefficient=CENTER))
    stage = RewardStage()
    stage.prepare(cfg)
    inherit_model_settings(cfg, saved_settings(cfg.checkpoint.load))
    trainer = Trainer(validate(cfg), torch.device("cpu"), stage)
    fitted, _ = build_reward_pairs(cfg.dpo, cfg.chat.chat_template, 64, trainer.tokenizer)
    batch = collate_reward_pairs([fitted[k] for k in range(len(fitted))])
    trainer.model.eval()
    objective = trainer.objective
    objective.begin_step({"pairs": 8.0})
    with torch.no_grad():
        ours = objective(trainer.model(batch["tokens"]), batch).item()

    tr = trl_reward_trainer(hf_rm, pairs, center_rewards_coefficient=CENTER)
    tr.model.eval()
    with torch.no_grad():
        theirs = tr.compute_loss(tr.model, tr.data_collator([tr.train_dataset[i] for i in range(8)])).item()
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    metrics = objective.metrics()
    assert set(metrics) == {"accuracy", "margin", "min_reward", "mean_reward", "max_reward"}
    for name, value in metrics.items():
        assert value == pytest.approx(tr._metrics["eval"][name][-1], rel=1e-5, abs=1e-6), name


# -- training --------------------------------------------------------------------------------------
@pytest.mark.dist
@pytest.mark.parametrize("layout", list(TWO_RANKS.values()), ids=list(TWO_RANKS))
def test_parallel_layouts_train_like_one_process(tmp_path, models, rm_file, rm_run, layout):
    baseline = rm_run[0]
    other = rm_train(models, rm_file, tmp_path, "other", **layout)
    assert len(other) == len(baseline) == 3 and baseline[-1]["lm_loss"] < baseline[0]["lm_loss"]
    assert_runs_match(baseline, other, ("lm_loss", "grad_norm", "accuracy", "margin", "min_reward", "mean_reward",
                                        "max_reward"), rel=1e-5, abs=1e-5)


def test_export_scores_equal_ours(models, rm_run, hf_rm):
    from megalite.eval.reward_scores import RewardScorer

    config = json.load(open(f"{hf_rm}/config.json"))
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["pad_token_id"] == 1
    ours, theirs = RewardScorer(rm_run[1], batch_size=3), RewardScorer(hf_rm, batch_size=5)
    seqs = [ours.ids(p["prompt"], p[k]) for p in plain_pairs(6) for k in ("chosen", "rejected")]
    assert ours.score(seqs) == pytest.approx(theirs.score(seqs), rel=1e-5, abs=1e-6)


def test_lora_trains_the_score_head_and_exports_merged(tmp_path, models, rm_file, rm_run):
    from megalite.checkpoint.reshard import load_full_state
    from megalite.eval.reward_scores import RewardScorer
    from megalite.hf.convert import export_hf
    from megalite.parallel.init import name_seed

    save = str(tmp_path / "lora_rm")
    rows = rm_train(models, rm_file, tmp_path, "lora", lora_rank=4, lora_alpha=8, lr=1e-2, train_iters=2, save=save)
    for key in ("lm_loss", "mean_reward", "max_reward"):  # adapters start at zero: the full run's first step
        assert rows[0][key] == pytest.approx(rm_run[0][0][key], rel=1e-6), key
    saved, _ = load_full_state(save)
    assert "output_layer.weight" not in saved  # the head is saved with the adapters, the LM output is gone
    fresh = torch.empty(1, 64).normal_(0.0, 0.02, generator=torch.Generator().manual_seed(name_seed(7, "score.weight")))
    assert (saved["score.weight"] - fresh).abs().max() > 1e-3  # it started there (normal, std 0.02) and trained
    hf = export_hf(save, str(tmp_path / "lora_rm_hf"), dtype="fp32")
    ours, theirs = RewardScorer(save), RewardScorer(hf)
    seqs = [ours.ids(p["prompt"], p["chosen"]) for p in plain_pairs(4)]
    assert ours.score(seqs) == pytest.approx(theirs.score(seqs), rel=1e-5, abs=1e-6)


# -- tools/score.py ----------------------------------------------------------------------------
def test_score_tool_end_to_end(tmp_path, rm_run, capsys):
    from megalite.utils.cli import run_tool
    from tools.score import main

    pairs = plain_pairs(4)
    records = pairs + [{"prompt": pairs[0]["prompt"], "completion": pairs[0]["chosen"]}, {"text": "the sky is blue"}]
    out = tmp_path / "scored.jsonl"
    main(["--load", rm_run[1], "--input", str(write_jsonl(tmp_path / "in.jsonl", records)), "--output", str(out)])
    scored = [json.loads(line) for line in open(out)]
    assert [r.get("text") for r in scored] == [r.get("text") for r in records]
    assert scored[4]["score"] == pytest.approx(scored[0]["score_chosen"], abs=1e-6)  # the same sequence
    wins = [r["chosen_wins"] for r in scored[:4]]
    assert wins == [r["score_chosen"] > r["score_rejected"] for r in scored[:4]]
    assert f"pair accuracy {sum(wins) / 4:.4f} ({sum(wins)} of 4 pairs" in capsys.readouterr().out

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"prompt": "a"}])
    with pytest.raises(SystemExit) as failed:
        run_tool(main, ["--load", rm_run[1], "--input", str(bad), "--output", str(tmp_path / "no.jsonl")])
    assert failed.value.code == 1 and "bad.jsonl: record 1: expected 'prompt' + 'completion'" in capsys.readouterr().err
    assert not (tmp_path / "no.jsonl").exists()
