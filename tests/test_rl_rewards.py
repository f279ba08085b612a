"""rl_gpt.py's rewards (megalite.posttrain.rl.rewards): the built-ins on hand-made cases (accuracy equal to
trl's accuracy_reward), user functions with trl's signature and the records' other columns, None as NaN,
one clear error naming a function that misbehaves, weights, and a learned reward model (a megalite
``--pref-method rm`` checkpoint or an HF ...ForSequenceClassification folder) scoring exactly as
tools/score.py does, without touching the training job's parallel layout, with a policy tokenizer of its
own or another vocabulary."""

import json
import math
import re

import pytest
import torch

from megalite.errors import MegaliteError
from megalite.posttrain.rl.rewards import Rewards
from tests.conftest import write_jsonl
from tests.tokenizers_zoo import WORDS, bytelevel, llama

transformers = pytest.importorskip("transformers")
pytest.importorskip("math_verify")

THINK = r"<think>.*?</think>\s*<answer>.*?</answer>"

USER_FUNCS = '''
def tagged(prompts, completions, completion_ids, answer, level, **kwargs):
    """1 when the completion holds the record's answer, scaled by its level; None for level 0."""
    return [None if lv == 0 else float(a in c) * lv for c, a, lv in zip(completions, answer, level)]

async def judged(completions, **kwargs):
    import torch

    return [torch.tensor(0.5)] * len(completions)

def broken(completions, **kwargs):
    raise ValueError("no judge\\nreachable")

def short(completions, **kwargs):
    return [1.0] * (len(completions) - 1)

def wordy(completions, **kwargs):
    return ["good"] * len(completions)
'''


def ids_length(completion_ids, **kwargs):
    """A user function by module path: the completion's length in tokens."""
    return [len(ids) for ids in completion_ids]


def _text(seed, n):
    return " ".join(WORDS[(seed * 7 + k * 3) % len(WORDS)] for k in range(n))


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("funcs") / "my_rewards.py"
    path.write_text(USER_FUNCS)
    return str(path)


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory, one_thread):
    """A megalite reward model (one dpo_gpt.py --pref-method rm step from a tiny imported Llama) and an HF
    LlamaForSequenceClassification folder, both with the zoo's byte-level tokenizer; and the llama zoo
    tokenizer, another vocabulary."""
    from dpo_gpt import main
    from megalite.hf.convert import import_hf

    root = tmp_path_factory.mktemp("rl_rewards")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   bos_token_id=0, eos_token_id=1, pad_token_id=1)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(root / "lm"))
    bytelevel(root / "lm")
    import_hf(str(root / "lm"), str(root / "lm_ck"))
    pairs = [{"prompt": _text(i, 4), "chosen": " " + _text(i + 1, 3), "rejected": " " + _text(i + 5, 2)}
             for i in range(4)]
    main(["--load", str(root / "lm_ck"), "--pref-data", write_jsonl(root / "pairs.jsonl", pairs), "--pref-method", "rm",
          "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(root / "lm"), "--seq-length", "64",
          "--train-iters", "1", "--micro-batch-size", "4", "--global-batch-size", "4", "--lr", "1e-2",
          "--lr-warmup-iters", "0", "--eval-iters", "0", "--num-workers", "0", "--save", str(root / "my_rm")])
    cfg.num_labels = 1
    transformers.LlamaForSequenceClassification(cfg).save_pretrained(str(root / "hf_rm"))
    bytelevel(root / "hf_rm")
    return {"megalite": str(root / "my_rm"), "hf": str(root / "hf_rm"), "other_vocab": llama(root / "llama").megalite,
            "same_vocab": bytelevel(root / "tok").megalite, "root": root}


# -- built-ins ---------------------------------------------------------------------------------------
ACCURACY_CASES = [  # (completion, solution, reward)
    (r"So x = \boxed{1/2}.", "0.5", 1.0),
    (r"The answer is \boxed{\frac{1}{2}}", r"$\frac{1}{2}$", 1.0),
    (r"\boxed{\frac{1}{3}}", "1/2", 0.0),
    ("I do not know", "4", 0.0),
    (r"\boxed{10\%}", "0.1", 1.0),
    (r"\boxed{2}", "not a number", None),  # the solution does not parse: no opinion
]


@pytest.mark.parametrize("conversational", [False, True])
def test_accuracy_checks_math_answers_as_trl_does(conversational):
    from trl.rewards import accuracy_reward

    texts, solutions, expected = zip(*ACCURACY_CASES)
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else list(texts)
    prompts = [[{"role": "user", "content": "?"}]] * len(texts) if conversational else ["?"] * len(texts)
    got = Rewards(["accuracy"], None)(prompts, completions, [[1]] * len(texts), {"solution": list(solutions)})
    assert got.dtype == torch.float32 and got.shape == (len(texts), 1)
    assert [None if math.isnan(r) else r for r in got[:, 0].tolist()] == list(expected)
    trl_completions = [[{"role": "assistant", "content": t}] for t in texts]
    assert accuracy_reward(trl_completions, list(solutions)) == list(expected)


def test_accuracy_without_a_solution_column_says_so():
    with pytest.raises(MegaliteError, match=r"--reward-funcs accuracy: the prompt records have no 'solution' column "
                                            r".*\(columns: answer\)"):
        Rewards(["accuracy"], None)(["q"], ["a"], [[1]], {"answer": ["a"]})


def test_format_matches_the_whole_completion():
    from trl.rewards import think_format_reward

    completions = ["<think>first\nthen</think>\n<answer>4</answer>",  # DOTALL: the reasoning spans lines
                   "<think>x</think><answer>4</answer> and more",  # fullmatch: nothing after the answer
                   "<answer>4</answer>"]
    got = Rewards(["format"], None, format_pattern=THINK)(["q"] * 3, completions, [[1]] * 3, {})
    assert got[:, 0].tolist() == [1.0, 0.0, 0.0]
    chat = [[{"role": "assistant", "content": c}] for c in completions]
    assert Rewards(["format"], None, format_pattern=THINK)(["q"] * 3, chat, [[1]] * 3, {}).equal(got)
    # trl's think-format pattern (re.match, ^...$, MULTILINE) answers the same under fullmatch
    trl_pattern = r"^<think>(?!.*<think>)(.*?)</think>.*$"
    cases = completions + ["<think>a</think>b\nc\n", "x<think>a</think>", "<think>a</think><think>b</think>", ""]
    ours = Rewards(["format"], None, format_pattern=trl_pattern)(["q"] * 7, cases, [[1]] * 7, {})[:, 0].tolist()
    assert ours == think_format_reward([[{"content": c}] for c in cases]) == [1, 1, 0, 1, 0, 0, 0]
    with pytest.raises(MegaliteError, match="--reward-funcs format: give .* --format-pattern"):
        Rewards(["format"], None)
    with pytest.raises(MegaliteError, match=r"--format-pattern '\(unclosed': not a regular expression"):
        Rewards(["format"], None, format_pattern="(unclosed")


# -- user functions ----------------------------------------------------------------------------------
def test_user_functions_get_the_columns_and_none_is_nan(user_file):
    rewards = Rewards([f"{user_file}:tagged", "tests.test_rl_rewards:ids_length", f"{user_file}:judged", "format"],
                      [1.0, 0.5, 2.0, 1.0], format_pattern=r"the \w+")
    assert rewards.names == ["tagged", "ids_length", "judged", "format"]
    assert rewards.weights.dtype == torch.float32 and rewards.weights.tolist() == [1.0, 0.5, 2.0, 1.0]
    completions = ["the sky", "the sea", "blue"]
    got = rewards(["p1", "p2", "p3"], completions, [[5, 6], [7], [8, 9, 10]],
                  {"answer": ["sky", "grass", "blue"], "level": [2, 1, 0]})
    assert got[:, 0].tolist()[:2] == [2.0, 0.0] and math.isnan(got[2, 0])
    assert got[:, 1:].tolist() == [[2.0, 0.5, 1.0], [1.0, 0.5, 1.0], [3.0, 0.5, 0.0]]


@pytest.mark.parametrize("name, message", [
    ("broken", "raised ValueError: no judge reachable"),
    ("short", r"returned 2 rewards for 3 completions \(one each\)"),
    ("wordy", r"returned 'good' \(str\); a reward is a number or None"),
])
def test_a_misbehaving_function_is_named(user_file, name, message):
    rewards = Rewards(["format", f"{user_file}:{name}"], None, format_pattern=".*")
    with pytest.raises(MegaliteError, match=f"^--reward-funcs {re.escape(user_file)}:{name}: {message}$"):
        rewards(["p"] * 3, ["a", "b", "c"], [[1]] * 3, {})


@pytest.mark.parametrize("specs, weights, message", [
    (["format", "accuracy"], [1.0], r"--reward-weights: 1 weights for 2 rewards \(format, accuracy\)"),
    (["rewards_nowhere"], None, "--reward-funcs rewards_nowhere: expected pkg.module:function"),
    (["tests.test_rl_rewards:nothing"], None, "tests.test_rl_rewards has no function 'nothing'"),
    (["no_such_module:f"], None, "cannot import no_such_module: ModuleNotFoundError"),
    (["missing.py:f"], None, "--reward-funcs missing.py:f: no file missing.py"),
    ([], None, "no reward: give --reward-funcs and/or --reward-model"),
])
def test_bad_specs_and_weights_are_refused(specs, weights, message):
    with pytest.raises(MegaliteError, match=message):
        Rewards(specs, weights, format_pattern=".*")


# -- learned reward models ---------------------------------------------------------------------------
def _examples(conversational):
    prompts = [_text(i, 3 + i % 3) for i in range(5)]
    completions = [" " + _text(i + 2, 2 + i % 4) for i in range(5)]
    if conversational:
        return ([[{"role": "user", "content": p}] for p in prompts],
                [[{"role": "assistant", "content": c.strip()}] for c in completions])
    return prompts, completions


def _tool_scores(load, prompts, completions, path):
    from megalite.eval.reward_scores import score_file

    records = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]
    score_file(load, write_jsonl(path.with_suffix(".jsonl"), records), str(path))
    return [json.loads(line)["score"] for line in open(path)]


@pytest.mark.parametrize("kind", ["megalite", "hf"])
@pytest.mark.parametrize("conversational", [False, True])
def test_reward_model_scores_equal_the_score_tool(reward_models, kind, conversational, capsys):
    prompts, completions = _examples(conversational)
    rewards = Rewards(["format"], [1.0, 0.5], format_pattern=".*", reward_model=reward_models[kind],
                      policy_tokenizer=reward_models["same_vocab"])
    assert rewards.names == ["format", {"megalite": "my_rm", "hf": "hf_rm"}[kind]]
    got = rewards(prompts, completions, [[1]] * len(prompts), {"solution": ["1"] * len(prompts)})
    scored = reward_models["root"] / f"{kind}_{conversational}"
    expected = _tool_scores(reward_models[kind], prompts, completions, scored)
    assert got[:, 1].tolist() == pytest.approx(expected, abs=1e-6) and len(set(expected)) == len(expected)
    assert got[:, 0].tolist() == [1.0] * len(prompts)
    assert "tokenizer differs" not in capsys.readouterr().err  # the same vocabulary: nothing to say


def test_reward_model_keeps_the_training_layout(reward_models):
    """rl_gpt.py scores on its training ranks: the reward model runs in a one-process layout of its own."""
    from megalite.parallel import state

    prompts, completions = _examples(False)
    alone = Rewards([], None, reward_model=reward_models["megalite"])(prompts, completions, [[1]] * 5, {})
    with state.planning(tp=2, pp=1, tp_rank=1, pp_rank=0):
        inside = Rewards([], None, reward_model=reward_models["megalite"])(prompts, completions, [[1]] * 5, {})
        assert (state.get().tp_size, state.get().tp_rank) == (2, 1)
    assert inside.equal(alone)


def test_a_policy_tokenizer_of_another_vocabulary_is_noted_once(reward_models, capsys):
    prompts, completions = _examples(True)
    rewards = Rewards([], None, reward_model=reward_models["hf"], policy_tokenizer=reward_models["other_vocab"])
    first = rewards(prompts, completions, [[1]] * 5, {})
    second = rewards(prompts, completions, [[1]] * 5, {})
    err = capsys.readouterr().err
    assert err.count("tokenizer differs from the policy's") == 1 and f"--reward-model {reward_models['hf']}" in err
    expected = _tool_scores(reward_models["hf"], prompts, completions, reward_models["root"] / "mismatch")
    assert first.equal(second) and first[:, 0].tolist() == pytest.approx(expected, abs=1e-6)
