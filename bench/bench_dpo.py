"""DPO training speed and memory: megalite's DPO step vs trl's DPOTrainer, same model, same
pairs, same threads, in one run (CPU fp32, or CUDA bf16).

    python bench/bench_dpo.py [--layers 6 --hidden-size 512 --seq-length 256 --micro-batch-size 4
                               --steps 4 --warmup 1 --threads 2 --variants full,lora] [--json out.json]

One random Llama-shaped model is created in megalite (a checkpoint) and exported to Hugging
Face form, so both sides start from identical weights; a 4k-piece tokenizer is trained on
CPython's pydoc topics; the pairs are the language-reference "what comes after this paragraph?"
pairs of megalite.data.demo_sft (chosen = the true next paragraph, rejected = one from another
section) as standard-format text, shuffled once and then taken in order by both sides. Sigmoid
DPO, beta 0.1, AdamW (no weight decay, clip 1.0, constant lr), one micro-batch of
--micro-batch-size pairs a step, no gradient checkpointing. Variants:

- full: full fine-tuning; the reference is a frozen copy of the starting weights on both sides;
- lora: rank --lora-rank adapters on every linear layer of the blocks (peft's "all-linear"),
  the reference is the policy with its adapters disabled on both sides (one model);
- precomputed: full fine-tuning with the reference's log-probs computed once before training
  (megalite --precompute-ref-log-probs, trl precompute_ref_log_probs with no ref_model): one
  model during the steps on both sides.

Each side of each variant runs in its own process (``--worker``). Measured there:
- trained tokens/s: completion tokens with a loss (chosen and rejected rows; prompt and padding
  not counted) of the --steps steps after --warmup, over their wall time (data collation,
  reference pass, forward, backward, optimizer step; trl's per-step logging too); and the same
  tokens per CPU second of the process (all threads), which shared machines disturb less;
- peak memory: the process's high-water resident set (VmHWM, reset after the imports) minus
  its resident set at that moment: models, reference, optimizer state, tokenized data and the
  steps' activations. On CUDA: torch's peak allocated bytes instead;
- the first step's loss, mean chosen / rejected completion log-probs and gradient norm, which
  must agree between the sides (same weights, same tokens, same math; with LoRA not the gradient
  norm, see ``checked``). The policy starts as the reference, so the first loss is log 2 on both
  sides whatever the data: the log-probs are what shows the same tokens went through the same model.
"""

import argparse
import importlib
import json
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import Memory, add_size_flags, clock, keep_fastest, llama_flags, pydoc_hf_tokenizer, run_worker  # noqa: E402

SIDES = ("megalite", "trl")
VARIANTS = ("full", "lora", "precomputed")
# what the sides import, some of it lazily (torch._dynamo, with triton and sympy, on the first optimizer step)
BASELINE_IMPORTS = ("torch._dynamo", "datasets", "transformers", "peft", "trl", "dpo_gpt", "megalite.posttrain.dpo",
                    "megalite.posttrain.lora", "megalite.data.preference", "megalite.training.trainer")
CHECKED = ("loss", "logps/chosen", "logps/rejected", "grad_norm")  # first step, both sides


def checked(variant: str):
    """What must agree: the gradient norm only with full fine-tuning (LoRA's gradients depend on
    the adapters' random A matrices, which megalite and peft draw from different generators)."""
    return CHECKED[:-1] if variant == "lora" else CHECKED


# -- shared inputs (parent process) ------------------------------------------------------------------------
def write_pairs(path: str, count: int, tokenizer_dir: str, seq_length: int, seed: int = 0) -> int:
    """``count`` of the demo preference pairs, drawn at random, as trl's standard format (prompt /
    chosen / rejected text): only pairs that fit whole in a row (``seq_length + 1`` ids, so neither
    side cuts or drops one), and only as many as the steps use (neither side tokenizes more)."""
    from megalite.data.demo_sft import preference_pairs
    from megalite.data.preference import tokenize_pair
    from megalite.data.tokenizer import HuggingFaceTokenizer

    pairs = [{"prompt": p["prompt"][0]["content"] + "\n", "chosen": p["chosen"][0]["content"],
              "rejected": p["rejected"][0]["content"]} for p in preference_pairs()]
    random.Random(seed).shuffle(pairs)
    tok, kept = HuggingFaceTokenizer(tokenizer_dir), []
    for pair in pairs:
        prompt, chosen, rejected = tokenize_pair(tok, None, pair)
        if len(prompt) + max(len(chosen), len(rejected)) <= seq_length + 1:
            kept.append(pair)
            if len(kept) == count:
                break
    if len(kept) < count:
        raise SystemExit(f"error: only {len(kept)} pairs fit whole in --seq-length {seq_length}; raise it")
    with open(path, "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in kept)
    return count


def build_model(a, work: str) -> dict:
    """The tokenizer, the megalite checkpoint of a random model and its HF export; paths."""
    import torch

    from megalite.config import parse_config, validate
    from megalite.hf.convert import export_hf
    from megalite.training.trainer import Trainer

    tok = pydoc_hf_tokenizer(os.path.join(work, "tokenizer"), vocab_size=a.vocab_size)
    ck = os.path.join(work, "megalite")
    argv = llama_flags(a.layers, a.hidden_size, a.heads, a.kv_heads, ffn=a.ffn_hidden_size) + [
        "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tok, "--mock-data",
        "--seq-length", a.seq_length, "--max-position-embeddings", a.seq_length, "--micro-batch-size", 1,
        "--global-batch-size", 1, "--train-iters", 1, "--lr", 1e-5, "--eval-iters", 0, "--num-workers", 0,
        "--seed", a.seed, "--save", ck]
    tr = Trainer(validate(parse_config([str(x) for x in argv])), torch.device("cpu"))
    params = sum(p.numel() for p in tr.model.parameters())
    tr.save()
    tr.finish_save()
    del tr
    hf = export_hf(ck, os.path.join(work, "hf"), dtype="fp32")
    pairs = os.path.join(work, "pairs.jsonl")
    count = write_pairs(pairs, (a.warmup + a.steps) * a.micro_batch_size, hf, a.seq_length, a.seed)
    return {"work": work, "checkpoint": ck, "hf": hf, "pairs": pairs, "num_pairs": count, "parameters": params}


# -- one side in its own process -------------------------------------------------------------------------
def megalite_side(a, variant: str, paths: dict, device):
    """megalite's Trainer.train_step on the pairs in file order; per step (wall and CPU seconds at
    its end, trained tokens), and the first step's checked values."""
    import torch

    from dpo_gpt import __doc__ as dpo_doc
    from megalite.checkpoint.layout import saved_settings
    from megalite.config import inherit_model_settings, parse_config, validate
    from megalite.posttrain.dpo import DPOStage
    from megalite.posttrain.lora_io import LoRA
    from megalite.training.trainer import Trainer

    argv = ["--load", paths["checkpoint"], "--pref-data", paths["pairs"], "--tokenizer-type", "HuggingFaceTokenizer",
            "--tokenizer-model", paths["hf"], "--seq-length", a.seq_length, "--micro-batch-size", a.micro_batch_size,
            "--global-batch-size", a.micro_batch_size, "--train-iters", a.warmup + a.steps, "--lr", a.lr,
            "--lr-decay-style", "constant", "--lr-warmup-iters", 0, "--weight-decay", 0, "--clip-grad", 1.0,
            "--dpo-loss-type", "sigmoid", "--dpo-beta", 0.1, "--eval-iters", 0, "--num-workers", 0, "--seed", a.seed]
    if variant == "lora":
        argv += ["--lora-rank", a.lora_rank, "--lora-alpha", a.lora_alpha, "--lora-target", "all-linear"]
    if variant == "precomputed":
        argv.append("--precompute-ref-log-probs")
    if device.type == "cuda":
        argv.append("--bf16")
    cfg = parse_config([str(x) for x in argv], dpo_doc)
    stage = DPOStage([LoRA()])
    stage.prepare(cfg)
    inherit_model_settings(cfg, saved_settings(cfg.checkpoint.load))
    trainer = Trainer(validate(cfg), device, stage)
    ds, collate, n = trainer.train_ds, trainer.collate, a.micro_batch_size
    steps, first = [], None
    for step in range(a.warmup + a.steps):
        ks = [(step * n + i) % len(ds.items) for i in range(n)]
        mb = collate([ds.item(k) for k in ks])
        out = trainer.train_step([{k: v.to(device) for k, v in mb.items()}])
        if device.type == "cuda":
            torch.cuda.synchronize()
        steps.append((*clock(), out["tokens"]))
        if first is None:
            first = {"loss": out["lm_loss"], "grad_norm": out["grad_norm"],
                     **{k: out["extra"][k] for k in ("logps/chosen", "logps/rejected")}}
    return steps, first


def trl_side(a, variant: str, paths: dict, device):
    """trl's DPOTrainer.train() on the pairs in file order (sequential sampler); per step (wall and
    CPU seconds at its end from a callback, trained tokens counted in compute_loss), and the
    first step's logged values."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    dtype = torch.float32  # bf16 on CUDA is autocast over fp32 weights (bf16=True)
    tokens = []

    class CountingDPOTrainer(DPOTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            tokens.append(int(inputs["completion_mask"][:, 1:].sum()))  # the positions with a loss
            return super().compute_loss(model, inputs, *args, **kwargs)

    steps, logged = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize()
            steps.append((*clock(), tokens[-1]))

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                logged.append(dict(logs))

    policy = AutoModelForCausalLM.from_pretrained(paths["hf"], dtype=dtype).to(device)
    ref, peft_config = None, None
    if variant == "full":
        ref = AutoModelForCausalLM.from_pretrained(paths["hf"], dtype=dtype).to(device)
    elif variant == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=a.lora_rank, lora_alpha=a.lora_alpha, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    with open(paths["pairs"]) as f:
        data = Dataset.from_list([json.loads(line) for line in f])
    config = DPOConfig(output_dir=os.path.join(paths["work"], "trl_out"), report_to=[], use_cpu=device.type != "cuda",
                       bf16=device.type == "cuda", activation_checkpointing=False, max_length=a.seq_length + 1,
                       per_device_train_batch_size=a.micro_batch_size, gradient_accumulation_steps=1,
                       max_steps=a.warmup + a.steps, learning_rate=a.lr, lr_scheduler_type="constant",
                       warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, loss_type=["sigmoid"], beta=0.1,
                       precompute_ref_log_probs=variant == "precomputed",
                       train_sampling_strategy="sequential", logging_steps=1, save_strategy="no",
                       dataloader_num_workers=0, seed=a.seed, disable_tqdm=True)
    trainer = CountingDPOTrainer(model=policy, ref_model=ref, args=config, train_dataset=data,
                                 processing_class=AutoTokenizer.from_pretrained(paths["hf"]), peft_config=peft_config,
                                 callbacks=[Clock()])
    trainer.train()
    first = {k: logged[0][k] for k in CHECKED}
    return steps, first


def measure(a, side: str, variant: str, paths: dict) -> dict:
    """One side's run of ``variant`` in this process (a worker's whole job)."""
    import torch

    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for name in BASELINE_IMPORTS:  # both libraries' code loaded before the baseline: only the work counts
        importlib.import_module(name)
    memory = Memory(device)
    steps, first = (megalite_side if side == "megalite" else trl_side)(a, variant, paths, device)
    timed = steps[a.warmup - 1:]  # from the end of the last warm-up step
    seconds, cpu_seconds = (timed[-1][i] - timed[0][i] for i in (0, 1))
    trained = sum(t for _, _, t in timed[1:])
    return {"tokens_per_s": trained / seconds, "tokens_per_cpu_s": trained / cpu_seconds, "trained_tokens": trained,
            "seconds": seconds, "cpu_seconds": cpu_seconds, "step_tokens": [t for _, _, t in steps],
            "peak_bytes": memory.peak(), "first_step": first, "device": device.type}


def worker_flags(a, side: str, variant: str, paths: dict) -> list:
    flags = ["--worker", side, "--variant", variant, "--work", paths["work"], "--checkpoint", paths["checkpoint"],
             "--hf", paths["hf"], "--pairs", paths["pairs"]]
    for name in ("seq_length", "micro_batch_size", "steps", "warmup", "threads", "lora_rank", "lora_alpha", "lr",
                 "seed"):
        flags += ["--" + name.replace("_", "-"), str(getattr(a, name))]
    return flags


# -- report ---------------------------------------------------------------------------------------------
def report(a, paths: dict, results: dict) -> dict:
    device = next(iter(results.values()))["megalite"]["device"]
    print(f"bench_dpo: {device}, {'bf16' if device == 'cuda' else 'fp32'}, {a.threads} threads | "
          f"{paths['parameters'] / 1e6:.1f}M-parameter Llama ({a.layers} layers, width {a.hidden_size}, "
          f"{a.vocab_size} vocab) | {paths['num_pairs']} pairs, seq {a.seq_length}, {a.micro_batch_size} pairs a "
          f"step | {a.steps} timed steps after {a.warmup}")
    print(f"{'variant':<12}{'side':<10}{'s/step':>8}{'trained tok/s':>15}{'tok/CPU-s':>11}{'peak MiB':>10}  "
          f"first step: " + ", ".join(CHECKED))
    out = {"device": device, "parameters": paths["parameters"], "settings": {
        k: getattr(a, k) for k in ("layers", "hidden_size", "heads", "kv_heads", "ffn_hidden_size", "vocab_size",
                                   "seq_length", "micro_batch_size", "steps", "warmup", "threads", "lora_rank",
                                   "lora_alpha", "lr", "seed")}, "variants": {}}
    for variant, sides in results.items():
        for side in SIDES:
            r = sides[side]
            first = ", ".join(f"{r['first_step'][k]:.5g}" for k in CHECKED)
            print(f"{variant:<12}{side:<10}{r['seconds'] / a.steps:>8.2f}{r['tokens_per_s']:>15,.1f}"
                  f"{r['tokens_per_cpu_s']:>11,.1f}{r['peak_bytes'] / 2**20:>10,.0f}  {first}")
        m, t = sides["megalite"], sides["trl"]
        same_tokens = m["step_tokens"] == t["step_tokens"]
        agree = {k: abs(m["first_step"][k] - t["first_step"][k]) <= 1e-3 * max(1.0, abs(t["first_step"][k]))
                 for k in checked(variant)}
        speed, memory = m["tokens_per_s"] / t["tokens_per_s"], m["peak_bytes"] / t["peak_bytes"]
        cpu = m["tokens_per_cpu_s"] / t["tokens_per_cpu_s"]
        print(f"{variant:<12}megalite/trl: speed {speed:.2f}x (per CPU second {cpu:.2f}x), peak memory "
              f"{memory:.2f}x | same trained tokens "
              f"every step: {'yes' if same_tokens else 'NO'} | first step agrees: "
              + ", ".join(f"{k} {'yes' if ok else 'NO'}" for k, ok in agree.items()), flush=True)
        out["variants"][variant] = {**sides, "speed_ratio": speed, "cpu_speed_ratio": cpu, "memory_ratio": memory,
                                    "same_step_tokens": same_tokens, "first_step_agrees": agree}
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_flags(p, layers=6, hidden=512, heads=8, kv_heads=4, ffn=1408)
    p.add_argument("--seq-length", type=int, default=256, help="row length (pairs that fit whole are drawn)")
    p.add_argument("--micro-batch-size", type=int, default=4, help="pairs a step (2x rows)")
    p.add_argument("--steps", type=int, default=4, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (the first is the checked one)")
    p.add_argument("--rounds", type=int, default=1, help="runs of every side (alternating order); the fastest counts")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on both sides")
    p.add_argument("--variants", default="full,lora", help="comma list of full, lora, precomputed")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", help="also write the results as JSON to this file")
    # one side in its own process (internal)
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    for name in ("--work", "--checkpoint", "--hf", "--pairs"):
        p.add_argument(name, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.warmup < 1 or a.steps < 1 or a.rounds < 1:
        p.error("--warmup, --steps and --rounds must be at least 1 (the first step is checked, not timed)")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.worker:
        paths = {"work": a.work, "checkpoint": a.checkpoint, "hf": a.hf, "pairs": a.pairs}
        print("RESULT " + json.dumps(measure(a, a.worker, a.variant, paths)), flush=True)
        return None
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise SystemExit(f"error: --variants {a.variants!r}: choose from {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory() as work:
        paths = build_model(a, work)
        results = {v: {} for v in variants}
        for r in range(a.rounds):  # alternating sides, so that a burst of load does not hit one side only
            for v in variants:
                for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                    run = run_worker(__file__, worker_flags(a, side, v, paths), f"{side} {v}")
                    keep_fastest(results[v], side, run, "tokens_per_s")
    out = report(a, paths, results)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
