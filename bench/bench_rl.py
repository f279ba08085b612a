"""One GRPO step (generation + reward scoring + update): rl_gpt.py's stage vs trl's GRPOTrainer,
same model, same prompts, same G and completion length, same threads, in one run (CPU, fp32).

    python bench/bench_rl.py [--layers 4 --hidden-size 256 --vocab-size 4000 --prompts-per-step 4
                              --num-generations 8 --prompt-length 32 --completion-length 128
                              --steps 3 --warmup 1 --rounds 2 --threads NCPU --share-prompts 1]
                             [--json out.json]

A random Llama-shaped model is built from a transformers LlamaConfig and saved as a Hugging Face
folder with a 4k-piece tokenizer trained on CPython's pydoc topics; megalite loads that folder with
--load (imported once, before any timing), trl loads it with from_pretrained. The prompts are
pydoc passages cut to exactly --prompt-length tokens (equal lengths: trl left-pads prompts, ours are
not padded, and with equal lengths both compute the same positions), --prompts-per-step of them a
step, each completed --num-generations (G) times; the reward is the share of distinct words in a
completion (``distinct_words``), the same Python function on both sides.

Equal math: GRPO with the dapo loss (trl's default), beta 0 (no reference model on either side),
num_iterations 1 (no old-log-prob pass on either side), one micro-batch of prompts x G completions
a step, AdamW (no weight decay, clip 1.0, constant lr), temperature 1, no top-k / top-p, fp32. Every
completion is --completion-length tokens on both sides: trl generates with ``min_new_tokens`` (EOS
masked out until the limit), megalite through RLStage's ``sample`` hook with no stop ids (EOS, if
drawn, is kept as an ordinary token). The generated token counts of every step are checked equal.
megalite computes each prompt once for its G completions (rl_gpt.py's default, the same numbers as
rows computed apart: tests/test_shared_prefix.py); ``--share-prompts 0`` times every row whole.

Each side runs in its own process (``--worker``), --warmup untimed steps and then --steps timed
ones; --rounds runs of both sides alternate their order and the fastest run of each side is
reported (the rest of the machine's load only ever slows a run down). Measured there:
- step time: from the end of one step to the end of the next (data, generation, scoring,
  advantages, forward, backward, optimizer step; trl's per-step logging too), split into
  generation (megalite: the ``sample`` hook, i.e. rollout.sample_completions -> eval.generate;
  trl: ``_generate_single_turn``, i.e. padding + transformers ``generate``), scoring (decoding the
  completions and the reward function: megalite's ``PolicyGradient._my_rewards``, trl's
  ``_calculate_rewards``) and training (the rest);
- generated tokens/s: completion tokens over the generation time, and over the whole step;
- peak memory: the process's high-water resident set (VmHWM, reset after the imports through
  /proc/self/clear_refs) minus its resident set at that moment: model, optimizer state, KV cache,
  activations. Not resource.getrusage's ru_maxrss (it cannot be reset, so it would hold the
  imports' own peak) nor psutil (it reads the current RSS, not a high-water mark, and is not a
  dependency of this project).
"""

import argparse
import importlib
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import Memory, add_size_flags, clock, keep_fastest, pydoc_hf_tokenizer, run_worker  # noqa: E402

SIDES = ("megalite", "trl")
BASELINE_IMPORTS = ("torch._dynamo", "datasets", "transformers", "trl", "megalite.posttrain.rl.stage",
                    "megalite.training.trainer")
SIZES = ("layers", "hidden_size", "heads", "kv_heads", "ffn_hidden_size", "vocab_size", "prompts_per_step",
         "num_generations", "prompt_length", "completion_length", "steps", "warmup", "threads", "lr", "seed",
         "share_prompts")


def distinct_words(prompts, completions, **kwargs):
    """The reward: the share of distinct words in each completion (text, trl's signature)."""
    out = []
    for c in completions:
        words = re.findall(r"\w+", c if isinstance(c, str) else c[0]["content"])
        out.append(len(set(words)) / len(words) if words else 0.0)
    return out


# -- shared inputs (parent process) ------------------------------------------------------------------------
def write_prompts(path: str, count: int, tokenizer_dir: str, length: int) -> int:
    """``count`` pydoc passages of exactly ``length`` tokens (texts that tokenize back to the same
    ids, so both sides see ``length`` ids) as {"prompt": text} lines."""
    from transformers import AutoTokenizer

    from tests.conftest import english_documents

    tok, kept = AutoTokenizer.from_pretrained(tokenizer_dir), []
    for doc in english_documents():
        ids = tok(doc)["input_ids"]
        if len(ids) <= length:
            continue
        text = tok.decode(ids[:length])
        if tok(text)["input_ids"] == ids[:length] and text not in kept:
            kept.append(text)
            if len(kept) == count:
                break
    if len(kept) < count:
        raise SystemExit(f"error: only {len(kept)} pydoc passages of --prompt-length {length} tokens; lower it")
    with open(path, "w") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in kept)
    return count


def build_model(a, work: str) -> dict:
    """The tokenizer, a random Llama model in HF form next to it, its megalite import, the prompts; paths."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from megalite.hf.source import megalite_checkpoint

    hf = pydoc_hf_tokenizer(os.path.join(work, "hf"), vocab_size=a.vocab_size)
    tok = AutoTokenizer.from_pretrained(hf)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=a.hidden_size, intermediate_size=a.ffn_hidden_size,
                         num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                         max_position_embeddings=a.prompt_length + a.completion_length, tie_word_embeddings=False,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(a.seed)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(hf)
    del model
    megalite_checkpoint(hf)  # the one-time import, here rather than inside the measured process
    prompts = os.path.join(work, "prompts.jsonl")
    count = write_prompts(prompts, (a.warmup + a.steps) * a.prompts_per_step, hf, a.prompt_length)
    return {"work": work, "hf": hf, "prompts": prompts, "num_prompts": count, "parameters": params}


# -- one side in its own process -------------------------------------------------------------------------
class Phases:
    """The wall time of every generation and scoring call (one of each a step on both sides), and the
    prompt and completion tokens of every generation."""

    def __init__(self):
        self.seconds = {"generation": [], "scoring": []}
        self.generated, self.prompt_tokens = [], []

    def timed(self, phase: str, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[phase].append(time.perf_counter() - started)
            return out
        return wrapper

    def generation(self, fn):
        """``fn(model or trainer, prompt ids, ...) -> completion ids or (completion ids, ...)`` timed, its
        prompt and completion tokens counted."""
        def wrapper(owner, prompt_ids, *args, **kwargs):
            out = self.timed("generation", fn)(owner, prompt_ids, *args, **kwargs)
            completions = out[0] if isinstance(out, tuple) else out
            self.prompt_tokens.append(sum(len(p) for p in prompt_ids))
            self.generated.append(sum(len(c) for c in completions))
            return out
        return wrapper


def megalite_side(a, paths: dict, phases: Phases) -> list:
    """megalite's Trainer.train_step on rl_gpt.py's stage; the wall and CPU clock at each step's end."""
    import torch

    from megalite.config import parse_config, validate
    from megalite.posttrain.rl.rollout import sample_completions
    from megalite.posttrain.rl.stage import RLStage
    from megalite.training.data import microbatches
    from megalite.training.trainer import Trainer

    gbs = a.prompts_per_step * a.num_generations
    argv = ["--load", paths["hf"], "--prompt-data", paths["prompts"], "--reward-funcs",
            f"{os.path.abspath(__file__)}:distinct_words", "--algorithm", "grpo", "--loss-type", "dapo",
            "--beta", 0, "--num-iterations", 1, "--num-generations", a.num_generations,
            "--max-completion-length", a.completion_length, "--temperature", 1.0,
            "--seq-length", a.prompt_length + a.completion_length, "--global-batch-size", gbs,
            "--micro-batch-size", gbs, "--train-iters", a.warmup + a.steps, "--lr", a.lr,
            "--lr-decay-style", "constant", "--lr-warmup-iters", 0, "--weight-decay", 0, "--clip-grad", 1.0,
            "--eval-iters", 0, "--num-workers", 0, "--seed", a.seed]
    argv += [] if a.share_prompts else ["--no-share-prompts"]
    cfg = parse_config([str(x) for x in argv], tool="rl_gpt.py")

    def sample(model, prompt_ids, seeds):  # every completion full length: no stop ids (pad_id: set below)
        return sample_completions(model, prompt_ids, cfg.rl, (), pad_id, seeds)

    stage = RLStage(sample=phases.generation(sample))
    stage.prepare(cfg)
    device = torch.device("cpu")
    trainer = Trainer(validate(cfg), device, stage)
    pad_id = trainer.tokenizer.pad if trainer.tokenizer.pad is not None else trainer.tokenizer.eod
    objective = trainer.objective
    objective._my_rewards = phases.timed("scoring", objective._my_rewards)
    ends = []
    for _ in range(a.warmup + a.steps):
        batch = microbatches(trainer.train_iter, trainer.batches.num_microbatches(trainer.consumed_samples), device)
        trainer.train_step(batch)
        trainer.consumed_samples += gbs
        ends.append(clock())
    return ends


def trl_side(a, paths: dict, phases: Phases) -> list:
    """trl's GRPOTrainer.train(); the wall and CPU clock at each step's end (a callback)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    ends = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(clock())

    class TimedGRPOTrainer(GRPOTrainer):
        _generate_single_turn = phases.generation(GRPOTrainer._generate_single_turn)
        _calculate_rewards = phases.timed("scoring", GRPOTrainer._calculate_rewards)

    with open(paths["prompts"]) as f:
        data = Dataset.from_list([json.loads(line) for line in f])
    gbs = a.prompts_per_step * a.num_generations
    config = GRPOConfig(output_dir=os.path.join(paths["work"], "trl_out"), report_to=[], use_cpu=True, bf16=False,
                        per_device_train_batch_size=gbs, gradient_accumulation_steps=1,
                        num_generations=a.num_generations, max_completion_length=a.completion_length,
                        generation_kwargs={"min_new_tokens": a.completion_length}, temperature=1.0, top_p=1.0,
                        top_k=0, loss_type="dapo", beta=0.0, num_iterations=1, max_steps=a.warmup + a.steps,
                        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                        max_grad_norm=1.0, logging_steps=1, save_strategy="no", dataloader_num_workers=0,
                        seed=a.seed, disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(paths["hf"], dtype=torch.float32)
    trainer = TimedGRPOTrainer(model=model, reward_funcs=[distinct_words], args=config, train_dataset=data,
                               processing_class=AutoTokenizer.from_pretrained(paths["hf"]), callbacks=[Clock()])
    trainer.train()
    return ends


def measure(a, side: str, paths: dict) -> dict:
    """One side's run in this process (a worker's whole job)."""
    import torch

    torch.set_num_threads(a.threads)
    for name in BASELINE_IMPORTS:  # both libraries' code loaded before the baseline: only the work counts
        importlib.import_module(name)
    memory = Memory(torch.device("cpu"))
    phases = Phases()
    ends = (megalite_side if side == "megalite" else trl_side)(a, paths, phases)
    steps = a.warmup + a.steps
    if len(ends) != steps or any(len(v) != steps for v in phases.seconds.values()) or len(phases.generated) != steps:
        raise SystemExit(f"error: {side}: expected one generation and one scoring a step for {steps} steps, got "
                         f"{len(phases.generated)} and {len(phases.seconds['scoring'])} in {len(ends)}")
    timed = slice(a.warmup, steps)
    seconds, cpu_seconds = (ends[-1][i] - ends[a.warmup - 1][i] for i in (0, 1))
    generation, scoring = (sum(phases.seconds[k][timed]) for k in ("generation", "scoring"))
    generated = sum(phases.generated[timed])
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "step_s": seconds / a.steps,
            "generation_s": generation / a.steps, "scoring_s": scoring / a.steps,
            "training_s": (seconds - generation - scoring) / a.steps, "steps_per_s": a.steps / seconds,
            "generation_tokens_per_s": generated / generation, "step_tokens_per_s": generated / seconds,
            "generated_tokens": phases.generated, "prompt_tokens": phases.prompt_tokens,
            "peak_bytes": memory.peak()}


def worker_flags(a, side: str, paths: dict) -> list:
    flags = ["--worker", side, "--work", paths["work"], "--hf", paths["hf"], "--prompts", paths["prompts"]]
    for name in SIZES:
        flags += ["--" + name.replace("_", "-"), str(getattr(a, name))]
    return flags


# -- report ---------------------------------------------------------------------------------------------
def report(a, paths: dict, results: dict) -> dict:
    rows = a.prompts_per_step * a.num_generations
    load = os.getloadavg()
    print(f"bench_rl: cpu, fp32, {a.threads} threads, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} | "
          f"{paths['parameters'] / 1e6:.1f}M-parameter Llama ({a.layers} layers, width {a.hidden_size}, "
          f"{a.vocab_size} vocab) | GRPO (dapo, beta 0), {a.prompts_per_step} prompts x G {a.num_generations} = "
          f"{rows} completions a step, prompt {a.prompt_length} + completion {a.completion_length} tokens | "
          f"{a.steps} timed steps after {a.warmup}")
    print(f"{'side':<10}{'s/step':>8}{'gen s':>8}{'score s':>9}{'train s':>9}{'gen tok/s':>11}{'step tok/s':>12}"
          f"{'peak MiB':>10}")
    for side in SIDES:
        r = results[side]
        print(f"{side:<10}{r['step_s']:>8.2f}{r['generation_s']:>8.2f}{r['scoring_s']:>9.3f}{r['training_s']:>9.2f}"
              f"{r['generation_tokens_per_s']:>11,.0f}{r['step_tokens_per_s']:>12,.0f}"
              f"{r['peak_bytes'] / 2**20:>10,.0f}  steps/s by round: "
              + " ".join(f"{x:.3f}" for x in r["rounds_steps_per_s"]))
    m, t = results["megalite"], results["trl"]
    full = [rows * a.completion_length] * (a.warmup + a.steps)
    same = m["generated_tokens"] == t["generated_tokens"] == full and m["prompt_tokens"] == t["prompt_tokens"]
    ratios = {"step_rate": m["steps_per_s"] / t["steps_per_s"],
              "generation": t["generation_s"] / m["generation_s"], "training": t["training_s"] / m["training_s"],
              "cpu_step_rate": t["cpu_seconds"] / m["cpu_seconds"], "memory": m["peak_bytes"] / t["peak_bytes"]}
    print(f"megalite/trl: step rate {ratios['step_rate']:.2f}x (per CPU second {ratios['cpu_step_rate']:.2f}x; "
          f"generation {ratios['generation']:.2f}x, training {ratios['training']:.2f}x faster), peak memory "
          f"{ratios['memory']:.2f}x | same generated tokens every step ({full[0]} each): {'yes' if same else 'NO'}",
          flush=True)
    return {"load_average": load, "parameters": paths["parameters"], "settings": {k: getattr(a, k) for k in SIZES},
            **results, "ratios": ratios, "same_tokens": same}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_flags(p, layers=4, hidden=256, heads=4, kv_heads=2, ffn=704)
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--num-generations", type=int, default=8, help="G: completions per prompt")
    p.add_argument("--prompt-length", type=int, default=32, help="tokens of every prompt")
    p.add_argument("--completion-length", type=int, default=128, help="tokens of every completion")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=2, help="runs of every side (alternating order); the fastest counts")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads on both sides")
    p.add_argument("--share-prompts", type=int, choices=[0, 1], default=1,
                   help="megalite computes each prompt once for its G completions in training (rl_gpt.py's "
                        "default: the same numbers, fewer FLOPs); 0: every row whole (--no-share-prompts)")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", help="also write the results as JSON to this file")
    # one side in its own process (internal)
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    for name in ("--work", "--hf", "--prompts"):
        p.add_argument(name, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.warmup < 1 or a.steps < 1 or a.rounds < 1:
        p.error("--warmup, --steps and --rounds must be at least 1 (a step is timed from the end of the one before)")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.worker:
        paths = {"work": a.work, "hf": a.hf, "prompts": a.prompts}
        print("RESULT " + json.dumps(measure(a, a.worker, paths)), flush=True)
        return None
    with tempfile.TemporaryDirectory() as work:
        paths = build_model(a, work)
        results = {}
        for r in range(a.rounds):  # alternating sides, so that a burst of load does not hit one side only
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                keep_fastest(results, side, run_worker(__file__, worker_flags(a, side, paths), side), "steps_per_s")
    out = report(a, paths, results)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
