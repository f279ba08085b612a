"""rl_gpt.py's GRPO (every loss type, beta 0 and > 0, num_iterations 1 and 2) and RLOO against
trl's GRPOTrainer and RLOOTrainer on the same HF model, prompts, completions and rewards: the
loss, the gradient norm and every metric trl logs, step by step, to 1e-5.

Both sides are fed fixed completions: megalite through RLStage's ``sample`` hook, trl through
its trainers' ``_generate_single_turn``; each returns, for the k-th of the G rows of a prompt, the completion
``COMPLETIONS[(prompt ids, k, call)]`` (some end with EOS, some are cut at the length limit).
The four prompts have equal token lengths (trl left-pads prompts and numbers positions from the
padding; ours start at 0) and every step holds all four, so the sides' different prompt orders
cannot matter.
"""

import json

import pytest
import torch

from megalite.config import parse_config
from tests.conftest import read_metrics
from tests.tokenizers_zoo import WORDS, bytelevel

transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")

G, L, PROMPT_TOKENS = 2, 6, 8
EOS = 1


def reward_fn(prompts, completions, completion_ids, **kw):
    """Depends on the completion's ids (both sides decode texts their own way)."""
    return [float(len(ids) % 3) + 0.25 * (ids[0] % 5) - (0.5 if ids[-1] == EOS else 0.0) for ids in completion_ids]


def completion_for(prompt_ids, k, call):
    """A fixed completion: 1..L ids from the prompt, the copy k and the call; ending in EOS or cut."""
    h = (sum(prompt_ids) * 31 + k * 17 + call * 7) % 997
    n = 1 + h % L
    ids = [2 + (h * (i + 3) + 11 * i) % 300 for i in range(n)]
    if n < L and h % 2:
        ids[-1] = EOS
    return ids


class FixedCompletions:
    """Completions for rollout batches (groups of G equal prompts, consecutive); each batch asking
    for a prompt again gets new ones."""

    def __init__(self):
        self.calls = {}

    def __call__(self, prompt_ids):
        seen = {}
        for ids in prompt_ids:
            self.calls[tuple(ids)] = self.calls.get(tuple(ids), 0) + 1
        out = []
        for ids in prompt_ids:
            key = tuple(ids)
            k = seen.get(key, 0)
            seen[key] = k + 1
            out.append(completion_for(list(ids), k % G, (self.calls[key] - 1) // G))
        return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl_trl")
    folder = root / "policy"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False, bos_token_id=0, eos_token_id=EOS, pad_token_id=EOS)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(folder))
    bytelevel(folder)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    texts = [f"{a} {b}" for a in WORDS for b in reversed(WORDS) if a != b]
    prompts = [t for t in texts if len(tok(t)["input_ids"]) == PROMPT_TOKENS][:4]
    assert len(prompts) == 4  # equal token lengths
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (root / "rewards.py").write_text("from tests.test_rl_trl import reward_fn\n")
    return {"root": root, "folder": str(folder), "prompts": prompts, "data": str(data), "tok": tok}


def ours(setup, name, algorithm, loss_type, beta, iterations, steps, **extra):
    from megalite.posttrain.rl.stage import RLStage
    from megalite.training.trainer import pretrain

    root = setup["root"]
    fixed = FixedCompletions()

    def sample(model, prompt_ids, seeds):
        return fixed(prompt_ids)

    argv = ["--load", setup["folder"], "--prompt-data", setup["data"], "--reward-funcs",
            f"{root / 'rewards.py'}:reward_fn", "--algorithm", algorithm, "--loss-type", loss_type,
            "--beta", str(beta), "--num-iterations", str(iterations), "--num-generations", str(G),
            "--max-completion-length", str(L), "--seq-length", "16", "--global-batch-size", "8",
            "--micro-batch-size", "8", "--train-iters", str(steps), "--lr", "1e-2", "--lr-decay-style", "constant",
            "--lr-warmup-iters", "0", "--weight-decay", "0", "--clip-grad", "1.0", "--log-interval", "1",
            "--eval-iters", "0", "--num-workers", "0", "--seed", "3",
            "--metrics-file", str(root / f"{name}.jsonl")]
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    cfg = parse_config(argv, tool="rl_gpt.py")
    pretrain(cfg, RLStage(sample=sample))
    return [r for r in read_metrics(str(root / f"{name}.jsonl"))[0] if "lm_loss" in r]


def theirs(setup, algorithm, loss_type, beta, iterations, steps, **extra):
    from datasets import Dataset

    tok = setup["tok"]
    fixed = FixedCompletions()

    losses = []
    common = dict(output_dir=str(setup["root"] / "trl"), report_to=[], use_cpu=True, bf16=False,
                  per_device_train_batch_size=8, gradient_accumulation_steps=1, num_generations=G,
                  max_completion_length=L, learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0,
                  weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, max_steps=steps, beta=beta,
                  num_iterations=iterations, save_strategy="no", disable_tqdm=True, seed=3, **extra)
    if algorithm == "grpo":
        config, trainer_cls = trl.GRPOConfig(loss_type=loss_type, **common), trl.GRPOTrainer
    else:
        config, trainer_cls = trl.RLOOConfig(**common), trl.RLOOTrainer

    class Recording(trainer_cls):
        """trl's trainer with our fixed completions in place of its generation."""

        def _generate_single_turn(self, prompt_ids, *args):
            completions = fixed(prompt_ids)
            return completions if algorithm == "rloo" else (completions, None)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(loss.item())
            return loss

    model = transformers.AutoModelForCausalLM.from_pretrained(setup["folder"], dtype=torch.float32)
    trainer = Recording(model=model, reward_funcs=[reward_fn], args=config,
                        train_dataset=Dataset.from_list([{"prompt": p} for p in setup["prompts"]]),
                        processing_class=tok)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return logs, losses


CASES = [("grpo", "grpo", 0.0, 1), ("grpo", "bnpo", 0.04, 2), ("grpo", "dr_grpo", 0.04, 1), ("grpo", "dapo", 0.0, 2),
         ("grpo", "cispo", 0.04, 2), ("grpo", "dapo", 0.04, 1), ("rloo", "dapo", 0.05, 1), ("rloo", "dapo", 0.0, 2)]


@pytest.mark.parametrize("algorithm, loss_type, beta, iterations", CASES,
                         ids=[f"{a}-{t}-beta{b}-K{k}" if a == "grpo" else f"rloo-beta{b}-K{k}" for a, t, b, k in CASES])
def test_loss_and_metrics_equal_trl(setup, algorithm, loss_type, beta, iterations):
    steps = 2
    name = f"{algorithm}-{loss_type}-{beta}-{iterations}"
    mine = ours(setup, name, algorithm, loss_type, beta, iterations, steps)
    logs, losses = theirs(setup, algorithm, loss_type, beta, iterations, steps)
    assert len(mine) == len(logs) == steps
    for step, (m, t, loss) in enumerate(zip(mine, logs, losses), 1):
        assert m["lm_loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6), f"loss at step {step}"
        assert m["grad_norm"] == pytest.approx(t["grad_norm"], rel=1e-5, abs=1e-6), f"grad norm at step {step}"
        compared = [k for k in t if k in m]
        for k in compared:
            assert m[k] == pytest.approx(t[k], rel=1e-5, abs=1e-6), f"{k} at step {step}"
        expected = {"reward", "reward_std", "entropy", "completions/mean_length"} if step == 1 else {"entropy"}
        assert expected <= set(compared), step
