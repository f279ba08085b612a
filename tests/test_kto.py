"""dpo_gpt.py --pref-method kto on tiny models: examples tokenized, unpaired and KL rows built exactly as
trl's KTOTrainer does, the examples' cache, both loss types and their metrics equal to trl's on the
HF model we train, data- / tensor-parallel invariance, bit-exact resume, the precomputed (and cached)
and the LoRA reference, held-out metrics (--pref-valid-data, --pref-valid-fraction), and clear
errors on bad examples."""

import json

import pytest
import torch

from megalite.config import KTOConfig, inherit_model_settings, parse_config, validate
from megalite.errors import MegaliteError
from tests.conftest import assert_runs_match, read_metrics, write_jsonl
from tests.test_dpo import TEMPLATE, dpo_args, models, plain_pairs, train  # noqa: F401 (models: a fixture)

transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")


def plain_examples(n=16):
    """Unbalanced labels (two desirable for one undesirable), completions of different lengths."""
    return [{"prompt": p["prompt"], "completion": p["chosen"] if i % 3 else p["rejected"], "label": bool(i % 3)}
            for i, p in enumerate(plain_pairs(n))]


def chat_examples(n=16):
    return [{"prompt": [{"role": "user", "content": e["prompt"]}],
             "completion": [{"role": "assistant", "content": e["completion"].strip()}], "label": e["label"]}
            for e in plain_examples(n)]


def kto(models, data, tmp_path, name, **kw):
    return train(models, data, tmp_path, name, pref_method="kto", **kw)


@pytest.fixture(scope="module")
def swapped(models):
    """The two random models swapped: the KL estimate is then positive (not clamped to 0)."""
    return {"load": models["reference_ck"], "ref_load": models["policy_ck"]}


@pytest.fixture(scope="module")
def plain_file(models):
    return write_jsonl(models["root"] / "kto_plain.jsonl", plain_examples())


@pytest.fixture(scope="module")
def with_eval(models, swapped):
    """The swapped models, and 8 held-out examples evaluated after the third step."""
    held_out = write_jsonl(models["root"] / "kto_valid.jsonl", plain_examples(8))
    return {**swapped, "pref_valid_data": held_out, "eval_iters": 1, "eval_interval": 3}


def kto_with_eval(models, data, tmp_path, name, with_eval, **kw):
    """(train records, evaluation records) of a run with the held-out examples."""
    return kto(models, data, tmp_path, name, **with_eval, **kw), read_metrics(str(tmp_path / f"{name}.jsonl"))[1]


@pytest.fixture(scope="module")
def baseline(models, plain_file, with_eval):
    """Three steps of one process, 2 micro-batches of 4 examples a step, then the held-out metrics."""
    return kto_with_eval(models, plain_file, models["root"], "kto_baseline", with_eval)


def assert_same_run(a, b, keys, rel):
    (train_a, evals_a), (train_b, evals_b) = a, b
    assert len(train_a) == len(train_b) == 3 and [e["split"] for e in evals_a + evals_b] == ["valid", "valid"]
    for x, y in zip(train_a + evals_a, train_b + evals_b):
        for key in keys:
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=rel, abs=rel / 10), (key, x["iteration"], x.get("split"))


def trl_trainer(models, examples, policy="policy", reference="reference", tokenizer_dir=None, **args):
    """trl's KTOTrainer on our HF policy and reference (CPU, no hub, no logging), with the models'
    tokenizer or the one in ``tokenizer_dir``."""
    from datasets import Dataset

    hf_tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir or models["policy"])
    policy = transformers.AutoModelForCausalLM.from_pretrained(models[policy], dtype=torch.float32)
    ref = transformers.AutoModelForCausalLM.from_pretrained(models[reference], dtype=torch.float32)
    config = trl.KTOConfig(output_dir=str(models["root"] / "trl_kto"), report_to=[], use_cpu=True, bf16=False,
                           max_length=None, per_device_train_batch_size=len(examples), **args)
    return trl.KTOTrainer(model=policy, ref_model=ref, args=config, train_dataset=Dataset.from_list(examples),
                          processing_class=hf_tok)


# -- data --------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [plain_examples, chat_examples])
def test_token_ids_equal_trl(models, zoo, make):
    """Each tokenizer of the zoo (megalite's --tokenizer-type, trl's HF folder), its own template."""
    from megalite.data.unpaired import tokenize_example

    examples = make(6)
    tr = trl_trainer(models, examples, tokenizer_dir=zoo.hf_dir)
    for example, theirs in zip(examples, tr.train_dataset):
        ours = tokenize_example(zoo.megalite, zoo.template, example)
        assert list(ours) == [theirs["prompt_ids"], theirs["completion_ids"]]
    if make is plain_examples:  # the appended EOS text is the one EOS id
        assert ours[1][-1] == zoo.megalite.eod and zoo.megalite.eod not in ours[1][:-1]


@pytest.mark.parametrize("make", [plain_examples, chat_examples])
def test_kl_rows_equal_trl(tmp_path, models, zoo, make):
    """The rows of a micro-batch of 8 examples read from the examples' cache, and their KL rows
    (each prompt with the previous example's completion), equal trl's collator's for each tokenizer."""
    from megalite.config import DPOConfig
    from megalite.data.unpaired import UnpairedDataset, build_examples, collate_unpaired

    examples = make(8)
    path = write_jsonl(tmp_path / "kto.jsonl", examples)
    fitted, _ = build_examples(DPOConfig(pref_data=path, pref_method="kto"), zoo.template, 64, zoo.megalite)
    batch = collate_unpaired([UnpairedDataset(fitted).item(k, k) for k in range(8)], 64)
    tr = trl_trainer(models, examples, tokenizer_dir=zoo.hf_dir)
    trl_batch = tr.data_collator([tr.train_dataset[i] for i in range(8)])
    for ours, theirs in (("", ""), ("kl_", "KL_")):
        for b in range(8):
            m = int(trl_batch[f"{theirs}attention_mask"][b].sum())
            # the last label is a completion token's (unscored positions are labelled -100)
            ids = torch.cat([batch[f"{ours}tokens"][b, :m - 1], batch[f"{ours}labels"][b, m - 2:m - 1]])
            assert ids.tolist() == trl_batch[f"{theirs}input_ids"][b, :m].tolist()
            mask = trl_batch[f"{theirs}completion_mask"][b]
            assert batch[f"{ours}loss_mask"][b, :m - 1].tolist() == mask[1:m].float().tolist()
            assert batch[f"{ours}loss_mask"][b].sum() == mask.sum()


@pytest.mark.parametrize("record, message", [
    ({"prompt": "a", "completion": "b", "label": "yes"}, "'label' must be true or false, got 'yes'"),
    ({"prompt": "a", "completion": "b", "label": 1}, "'label' must be true or false, got 1"),
    ({"prompt": "a", "completion": "b"}, "missing 'label'"),
    ({"prompt": " ", "completion": "b", "label": True}, "empty prompt"),
    ({"prompt": "a", "completion": "", "label": False}, "empty completion"),
    ({"prompt": "a", "completion": [{"role": "assistant", "content": "b"}], "label": True},
     "prompt and completion must both be strings"),
])
def test_bad_examples_name_file_and_record(tmp_path, record, message):
    from megalite.data.sft_formats import SFTSource
    from megalite.data.unpaired import load_examples

    path = write_jsonl(tmp_path / "bad.jsonl", [plain_examples(1)[0], record])
    with pytest.raises(MegaliteError, match=f"bad.jsonl: record 1: {message}"):
        load_examples(SFTSource(str(path)))


def test_examples_are_cached_with_their_labels_and_rebuilt_when_the_file_changes(tmp_path, models):
    from megalite.config import DPOConfig
    from megalite.data.tokenizer import HuggingFaceTokenizer
    from megalite.data.unpaired import build_examples, tokenize_example

    tok = HuggingFaceTokenizer(models["policy"])
    path = write_jsonl(tmp_path / "k.jsonl", plain_examples(6))
    cfg = DPOConfig(pref_data=str(path), max_prompt_length=4, pref_method="kto")
    first, stats = build_examples(cfg, TEMPLATE, 64, tok)
    again, _ = build_examples(cfg, TEMPLATE, 64, tok)
    assert first.stores[0].built and not again.stores[0].built
    assert (tmp_path / "cache" / "kto").is_dir() and stats == {**stats, "examples": 6, "desirable": 4}
    for k, example in enumerate(plain_examples(6)):
        prompt, completion = tokenize_example(tok, TEMPLATE, example)
        assert again[k] == (prompt[-4:], completion, example["label"])
    write_jsonl(path, plain_examples(7))
    changed, _ = build_examples(cfg, TEMPLATE, 64, tok)
    assert changed.stores[0].built and changed.labels.tolist() == [e["label"] for e in plain_examples(7)]


def test_valid_fraction_holds_out_a_seeded_share_of_the_examples(tmp_path, models):
    from megalite.config import DPOConfig
    from megalite.data.tokenizer import HuggingFaceTokenizer
    from megalite.data.unpaired import build_examples

    path = write_jsonl(tmp_path / "k.jsonl", plain_examples(16))
    examples, _ = build_examples(DPOConfig(pref_data=str(path), pref_method="kto"), TEMPLATE, 64,
                                 HuggingFaceTokenizer(models["policy"]))
    train_part, held_out = examples.split(0.25, seed=3)
    assert (len(train_part), len(held_out)) == (12, 4)
    assert sorted(train_part.picks.tolist() + held_out.picks.tolist()) == list(range(16))
    k = int(held_out.picks[1])
    assert held_out[1] == examples[k] and held_out.labels[1] == examples.labels[k]
    assert examples.split(0.25, seed=3)[1].picks.tolist() == held_out.picks.tolist()
    with pytest.raises(MegaliteError, match="give --pref-valid-data or --pref-valid-fraction, not both"):
        kto(models, path, tmp_path, "both_valid", pref_valid_data=str(path), pref_valid_fraction=0.1)


def test_paired_records_are_unpaired_as_trl_does(tmp_path):
    """trl unpairs in blocks of 1000 pairs (each block's chosen, then its rejected): 1003 pairs
    cross a block boundary."""
    from datasets import Dataset
    from trl.data_utils import unpair_preference_dataset

    from megalite.data.sft_formats import SFTSource
    from megalite.data.unpaired import load_examples

    pairs = plain_pairs(1003)
    ours = [example for _, _, example in load_examples(SFTSource(str(write_jsonl(tmp_path / "p.jsonl", pairs))))]
    assert ours == list(unpair_preference_dataset(Dataset.from_list(pairs)))
    assert ours[1000] == {"prompt": pairs[0]["prompt"], "completion": pairs[0]["rejected"], "label": False}
    path = write_jsonl(tmp_path / "mixed.jsonl", pairs[:2] + plain_examples(1))
    with pytest.raises(MegaliteError, match="mixed.jsonl: record 2: missing 'chosen', 'rejected'"):
        load_examples(SFTSource(str(path)))


def test_dataset_info_kto_tag_entries(tmp_path):
    from megalite.data.unpaired import load_examples, resolve_unpaired_sources

    write_jsonl(tmp_path / "s.jsonl", [{"messages": [{"role": "user", "content": "Say hi"},
                                                     {"role": "assistant", "content": "Go away."}], "label": False}])
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "s": {"file_name": "s.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"},
              "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
        "sft": {"file_name": "s.jsonl", "formatting": "sharegpt"}}))
    (source,) = resolve_unpaired_sources("s", str(tmp_path), "--pref-data")
    assert load_examples(source)[0][2] == {"prompt": [{"role": "user", "content": "Say hi"}],
                                           "completion": [{"role": "assistant", "content": "Go away."}],
                                           "label": False}
    with pytest.raises(MegaliteError, match="has no 'kto_tag' column"):
        resolve_unpaired_sources("sft", str(tmp_path), "--pref-data")


# -- losses ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def both_sides(models, swapped):
    """Our trainer's model and KTO objective, and trl's KTOTrainer, on the same 8 examples as one batch
    (the models swapped: a positive KL estimate)."""
    from megalite.checkpoint.layout import saved_settings
    from megalite.data.unpaired import collate_unpaired
    from megalite.posttrain.kto import KTOStage
    from megalite.training.trainer import Trainer

    tmp = models["root"]
    data = write_jsonl(tmp / "kto_chat.jsonl", chat_examples())
    cfg = parse_config(dpo_args(models, data, tmp, "kto_both", pref_method="kto", **swapped))
    stage = KTOStage()
    stage.prepare(cfg)
    inherit_model_settings(cfg, saved_settings(cfg.checkpoint.load))
    trainer = Trainer(validate(cfg), torch.device("cpu"), stage)
    batch = collate_unpaired([trainer.train_ds.item(k, k) for k in range(8)], 64)
    trainer.model.eval()
    with torch.no_grad():
        losses = trainer.model(batch["tokens"], labels=batch["labels"])
    tr = trl_trainer(models, chat_examples()[:8], policy="reference", reference="policy")
    tr.model.eval()
    trl_batch = tr.data_collator([tr.train_dataset[i] for i in range(8)])
    return trainer, batch, losses, tr, trl_batch


METRIC_KEYS = ("lm_loss", "loss", "grad_norm", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins",
               "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected")
LOSSES = [("kto", 0.1, 1.0, 1.0), ("kto", 0.5, 1.33, 0.7), ("apo_zero_unpaired", 0.1, 1.0, 1.0),
          ("apo_zero_unpaired", 0.3, 0.8, 1.5)]


@pytest.mark.parametrize("kind, beta, wd, wu", LOSSES)
def test_loss_and_metrics_equal_trl(both_sides, kind, beta, wd, wu):
    from megalite.posttrain.kto import KTOObjective

    trainer, batch, losses, tr, trl_batch = both_sides
    objective = KTOObjective(KTOConfig(kind, wd, wu), beta, trainer.objective.reference, trainer.objective.policy)
    mb = dict(batch)
    objective.prepare([mb])
    objective.begin_step({k: mb[k].sum().item() for k in objective.count_keys})
    ours = objective(losses, mb).item()

    tr.loss_type, tr.beta, tr.desirable_weight, tr.undesirable_weight = kind, beta, wd, wu
    tr.calculate_KL = kind == "kto"
    tr._metrics["eval"].clear()
    with torch.no_grad():
        theirs = tr.compute_loss(tr.model, trl_batch).item()
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    metrics = objective.metrics()
    assert set(metrics) == {"kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                            "logps/rejected", "logits/chosen", "logits/rejected"}
    if kind == "kto":
        assert metrics["kl"] > 0.01  # not clamped to 0: the loss depends on it (0.033 here)
    for name, value in metrics.items():
        # mean logits are about 5e-3 here; rewards and the KL estimate are differences of float32
        # sequence log-probs near -61 (one ulp: 4e-6), about 1e-2 in size
        small = 1e-8 if name.startswith("logits") else 1e-5 if name.startswith(("kl", "rewards")) else 1e-6
        assert value == pytest.approx(tr._metrics["eval"][name][-1], rel=1e-5, abs=small), name


def test_a_batch_without_undesirable_examples_reports_what_trl_reports(both_sides):
    """No undesirable example: no rejected rewards / logps and no margin, in trl's logs and ours."""
    from megalite.data.unpaired import collate_unpaired
    from megalite.posttrain.kto import KTOObjective

    trainer, _, _, tr, _ = both_sides
    desirable = [k for k in range(8) if trainer.train_ds.items[k].label]
    batch = collate_unpaired([trainer.train_ds.item(k, k) for k in desirable], 64)  # KL rows: the reference reads them
    objective = KTOObjective(KTOConfig("apo_zero_unpaired"), 0.1, trainer.objective.reference)
    objective.prepare([batch])
    objective.begin_step({k: batch[k].sum().item() for k in objective.count_keys})
    with torch.no_grad():
        ours = objective(trainer.model(batch["tokens"], labels=batch["labels"]), batch).item()
    tr.loss_type, tr.beta, tr.desirable_weight, tr.undesirable_weight, tr.calculate_KL = \
        "apo_zero_unpaired", 0.1, 1.0, 1.0, False
    tr._metrics["eval"].clear()
    with torch.no_grad():
        theirs = tr.compute_loss(tr.model, tr.data_collator([tr.train_dataset[k] for k in desirable])).item()
    assert ours == pytest.approx(theirs, rel=1e-5)
    theirs_metrics = {k: v[-1] for k, v in tr._metrics["eval"].items()
                      if k.startswith(("rewards", "logps", "logits", "kl"))}
    assert objective.metrics() == pytest.approx(theirs_metrics, rel=1e-5, abs=1e-6)
    assert set(theirs_metrics) == {"kl", "rewards/chosen", "logps/chosen", "logits/chosen"}


# -- training --------------------------------------------------------------------------------------
@pytest.mark.dist
@pytest.mark.parametrize("layout", [{"world": 2}, {"world": 2, "tensor_model_parallel_size": 2},
                                    {"world": 2, "pipeline_model_parallel_size": 2, "precompute_ref_log_probs": True}],
                         ids=["dp2", "tp2", "pp2_precomputed"])
def test_parallel_layouts_train_like_one_process(tmp_path, models, plain_file, baseline, with_eval, layout):
    """Each layout keeps the micro-batches of 4 examples (DP=2: a rank takes one of the two), so
    the same KL rows; the estimate is all-reduced over the ranks."""
    train_a, _ = baseline
    assert train_a[-1]["lm_loss"] < train_a[0]["lm_loss"] and all(r["kl"] > 0 for r in train_a)
    other = kto_with_eval(models, plain_file, tmp_path, "other", with_eval, **layout)
    assert_same_run(baseline, other, ("lm_loss", "loss", "grad_norm", "kl", "rewards/chosen", "logps/rejected",
                                      "logits/chosen", "logits/rejected"), 1e-5)


def test_precomputed_reference_gives_the_same_training_and_evaluation(tmp_path, models, baseline, with_eval,
                                                                      monkeypatch):
    """Precomputed scores (examples and KL rows) train and evaluate like live ones; a rerun reads
    both tables from the cache next to the examples' cache instead of scoring again."""
    from megalite.posttrain import dpo as dpo_module
    from megalite.posttrain import kto as kto_module

    data = write_jsonl(tmp_path / "kto.jsonl", plain_examples())  # the baseline's examples, their own cache folder
    cached = kto_with_eval(models, data, tmp_path, "cached", with_eval, precompute_ref_log_probs=True)
    assert baseline[1][0]["kl"] > 0
    keys = ("lm_loss", "loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins")
    assert_same_run(baseline, cached, keys, 1e-6)
    assert len(list((tmp_path / "cache" / "kto").glob("*-ref_logps.pt"))) == 2  # the examples', the KL rows'
    for module in (dpo_module, kto_module):  # examples are scored through dpo.score_items, KL rows in kto
        monkeypatch.setattr(module, "score_once", lambda *a: pytest.fail("scored again despite the cache"))
    again = kto_with_eval(models, data, tmp_path, "again", with_eval, precompute_ref_log_probs=True)
    assert_same_run(cached, again, keys, 0.0)


def test_resume_is_bit_exact_with_the_same_command(tmp_path, models, plain_file, baseline, with_eval):
    """Stopped after step 2 (--exit-interval) and resumed from --save: step 3 and the held-out
    metrics equal the uninterrupted baseline's bit for bit (same samples, KL rows, optimizer state)."""
    save = str(tmp_path / "run")
    first, _ = kto_with_eval(models, plain_file, tmp_path, "first", with_eval, save=save, exit_interval=2)
    resumed, evals = kto_with_eval(models, plain_file, tmp_path, "second", with_eval, save=save)
    train_a, evals_a = baseline
    assert [r["iteration"] for r in first + resumed] == [1, 2, 3] and len(evals) == len(evals_a) == 1
    for ours, theirs in ((first + resumed, train_a), (evals, evals_a)):
        for a, b in zip(ours, theirs):
            assert {k: v for k, v in a.items() if k in METRIC_KEYS} == {k: v for k, v in b.items() if k in METRIC_KEYS}


def test_valid_fraction_trains_and_evaluates_with_the_precomputed_reference(tmp_path, models, plain_file, swapped):
    """--pref-valid-fraction holds out 4 of the 16 examples; their precomputed table (keyed by their
    position in the held-out share) gives the live reference's held-out metrics."""
    kw = dict(pref_valid_fraction=0.25, eval_iters=1, eval_interval=3, **swapped)
    runs = [kto_with_eval(models, plain_file, tmp_path, name, {}, precompute_ref_log_probs=pre, **kw)
            for name, pre in (("fraction_live", False), ("fraction_precomputed", True))]
    assert_same_run(*runs, ("lm_loss", "loss", "kl", "rewards/chosen", "rewards/margins"), 1e-6)


def test_lora_reference_is_the_base_with_adapters_disabled(tmp_path, models, plain_file):
    kw = dict(lora_rank=4, lora_alpha=8, lr=1e-2)
    disabled = kto(models, plain_file, tmp_path, "disabled", ref_load=None, **kw)
    copy = kto(models, plain_file, tmp_path, "copy", ref_load=models["policy_ck"], **kw)
    assert disabled[0]["kl"] == 0.0 and disabled[0]["rewards/chosen"] == 0.0  # adapters start at zero
    assert_runs_match(copy, disabled, ("lm_loss", "kl", "rewards/chosen", "rewards/rejected"), rel=1e-6, abs=1e-7)


def test_apo_zero_unpaired_trains_without_kl_rows(tmp_path, models, plain_file, swapped):
    live = kto(models, plain_file, tmp_path, "apo", kto_loss_type="apo_zero_unpaired", **swapped)
    cached = kto(models, plain_file, tmp_path, "apo_cached", kto_loss_type="apo_zero_unpaired",
                 precompute_ref_log_probs=True, **swapped)
    assert all(r["kl"] == 0.0 for r in live) and live[-1]["lm_loss"] < live[0]["lm_loss"]
    assert_runs_match(live, cached, ("lm_loss", "grad_norm", "rewards/chosen", "rewards/rejected"), rel=1e-6, abs=1e-7)
