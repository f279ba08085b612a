"""dpo_gpt.py on tiny models: pairs tokenized exactly as trl's DPOTrainer does, every loss type
and its metrics equal to trl's on the HF model we train, batch-cut / data- / tensor-parallel
invariance, bit-exact resume, the LoRA reference, and clear errors on bad pairs."""

import json

import pytest
import torch

from megalite.config import inherit_model_settings, parse_config, validate
from megalite.errors import MegaliteError
from tests.conftest import assert_runs_match, read_metrics, to_argv, write_jsonl
from tests.dist_utils import run_distributed
from tests.tokenizers_zoo import CHATML, WORDS, bytelevel

transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")

TEMPLATE = CHATML


def _text(seed, n):
    return " ".join(WORDS[(seed * 7 + k * 3) % len(WORDS)] for k in range(n))


def plain_pairs(n=16):
    return [{"prompt": _text(i, 3 + i % 4), "chosen": " " + _text(i + 1, 2 + i % 3),
             "rejected": " " + _text(i + 5, 2 + (i + 1) % 3)} for i in range(n)]  # lengths differ


def messy_pairs(n=3):
    """Text as users have it: prompts starting with a newline or spaces, runs of spaces, tabs, accents,
    typographic quotes, CJK, emoji, full-width letters, completions already ending with the EOS text."""
    return [{"prompt": "\nQ: what  is\tblue?\n\nA:", "chosen": " the sky\n", "rejected": " the  sea</s>"},
            {"prompt": "  Grüße aus Zürich \u2014 \u201cquoted\u201d \u2026", "chosen": "\n\nfish swim",
             "rejected": " birds\tfly "},
            {"prompt": "\u00a33bn, \u6771\u4eac \U0001f600 \uff46\uff55\uff4c\uff4c", "chosen": " water</s>",
             "rejected": " clouds  "}][:n]


def chat_pairs(n=16):
    return [{"prompt": [{"role": "user", "content": p["prompt"]}],
             "chosen": [{"role": "assistant", "content": p["chosen"].strip()}],
             "rejected": [{"role": "assistant", "content": p["rejected"].strip()}]} for p in plain_pairs(n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two random tiny Llamas with the zoo's byte-level BPE as HF folders (policy, reference), and
    both imported as megalite checkpoints. Their 384 ids cover every tokenizer of the zoo."""
    from megalite.hf.convert import import_hf

    root = tmp_path_factory.mktemp("dpo")
    folders = {}
    for name, seed in (("policy", 0), ("reference", 1)):
        folder = root / name
        torch.manual_seed(seed)
        cfg = transformers.LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        transformers.LlamaForCausalLM(cfg).save_pretrained(str(folder))
        bytelevel(folder)
        folders[name] = str(folder)
    import_hf(folders["reference"], str(root / "reference_ck"), dtype="fp32")
    import_hf(folders["policy"], str(root / "policy_ck"), dtype="fp32")
    return {**folders, "reference_ck": str(root / "reference_ck"), "policy_ck": str(root / "policy_ck"),
            "root": root}


def dpo_args(models, data, tmp_path, name, **kw):
    kw = {"load": models["policy_ck"], "ref_load": models["reference_ck"], "pref_data": data,
          "tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": models["policy"], "seq_length": 64,
          "train_iters": 3, "micro_batch_size": 4, "global_batch_size": 8, "lr": 1e-3, "lr_warmup_iters": 0,
          "eval_iters": 0, "log_interval": 1, "num_workers": 0, "seed": 7,
          "metrics_file": str(tmp_path / f"{name}.jsonl"), **kw}
    return to_argv(kw)


def _dpo(rank, world, argv):
    from dpo_gpt import main

    main(argv)


def train(models, data, tmp_path, name, world=1, **kw):
    argv = dpo_args(models, data, tmp_path, name, **kw)
    run_distributed(_dpo, world, argv)
    return read_metrics(str(tmp_path / f"{name}.jsonl"))[0]


@pytest.fixture(scope="module")
def plain_file(models):
    return write_jsonl(models["root"] / "plain.jsonl", plain_pairs())


@pytest.fixture(scope="module")
def baseline(models, plain_file):
    """Three steps of the default run (one process, 2 micro-batches of 4 pairs a step)."""
    return train(models, plain_file, models["root"], "baseline")


@pytest.fixture(scope="module")
def ten_steps(models, plain_file):
    return train(models, plain_file, models["root"], "ten_steps", train_iters=10)


@pytest.fixture(scope="module")
def chat_file(models):
    return write_jsonl(models["root"] / "chat.jsonl", chat_pairs())


def trl_trainer(models, pairs, tokenizer_dir=None, **args):
    """trl's DPOTrainer on our HF policy and reference (CPU, no hub, no logging), with the models'
    tokenizer or the one in ``tokenizer_dir``."""
    from datasets import Dataset

    hf_tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir or models["policy"])
    policy = transformers.AutoModelForCausalLM.from_pretrained(models["policy"], dtype=torch.float32)
    ref = transformers.AutoModelForCausalLM.from_pretrained(models["reference"], dtype=torch.float32)
    config = trl.DPOConfig(output_dir=str(models["root"] / "trl"), report_to=[], use_cpu=True, bf16=False,
                           max_length=None, **args)
    return trl.DPOTrainer(model=policy, ref_model=ref, args=config, train_dataset=Dataset.from_list(pairs),
                          processing_class=hf_tok)


# -- data --------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [plain_pairs, messy_pairs, chat_pairs])
def test_token_ids_equal_trl(models, zoo, make):
    """Each tokenizer of the zoo, read by megalite as its --tokenizer-type and by trl as its HF
    folder, with its own chat template: the same prompt, chosen and rejected ids."""
    from megalite.data.preference import tokenize_pair

    pairs = make(6)
    tr = trl_trainer(models, pairs, zoo.hf_dir)
    tok = zoo.megalite
    for pair, theirs in zip(pairs, tr.train_dataset):
        ours = tokenize_pair(tok, zoo.template, pair)
        assert list(ours) == [theirs["prompt_ids"], theirs["chosen_ids"], theirs["rejected_ids"]]
    if make is not chat_pairs:  # the (appended) EOS text is the one EOS id; BOS where the post-processor adds it
        assert ours[1][-1] == tok.eod and tok.eod not in ours[1][:-1]
        assert (ours[0][0] == tok.bos) == zoo.adds_bos
    else:  # the template's BOS text is the one BOS id (not doubled by the post-processor)
        assert ours[0].count(tok.bos) == ("bos_token" in zoo.template)


def test_length_policy_is_counted():
    from megalite.data.preference import fit_pair

    stats = {"pairs": 0, "prompt_truncated": 0, "truncated": 0, "dropped": 0}
    assert fit_pair(list(range(10)), [1, 2], [3], 9, None, stats) is None  # the prompt fills the row
    (c, cm), (r, rm) = fit_pair(list(range(10)), [1, 2], [3], 9, 4, stats)
    assert c.tolist() == [6, 7, 8, 9, 1, 2] and cm.tolist() == [0, 0, 0, 0, 1, 1] and r.tolist() == [6, 7, 8, 9, 3]
    (c, cm), _ = fit_pair([5, 6], list(range(20)), [3], 9, None, stats)
    assert len(c) == 10 and cm.sum() == 8
    assert stats == {"pairs": 2, "prompt_truncated": 1, "truncated": 1, "dropped": 1}


def test_pairs_are_cached_and_rebuilt_when_the_file_changes(tmp_path, models):
    from megalite.config import DPOConfig
    from megalite.data.preference import build_pairs, tokenize_pair
    from megalite.data.tokenizer import HuggingFaceTokenizer

    tok = HuggingFaceTokenizer(models["policy"])
    path = write_jsonl(tmp_path / "p.jsonl", plain_pairs(5))
    cfg = DPOConfig(pref_data=str(path), max_prompt_length=4)
    first, stats = build_pairs(cfg, TEMPLATE, 64, tok)
    again, _ = build_pairs(cfg, TEMPLATE, 64, tok)
    assert first.stores[0].built and not again.stores[0].built and stats["pairs"] == len(again) == 5
    prompt, chosen, _ = tokenize_pair(tok, TEMPLATE, plain_pairs(5)[3])
    ids, mask = again[3][0]
    assert ids.tolist() == (prompt[-4:] + chosen) and mask.tolist() == [False] * 4 + [True] * len(chosen)
    write_jsonl(path, plain_pairs(6))
    changed, _ = build_pairs(cfg, TEMPLATE, 64, tok)
    assert changed.stores[0].built and len(changed) == 6


def test_valid_fraction_holds_out_a_seeded_share(tmp_path, models):
    from megalite.config import DPOConfig
    from megalite.data.preference import build_pairs
    from megalite.data.tokenizer import HuggingFaceTokenizer

    path = write_jsonl(tmp_path / "p.jsonl", plain_pairs(16))
    pairs, _ = build_pairs(DPOConfig(pref_data=str(path)), TEMPLATE, 64, HuggingFaceTokenizer(models["policy"]))
    train_part, held_out = pairs.split(0.25, seed=3)
    assert (len(train_part), len(held_out)) == (12, 4)
    assert sorted(train_part.picks.tolist() + held_out.picks.tolist()) == list(range(16))
    assert held_out[0][0][0].tolist() == pairs[int(held_out.picks[0])][0][0].tolist()
    assert pairs.split(0.25, seed=3)[1].picks.tolist() == held_out.picks.tolist()
    with pytest.raises(MegaliteError, match="--pref-valid-fraction 1.0 must be in"):
        pairs.split(1.0, seed=3)
    with pytest.raises(MegaliteError, match="give --pref-valid-data or --pref-valid-fraction, not both"):
        train(models, path, tmp_path, "both_valid", pref_valid_data=str(path), pref_valid_fraction=0.1)


@pytest.mark.parametrize("record, message", [
    ({"prompt": "a", "chosen": "b"}, "missing 'rejected'"),
    ({"prompt": "a", "chosen": "b", "rejected": "b"}, "chosen is identical to rejected"),
    ({"prompt": " ", "chosen": "b", "rejected": "c"}, "empty prompt"),
    ({"prompt": "a", "chosen": [{"role": "assistant", "content": "b"}], "rejected": "c"},
     "prompt, chosen and rejected must all be strings"),
])
def test_bad_pairs_name_file_and_record(tmp_path, record, message):
    from megalite.data.preference import load_pairs
    from megalite.data.sft_formats import SFTSource

    path = write_jsonl(tmp_path / "bad.jsonl", [plain_pairs(1)[0], record])
    with pytest.raises(MegaliteError, match=f"bad.jsonl: record 1: {message}"):
        load_pairs(SFTSource(str(path)))


@pytest.mark.parametrize("flags, message", [
    ({"dpo_loss_type": "sigmoid,kto"}, "--dpo-loss-type 'sigmoid,kto': unknown \\['kto'\\]"),
    ({"dpo_loss_type": "sigmoid,hinge", "dpo_loss_weights": "1"}, "--dpo-loss-weights has 1 values for 2"),
    ({"dpo_loss_type": "robust", "dpo_label_smoothing": 0.5}, "--dpo-label-smoothing must be in"),
    ({"dpo_loss_type": "simpo,sigmoid"}, "simpo is reference-free: combine it only with sft"),
])
def test_bad_loss_flags_are_named(flags, message):
    from megalite.config import DPOConfig
    from megalite.posttrain.dpo import parse_losses

    with pytest.raises(MegaliteError, match=message):
        parse_losses(DPOConfig(**flags))


def test_dataset_info_ranking_entries(tmp_path, models):
    from megalite.data.preference import load_pairs
    from megalite.data.sft_formats import resolve_sources

    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Say hi", "input": "politely", "chosen": "Hello!",
                                        "rejected": "Go away."}])
    write_jsonl(tmp_path / "s.jsonl", [{"conversations": [{"from": "human", "value": "Say hi"}],
                                        "chosen": {"from": "gpt", "value": "Hello!"},
                                        "rejected": {"from": "gpt", "value": "Go away."}}])
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "a": {"file_name": "a.jsonl", "ranking": True},
        "s": {"file_name": "s.jsonl", "ranking": True, "formatting": "sharegpt"},
        "sft": {"file_name": "a.jsonl"}}))
    want = {"prompt": [{"role": "user", "content": "Say hi\npolitely"}],
            "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "Go away."}]}
    a, s = resolve_sources("a,s", str(tmp_path), "--pref-data", ranking=True)
    assert load_pairs(a)[0][2] == want
    assert load_pairs(s)[0][2] == {**want, "prompt": [{"role": "user", "content": "Say hi"}]}
    with pytest.raises(MegaliteError, match="'sft': is not a ranking"):
        resolve_sources("sft", str(tmp_path), "--pref-data", ranking=True)


# -- losses ------------------------------------------------------------------------------------
LOSSES = [("sigmoid", {}), ("hinge", {}), ("ipo", {}), ("robust", {"label_smoothing": 0.2}), ("bco_pair", {}),
          ("nca_pair", {}), ("sppo_hard", {}), ("apo_zero", {}), ("apo_down", {}), ("sigmoid_norm", {}),
          ("sft", {}), ("sigmoid,sft", {"loss_weights": [1.0, 0.5]})]


@pytest.fixture(scope="module")
def both_sides(models, chat_file):
    """Our trainer's model and DPO objective, and trl's DPOTrainer, on the same 8 pairs."""
    from megalite.checkpoint.layout import saved_settings
    from megalite.data.preference import PreferenceDataset, build_pairs, collate_pairs
    from megalite.posttrain.dpo import DPOStage
    from megalite.training.trainer import Trainer

    tmp = models["root"]
    cfg = parse_config(dpo_args(models, chat_file, tmp, "both"))
    stage = DPOStage()
    stage.prepare(cfg)
    inherit_model_settings(cfg, saved_settings(cfg.checkpoint.load))
    trainer = Trainer(validate(cfg), torch.device("cpu"), stage)
    pairs, _ = build_pairs(cfg.dpo, cfg.chat.chat_template, 64, trainer.tokenizer)
    batch = collate_pairs([PreferenceDataset(pairs).item(k) for k in range(8)])
    trainer.model.eval()
    with torch.no_grad():
        losses = trainer.model(batch["tokens"], labels=batch["labels"])
    tr = trl_trainer(models, chat_pairs()[:8], beta=0.1)
    tr.model.eval()
    trl_batch = tr.data_collator([tr.train_dataset[i] for i in range(8)])
    return trainer, batch, losses, tr, trl_batch


@pytest.mark.parametrize("kind, extra", LOSSES, ids=[k for k, _ in LOSSES])
def test_loss_and_metrics_equal_trl(both_sides, kind, extra):
    from megalite.posttrain.dpo import DPOObjective

    trainer, batch, losses, tr, trl_batch = both_sides
    dpo = trainer.cfg.dpo
    smoothing = extra.get("label_smoothing", 0.0)
    weights = extra.get("loss_weights")
    objective = DPOObjective(type(dpo)(**{**vars(dpo), "dpo_loss_type": kind, "dpo_label_smoothing": smoothing,
                                          "dpo_loss_weights": ",".join(map(str, weights)) if weights else None}),
                             trainer.objective.reference)
    objective.prepare([batch])
    objective.begin_step({k: batch[k].sum().item() for k in objective.count_keys})
    ours = objective(losses, batch).item()

    tr.loss_types, tr.loss_weights = kind.split(","), weights or [1.0]
    tr.label_smoothing = smoothing
    tr._metrics["eval"].clear()
    with torch.no_grad():
        theirs = tr._compute_loss(tr.model, trl_batch, False).item()
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    metrics = objective.metrics()
    for name, value in metrics.items():
        assert value == pytest.approx(tr._metrics["eval"][name][-1], rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("ls, alpha", [(0.0, 0.0), (0.1, 0.5)], ids=["simpo", "simpo_smoothed_with_nll"])
def test_simpo_equals_trl_cpo(both_sides, ls, alpha):
    """SimPO (reference-free, length-averaged) against trl's CPOTrainer formulas on the HF export's
    logits for trl's own batch: loss (with cpo_alpha's NLL term as our weighted ``sft``) and metrics."""
    import dataclasses
    from types import SimpleNamespace

    from trl.experimental.cpo import CPOTrainer

    from megalite.posttrain.dpo import DPOObjective

    trainer, batch, losses, tr, trl_batch = both_sides
    dpo = dataclasses.replace(trainer.cfg.dpo, dpo_loss_type="simpo,sft" if alpha else "simpo",
                              dpo_loss_weights=f"1,{alpha}" if alpha else None, dpo_beta=2.0, simpo_gamma=0.7,
                              dpo_label_smoothing=ls)
    objective = DPOObjective(dpo)
    objective.begin_step({k: batch[k].sum().item() for k in objective.count_keys})
    ours = objective(losses, batch).item()

    labels = trl_batch["input_ids"].masked_fill(trl_batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        logits = tr.model(trl_batch["input_ids"], attention_mask=trl_batch["attention_mask"]).logits
    logps = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    c, r = logps.chunk(2)
    cpo = SimpleNamespace(alpha=0.0, beta=2.0, loss_type="simpo", simpo_gamma=0.7, label_smoothing=ls,
                          accelerator=SimpleNamespace(device="cpu"))
    pair_losses, rc, rr = CPOTrainer.cpo_loss(cpo, c, r)
    n = len(c)
    nll = torch.nn.functional.cross_entropy(logits[:n, :-1].flatten(0, 1), labels[:n, 1:].flatten())
    assert ours == pytest.approx((pair_losses.mean() + alpha * nll).item(), rel=1e-5)
    want = {"rewards/chosen": rc.mean(), "rewards/rejected": rr.mean(), "rewards/accuracies": (rc > rr).float().mean(),
            "rewards/margins": (rc - rr).mean(), "logps/chosen": c.mean(), "logps/rejected": r.mean()}
    metrics = objective.metrics()
    for name, value in want.items():
        assert metrics[name] == pytest.approx(value.item(), rel=1e-5, abs=1e-6), name


# -- training --------------------------------------------------------------------------------------
def test_loss_does_not_depend_on_how_the_batch_is_cut(tmp_path, models, plain_file, baseline):
    one = train(models, plain_file, tmp_path, "mb8", micro_batch_size=8)
    assert len(one) == 3 and one[0]["rewards/accuracies"] is not None
    assert one[-1]["lm_loss"] < one[0]["lm_loss"]
    assert_runs_match(one, baseline, ("lm_loss", "grad_norm", "rewards/margins", "logps/chosen"), rel=1e-5, abs=1e-5)


@pytest.mark.dist
@pytest.mark.parametrize("layout", [{"world": 2, "micro_batch_size": 2},
                                    {"world": 2, "tensor_model_parallel_size": 2, "sequence_parallel": True},
                                    {"world": 2, "pipeline_model_parallel_size": 2, "micro_batch_size": 2,
                                     "precompute_ref_log_probs": True}], ids=["dp2", "tp2_sp", "pp2_precomputed"])
def test_parallel_layouts_train_like_one_process(tmp_path, models, plain_file, ten_steps, layout):
    """Ten steps in each layout equal ten steps of one process (1e-5)."""
    other = train(models, plain_file, tmp_path, "other", train_iters=10, **layout)
    assert len(other) == 10
    assert_runs_match(ten_steps, other,
                      ("lm_loss", "grad_norm", "rewards/chosen", "rewards/accuracies", "logits/rejected"))


def test_resume_is_bit_exact_with_the_same_command(tmp_path, models, plain_file):
    full = train(models, plain_file, tmp_path, "full", train_iters=4)
    save = str(tmp_path / "run")
    train(models, plain_file, tmp_path, "first", train_iters=4, save=save, exit_interval=2)
    resumed = train(models, plain_file, tmp_path, "second", train_iters=4, save=save)
    assert [r["iteration"] for r in resumed] == [3, 4]
    assert [r["lm_loss"] for r in resumed] == [r["lm_loss"] for r in full[2:]]


def test_simpo_trains_without_a_reference_model(tmp_path, models, plain_file):
    run = train(models, plain_file, tmp_path, "simpo", ref_load=None, dpo_loss_type="simpo", dpo_beta=2.0,
                train_iters=4)
    assert run[-1]["lm_loss"] < run[0]["lm_loss"] and run[-1]["rewards/margins"] > run[0]["rewards/margins"]
    with pytest.raises(MegaliteError, match="simpo uses no reference model"):
        train(models, plain_file, tmp_path, "simpo_ref", dpo_loss_type="simpo")


def test_lora_reference_is_the_base_with_adapters_disabled(tmp_path, models, plain_file):
    """With LoRA the reference pass runs the policy with its adapters off: the same numbers as a
    frozen copy of the base (--ref-load the base checkpoint)."""
    kw = dict(lora_rank=4, lora_alpha=8, lr=1e-2)
    disabled = train(models, plain_file, tmp_path, "disabled", ref_load=None, **kw)
    copy = train(models, plain_file, tmp_path, "copy", ref_load=models["policy_ck"], **kw)
    assert disabled[0]["rewards/margins"] == 0.0  # adapters start at zero: policy == reference
    assert_runs_match(copy, disabled, ("lm_loss", "rewards/chosen", "rewards/rejected"), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("kw", [{}, {"lora_rank": 4, "lora_alpha": 8, "lr": 1e-2, "ref_load": None}],
                         ids=["copy", "lora"])
def test_precomputed_reference_gives_the_same_training(tmp_path, models, plain_file, baseline, kw, monkeypatch):
    """Precomputed scores train exactly like live ones; a rerun reads them from the cache next
    to the pairs' cache instead of scoring again, and other reference weights are scored anew."""
    from megalite.posttrain import dpo

    data = write_jsonl(tmp_path / "pairs.jsonl", plain_pairs())  # its own cache folder
    live = train(models, data, tmp_path, "live", **kw) if kw else baseline
    cached = train(models, data, tmp_path, "cached", precompute_ref_log_probs=True, **kw)
    assert_runs_match(live, cached, ("lm_loss", "grad_norm", "rewards/chosen", "rewards/rejected"), rel=1e-6, abs=1e-7)
    assert len(list((tmp_path / "cache" / "pref").glob("*-ref_logps.pt"))) == 1
    scored = dpo.score_items
    monkeypatch.setattr(dpo, "score_items", lambda *a: pytest.fail("scored again despite the cache"))
    again = train(models, data, tmp_path, "again", precompute_ref_log_probs=True, **kw)
    assert [r["lm_loss"] for r in again] == [r["lm_loss"] for r in cached]
    monkeypatch.setattr(dpo, "score_items", scored)
    train(models, data, tmp_path, "other_ref", precompute_ref_log_probs=True, train_iters=1,
          **{**kw, "load": models["reference_ck"], "ref_load": models["policy_ck"] if not kw else None})
    assert len(list((tmp_path / "cache" / "pref").glob("*-ref_logps.pt"))) == 2


def test_precomputed_reference_scores_held_out_pairs_too(tmp_path, models, plain_file):
    """Held-out pairs have their own precomputed table (their indices are not the training set's)."""
    held_out = write_jsonl(tmp_path / "valid.jsonl", plain_pairs()[::-1][:8])
    runs = {}
    for name, kw in (("live", {}), ("precomputed", {"precompute_ref_log_probs": True})):
        train(models, plain_file, tmp_path, name, pref_valid_data=held_out, skip_train=True, eval_iters=1, **kw)
        runs[name] = read_metrics(str(tmp_path / f"{name}.jsonl"))[1][0]
    assert runs["live"]["rewards/margins"] != 0.0
    for key in ("loss", "rewards/chosen", "rewards/margins"):
        assert runs["precomputed"][key] == pytest.approx(runs["live"][key], rel=1e-6), key


@pytest.mark.dist
def test_precomputed_reference_with_data_parallelism(tmp_path, models, plain_file):
    """Each data-parallel rank scores a share of the pairs; the table they sum to is complete."""
    kw = dict(global_batch_size=12, precompute_ref_log_probs=True)
    one = train(models, plain_file, tmp_path, "one", **kw)
    dp2 = train(models, plain_file, tmp_path, "dp2", world=2, micro_batch_size=3, **kw)  # 8 pairs a rank: wraps
    for a, b in zip(one, dp2):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5), a["iteration"]
        assert b["rewards/chosen"] == pytest.approx(a["rewards/chosen"], rel=1e-4, abs=1e-6), a["iteration"]


def test_held_out_pairs_report_loss_and_rewards(tmp_path, models, plain_file):
    """--pref-valid-data: the validation loss and trl's reward metrics; on the training pairs
    themselves, before any step, they equal those of a first step over all 16 pairs."""
    held_out = write_jsonl(tmp_path / "valid.jsonl", plain_pairs())
    train(models, plain_file, tmp_path, "eval", pref_valid_data=held_out, skip_train=True, eval_iters=1,
          global_batch_size=16)
    _, evals = read_metrics(str(tmp_path / "eval.jsonl"))
    assert [e["split"] for e in evals] == ["valid"]
    full = train(models, plain_file, tmp_path, "full_batch", global_batch_size=16, train_iters=1)[0]
    for key in ("rewards/chosen", "rewards/accuracies", "logps/rejected"):
        assert evals[0][key] == pytest.approx(full[key], rel=1e-5, abs=1e-6), key
    assert evals[0]["loss"] == pytest.approx(full["lm_loss"], rel=1e-5)
