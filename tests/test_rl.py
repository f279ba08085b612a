"""rl_gpt.py end to end on tiny models: data-parallel (sampled rollouts), tensor-parallel with
sequence parallelism and pipeline-parallel (greedy rollouts) runs equal one process over 5 steps,
a resumed run equals an uninterrupted one bit for bit (sampling included), LoRA policies, held-out
rewards, and bad input (prompts over the budget, a broken reward function). PPO (critic started from a
reward model that is also a reward) trains its critic, equals one process under DP=2, TP=2 + SP and PP=2,
resumes bit for bit (the critic included) and exports its critic as an HF reward model.

The reference model differs from the policy, so with --beta the KL term moves the weights even
where greedy rollouts give every completion of a group the same reward.
"""

import json

import pytest
import torch

from megalite.errors import MegaliteError
from tests.conftest import assert_runs_match, read_metrics, to_argv
from tests.dist_utils import TWO_RANKS, run_distributed
from tests.tokenizers_zoo import WORDS, bytelevel

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from megalite.hf.convert import import_hf

    root = tmp_path_factory.mktemp("rl")
    folders = {}
    for name, seed in (("policy", 0), ("reference", 1)):
        torch.manual_seed(seed)
        cfg = transformers.LlamaConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        transformers.LlamaForCausalLM(cfg).save_pretrained(str(root / name))
        bytelevel(root / name)
        folders[name] = str(root / name)
    import_hf(folders["policy"], str(root / "policy_ck"), dtype="fp32")
    import_hf(folders["reference"], str(root / "reference_ck"), dtype="fp32")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{WORDS[i]} {WORDS[(3 * i + 1) % len(WORDS)]}", "bonus": i % 3})
                               + "\n" for i in range(12)))
    (root / "rewards.py").write_text(
        "def shape(completion_ids, bonus, **kw):\n"
        "    return [len(c) % 4 + 0.5 * b + 0.1 * (c[0] % 7) for c, b in zip(completion_ids, bonus)]\n"
        "def broken(completions, **kw):\n"
        "    raise ValueError('no score today')\n")
    return {"root": root, "policy_ck": str(root / "policy_ck"), "reference_ck": str(root / "reference_ck"),
            "policy": folders["policy"], "prompts": str(prompts), "rewards": str(root / "rewards.py")}


def rl_args(models, tmp_path, name, **kw):
    kw = {"load": models["policy_ck"], "prompt_data": models["prompts"],
          "reward_funcs": [f"{models['rewards']}:shape"], "tokenizer_type": "HuggingFaceTokenizer",
          "tokenizer_model": models["policy"], "seq_length": 16, "max_completion_length": 6,
          "num_generations": 4, "global_batch_size": 8, "micro_batch_size": 4, "train_iters": 5, "lr": 1e-2,
          "lr_warmup_iters": 0, "eval_iters": 0, "log_interval": 1, "num_workers": 0, "seed": 5,
          "ref_load": models["reference_ck"], "beta": 0.1, "metrics_file": str(tmp_path / f"{name}.jsonl"), **kw}
    return to_argv(kw)


def _rl(rank, world, argv):
    from rl_gpt import main

    main(argv)


def train(models, tmp_path, name, world=1, **kw):
    argv = rl_args(models, tmp_path, name, **kw)
    run_distributed(_rl, world, argv)
    return read_metrics(str(tmp_path / f"{name}.jsonl"))[0]


@pytest.fixture(scope="module")
def greedy(models):
    return train(models, models["root"], "greedy", temperature=0)


@pytest.fixture(scope="module")
def sampled(models):
    return train(models, models["root"], "sampled")


KEYS = ("lm_loss", "grad_norm", "reward", "kl", "entropy", "completions/mean_length")


@pytest.mark.dist
@pytest.mark.parametrize("layout", [{"world": 2, "micro_batch_size": 2},
                                    {"world": 2, "tensor_model_parallel_size": 2, "sequence_parallel": True,
                                     "temperature": 0},
                                    {"world": 2, "pipeline_model_parallel_size": 2, "micro_batch_size": 2,
                                     "temperature": 0}], ids=["dp2_sampled", "tp2_sp_greedy", "pp2_greedy"])
def test_parallel_layouts_equal_one_process(tmp_path, models, greedy, sampled, layout):
    one = greedy if layout.get("temperature") == 0 else sampled
    other = train(models, tmp_path, "other", **layout)
    assert len(other) == len(one) == 5
    assert one[-1]["grad_norm"] > 0 and one[0]["lm_loss"] != one[-1]["lm_loss"]  # the steps train
    assert_runs_match(one, other, KEYS)


@pytest.mark.parametrize("algorithm", ["grpo", "grpo_greedy", "ppo"])
def test_shared_prompts_equal_rows_computed_apart(tmp_path, models, sampled, greedy, algorithm):
    """The G completions of a prompt share its computation by default (megalite.model.shared_prefix):
    --no-share-prompts computes every row whole and gives the same run (PPO: the critic's passes too;
    greedy: the G completions are the same, so whole rows are shared)."""
    kw = {"ppo": {"algorithm": "ppo", "num_generations": 2, "beta": 0.05}, "grpo_greedy": {"temperature": 0}}
    shared = {"grpo": sampled, "grpo_greedy": greedy}.get(algorithm)
    shared = shared or train(models, tmp_path, "shared", **kw[algorithm])
    apart = train(models, tmp_path, "apart", no_share_prompts=True, **kw.get(algorithm, {}))
    assert_runs_match(shared, apart, KEYS + (("loss/value_avg",) if algorithm == "ppo" else ()))


def test_resume_is_bit_exact_with_sampling(tmp_path, models, sampled):
    save = str(tmp_path / "run")
    kw = dict(num_iterations=2, save=save)
    full = train(models, tmp_path, "full", num_iterations=2)
    train(models, tmp_path, "first", exit_interval=2, **kw)
    resumed = train(models, tmp_path, "second", **kw)
    assert [r["iteration"] for r in resumed] == [3, 4, 5]
    assert_runs_match(full[2:], resumed, KEYS, rel=0, abs=0)
    assert "reward" in full[2] and "reward" not in full[1]  # K=2: step 2 reuses step 1's rollouts


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_lora_policy_with_held_out_rewards(tmp_path, models, algorithm):
    """PPO: the critic is a LoRA run too (adapters and score head saved), and resumes."""
    kw = dict(lora_rank=4, lora_alpha=8, ref_load=None, prompt_valid_fraction=0.25, eval_iters=1, eval_interval=2,
              algorithm=algorithm, save=str(tmp_path / "run"))
    run = train(models, tmp_path, "lora", train_iters=2, **kw)
    kl = "kl" if algorithm == "grpo" else "objective/kl"
    assert run[0][kl] == 0.0  # adapters start at zero: the policy is its reference
    assert run[1][kl] != 0.0
    valid = [r for r in read_metrics(str(tmp_path / "lora.jsonl"))[1] if r["split"] == "valid"]
    assert valid and "reward" in valid[-1]
    if algorithm == "ppo":
        from megalite.checkpoint.layout import read_checkpoint

        saved = read_checkpoint(str(tmp_path / "run" / "critic" / "iter_0000002"))["model"]
        assert "score.weight" in saved and all("lora" in k or k == "score.weight" for k in saved)
        assert [r["iteration"] for r in train(models, tmp_path, "more", train_iters=3, **kw)] == [3]


def test_bad_input(tmp_path, models, capsys):
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": " ".join(WORDS * 2), "bonus": 0}) + "\n"
                    + "".join(json.dumps({"prompt": w, "bonus": 1}) + "\n" for w in WORDS[:8]))
    train(models, tmp_path, "long", prompt_data=str(long), train_iters=1)
    assert "1 prompts longer than 10 tokens" in capsys.readouterr().out
    with pytest.raises(MegaliteError, match="broken"):
        train(models, tmp_path, "broken", reward_funcs=[f"{models['rewards']}:broken"], train_iters=1)
    with pytest.raises(MegaliteError, match="multiple of --num-generations"):
        train(models, tmp_path, "groups", global_batch_size=6, micro_batch_size=6, train_iters=1)



# -- PPO -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reward_model(models):
    """A megalite reward model of the policy's architecture (one dpo_gpt.py --pref-method rm step)."""
    from dpo_gpt import main

    root = models["root"]
    pairs = root / "pairs.jsonl"
    rows = [{"prompt": WORDS[i], "chosen": " " + WORDS[i + 1], "rejected": " " + WORDS[i + 2]} for i in range(8)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(to_argv({"load": models["policy_ck"], "pref_data": str(pairs), "pref_method": "rm",
                  "tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": models["policy"], "seq_length": 16,
                  "train_iters": 1, "micro_batch_size": 4, "global_batch_size": 8, "lr": 1e-2, "lr_warmup_iters": 0,
                  "eval_iters": 0, "num_workers": 0, "save": str(root / "rm")}))
    return str(root / "rm")


def ppo_args(reward_model, **kw):
    """PPO with a reward function and the reward model (which the critic then starts from), two epochs."""
    return {"algorithm": "ppo", "num_generations": 1, "num_iterations": 2, "reward_model": reward_model,
            "critic_lr": 5e-3, **kw}


@pytest.fixture(scope="module")
def ppo_greedy(models, reward_model):
    return train(models, models["root"], "ppo_greedy", **ppo_args(reward_model, temperature=0))


PPO_KEYS = KEYS + ("loss/value_avg", "val/clipfrac_avg", "policy/approxkl_avg", "objective/kl",
                   "objective/rlhf_reward", "clip_ratio/region_mean")


def test_ppo_trains_the_policy_and_its_critic(models, ppo_greedy, capsys):
    run = ppo_greedy
    assert run[0]["lm_loss"] == pytest.approx(0.0, abs=1e-5)  # ratio 1, whitened advantages: mean 0
    assert run[1]["lm_loss"] != pytest.approx(0.0, abs=1e-4)  # the second epoch: the ratio has moved
    assert run[-1]["loss/value_avg"] < run[0]["loss/value_avg"]  # the critic learns the returns
    assert "reward" in run[0] and "reward" not in run[1] and "rewards/rm/mean" in run[0]
    assert run[0]["objective/kl"] != 0.0  # the reference (another model) is not the policy
    assert "frac_reward_zero_std" not in run[0]


@pytest.mark.dist
@pytest.mark.parametrize("layout", list(TWO_RANKS.values()), ids=list(TWO_RANKS))
def test_ppo_layouts_equal_one_process(tmp_path, models, reward_model, ppo_greedy, layout):
    other = train(models, tmp_path, "other", **ppo_args(reward_model, temperature=0), **layout)
    assert len(other) == len(ppo_greedy) == 5
    assert_runs_match(ppo_greedy, other, PPO_KEYS)


def test_ppo_resume_is_bit_exact_and_the_critic_exports(tmp_path, models, reward_model):
    from megalite.checkpoint.layout import saved_settings
    from megalite.hf.convert import export_hf

    save = str(tmp_path / "run")
    full = train(models, tmp_path, "full", **ppo_args(reward_model, num_iterations=1))
    train(models, tmp_path, "first", exit_interval=3, save=save, **ppo_args(reward_model, num_iterations=1))
    resumed = train(models, tmp_path, "second", save=save, **ppo_args(reward_model, num_iterations=1))
    assert [r["iteration"] for r in resumed] == [4, 5]
    assert_runs_match(full[3:], resumed, PPO_KEYS, rel=0, abs=0)
    assert saved_settings(str(tmp_path / "run" / "critic"))["dpo"]["pref_method"] == "rm"
    out = export_hf(str(tmp_path / "run" / "critic"), str(tmp_path / "critic_hf"))
    assert json.load(open(f"{out}/config.json"))["architectures"] == ["LlamaForSequenceClassification"]


def test_ppo_bad_input(tmp_path, models):
    with pytest.raises(MegaliteError, match="zero-stage 2/3"):
        train(models, tmp_path, "z", algorithm="ppo", zero_stage=2)
    with pytest.raises(MegaliteError, match="--critic-load is only used with --algorithm ppo"):
        train(models, tmp_path, "c", critic_load=models["policy_ck"])


def test_ppo_with_a_transformers_reward_model_starts_its_critic_from_the_policy(tmp_path, models, capsys):
    """A reward model saved by transformers (LlamaForSequenceClassification), as a user brings one: it
    scores the completions, and the critic, which cannot load an HF folder, starts from the policy."""
    torch.manual_seed(2)
    cfg = transformers.LlamaConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   num_labels=1, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    transformers.LlamaForSequenceClassification(cfg).save_pretrained(str(tmp_path / "hf_rm"))
    bytelevel(tmp_path / "hf_rm")
    run = train(models, tmp_path, "hf_rm", algorithm="ppo", num_generations=1, reward_funcs=None,
                reward_model=str(tmp_path / "hf_rm"), train_iters=2)
    assert "critic starts from the policy's weights" in capsys.readouterr().out
    assert run[0]["rewards/hf_rm/std"] > 0 and run[-1]["loss/value_avg"] > 0
