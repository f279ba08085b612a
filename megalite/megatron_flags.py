"""Megatron-LM's flags that GPT / Llama pretraining scripts use, and what megalite does with each.

Three kinds: ``implemented`` (a flag of ours with Megatron's meaning), ``mapped`` (Megatron's name or
value for something megalite does under its own: the flag sets ours, or says it is already so) and
``accepted`` (parsed, one ``note:`` line at start saying why it does not apply here; it changes
nothing). A flag in none of them is an error. megalite.config adds the mapped and accepted flags
to every training entrypoint's parser (``--help`` leaves them out); docs/megatron_flags.md is
written from this table by tools/megatron_flags_doc.py (a test keeps it up to date).
"""

import os
import sys
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Flag:
    status: str  # implemented | mapped | accepted
    note: str = ""
    takes: Optional[str] = None  # flags this module parses: "switch", "value" or "values"; None: megalite.config's
    sets: Dict[str, object] = field(default_factory=dict)  # settings a mapped flag gives (when not given otherwise)
    choices: Optional[Tuple[str, ...]] = None  # the values that keep the note true


def _implemented(flags: str, note: str = "") -> Dict[str, Flag]:
    return {f: Flag("implemented", note) for f in flags.split()}


def _accepted(flags: str, note: str, takes: str = "switch") -> Dict[str, Flag]:
    return {f: Flag("accepted", note, takes) for f in flags.split()}


_FUSIONS = ("a fusion of Megatron's CUDA extensions; megalite's fused kernels are --fused-kernels (Triton, on by "
            "default with CUDA), with the same math")
_FP8 = ("FP8 needs Transformer Engine on a Hopper or newer GPU, which megalite does not use: the run computes in "
        "--bf16 / --fp16 / fp32 as given")
_NOT_LOGGED = "megalite does not log this; metrics.jsonl and TensorBoard hold loss, lr, grad norm and throughput"
_PROFILER = "no built-in profiler: wrap the run in nsys or torch.profiler"

FLAGS: Dict[str, Flag] = {
    # model
    **_implemented("--num-layers --hidden-size --num-attention-heads --ffn-hidden-size --kv-channels "
                   "--group-query-attention --num-query-groups --normalization --norm-epsilon "
                   "--position-embedding-type --rotary-base --rotary-percent --use-rope-scaling "
                   "--rope-scaling-factor --max-position-embeddings --swiglu --disable-bias-linear --add-qkv-bias "
                   "--qk-layernorm --untie-embeddings-and-output-weights --hidden-dropout --attention-dropout "
                   "--init-method-std --make-vocab-size-divisible-by --vocab-size --window-size "
                   "--window-attn-skip-freq --apply-layernorm-1p"),
    "--attention-backend": Flag("mapped", "auto and flash: flash-attn where installed (then Triton, then torch "
                                          "SDPA); fused, unfused and local: torch SDPA (the same attention)"),
    "--use-flash-attn": Flag("mapped", "= --attention-backend flash_attn", "switch",
                             {"attention_backend": "flash_attn"}),
    "--use-mcore-models": Flag("accepted", "megalite has one model, laid out as Megatron Core's", "switch"),
    "--transformer-impl": Flag("accepted", "megalite's own layers are used (no Transformer Engine)", "value",
                               choices=("local", "transformer_engine")),
    **_accepted("--no-masked-softmax-fusion --no-bias-gelu-fusion --no-bias-swiglu-fusion --no-bias-dropout-fusion "
                "--no-rope-fusion --no-persist-layer-norm --no-gradient-accumulation-fusion", _FUSIONS),
    "--cross-entropy-loss-fusion": Flag("mapped", "megalite's fused (Triton) cross entropy runs with --fused-kernels, "
                                                  "on by default where CUDA and triton are present; same loss",
                                        "switch"),
    **_accepted("--use-cpu-initialization", "weights are always initialised from the seed as on one device, then "
                                            "sharded"),
    # parallelism
    **_implemented("--tensor-model-parallel-size --pipeline-model-parallel-size --context-parallel-size "
                   "--decoder-first-pipeline-num-layers --decoder-last-pipeline-num-layers "
                   "--num-layers-per-virtual-pipeline-stage --distributed-backend --distributed-timeout-minutes "
                   "--ddp-bucket-size --use-distributed-optimizer --overlap-param-gather --grad-reduce-in-bf16"),
    "--sequence-parallel": Flag("implemented", "turned off with a note at --tensor-model-parallel-size 1, as "
                                               "Megatron does"),
    "--overlap-grad-reduce": Flag("mapped", "megalite's default (--no-overlap-grad-reduce turns it off)", "switch",
                                  {"overlap_grad_reduce": True}),
    "--accumulate-allreduce-grads-in-fp32": Flag("mapped", "megalite's default: gradients accumulate and reduce in "
                                                           "fp32 unless --grad-reduce-in-bf16", "switch"),
    **_accepted("--tp-comm-overlap", "Transformer Engine's userbuffers overlap; tensor-parallel communication here "
                                     "is plain torch.distributed (same math)"),
    **_accepted("--no-async-tensor-model-parallel-allreduce", "a scheduling switch of Megatron's linear layers; no "
                                                              "effect on results"),
    # data
    **_implemented("--data-path --mock-data --split --data-cache-path --seq-length --tokenizer-model --vocab-file "
                   "--merge-file --eod-mask-loss --num-workers --no-mmap-bin-files"),
    "--tokenizer-type": Flag("implemented", "NullTokenizer with --mock-data (ids below --vocab-size, end of document "
                                            "= --vocab-size); with --vocab-file and --merge-file it defaults to "
                                            "GPT2BPETokenizer"),
    "--no-create-attention-mask-in-dataloader": Flag("mapped", "megalite's data loader never builds attention masks "
                                                               "(attention is causal in the kernel)", "switch"),
    "--tiktoken-pattern": Flag("accepted", "only for TikTokenizer, which megalite does not have", "value"),
    "--num-dataset-builder-threads": Flag("accepted", "sample indices are built by one C++ helper per dataset",
                                          "value"),
    "--dataloader-type": Flag("accepted", "megalite's loader is Megatron's 'single' (each sample once, in the seeded "
                                          "order, resumable); 'cyclic' is refused", "value", choices=("single",)),
    # batch, iterations, learning rate, optimizer
    **_implemented("--micro-batch-size --global-batch-size --rampup-batch-size --train-iters --train-samples --seed "
                   "--lr --min-lr --lr-decay-iters --lr-decay-samples --lr-warmup-iters --lr-warmup-samples "
                   "--lr-warmup-fraction --lr-warmup-init --lr-wsd-decay-iters --lr-wsd-decay-samples "
                   "--decoupled-lr --decoupled-min-lr --weight-decay --adam-beta1 --adam-beta2 --adam-eps "
                   "--clip-grad"),
    "--step-batch-size-schedule": Flag("implemented", "thresholds in tokens, as Megatron with --seq-length; "
                                                      "--global-batch-size may be given when it equals the last "
                                                      "batch size (Megatron refuses both)"),
    "--lr-decay-style": Flag("implemented", "linear (the default, as Megatron's), cosine, constant, WSD; no "
                                            "inverse-square-root. Warm-up counts the step being taken, so a "
                                            "warm-up's first step is not at --lr-warmup-init"),
    "--lr-wsd-decay-style": Flag("implemented", "default linear (Megatron's: exponential)"),
    "--calculate-per-token-loss": Flag("mapped", "megalite's default: the loss is summed over the loss tokens of the "
                                                 "global batch and divided by their count across micro-batches and "
                                                 "data-parallel ranks (Megatron without the flag averages each "
                                                 "micro-batch's mean instead)", "switch"),
    # mixed precision
    **_implemented("--bf16 --fp16 --loss-scale --initial-loss-scale --min-loss-scale --loss-scale-window "
                   "--hysteresis"),
    **_accepted("--fp8-param-gather", _FP8),
    **_accepted("--fp8-format --fp8-recipe --fp8-amax-history-len --fp8-amax-compute-algo --fp8-margin", _FP8,
                "value"),
    "--attention-softmax-in-fp32": Flag("mapped", "megalite's attention backends compute the softmax in fp32",
                                        "switch"),
    # memory
    **_implemented("--recompute-granularity"),
    "--recompute-activations": Flag("mapped", "= --recompute-granularity selective", "switch",
                                    {"recompute_granularity": "selective"}),
    **_accepted("--recompute-method --recompute-num-layers", "--recompute-granularity full recomputes every layer "
                                                             "(memory only; same math)", "value"),
    **_accepted("--manual-gc", "Python's garbage collector runs as usual (timing only)"),
    **_accepted("--manual-gc-interval --manual-gc-eval", "Python's garbage collector runs as usual (timing only)",
                "value"),
    **_accepted("--empty-unused-memory-level", "torch's caching allocator is left alone (memory only)", "value"),
    # checkpointing
    **_implemented("--save --save-interval --load --finetune --no-load-optim --no-load-rng --exit-interval "
                   "--exit-duration-in-mins --async-save"),
    "--ckpt-format": Flag("mapped", "megalite writes one format, Megatron's torch layout (iter_NNNNNNN/mp_rank_XX/"
                                    "model_optim_rng.pt) that loads at any TP / PP / DP size as torch_dist does",
                          "value", choices=("torch", "torch_dist", "torch_dcp", "fsdp_dtensor", "zarr")),
    **_accepted("--auto-detect-ckpt-format --use-checkpoint-args", "megalite reads its one format, and takes the "
                                                                   "model settings from the checkpoint unless given"),
    **_accepted("--exit-signal-handler", "SIGTERM always saves a checkpoint and exits"),
    **_accepted("--no-save-optim --no-save-rng", "checkpoints always hold the optimizer and random states"),
    # logging and evaluation
    **_implemented("--log-interval --tensorboard-dir --wandb-project --wandb-exp-name --wandb-save-dir "
                   "--eval-interval --eval-iters --skip-train"),
    "--log-throughput": Flag("mapped", "megalite always logs tokens/s, TFLOP/s per device and MFU", "switch"),
    **_accepted("--log-params-norm --log-num-zeros-in-grad --log-timers-to-tensorboard "
                "--log-validation-ppl-to-tensorboard --log-memory-to-tensorboard --log-progress "
                "--log-world-size-to-tensorboard", _NOT_LOGGED),
    **_accepted("--tensorboard-log-interval --timing-log-level --tensorboard-queue-size", _NOT_LOGGED, "value"),
    **_accepted("--profile", _PROFILER),
    **_accepted("--profile-step-start --profile-step-end", _PROFILER, "value"),
    **_accepted("--profile-ranks", _PROFILER, "values"),
}

PARSED = {flag: f for flag, f in FLAGS.items() if f.takes}  # what megalite.config adds to the parser


def dest(flag: str) -> str:
    return "megatron:" + flag


def take(flag: str) -> Dict[str, object]:
    """A mapped or accepted flag was given: its note (one line, first rank only) and the settings it makes."""
    f = PARSED[flag]
    if os.environ.get("RANK", "0") == "0":
        print(f"note: {flag} ({f.status}): {f.note}", file=sys.stderr, flush=True)
    return dict(f.sets)


def markdown(helps: Dict[str, str]) -> str:
    """docs/megatron_flags.md; ``helps``: megalite's help text of each of its own flags."""
    lines = ["# Megatron-LM flags in megalite", "",
             "Generated from `megalite/megatron_flags.py` by `python tools/megatron_flags_doc.py`; a test keeps "
             "it up to date.", "",
             "Every Megatron-LM flag that its GPT / Llama pretraining scripts use, with what megalite does:", "",
             "- **implemented**: megalite's flag of that name, with Megatron's meaning;",
             "- **mapped**: Megatron's name or value for something megalite does its own way (the note says how);",
             "- **accepted**: parsed and ignored; it does not change the math.", "",
             "A mapped or accepted flag that is not also one of megalite's own prints its note as one `note:` line "
             "at start.", "",
             "Any other flag is an error naming the closest known flags. `examples/megatron/` holds scaled-down "
             "copies of Megatron-LM's GPT-3 and Llama-3 launch scripts that run unchanged otherwise.", "",
             "| flag | status | what megalite does |", "|---|---|---|"]
    for flag in sorted(FLAGS):
        f = FLAGS[flag]
        text = f.note if f.status != "implemented" else "; ".join(t for t in (helps.get(flag, ""), f.note) if t)
        lines.append(f"| `{flag}` | {f.status} | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"

