"""LoRA: adapters that peft reads back with the same logits, merged export, TP splits,
frozen base, adapter-only optimizer state, bit-exact resume, peft import."""

import json
import os

import pytest
import torch

from megalite.checkpoint.reshard import SavedCheckpoint, load_full_state
from megalite.config import parse_config, validate
from megalite.errors import MegaliteError
from megalite.eval.loading import load_model
from megalite.hf.convert import export_hf
from megalite.posttrain.lora import lora_scale
from megalite.posttrain.lora_io import export_peft
from pretrain_gpt import main as pretrain_gpt
from tests.conftest import read_metrics, run_main, tiny_model_args
from tests.dist_utils import run_distributed

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

# SwiGLU (separate gate / up), grouped-query attention (4 heads, 2 groups), untied output layer
MODEL = {"untie_embeddings_and_output_weights": True}
LORA = {"lora_rank": 4, "lora_alpha": 8, "lr": 1e-2, "eval_iters": 0}


def lora_args(corpus, base, save, **kw):
    return tiny_model_args(*corpus, **{**MODEL, **LORA, "load": base, "finetune": True, "save": save, **kw})


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_corpus):
    ck = str(tmp_path_factory.mktemp("base") / "ck")
    pretrain_gpt(tiny_model_args(*tiny_corpus, **MODEL, save=ck, train_iters=2, eval_iters=0))
    return ck


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_corpus, base):
    """A 3-step LoRA run on every linear layer: (checkpoint, its peft export)."""
    out = tmp_path_factory.mktemp("lora")
    ck = str(out / "ck")
    pretrain_gpt(lora_args(tiny_corpus, base, ck, train_iters=3))
    peft_dir = str(out / "peft")
    run_main("tools/convert_checkpoint.py", "--to-peft", "--load", ck, "--save", peft_dir)
    return ck, peft_dir


TOKENS = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))


def our_logits(ck):
    model, _ = load_model(ck)
    with torch.no_grad():
        return model(TOKENS)


def test_peft_reads_our_adapter_and_merged_export_matches(tmp_path, base, lora_run):
    ck, peft_dir = lora_run
    config = json.load(open(os.path.join(peft_dir, "adapter_config.json")))
    assert config["r"] == 4 and sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    export_hf(base, str(tmp_path / "hf_base"), dtype="fp32")
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf_base"), dtype=torch.float32)
    with torch.no_grad():
        before = hf_base(TOKENS).logits
    with_adapter = peft.PeftModel.from_pretrained(hf_base, peft_dir).eval()
    ours = our_logits(ck)
    with torch.no_grad():
        theirs = with_adapter(TOKENS).logits
    assert (ours - before).abs().max() > 1e-3  # the adapters changed the model
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    run_main("tools/convert_checkpoint.py", "--to-hf", "--load", ck, "--save", str(tmp_path / "merged"),
             "--dtype", "fp32")
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(merged(TOKENS).logits, ours, rtol=1e-5, atol=1e-5)


def load_adapter_logits(tmp_path, corpus, base, adapter_dir):
    """Our model after --load-adapter (rank, alpha, targets, rsLoRA from its adapter_config.json),
    saved as it was read (--train-iters 0)."""
    out = str(tmp_path / "from_adapter")
    pretrain_gpt(tiny_model_args(*corpus, **MODEL, load=base, finetune=True, save=out,
                                          load_adapter=adapter_dir, train_iters=0, eval_iters=0))
    return our_logits(out)


def test_load_adapter_round_trip(tmp_path, tiny_corpus, base, lora_run):
    ck, peft_dir = lora_run
    assert torch.equal(load_adapter_logits(tmp_path, tiny_corpus, base, peft_dir), our_logits(ck))


def test_reshard_keeps_the_adapters(tmp_path, lora_run):
    """--reshard of a LoRA checkpoint to TP=2: the same adapters and optimizer state, gathered."""
    ck, _ = lora_run
    run_main("tools/convert_checkpoint.py", "--reshard", "--load", ck, "--save", str(tmp_path / "tp2"),
             "--target-tensor-parallel-size", "2")
    before, after = SavedCheckpoint(ck), SavedCheckpoint(str(tmp_path / "tp2"))
    assert os.path.isfile(tmp_path / "tp2" / "iter_0000003" / "mp_rank_01" / "model_optim_rng.pt")
    assert set(after.weights) == set(before.weights) and all(".adapter." in n for n in after.weights)
    for name in before.weights:
        assert torch.equal(before.weights[name], after.weights[name]), name
        assert torch.equal(before.states["exp_avg"][name], after.states["exp_avg"][name]), name


def test_adapter_made_by_peft_with_rslora_and_some_targets(tmp_path, tiny_corpus, base):
    """An adapter peft itself made (random A and B, rsLoRA, only q_proj, v_proj and down_proj:
    k rows of the fused QKV get nothing) loads with --load-adapter and gives peft's logits;
    rsLoRA scales by alpha / sqrt(r) in both."""
    assert lora_scale(8, 4, True) == 4.0 and lora_scale(8, 4, False) == 2.0
    export_hf(base, str(tmp_path / "hf_base"), dtype="fp32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf_base"), dtype=torch.float32)
    config = peft.LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
                             init_lora_weights=False, task_type="CAUSAL_LM")
    torch.manual_seed(0)
    theirs_model = peft.get_peft_model(hf, config).eval()
    theirs_model.save_pretrained(str(tmp_path / "adapter"))
    with torch.no_grad():
        theirs = theirs_model(TOKENS).logits
    ours = load_adapter_logits(tmp_path, tiny_corpus, base, str(tmp_path / "adapter"))
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    settings = load_full_state(str(tmp_path / "from_adapter"))[1]["lora"]
    assert settings["use_rslora"] is True and settings["lora_target"] == "down_proj,q_proj,v_proj"


def test_frozen_base_and_adapter_only_optimizer_state(tmp_path, tiny_corpus, base):
    """bf16 LoRA: base weights stay bf16 and bitwise unchanged; the optimizer holds fp32
    masters and Adam moments for the adapters only; checkpoints hold only the adapters."""
    from megalite.checkpoint.layout import saved_settings
    from megalite.config import inherit_model_settings
    from megalite.parallel import state
    from megalite.posttrain.lora_io import LoRA, inherit_lora_settings
    from megalite.training.stage import Stage
    from megalite.training.trainer import Trainer

    cfg = parse_config(lora_args(tiny_corpus, base, str(tmp_path / "ck"), bf16=True, train_iters=3))
    saved = saved_settings(base)
    inherit_model_settings(cfg, saved)
    inherit_lora_settings(cfg, saved)
    validate(cfg)
    trainer = Trainer(cfg, torch.device("cpu"), Stage([LoRA()]))
    try:
        named = dict(trainer.model.named_parameters())
        frozen = {n: p.detach().clone() for n, p in named.items() if not p.requires_grad}
        adapters = {n: p for n, p in named.items() if p.requires_grad}
        assert adapters and all(".adapter." in n for n in adapters)
        assert all(p.dtype == torch.bfloat16 for p in frozen.values())
        trainer.train()
        for n, before in frozen.items():
            assert torch.equal(named[n], before), n
        opt = trainer.optimizer
        state_bytes = sum(t.numel() * t.element_size() for st in opt.adam.state.values()
                          for t in (st["exp_avg"], st["exp_avg_sq"]))
        state_bytes += sum(x.master.numel() * x.master.element_size() for x in opt.pieces)
        n_adapter = sum(p.numel() for p in adapters.values())
        assert state_bytes == 3 * 4 * n_adapter  # fp32 master, exp_avg, exp_avg_sq
        assert trainer.grads.buffer.numel() == n_adapter  # no gradient buffer for the base
    finally:
        state.destroy()
    saved_model, args = load_full_state(str(tmp_path / "ck"))
    assert set(saved_model) == set(adapters)
    assert args["lora"]["lora_base"] == os.path.abspath(base) and args["lora"]["lora_base_iteration"] == 2


def test_resume_is_bit_exact(tmp_path, tiny_corpus, base):
    whole = str(tmp_path / "whole")
    pretrain_gpt(lora_args(tiny_corpus, base, whole, train_iters=8, lora_dropout=0.1))
    parts = str(tmp_path / "parts")
    pretrain_gpt(lora_args(tiny_corpus, base, parts, train_iters=8, lora_dropout=0.1, exit_interval=4))
    # resume: --load the LoRA run's checkpoint (its base and settings come from it)
    pretrain_gpt(tiny_model_args(*tiny_corpus, **MODEL, lr=1e-2, eval_iters=0, load=parts, save=parts,
                                          train_iters=8))
    a, _ = read_metrics(os.path.join(whole, "metrics.jsonl"))
    b, _ = read_metrics(os.path.join(parts, "metrics.jsonl"))
    assert [r["iteration"] for r in b] == list(range(1, 9))
    assert [r["lm_loss"] for r in a] == [r["lm_loss"] for r in b]
    wa, wb = load_full_state(whole)[0], load_full_state(parts)[0]
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


# name: (model settings, how the 2-process run is laid out)
VARIANTS = {"tp2-gqa": ({}, {"tensor_model_parallel_size": 2}),
            "tp2-mqa-replicated-kv-sp": ({"num_query_groups": 1}, {"tensor_model_parallel_size": 2,
                                                                    "sequence_parallel": True}),
            "dp2-distributed-optimizer": ({}, {"use_distributed_optimizer": True}),
            "pp2": ({}, {"pipeline_model_parallel_size": 2})}


def _two_rank_runs(rank, world, corpus, folders):
    for name, (model, layout) in VARIANTS.items():
        base, _, two = folders[name]
        pretrain_gpt(lora_args(corpus, base, two, train_iters=10, **model, **layout))


@pytest.mark.dist
def test_two_ranks_match_one(tmp_path, tiny_corpus, base):
    """TP=2 (adapters split with their base; with one key/value group its head and its B rows
    are replicated; sequence parallel), DP=2 with the distributed optimizer and PP=2 give one
    process's losses and gradient norms and, gathered, its adapters."""
    folders, references = {}, {}  # one-process run per model: (its base, its LoRA run)
    for name, (model, _) in VARIANTS.items():
        key = repr(sorted(model.items()))
        if key not in references:
            own_base, one = base, str(tmp_path / name / "one")
            if model:
                own_base = str(tmp_path / name / "base")
                pretrain_gpt(tiny_model_args(*tiny_corpus, **MODEL, save=own_base, train_iters=1,
                                                      eval_iters=0, **model))
            pretrain_gpt(lora_args(tiny_corpus, own_base, one, train_iters=10, **model))
            references[key] = (own_base, one)
        folders[name] = (*references[key], str(tmp_path / name / "two"))
    run_distributed(_two_rank_runs, 2, tiny_corpus, folders)
    for name, (_, one, two) in folders.items():
        a, _ = read_metrics(os.path.join(one, "metrics.jsonl"))
        b, _ = read_metrics(os.path.join(two, "metrics.jsonl"))
        assert len(a) == len(b) == 10
        for x, y in zip(a, b):
            assert abs(x["lm_loss"] - y["lm_loss"]) < 1e-5, (name, x["lm_loss"], y["lm_loss"])
            assert abs(x["grad_norm"] - y["grad_norm"]) < 1e-5 * x["grad_norm"], (name, x["grad_norm"], y["grad_norm"])
        if "tensor_model_parallel_size" in VARIANTS[name][1]:  # replicated adapter parts stayed equal
            ranks = [torch.load(os.path.join(two, "iter_0000010", f"mp_rank_0{r}", "model_optim_rng.pt"),
                                weights_only=True) for r in (0, 1)]
            split = ranks[0]["tensor_parallel"]  # B rows of a key/value head shared by both ranks: "replicas"
            replicated = [n for n in ranks[0]["model"] if n not in split or split[n].get("replicas") == 2]
            assert any(n.endswith("lora_A") for n in replicated) and any(n.endswith("lora_B") for n in replicated)
            for n in replicated:
                assert torch.equal(ranks[0]["model"][n], ranks[1]["model"][n]), (name, n)
        wa, wb = load_full_state(one)[0], load_full_state(two)[0]
        assert wa.keys() == wb.keys()
        for key in wa:  # Adam magnifies 1e-7 differences of near-zero gradients
            torch.testing.assert_close(wa[key], wb[key], rtol=1e-3, atol=1e-4, msg=f"{name}: {key}")


@pytest.mark.parametrize("flags, message", [
    ({"zero_stage": 3, "use_distributed_optimizer": True}, "--zero-stage 3 with --lora-rank"),
    ({"lora_target": "q_proj,lm_head"}, "unknown module lm_head"),
    ({"load": None, "finetune": None}, "--lora-rank trains adapters on a base model"),
])
def test_bad_settings_are_rejected(tiny_corpus, flags, message):
    cfg = parse_config(lora_args(tiny_corpus, "base", "save", **flags))
    with pytest.raises(MegaliteError, match=message):
        validate(cfg)


def test_full_checkpoint_misuse_is_refused(tmp_path, tiny_corpus, base):
    argv = lora_args(tiny_corpus, base, str(tmp_path / "x"), finetune=None)
    with pytest.raises(MegaliteError, match="is a full checkpoint: with --lora-rank it is the frozen base"):
        pretrain_gpt(argv)
    with pytest.raises(MegaliteError, match="not a LoRA checkpoint"):
        export_peft(base, str(tmp_path / "adapter"))
