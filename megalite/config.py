"""Every setting of a run, as dataclasses, with Megatron-LM's flag names.

Each field becomes a flag: ``num_layers`` -> ``--num-layers`` (or the name in its metadata).
Each entrypoint takes the flags of its own sections (``TOOLS``); a flag of another entrypoint's
section is an error naming the one that takes it. ``--config x.yaml`` may hold any of the
entrypoint's flags (dashes or underscores); flags on the command line override it. Every
section is in every ``Config`` (with its defaults), and in every checkpoint's settings.
``validate`` rejects impossible combinations with one readable message.
"""

import argparse
import dataclasses
import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import yaml

from megalite import megatron_flags
from megalite.errors import MegaliteError
from megalite.utils.packages import installed


def opt(default, help: str, flag: Optional[str] = None, **kw):
    """A dataclass field that is also a command-line flag."""
    return field(default=default, metadata={"help": help, "flag": flag, **kw})


def window_size_type(text) -> List[int]:
    """``--window-size LEFT,RIGHT`` (Megatron's tuple; brackets allowed) as [LEFT, RIGHT]."""
    try:
        values = [int(part) for part in str(text).strip("()[] ").split(",")]
    except ValueError:
        values = []
    if len(values) != 2 or values[0] < 0 or values[1] != 0:
        raise argparse.ArgumentTypeError(f"--window-size {text!r}: expected LEFT,0 (keys before each query, "
                                         "none after: attention is causal)")
    return values


ROPE_TYPES = ("llama3", "linear", "dynamic", "yarn", "longrope")
# Megatron-LM's --attention-backend choices, and the backend each is here (the math is the same).
MEGATRON_ATTENTION_BACKENDS = {"auto": "flash_attn", "flash": "flash_attn", "fused": "sdpa", "unfused": "sdpa",
                               "local": "sdpa"}


@dataclass
class ModelConfig:
    num_layers: Optional[int] = opt(None, "transformer layers")
    hidden_size: Optional[int] = opt(None, "model width")
    num_attention_heads: Optional[int] = opt(None, "query heads")
    ffn_hidden_size: Optional[int] = opt(
        None, "MLP width (default 4*hidden, or Llama's 8/3*hidden rounded to 64 with --swiglu)")
    kv_channels: Optional[int] = opt(None, "head dimension (default hidden / heads)")
    group_query_attention: bool = opt(False, "use --num-query-groups key/value heads")
    num_query_groups: Optional[int] = opt(None, "key/value heads with --group-query-attention")
    normalization: str = opt("LayerNorm", "normalization layer", choices=["LayerNorm", "RMSNorm"])
    norm_epsilon: float = opt(1e-5, "epsilon of the normalization layers")
    position_embedding_type: str = opt("learned_absolute", "positions", choices=["learned_absolute", "rope"])
    rotary_base: int = opt(10000, "RoPE base")
    rotary_percent: float = opt(1.0, "fraction of each head's dimensions that RoPE rotates")
    use_rope_scaling: bool = opt(False, "scale RoPE for contexts past the pretraining one: Llama 3.x's scaling unless "
                                        "--rope-type names another")
    rope_type: Optional[str] = opt(None, "RoPE scaling as transformers' rope_type names it (implies "
                                         "--use-rope-scaling)", choices=list(ROPE_TYPES))
    rope_scaling_factor: float = opt(8.0, "RoPE scaling factor (transformers' factor)")
    original_max_position_embeddings: Optional[int] = opt(
        None, "llama3 / yarn / longrope RoPE scaling: the context the model was pretrained with (default 8192 for "
              "llama3, --max-position-embeddings for yarn and longrope)")
    low_freq_factor: float = opt(1.0, "llama3 RoPE scaling: wavelengths above original context / this are divided "
                                      "by the factor")
    high_freq_factor: float = opt(4.0, "llama3 RoPE scaling: wavelengths below original context / this are kept")
    beta_fast: float = opt(32.0, "yarn RoPE scaling: rotations over the original context above which a frequency "
                                 "is kept")
    beta_slow: float = opt(1.0, "yarn RoPE scaling: rotations below which a frequency is divided by the factor")
    mscale: float = opt(1.0, "yarn RoPE scaling: numerator of the attention factor when --mscale-all-dim is set")
    mscale_all_dim: float = opt(0.0, "yarn RoPE scaling: denominator of the attention factor (0: the factor is "
                                     "0.1 ln(factor) + 1)")
    attention_factor: Optional[float] = opt(None, "yarn / longrope RoPE scaling: multiplies cos and sin (default: "
                                                  "yarn from --mscale / --mscale-all-dim, longrope sqrt(1 + "
                                                  "ln(factor) / ln(--original-max-position-embeddings)))")
    short_factor: Optional[List[float]] = opt(
        None, "longrope RoPE scaling: what each frequency is divided by (one per pair of rotated dimensions) in a "
              "sequence no longer than --original-max-position-embeddings", nargs="+", type=float)
    long_factor: Optional[List[float]] = opt(
        None, "longrope RoPE scaling: what each frequency is divided by in a sequence longer than "
              "--original-max-position-embeddings", nargs="+", type=float)
    max_position_embeddings: Optional[int] = opt(None, "longest sequence (default --seq-length)")
    swiglu: bool = opt(False, "SwiGLU MLP instead of GELU")
    add_bias_linear: bool = opt(True, "no bias in linear layers", flag="--disable-bias-linear", action="store_false")
    add_qkv_bias: bool = opt(False, "bias in the QKV projection only (Qwen2 style)")
    qk_layernorm: bool = opt(False, "normalize each head's queries and keys (--normalization, over the head "
                                    "dimension) before RoPE (Qwen3 style)")
    untie_embeddings_and_output_weights: bool = opt(False, "separate output layer weights")
    hidden_dropout: float = opt(0.1, "dropout on the residual branches and embeddings")
    attention_dropout: float = opt(0.1, "dropout on attention probabilities")
    init_method_std: float = opt(0.02, "std of the normal initialisation")
    make_vocab_size_divisible_by: int = opt(128, "pad the vocabulary to a multiple of this (times TP)")
    vocab_size: Optional[int] = opt(None, "vocabulary size when no tokenizer is given (--mock-data)")
    window_size: Optional[List[int]] = opt(
        None, "sliding-window attention, Megatron's LEFT,RIGHT: each query sees itself and the LEFT keys before it "
              "(a Hugging Face sliding_window W is W-1,0); RIGHT must be 0", type=window_size_type)
    window_attn_skip_freq: Optional[str] = opt(
        None, "which layers --window-size applies to (default all): N makes every Nth layer full attention; a "
              "pattern like [1,1,1,0]*3 gives each layer, 1 windowed and 0 full")
    attention_backend: str = opt("sdpa", "attention implementation: torch SDPA, megalite's Triton flash attention, or "
                                 "the flash-attn package (falls back to triton, then sdpa, where unavailable); "
                                 "Megatron's names: auto and flash mean flash_attn, fused, unfused and local sdpa",
                                 choices=["sdpa", "triton", "flash_attn", *MEGATRON_ATTENTION_BACKENDS])
    apply_layernorm_1p: bool = opt(False, "zero-centred norm weights: each norm multiplies by 1 + w, w stored and "
                                          "initialised as 0 (weight decay pulls the scale towards 1)")
    # Set from the tokenizer at start-up; stored in checkpoints.
    padded_vocab_size: Optional[int] = opt(None, "padded vocabulary (normally derived)")


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = opt(1, "tensor-parallel ranks")
    context_parallel_size: int = opt(1, "context-parallel ranks: each holds a slice of every sequence")
    pipeline_model_parallel_size: int = opt(1, "pipeline stages")
    context_parallel_size: int = opt(1, "context-parallel ranks: each sequence split over them, ring attention "
                                        "(docs/parallelism.md)")
    sequence_parallel: bool = opt(False, "split activations outside attention/MLP along the sequence (needs TP > 1)")
    decoder_first_pipeline_num_layers: Optional[int] = opt(None, "layers on the first pipeline stage (uneven split)")
    decoder_last_pipeline_num_layers: Optional[int] = opt(None, "layers on the last pipeline stage (uneven split)")
    num_layers_per_virtual_pipeline_stage: Optional[int] = opt(None, "layers per model chunk: interleaved 1F1B")
    distributed_backend: Optional[str] = opt(None, "nccl on CUDA, gloo on CPU by default", choices=["nccl", "gloo"])
    distributed_timeout_minutes: float = opt(10.0, "how long a collective may wait before the job fails")
    ddp_bucket_size: int = opt(40_000_000, "elements per data-parallel gradient all-reduce bucket")
    grad_reduce_in_bf16: bool = opt(False, "all-reduce (or reduce-scatter) data-parallel gradients in bfloat16: half "
                                           "the traffic, sums rounded to bf16 (the fp32 gradients keep the result)")
    overlap_grad_reduce: bool = opt(True, "all-reduce gradients in backward", flag="--no-overlap-grad-reduce",
                                    action="store_false")
    use_distributed_optimizer: bool = opt(False, "ZeRO-1: shard fp32 master weights and Adam moments over "
                                                 "data-parallel ranks (gradients reduce-scattered, parameters "
                                                 "all-gathered)")
    overlap_param_gather: bool = opt(False, "with --use-distributed-optimizer: all-gather the updated parameters "
                                            "while the next forward pass runs")
    zero_stage: int = opt(0, "ZeRO stage: 1 = --use-distributed-optimizer; 2 also shards the gradients; 3 also "
                             "the parameters, gathering one layer at a time", choices=[0, 1, 2, 3])


@dataclass
class DataConfig:
    data_path: Optional[List[str]] = opt(None, "PREFIX or WEIGHT PREFIX ...", nargs="+")
    mock_data: bool = opt(False, "synthetic random tokens instead of --data-path")
    split: str = opt("969,30,1", "train,valid,test proportions of the documents")
    data_cache_path: Optional[str] = opt(None, "where GPT sample indices are cached")
    seq_length: Optional[int] = opt(None, "tokens per sample")
    tokenizer_type: Optional[str] = opt(None, "tokenizer (see megalite.data.tokenizer)")
    tokenizer_model: Optional[str] = opt(None, "sentencepiece model / HF tokenizer")
    vocab_file: Optional[str] = opt(None, "GPT-2 BPE vocab.json")
    merge_file: Optional[str] = opt(None, "GPT-2 BPE merges.txt")
    eod_mask_loss: bool = opt(False, "no loss on end-of-document targets")
    num_workers: int = opt(2, "data loader worker processes")
    mmap_bin_files: bool = opt(True, "read each --data-path .bin into memory instead of memory-mapping it",
                               flag="--no-mmap-bin-files", action="store_false")


@dataclass
class TrainingConfig:
    micro_batch_size: int = opt(1, "samples per forward/backward")
    global_batch_size: Optional[int] = opt(None, "samples per optimizer step (default micro * dp)")
    rampup_batch_size: Optional[List[int]] = opt(None, "START INCREMENT RAMP_SAMPLES", nargs=3, type=int)
    step_batch_size_schedule: Optional[List[str]] = opt(
        None, "global batch size by tokens consumed, Megatron's 'THRESHOLD:BATCH ...' (suffixes K M B T; the first "
              "threshold 0; the last batch is --global-batch-size)", nargs="+")
    train_iters: Optional[int] = opt(None, "optimizer steps")
    train_samples: Optional[int] = opt(None, "samples to train on (instead of --train-iters)")
    seed: int = opt(1234, "seed for initialisation, data order and dropout")
    nan_policy: str = opt("stop", "on a non-finite loss or gradient: stop; skip the update; or roll back to the "
                                  "last checkpoint and skip the data since", choices=["stop", "skip", "rollback"])
    lr: float = opt(1e-4, "peak learning rate")
    min_lr: float = opt(0.0, "learning rate at the end of decay")
    lr_decay_style: str = opt("linear", "decay shape (linear: Megatron's default)",
                              choices=["constant", "linear", "cosine", "WSD"])
    lr_decay_iters: Optional[int] = opt(None, "iterations of decay (default --train-iters)")
    lr_decay_samples: Optional[int] = opt(None, "samples of decay, with --train-samples (default --train-samples)")
    lr_warmup_iters: int = opt(0, "linear warm-up iterations")
    lr_warmup_samples: Optional[int] = opt(None, "linear warm-up samples, with --train-samples")
    lr_warmup_fraction: Optional[float] = opt(None, "warm-up as a fraction of the decay (instead of "
                                                    "--lr-warmup-iters / --lr-warmup-samples)")
    lr_warmup_init: float = opt(0.0, "learning rate the warm-up starts from")
    lr_wsd_decay_iters: Optional[int] = opt(None, "final decay iterations of WSD (default 10%% of decay)")
    lr_wsd_decay_samples: Optional[int] = opt(None, "final decay samples of WSD, with --train-samples")
    lr_wsd_decay_style: str = opt("linear", "WSD's final decay shape",
                                  choices=["linear", "cosine", "exponential", "minus_sqrt"])
    decoupled_lr: Optional[float] = opt(None, "peak learning rate of the input embedding and output layer (the "
                                              "rest follow --lr), same warm-up and decay")
    decoupled_min_lr: Optional[float] = opt(None, "floor of --decoupled-lr (default --min-lr)")
    weight_decay: float = opt(0.01, "AdamW weight decay (not on norms and biases)")
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.999, "AdamW beta2")
    adam_eps: float = opt(1e-8, "AdamW epsilon")
    clip_grad: float = opt(1.0, "global gradient-norm clip (0 = off)")
    bf16: bool = opt(False, "bfloat16 parameters and compute, fp32 master weights")
    fp16: bool = opt(False, "float16 parameters and compute, fp32 master weights, loss scaling")
    loss_scale: Optional[float] = opt(None, "static loss scale for fp16 (default dynamic)")
    initial_loss_scale: float = opt(2.0**32, "first dynamic loss scale")
    min_loss_scale: float = opt(1.0, "smallest dynamic loss scale")
    loss_scale_window: int = opt(1000, "good steps before the loss scale doubles")
    hysteresis: int = opt(2, "overflows tolerated before the loss scale halves")
    recompute_granularity: Optional[str] = opt(None, "activation recomputation", choices=["full", "selective"])
    fused_kernels: Optional[bool] = opt(None, "Triton kernels for norms, RoPE, SwiGLU, cross entropy and the blocks of "
                                        "context-parallel ring attention (default: on when CUDA and triton are "
                                        "present); --no-fused-kernels uses the torch code",
                                        action=argparse.BooleanOptionalAction)
    eval_interval: int = opt(1000, "iterations between evaluations")
    eval_iters: int = opt(100, "global batches per evaluation")
    eval_tasks: Optional[str] = opt(None, "lm-eval tasks (comma list) run with the validation loss every "
                                          "--eval-interval and at the end")
    eval_tasks_include_path: Optional[str] = opt(None, "folder of local lm-eval task YAMLs for --eval-tasks")
    eval_tasks_num_fewshot: Optional[int] = opt(None, "few-shot examples for --eval-tasks (default: each task's)")
    eval_tasks_limit: Optional[float] = opt(None, "documents per task for --eval-tasks (a fraction if < 1)")
    skip_train: bool = opt(False, "only evaluate")


@dataclass
class LoggingConfig:
    log_interval: int = opt(100, "iterations between log lines")
    tensorboard_dir: Optional[str] = opt(None, "TensorBoard event files")
    metrics_file: Optional[str] = opt(None, "JSON lines of metrics (default <save>/metrics.jsonl)")
    peak_tflops: Optional[float] = opt(None, "device peak TFLOP/s for MFU (default from a table of GPUs)")
    wandb_project: Optional[str] = opt(None, "log to Weights & Biases in this project (offline when there is no API "
                                             "key or no network; `wandb sync` uploads it later)")
    wandb_exp_name: Optional[str] = opt(None, "W&B run name (default: W&B's)")
    wandb_save_dir: Optional[str] = opt(None, "W&B keeps its run files in <this>/wandb/ (default <save>/wandb/)")
    wandb_entity: Optional[str] = opt(None, "W&B user or team (default: the API key's)")


@dataclass
class CheckpointConfig:
    save: Optional[str] = opt(None, "checkpoint folder")
    save_interval: Optional[int] = opt(None, "iterations between checkpoints")
    load: Optional[str] = opt(None, "checkpoint folder to resume from")
    finetune: bool = opt(False, "load weights only; start at iteration 0")
    no_load_optim: bool = opt(False, "do not restore the optimizer")
    no_load_rng: bool = opt(False, "do not restore random states")
    exit_interval: Optional[int] = opt(None, "save and exit when the iteration is a multiple of this")
    exit_duration_in_mins: Optional[float] = opt(None, "save and exit after this many minutes")
    keep_last: Optional[int] = opt(None, "keep the checkpoint just saved and the N-1 before it (never later ones)")
    async_save: bool = opt(False, "write checkpoints from a CPU copy in the background while training goes on")


@dataclass
class ChatConfig:
    """How conversations become text: shared by SFT and the preference stages."""

    chat_template: Optional[str] = opt(None, "chatml|qwen|llama3|llama2|mistral|alpaca|plain or a Jinja file "
                                             "(default: the tokenizer's own, else chatml)")


@dataclass
class SFTConfig:
    sft_data: Optional[str] = opt(None, "SFT data: files or dataset_info.json names, comma/space separated, "
                                        "optionally weighted: 'a.jsonl,b.jsonl' or '0.7 a.jsonl 0.3 b.jsonl'")
    sft_dataset_dir: Optional[str] = opt(None, "folder with a LLaMA-Factory dataset_info.json (and the files)")
    sft_valid_data: Optional[str] = opt(None, "validation data, same syntax as --sft-data")
    sft_valid_fraction: float = opt(0.0, "hold out this fraction of each --sft-data source for validation")
    train_on_prompt: bool = opt(False, "loss on every token, not only the assistant turns")
    packing: bool = opt(False, "pack several examples into each --seq-length row")
    sft_cache_path: Optional[str] = opt(None, "where tokenized SFT examples are cached (default <data dir>/cache/sft)")


@dataclass
class LoraConfig:
    lora_rank: int = opt(0, "LoRA: train rank-r adapters on a frozen base (--load BASE --finetune); 0 = off")
    lora_alpha: float = opt(16.0, "LoRA scale numerator: adapters add alpha/rank * B A x")
    lora_dropout: float = opt(0.0, "dropout on the adapters' input")
    lora_target: str = opt("all-linear", "comma list of HF module names (q_proj,k_proj,v_proj,o_proj,gate_proj,"
                                         "up_proj,down_proj) that get adapters, or all-linear")
    use_rslora: bool = opt(False, "rank-stabilised LoRA: scale alpha/sqrt(rank) instead of alpha/rank")
    load_adapter: Optional[str] = opt(None, "peft LoRA adapter folder to start from (its rank, alpha and targets "
                                            "become the run's)")
    # Recorded at start-up from --load BASE; stored in a LoRA run's checkpoints, which hold only the adapters.
    lora_base: Optional[str] = opt(None, "base checkpoint of a LoRA run (normally recorded from --load)")
    lora_base_iteration: Optional[int] = opt(None, "iteration of --lora-base (normally recorded from --load)")


@dataclass
class DPOConfig:
    pref_method: str = opt("dpo", "what to learn from preference data: dpo (a direct preference loss on pairs), kto "
                                  "(desirable and undesirable completions), rm (a reward model: scalar head, "
                                  "Bradley-Terry loss on pairs)", choices=["dpo", "kto", "rm"])
    pref_data: Optional[str] = opt(None, "DPO preference pairs: files (prompt/chosen/rejected, text or messages) or "
                                         "dataset_info.json names with ranking: true, comma/space separated")
    pref_dataset_dir: Optional[str] = opt(None, "folder with a LLaMA-Factory dataset_info.json for --pref-data names")
    pref_cache_path: Optional[str] = opt(None, "where tokenized pairs or KTO examples (and precomputed reference "
                                               "log-probs) are cached (default <data dir>/cache/pref, or /kto)")
    pref_valid_data: Optional[str] = opt(None, "held-out preference pairs (same syntax as --pref-data): validation "
                                               "loss and rewards every --eval-interval")
    pref_valid_fraction: float = opt(0.0, "hold out this seeded share of the --pref-data pairs (KTO: examples) for "
                                          "validation")
    max_prompt_length: Optional[int] = opt(None, "keep only the last N prompt tokens of a pair (counted)")
    dpo_loss_type: str = opt("sigmoid", "comma list of trl DPO losses: sigmoid, hinge, ipo, robust, bco_pair, "
                                        "nca_pair, sppo_hard, apo_zero, apo_down, sigmoid_norm, sft; or the "
                                        "reference-free simpo (with sft if wanted)")
    dpo_loss_weights: Optional[str] = opt(None, "comma list of weights, one per --dpo-loss-type (default all 1)")
    dpo_beta: float = opt(0.1, "DPO beta: the strength of the pull towards the reference model")
    dpo_label_smoothing: float = opt(0.0, "robust DPO and SimPO: assumed share of flipped preference labels, "
                                          "in [0, 0.5)")
    simpo_gamma: float = opt(0.5, "SimPO: the target reward margin (trl CPO's simpo_gamma)")
    precompute_ref_log_probs: bool = opt(False, "score every pair with the reference once before training, "
                                                "so training holds a single model")


@dataclass
class ReferenceConfig:
    ref_load: Optional[str] = opt(None, "reference model checkpoint (default: the starting weights of the run; with "
                                        "--lora-rank: the policy with its adapters disabled)")


@dataclass
class RLConfig:
    prompt_data: Optional[str] = opt(None, "prompts: files (a 'prompt' column: text or messages; every other column "
                                           "goes to the reward functions) or dataset_info.json names, comma separated")
    prompt_dataset_dir: Optional[str] = opt(None, "folder with a LLaMA-Factory dataset_info.json for --prompt-data")
    prompt_valid_fraction: float = opt(0.0, "hold out this seeded share of the prompts: the held-out mean reward "
                                            "every --eval-interval")
    algorithm: str = opt("grpo", "grpo (trl's GRPOTrainer), rloo (trl's RLOOTrainer) or ppo (a critic, GAE, the "
                                 "KL in the reward)",
                         choices=["grpo", "rloo", "ppo"])
    num_generations: Optional[int] = opt(None, "completions per prompt (G; default 8, PPO 1); --global-batch-size "
                                               "counts completions")
    max_completion_length: int = opt(256, "most tokens generated per completion; prompts longer than --seq-length "
                                          "minus this are dropped (counted)")
    temperature: float = opt(1.0, "sampling temperature of the rollouts (0: greedy); training scores the tokens at "
                                  "the same temperature, as trl does")
    top_p: float = opt(1.0, "nucleus sampling of the rollouts")
    top_k: int = opt(0, "top-k sampling of the rollouts (0: off)")
    reward_funcs: Optional[List[str]] = opt(None, "reward functions: pkg.module:fn or file.py:fn (trl's signature), "
                                                  "or the built-ins accuracy (math-verify against a 'solution' "
                                                  "column) and format (--format-pattern)", nargs="+")
    reward_weights: Optional[List[float]] = opt(None, "one weight per reward (functions, then --reward-model)",
                                                nargs="+", type=float)
    format_pattern: Optional[str] = opt(None, "the regular expression the built-in format reward matches")
    reward_model: Optional[str] = opt(None, "a reward model scored in the job: a dpo_gpt.py --pref-method rm "
                                            "checkpoint or a local HF ...ForSequenceClassification folder")
    loss_type: str = opt("dapo", "GRPO loss normalisation (trl's): grpo, bnpo, dr_grpo, dapo or cispo",
                         choices=["grpo", "bnpo", "dr_grpo", "dapo", "cispo"])
    scale_rewards: str = opt("group", "GRPO: divide advantages by the group's reward std, the batch's, or none",
                             choices=["group", "batch", "none"])
    epsilon: float = opt(0.2, "clipping range of the probability ratio (lower side)")
    epsilon_high: Optional[float] = opt(None, "upper clipping range (default --epsilon; DAPO uses 0.28)")
    beta: Optional[float] = opt(None, "KL coefficient to the reference model (0: no reference model is held; "
                                      "default: trl's, 0 for grpo, 0.05 for rloo and ppo; PPO puts it in the "
                                      "per-token reward)")
    kl_bias_correction: bool = opt(True, "GRPO: do not multiply the KL term by the probability ratio (trl's "
                                         "use_bias_correction_kl=False)", flag="--no-kl-bias-correction",
                                   action="store_false")
    num_iterations: int = opt(1, "optimizer steps on each batch of rollouts (trl's num_iterations; PPO's epochs)")
    normalize_advantages: bool = opt(False, "RLOO: whiten the advantages over the batch")
    mask_truncated_completions: bool = opt(False, "completions cut at --max-completion-length get no loss")
    share_prompts: bool = opt(True, "compute each prompt once for its G completions in the training passes (the "
                                    "same numbers, fewer FLOPs; not with pipeline parallelism or dropout)",
                              flag="--no-share-prompts", action="store_false")
    critic_load: Optional[str] = opt(None, "PPO: the critic's starting weights, a megalite checkpoint (default: "
                                           "--reward-model when it is a megalite reward model of the policy's "
                                           "architecture, else the policy's starting weights)")
    critic_lr: Optional[float] = opt(None, "PPO: the critic's learning rate, on the policy's schedule (default --lr)")
    gamma: float = opt(1.0, "PPO: discount of the per-token rewards in GAE")
    lam: float = opt(0.95, "PPO: GAE's lambda")
    cliprange_value: float = opt(0.2, "PPO: how far a value may move from its rollout value before the value loss "
                                      "clips it")


@dataclass
class KTOConfig:
    kto_loss_type: str = opt("kto", "dpo_gpt.py --pref-method kto: trl's loss, kto (with the KL estimate) or "
                                    "apo_zero_unpaired", choices=["kto", "apo_zero_unpaired"])
    kto_desirable_weight: float = opt(1.0, "KTO: weight of the desirable examples' losses")
    kto_undesirable_weight: float = opt(1.0, "KTO: weight of the undesirable examples' losses")


@dataclass
class RewardConfig:
    center_rewards_coefficient: Optional[float] = opt(None, "reward model (--pref-method rm): add this times the mean "
                                                            "of (chosen + rejected score)^2 to the loss, pulling "
                                                            "scores towards 0 (trl's; 0.01 is the suggested value)")


SECTIONS = {
    "model": ModelConfig,
    "parallel": ParallelConfig,
    "data": DataConfig,
    "training": TrainingConfig,
    "logging": LoggingConfig,
    "checkpoint": CheckpointConfig,
    "chat": ChatConfig,
    "sft": SFTConfig,
    "lora": LoraConfig,
    "dpo": DPOConfig,
    "kto": KTOConfig,
    "reward": RewardConfig,
    "reference": ReferenceConfig,
    "rl": RLConfig,
}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    kto: KTOConfig = field(default_factory=KTOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Every section, each field placed by its name: a checkpoint written before a field moved
        to another section (``chat_template`` was in ``sft``) or was renamed (RENAMED) still loads."""
        return config_from_values({RENAMED.get(name, name): value
                                   for section in d.values() for name, value in section.items()})


# Settings renamed, old name -> new: the old flag and --config key still work, with a warning,
# until the release after the one that renamed them.
RENAMED = {"stage": "pref_method"}  # dpo_gpt.py --stage chose DPO, KTO or reward models


# The sections each entrypoint takes (LoRA is a model transform: pretraining on --data-path takes it too).
# A flag or --config key of another entrypoint's section is an error naming the one that takes it.
_PRETRAINING = ("model", "parallel", "data", "training", "logging", "checkpoint", "lora")
TOOLS = {
    "pretrain_gpt.py": _PRETRAINING,
    "sft_gpt.py": _PRETRAINING + ("chat", "sft"),
    "dpo_gpt.py": _PRETRAINING + ("chat", "dpo", "kto", "reward", "reference"),
    "rl_gpt.py": _PRETRAINING + ("chat", "reference", "rl"),
}


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, no usage wall (``--help`` shows it)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(description: str = "", sections=tuple(SECTIONS)) -> argparse.ArgumentParser:
    """The entrypoint's sections, plus the Megatron-LM flags megalite maps or accepts
    (megalite.megatron_flags; left out of --help, listed in docs/megatron_flags.md)."""
    p = _Parser(description=description, allow_abbrev=False,  # as Megatron: --num-layer is no --num-layers
                epilog="Megatron-LM flags that megalite maps or accepts: docs/megatron_flags.md")
    p.add_argument("--config", help="YAML file with any of the flags below; command-line flags win")
    for section in sections:
        add_section_args(p.add_argument_group(section), SECTIONS[section])
    for flag, f in megatron_flags.PARSED.items():
        kw = {"action": "store_true"} if f.takes == "switch" else {"nargs": "+" if f.takes == "values" else None,
                                                                    "choices": f.choices}
        p.add_argument(flag, dest=megatron_flags.dest(flag), default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw)
    return p


def flag_helps() -> dict:
    """Each of megalite's own flags -> its help text (docs/megatron_flags.md shows them)."""
    return {_flag(f): f.metadata["help"].replace("%%", "%") for cls in SECTIONS.values()
            for f in dataclasses.fields(cls)}


def add_section_args(group, cls) -> None:
    """One flag per field of a config section (absent flags stay absent from the namespace); its
    help ends with the default where that says something (not None, not an on/off switch)."""
    for f in dataclasses.fields(cls):
        kw = {"dest": f.name, "help": f.metadata["help"], "default": argparse.SUPPRESS}
        if f.metadata.get("action"):
            kw["action"] = f.metadata["action"]
        elif f.type is bool or f.type == "bool":
            kw["action"] = "store_true"
        else:
            kw["type"] = f.metadata.get("type") or _scalar_type(f)
            for k in ("choices", "nargs"):
                if f.metadata.get(k):
                    kw[k] = f.metadata[k]
            if f.default is not None:
                kw["help"] += f" (default: {_shown(f.default)})"
        group.add_argument(_flag(f), **kw)


def _shown(value) -> str:
    """A default as a user would type it: 1e-4, not 0.0001 (argparse's %-formatting escaped)."""
    if isinstance(value, float) and 0 < abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        text = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    else:
        text = str(value)
    return text.replace("%", "%%")


def _scalar_type(f: dataclasses.Field):
    text = str(f.type)
    for name, t in (("int", int), ("float", float)):
        if name in text and "List" not in text:
            return t
    return str


def parse_config(argv=None, description: str = "", tool: Optional[str] = None) -> Config:
    """Flags (and an optional --config YAML) -> a Config; ``cfg.explicit`` names the settings given.
    ``tool`` (a key of TOOLS) takes only that entrypoint's flags; without it, every section's."""
    sections = TOOLS[tool] if tool else tuple(SECTIONS)
    parser = build_parser(description, sections)
    ns, unknown = parser.parse_known_args(_renamed_flags(sys.argv[1:] if argv is None else list(argv)))
    for flag in (token.split("=")[0] for token in unknown if token.startswith("--")):
        if _takers(flag, sections):
            raise MegaliteError(f"{flag} is a setting of {_takers(flag, sections)}, not of {tool}")
    if unknown:
        parser.error(_unrecognized(unknown, parser))
    ns = vars(ns)
    values = _read_yaml(ns.pop("config"), tool, sections) if ns.get("config") else {}
    ns.pop("config", None)
    mapped = {}
    for flag in megatron_flags.PARSED:
        if ns.pop(megatron_flags.dest(flag), None) is not None:
            mapped.update(megatron_flags.take(flag))
    values.update({k: v for k, v in mapped.items() if k not in ns})
    values.update(ns)
    cfg = config_from_values(values)
    cfg.explicit = set(values)
    return cfg


def _unrecognized(unknown: list, parser: argparse.ArgumentParser) -> str:
    """The first unknown flag and the known flags closest to it (or the stray value)."""
    flags = [t.split("=")[0] for t in unknown if t.startswith("-")]
    if not flags:
        return f"unrecognized argument {unknown[0]!r} (a value without a flag, or a flag given one value too many)"
    close = difflib.get_close_matches(flags[0], [o for a in parser._actions for o in a.option_strings], n=3)
    return f"unrecognized argument {flags[0]}" + (f"; did you mean {', '.join(close)}?" if close else "")


def _renamed_flags(argv: list) -> list:
    """``argv`` with renamed flags (RENAMED) spelled the new way, each with a warning."""
    out = []
    for token in argv:
        flag, eq, value = token.partition("=")
        old = flag[2:].replace("-", "_") if flag.startswith("--") else None
        if old in RENAMED:
            new = "--" + RENAMED[old].replace("_", "-")
            print(f"warning: {flag} is deprecated and goes in the next release: use {new}", file=sys.stderr)
            token = new + eq + value
        out.append(token)
    return out


def _takers(flag: str, sections) -> str:
    """The tools that take ``flag`` when it belongs to none of ``sections`` ('' otherwise)."""
    section = next((name for name in SECTIONS if name not in sections
                    for f in dataclasses.fields(SECTIONS[name]) if _flag(f) == flag), None)
    tools = [t for t, taken in TOOLS.items() if section in taken] if section else []
    return " and ".join([", ".join(tools[:-1]), tools[-1]] if len(tools) > 2 else tools)


TOKENIZER_FIELDS = ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file")


def inherit_model_settings(cfg: Config, saved_args: dict) -> list:
    """Take every model setting, the tokenizer (as a whole, unless a tokenizer flag is given) and
    --seq-length the user did not give from a checkpoint's stored settings (so ``--load ckpt
    --finetune`` needs no model, tokenizer or sequence flags). Returns the names taken."""
    given = getattr(cfg, "explicit", None)
    if given is None:
        return []
    taken = []

    def take(section, names):
        saved = saved_args.get(section, {})
        for name in names:
            if saved.get(name) is not None:
                setattr(getattr(cfg, section), name, saved[name])
                taken.append(name)

    take("model", [f.name for f in dataclasses.fields(ModelConfig) if f.name not in given])
    if not given & set(TOKENIZER_FIELDS) and cfg.data.tokenizer_type is None:
        take("data", TOKENIZER_FIELDS)
    take("data", [] if "seq_length" in given else ["seq_length"])
    return taken


def config_from_values(values: dict) -> Config:
    """Config from a flat {field name: value} mapping (unknown names are an error)."""
    cfg = Config()
    known = {}
    for section in SECTIONS:
        for f in dataclasses.fields(SECTIONS[section]):
            known[f.name] = section
    for name, value in values.items():
        if name not in known:
            raise MegaliteError(f"unknown setting {name!r} (flag --{name.replace('_', '-')})")
        setattr(getattr(cfg, known[name]), name, value)
    return cfg


def _read_yaml(path: str, tool: Optional[str] = None, sections=tuple(SECTIONS)) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise MegaliteError(f"--config {path}: no such file") from None
    except yaml.YAMLError as e:
        raise MegaliteError(f"--config {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise MegaliteError(f"--config {path}: expected a mapping of flag names to values")
    flags = {_flag(f).lstrip("-"): f for name in sections for f in dataclasses.fields(SECTIONS[name])}
    out = {}
    for key, value in data.items():
        if str(key).replace("-", "_") in RENAMED:
            new = RENAMED[str(key).replace("-", "_")].replace("_", "-")
            print(f"warning: --config {path}: {key} is deprecated and goes in the next release: use {new}",
                  file=sys.stderr)
            key = new
        k = str(key).replace("_", "-")
        if f"--{k}" in megatron_flags.PARSED:
            if value not in (None, False):
                out.update({name: v for name, v in megatron_flags.take(f"--{k}").items() if name not in out})
            continue
        if k not in flags and _takers(f"--{k}", sections):
            raise MegaliteError(f"--config {path}: {key} is a setting of {_takers(f'--{k}', sections)}, not of {tool}")
        if k not in flags:
            raise MegaliteError(f"--config {path}: unknown setting {key!r}")
        out[flags[k].name] = _typed_value(path, key, flags[k], value)
    return out


_KIND = {int: "an integer", float: "a number", str: "a string"}


def _typed_value(path: str, key, f: dataclasses.Field, value):
    """A YAML value checked and converted as its flag would be on the command line (YAML reads
    ``3e-4`` as a string and ``two`` is no number: one line naming the file and the key)."""
    action, nargs = f.metadata.get("action"), f.metadata.get("nargs")
    if action or f.type is bool or f.type == "bool":
        if not isinstance(value, bool):
            raise MegaliteError(f"--config {path}: {key}: expected true or false, got {value!r}")
        return not value if action == "store_false" else value  # e.g. disable-bias-linear: true
    if value is None:
        return None
    convert = f.metadata.get("type") or _scalar_type(f)
    if nargs:  # a list, or words as on the command line ("0.3 a 0.7 b")
        items = value if isinstance(value, list) else str(value).split() if isinstance(value, str) else [value]
    else:
        items = None
    if nargs == "+" and not items or isinstance(nargs, int) and len(items) != nargs:
        raise MegaliteError(f"--config {path}: {key}: expected {nargs if isinstance(nargs, int) else 'one or more'} "
                            f"values, got {value!r}")
    out = []
    for item in items if items is not None else [value]:
        if isinstance(item, (list, dict)) or isinstance(item, bool) and convert is not str:
            raise MegaliteError(f"--config {path}: {key}: expected {_KIND.get(convert, 'a value')}, got {item!r}")
        try:
            typed = convert(item) if convert is not int or isinstance(item, int) else int(str(item), 10)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            expected = _KIND.get(convert, "a value")
            raise MegaliteError(f"--config {path}: {key}: expected {expected}, got {item!r}") from None
        if f.metadata.get("choices") and typed not in f.metadata["choices"]:
            raise MegaliteError(f"--config {path}: {key}: {typed!r} is not one of "
                                f"{', '.join(map(str, f.metadata['choices']))}")
        out.append(typed)
    return out if items is not None else out[0]


def validate(cfg: Config, world_size: int = 1) -> Config:
    """Fill derived values and reject impossible settings, naming the flags involved."""
    m, p, d, t, c = cfg.model, cfg.parallel, cfg.data, cfg.training, cfg.checkpoint

    def need(value, flag):
        if value is None:
            raise MegaliteError(f"{flag} is required")

    for value, flag in ((m.num_layers, "--num-layers"), (m.hidden_size, "--hidden-size"),
                        (m.num_attention_heads, "--num-attention-heads"), (d.seq_length, "--seq-length")):
        need(value, flag)
    m.attention_backend = MEGATRON_ATTENTION_BACKENDS.get(m.attention_backend, m.attention_backend)
    megatron_tokenizer_defaults(cfg)
    stage_layers(m.num_layers, p.pipeline_model_parallel_size, 0, p.decoder_first_pipeline_num_layers,
                 p.decoder_last_pipeline_num_layers)
    tp = p.tensor_model_parallel_size
    pp, per_chunk = p.pipeline_model_parallel_size, p.num_layers_per_virtual_pipeline_stage
    if per_chunk is not None:
        if pp == 1:
            raise MegaliteError("--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size > 1")
        if m.num_layers % (pp * per_chunk):
            raise MegaliteError(f"--num-layers {m.num_layers} is not divisible by --pipeline-model-parallel-size {pp} "
                                f"x --num-layers-per-virtual-pipeline-stage {per_chunk}")
        if p.decoder_first_pipeline_num_layers is not None or p.decoder_last_pipeline_num_layers is not None:
            raise MegaliteError("uneven pipeline splits cannot be combined with virtual pipeline stages")
    if p.use_distributed_optimizer and p.zero_stage == 0:
        p.zero_stage = 1
    p.use_distributed_optimizer = p.zero_stage >= 1
    if p.overlap_param_gather and p.zero_stage != 1:
        raise MegaliteError("--overlap-param-gather needs --use-distributed-optimizer (ZeRO-3 always prefetches)")
    if p.zero_stage >= 2 and p.pipeline_model_parallel_size > 1 and not m.untie_embeddings_and_output_weights:
        raise MegaliteError(f"--zero-stage {p.zero_stage} with --pipeline-model-parallel-size > 1 needs "
                            "--untie-embeddings-and-output-weights (a tied embedding split over stages is not "
                            "supported with sharded gradients yet)")
    mp = tp * p.pipeline_model_parallel_size
    if world_size % mp:
        raise MegaliteError(f"world size {world_size} is not divisible by tensor x pipeline parallel size {mp}")
    validate_context_parallel(cfg, world_size)
    dp = world_size // (mp * p.context_parallel_size)  # context-parallel ranks share their samples
    if m.kv_channels is None:
        if m.hidden_size % m.num_attention_heads:
            raise MegaliteError(f"--hidden-size {m.hidden_size} is not divisible by --num-attention-heads "
                                f"{m.num_attention_heads}")
        m.kv_channels = m.hidden_size // m.num_attention_heads
    if m.group_query_attention:
        need(m.num_query_groups, "--num-query-groups")
    else:
        m.num_query_groups = m.num_attention_heads
    if m.num_attention_heads % m.num_query_groups:
        raise MegaliteError(f"--num-attention-heads {m.num_attention_heads} is not divisible by "
                            f"--num-query-groups {m.num_query_groups}")
    if m.num_attention_heads % tp:
        raise MegaliteError(f"--num-attention-heads {m.num_attention_heads} is not divisible by "
                            f"--tensor-model-parallel-size {tp}")
    if m.num_query_groups % tp and tp % m.num_query_groups:
        raise MegaliteError(f"--num-query-groups {m.num_query_groups} must divide or be divisible by "
                            f"--tensor-model-parallel-size {tp} (key/value heads are split, or replicated)")
    if p.sequence_parallel and tp == 1:  # as Megatron: a launch script may set it for every TP size
        _note("--sequence-parallel is off: it needs --tensor-model-parallel-size > 1")
        p.sequence_parallel = False
    if p.sequence_parallel and d.seq_length % tp:
        raise MegaliteError(f"--seq-length {d.seq_length} is not divisible by --tensor-model-parallel-size {tp} "
                            "(needed by --sequence-parallel)")
    if m.ffn_hidden_size is None:
        m.ffn_hidden_size = int(8 * m.hidden_size / 3 / 64) * 64 if m.swiglu else 4 * m.hidden_size
    if m.max_position_embeddings is None:
        m.max_position_embeddings = d.seq_length
    if m.position_embedding_type == "learned_absolute" and d.seq_length > m.max_position_embeddings:
        raise MegaliteError(f"--seq-length {d.seq_length} exceeds --max-position-embeddings "
                            f"{m.max_position_embeddings}")
    if not 0 < m.rotary_percent <= 1:
        raise MegaliteError("--rotary-percent must be in (0, 1]")
    validate_rope_scaling(m)
    if m.window_size is not None:
        try:  # a value from a checkpoint or a YAML list gets the command line's check
            m.window_size = window_size_type(",".join(map(str, m.window_size)))
        except argparse.ArgumentTypeError as e:
            raise MegaliteError(str(e)) from None
    elif m.window_attn_skip_freq is not None:
        raise MegaliteError("--window-attn-skip-freq needs --window-size")
    windowed_layers(m)
    sft = cfg.sft.sft_data is not None
    posttrain = sft or cfg.dpo.pref_data is not None or cfg.rl.prompt_data is not None
    if sum([d.data_path is not None, d.mock_data, sft, cfg.dpo.pref_data is not None,
            cfg.rl.prompt_data is not None]) != 1:
        raise MegaliteError("give one source of training data: --data-path, --mock-data (synthetic tokens), "
                            "--sft-data (sft_gpt.py), --pref-data (dpo_gpt.py) or --prompt-data (rl_gpt.py)")
    if d.mock_data and d.tokenizer_type is None:
        need(m.vocab_size, "--vocab-size (needed by --mock-data without a tokenizer)")
    if (d.data_path is not None or posttrain) and d.tokenizer_type is None:
        raise MegaliteError(f"--tokenizer-type is required with {'--sft-data' if sft else '--data-path'}")
    if t.fused_kernels and not installed("triton"):
        raise MegaliteError("--fused-kernels needs triton (pip install triton)")
    if m.attention_backend == "triton" and not installed("triton"):
        raise MegaliteError("--attention-backend triton needs triton (pip install triton)")
    if m.attention_backend == "triton" and m.attention_dropout > 0:
        raise MegaliteError("--attention-backend triton has no attention dropout: add --attention-dropout 0")
    if t.bf16 and t.fp16:
        raise MegaliteError("--bf16 and --fp16 are mutually exclusive")
    if t.step_batch_size_schedule:
        validate_step_batch_sizes(cfg, dp)
    if t.global_batch_size is None:
        t.global_batch_size = t.micro_batch_size * dp
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise MegaliteError(f"--global-batch-size {t.global_batch_size} is not divisible by --micro-batch-size "
                            f"{t.micro_batch_size} x data-parallel size {dp}")
    if t.rampup_batch_size:
        start, inc, _ = t.rampup_batch_size
        unit = t.micro_batch_size * dp
        if start % unit or inc % unit or (t.global_batch_size - start) % inc:
            raise MegaliteError(f"--rampup-batch-size {t.rampup_batch_size}: start and increment must be "
                                f"multiples of micro batch x dp ({unit}) and reach --global-batch-size")
    if per_chunk is not None:
        unit = t.micro_batch_size * dp
        for gbs in [t.global_batch_size] + ([t.rampup_batch_size[0]] if t.rampup_batch_size else []):
            if (gbs // unit) % pp:
                raise MegaliteError(f"virtual pipeline stages need the micro-batches per step ({gbs // unit}) to be a "
                                    f"multiple of --pipeline-model-parallel-size {pp}")
    if (t.train_iters is None) == (t.train_samples is None) and not t.skip_train:
        raise MegaliteError("give exactly one of --train-iters and --train-samples")
    validate_lr_units(t)
    if p.grad_reduce_in_bf16 and p.zero_stage >= 2:
        raise MegaliteError(f"--grad-reduce-in-bf16 with --zero-stage {p.zero_stage}: only plain data parallelism "
                            "and --use-distributed-optimizer reduce in bf16")
    if c.save_interval is not None and c.save is None:
        raise MegaliteError("--save-interval needs --save")
    validate_lora(cfg)
    if cfg.logging.metrics_file is None and c.save:
        cfg.logging.metrics_file = f"{c.save}/metrics.jsonl"
    return cfg


def _note(line: str) -> None:
    """One line on stderr, from the first rank only."""
    if os.environ.get("RANK", "0") == "0":
        print(f"note: {line}", file=sys.stderr, flush=True)


def megatron_tokenizer_defaults(cfg: Config) -> None:
    """Megatron's tokenizer habits: --vocab-file with --merge-file and no --tokenizer-type is GPT-2
    BPE; NullTokenizer (ids used as they are, end of document = --vocab-size) needs no tokenizer."""
    d, m = cfg.data, cfg.model
    if d.tokenizer_type is None and d.vocab_file and d.merge_file:
        d.tokenizer_type = "GPT2BPETokenizer"
    if d.tokenizer_type == "NullTokenizer":
        if not d.mock_data:
            raise MegaliteError("--tokenizer-type NullTokenizer works with --mock-data only here: give the tokenizer "
                                "the --data-path was made with")
        if m.vocab_size is None:
            raise MegaliteError("--tokenizer-type NullTokenizer needs --vocab-size")
        d.tokenizer_type, m.vocab_size = None, m.vocab_size + 1  # Megatron's NullTokenizer adds the eod id


def validate_lr_units(t: TrainingConfig) -> None:
    """Megatron's rules: sample-based schedule flags go with --train-samples, and a warm-up is
    given one way."""
    if t.train_iters is not None:
        for value, flag in ((t.lr_decay_samples, "--lr-decay-samples"), (t.lr_warmup_samples, "--lr-warmup-samples"),
                            (t.lr_wsd_decay_samples, "--lr-wsd-decay-samples")):
            if value is not None:
                raise MegaliteError(f"{flag} goes with --train-samples; with --train-iters give the -iters flag")
    if t.lr_warmup_fraction is not None:
        if t.lr_warmup_iters or t.lr_warmup_samples:
            raise MegaliteError("--lr-warmup-fraction and --lr-warmup-iters / --lr-warmup-samples are exclusive")
        if not 0 <= t.lr_warmup_fraction <= 1:
            raise MegaliteError(f"--lr-warmup-fraction {t.lr_warmup_fraction}: must be in [0, 1]")
    if t.lr_warmup_iters and t.lr_warmup_samples:
        raise MegaliteError("give one of --lr-warmup-iters and --lr-warmup-samples")


_SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def step_batch_sizes(cfg: Config) -> List[Tuple[int, int]]:
    """--step-batch-size-schedule as (first sample, global batch size) pairs: Megatron's
    'THRESHOLD:BATCH ...' with thresholds in tokens (divided by --seq-length)."""
    text = " ".join(cfg.training.step_batch_size_schedule).replace(",", " ").strip("'\" ")
    pairs = []
    for entry in text.split():
        threshold, _, size = entry.partition(":")
        try:
            pairs.append((_count(threshold) // cfg.data.seq_length, _count(size)))
        except ValueError:
            raise MegaliteError(f"--step-batch-size-schedule: {entry!r} is not THRESHOLD:BATCH_SIZE "
                                "(e.g. 0:16 2.4B:320)") from None
    pairs.sort()
    if not pairs or pairs[0][0] != 0 or any(a[0] == b[0] for a, b in zip(pairs, pairs[1:])):
        raise MegaliteError("--step-batch-size-schedule: thresholds must start at 0 and differ")
    return pairs


def _count(text: str) -> int:
    text = text.strip().upper()
    scale = _SUFFIXES.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def validate_step_batch_sizes(cfg: Config, dp: int) -> None:
    t = cfg.training
    if t.rampup_batch_size:
        raise MegaliteError("--step-batch-size-schedule and --rampup-batch-size are exclusive")
    pairs = step_batch_sizes(cfg)
    last = pairs[-1][1]
    if t.global_batch_size is not None and t.global_batch_size != last:  # Megatron refuses both; equal is harmless
        raise MegaliteError(f"--global-batch-size {t.global_batch_size} differs from the last batch size of "
                            f"--step-batch-size-schedule ({last})")
    unit = t.micro_batch_size * dp
    bad = [size for _, size in pairs if size % unit]
    if bad:
        raise MegaliteError(f"--step-batch-size-schedule: batch size {bad[0]} is not a multiple of --micro-batch-size "
                            f"x data-parallel size ({unit})")
    t.global_batch_size = last


def windowed_layers(m: ModelConfig) -> List[bool]:
    """Whether each layer uses --window-size, from --window-attn-skip-freq (Megatron's meaning: an
    integer N makes layers N, 2N, ... (counted from 1) full attention; a pattern lists every layer)."""
    if m.window_size is None:
        return [False] * m.num_layers
    freq = m.window_attn_skip_freq
    if freq is None:
        return [True] * m.num_layers
    text = str(freq).replace(" ", "")
    if text.isdigit() and int(text) > 0:
        return [(i + 1) % int(text) != 0 for i in range(m.num_layers)]
    match = re.fullmatch(r"\[([01](?:,[01])*)\](?:\*(\d+))?", text)
    if match is None:
        raise MegaliteError(f"--window-attn-skip-freq {freq!r}: expected an integer N or a pattern like [1,1,1,0]*3")
    pattern = [bit == "1" for bit in match.group(1).split(",")] * int(match.group(2) or 1)
    if len(pattern) != m.num_layers:
        raise MegaliteError(f"--window-attn-skip-freq {freq!r} gives {len(pattern)} layers, not --num-layers "
                            f"{m.num_layers}")
    return pattern


def attention_window(m: ModelConfig, layer: int) -> Optional[int]:
    """The keys before each query that layer ``layer`` (from 0) attends to; None for full attention."""
    return m.window_size[0] if windowed_layers(m)[layer] else None


def validate_rope_scaling(m: ModelConfig) -> None:
    """Resolve --use-rope-scaling / --rope-type (either turns scaling on; Megatron's flag alone is
    Llama 3.x's) and the original context each type defaults to, as transformers does."""
    if m.rope_type is None and m.use_rope_scaling:
        m.rope_type = "llama3"
    m.use_rope_scaling = m.rope_type is not None
    if not m.use_rope_scaling:
        return
    if m.position_embedding_type != "rope":
        raise MegaliteError(f"--rope-type {m.rope_type} needs --position-embedding-type rope")
    if m.rope_scaling_factor < 1:
        raise MegaliteError(f"--rope-scaling-factor {m.rope_scaling_factor}: must be at least 1")
    if m.original_max_position_embeddings is None and m.rope_type in ("llama3", "yarn", "longrope"):
        m.original_max_position_embeddings = 8192 if m.rope_type == "llama3" else m.max_position_embeddings
    if m.rope_type == "longrope":
        pairs = int(m.kv_channels * m.rotary_percent) // 2
        for flag, factors in (("--short-factor", m.short_factor), ("--long-factor", m.long_factor)):
            if factors is None or len(factors) != pairs:
                raise MegaliteError(f"--rope-type longrope needs {flag} with {pairs} values (one per pair of rotated "
                                    f"dimensions), got {'none' if factors is None else len(factors)}")
    if m.rope_type == "llama3" and m.high_freq_factor <= m.low_freq_factor:
        raise MegaliteError(f"--high-freq-factor {m.high_freq_factor} must exceed --low-freq-factor "
                            f"{m.low_freq_factor}")
    if m.rope_type == "dynamic" and m.max_position_embeddings is None:
        raise MegaliteError("--rope-type dynamic needs --max-position-embeddings (the context it scales beyond)")


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_targets(cfg: Config) -> List[str]:
    """The HF module names that get adapters: --lora-target, with all-linear resolved to every
    linear layer of the model (no gate_proj without --swiglu; never the output layer)."""
    text = cfg.lora.lora_target.strip()
    if text == "all-linear":
        return [t for t in LORA_TARGETS if cfg.model.swiglu or t != "gate_proj"]
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in LORA_TARGETS]
    if unknown or not names:
        raise MegaliteError(f"--lora-target {text!r}: unknown module {unknown[0] if unknown else '(none)'}; "
                            f"give a comma list of {', '.join(LORA_TARGETS)}, or all-linear")
    if "gate_proj" in names and not cfg.model.swiglu:
        raise MegaliteError("--lora-target gate_proj needs --swiglu (a GELU MLP has no gate projection)")
    return [t for t in LORA_TARGETS if t in names]


def validate_lora(cfg: Config) -> None:
    lo, p = cfg.lora, cfg.parallel
    if lo.lora_rank < 0:
        raise MegaliteError(f"--lora-rank {lo.lora_rank}: must be 0 (off) or positive")
    if lo.lora_rank == 0:
        if lo.load_adapter:
            raise MegaliteError("--load-adapter needs --lora-rank (taken from the adapter's adapter_config.json "
                                "when not given)")
        return
    lora_targets(cfg)
    if not 0 <= lo.lora_dropout < 1:
        raise MegaliteError(f"--lora-dropout {lo.lora_dropout}: must be in [0, 1)")
    if p.zero_stage >= 2:
        raise MegaliteError(f"--zero-stage {p.zero_stage} with --lora-rank: ZeRO-2/3 shard units of trainable "
                            "parameters and cannot hold a frozen base; use --zero-stage 0 or 1 (the adapters' "
                            "gradients and optimizer state are small)")
    if not cfg.checkpoint.load:
        raise MegaliteError("--lora-rank trains adapters on a base model: give --load BASE --finetune (or --load a "
                            "LoRA checkpoint to resume)")


def validate_context_parallel(cfg: Config, world_size: int) -> None:
    m, p, d = cfg.model, cfg.parallel, cfg.data
    cp, tp = p.context_parallel_size, p.tensor_model_parallel_size
    if cp < 1:
        raise MegaliteError(f"--context-parallel-size {cp}: must be at least 1")
    if cp == 1:
        return
    if world_size % (tp * p.pipeline_model_parallel_size * cp):
        raise MegaliteError(f"world size {world_size} is not divisible by tensor x pipeline x context parallel size "
                            f"{tp * p.pipeline_model_parallel_size * cp}")
    chunks = 2 * cp * (tp if p.sequence_parallel else 1)
    if d.seq_length is not None and d.seq_length % chunks:
        raise MegaliteError(f"--seq-length {d.seq_length} is not divisible by {chunks} (2 x --context-parallel-size "
                            + ("x --tensor-model-parallel-size, with --sequence-parallel)" if p.sequence_parallel
                               else "chunks, for the causal load balancing)"))
    if m.rope_type in ("dynamic", "longrope"):
        raise MegaliteError(f"--rope-type {m.rope_type} with --context-parallel-size > 1: each rank would scale by "
                            "the positions it holds; use another --rope-type")


def data_parallel_size(cfg: Config, world_size: int) -> int:
    p = cfg.parallel
    return world_size // (p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size)


# Model settings that must match a checkpoint for its weights to load.
ARCHITECTURE_FIELDS = (
    "num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "kv_channels", "num_query_groups",
    "normalization", "position_embedding_type", "rotary_percent", "swiglu", "add_bias_linear", "add_qkv_bias",
    "qk_layernorm", "untie_embeddings_and_output_weights", "padded_vocab_size", "apply_layernorm_1p",
)


def stage_layers(num_layers: int, pp_size: int, pp_rank: int, first: Optional[int] = None,
                 last: Optional[int] = None) -> range:
    """The layers pipeline stage ``pp_rank`` owns: ``first`` / ``last`` layers on the first /
    last stage when given (Megatron's --decoder-first/last-pipeline-num-layers), the rest split
    evenly over the other stages."""
    counts = _stage_counts(num_layers, pp_size, first, last)
    start = sum(counts[:pp_rank])
    return range(start, start + counts[pp_rank])


def _stage_counts(num_layers: int, pp_size: int, first: Optional[int], last: Optional[int]) -> List[int]:
    if pp_size == 1:
        return [num_layers]
    fixed = {0: first, pp_size - 1: last}
    rest = num_layers - sum(v for v in fixed.values() if v is not None)
    middle = [r for r in range(pp_size) if fixed.get(r) is None]
    if rest < 0 or (middle and rest % len(middle)) or (not middle and rest):
        raise MegaliteError(
            f"--num-layers {num_layers} cannot be split over --pipeline-model-parallel-size {pp_size}"
            + (f" with {first} layers on the first stage" if first is not None else "")
            + (f" and {last} on the last" if last is not None else "")
            + " (the remaining layers must divide evenly among the other stages)")
    return [fixed[r] if fixed.get(r) is not None else rest // len(middle) for r in range(pp_size)]
