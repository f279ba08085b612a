"""Every setting of a run, as dataclasses, with Megatron-LM's flag names.

Each field becomes a flag: ``num_layers`` -> ``--num-layers`` (or the name in its metadata).
``--config x.yaml`` may hold any flag (dashes or underscores); flags on the command line
override it. ``validate`` rejects impossible combinations with one readable message.
"""

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional

from megalite.errors import MegaliteError


def opt(default, help: str, flag: Optional[str] = None, **kw):
    """A dataclass field that is also a command-line flag."""
    return field(default=default, metadata={"help": help, "flag": flag, **kw})


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
    max_position_embeddings: Optional[int] = opt(None, "longest sequence (default --seq-length)")
    swiglu: bool = opt(False, "SwiGLU MLP instead of GELU")
    add_bias_linear: bool = opt(True, "no bias in linear layers", flag="--disable-bias-linear", action="store_false")
    add_qkv_bias: bool = opt(False, "bias in the QKV projection only (Qwen2 style)")
    untie_embeddings_and_output_weights: bool = opt(False, "separate output layer weights")
    hidden_dropout: float = opt(0.1, "dropout on the residual branches and embeddings")
    attention_dropout: float = opt(0.1, "dropout on attention probabilities")
    init_method_std: float = opt(0.02, "std of the normal initialisation")
    make_vocab_size_divisible_by: int = opt(128, "pad the vocabulary to a multiple of this (times TP)")
    vocab_size: Optional[int] = opt(None, "vocabulary size when no tokenizer is given (--mock-data)")
    attention_backend: str = opt("sdpa", "attention implementation: torch SDPA, megalite's Triton flash attention, or "
                                 "the flash-attn package (falls back to triton, then sdpa, where unavailable)",
                                 choices=["sdpa", "triton", "flash_attn"])
    # Set from the tokenizer at start-up; stored in checkpoints.
    padded_vocab_size: Optional[int] = opt(None, "padded vocabulary (normally derived)")


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = opt(1, "tensor-parallel ranks")
    pipeline_model_parallel_size: int = opt(1, "pipeline stages")
    sequence_parallel: bool = opt(False, "split activations outside attention/MLP along the sequence (needs TP > 1)")
    decoder_first_pipeline_num_layers: Optional[int] = opt(None, "layers on the first pipeline stage (uneven split)")
    decoder_last_pipeline_num_layers: Optional[int] = opt(None, "layers on the last pipeline stage (uneven split)")
    num_layers_per_virtual_pipeline_stage: Optional[int] = opt(None, "layers per model chunk: interleaved 1F1B")
    distributed_backend: Optional[str] = opt(None, "nccl on CUDA, gloo on CPU by default", choices=["nccl", "gloo"])
    distributed_timeout_minutes: float = opt(10.0, "how long a collective may wait before the job fails")
    ddp_bucket_size: int = opt(40_000_000, "elements per data-parallel gradient all-reduce bucket")
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


@dataclass
class TrainingConfig:
    micro_batch_size: int = opt(1, "samples per forward/backward")
    global_batch_size: Optional[int] = opt(None, "samples per optimizer step (default micro * dp)")
    rampup_batch_size: Optional[List[int]] = opt(None, "START INCREMENT RAMP_SAMPLES", nargs=3, type=int)
    train_iters: Optional[int] = opt(None, "optimizer steps")
    train_samples: Optional[int] = opt(None, "samples to train on (instead of --train-iters)")
    seed: int = opt(1234, "seed for initialisation, data order and dropout")
    nan_policy: str = opt("stop", "on a non-finite loss or gradient: stop; skip the update; or roll back to the "
                                  "last checkpoint and skip the data since", choices=["stop", "skip", "rollback"])
    lr: float = opt(1e-4, "peak learning rate")
    min_lr: float = opt(0.0, "learning rate at the end of decay")
    lr_decay_style: str = opt("cosine", "decay shape", choices=["constant", "linear", "cosine", "WSD"])
    lr_decay_iters: Optional[int] = opt(None, "iterations of decay (default --train-iters)")
    lr_warmup_iters: int = opt(0, "linear warm-up iterations")
    lr_wsd_decay_iters: Optional[int] = opt(None, "final decay iterations of WSD (default 10%% of decay)")
    lr_wsd_decay_style: str = opt("linear", "WSD's final decay shape", choices=["linear", "cosine", "exponential"])
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
    fused_kernels: Optional[bool] = opt(None, "Triton kernels for norms, RoPE, SwiGLU and cross entropy (default: on "
                                        "when CUDA and triton are present); --no-fused-kernels uses the torch code",
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
class SFTConfig:
    sft_data: Optional[str] = opt(None, "SFT data: files or dataset_info.json names, comma/space separated, "
                                        "optionally weighted: 'a.jsonl,b.jsonl' or '0.7 a.jsonl 0.3 b.jsonl'")
    sft_dataset_dir: Optional[str] = opt(None, "folder with a LLaMA-Factory dataset_info.json (and the files)")
    sft_valid_data: Optional[str] = opt(None, "validation data, same syntax as --sft-data")
    sft_valid_fraction: float = opt(0.0, "hold out this fraction of each --sft-data source for validation")
    chat_template: Optional[str] = opt(None, "chatml|qwen|llama3|llama2|mistral|alpaca|plain or a Jinja file "
                                             "(default: the tokenizer's own, else chatml)")
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
    stage: str = opt("dpo", "preference stage: dpo (a direct preference loss on pairs), kto (desirable and undesirable "
                            "completions), rm (a reward model: scalar head, Bradley-Terry loss on pairs)",
                     choices=["dpo", "kto", "rm"])
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
    ref_load: Optional[str] = opt(None, "reference model checkpoint (default: the starting weights of the run)")
    precompute_ref_log_probs: bool = opt(False, "score every pair with the reference once before training, "
                                                "so training holds a single model")


@dataclass
class KTOConfig:
    kto_loss_type: str = opt("kto", "dpo_gpt.py --stage kto: trl's loss, kto (with the KL estimate) or "
                                    "apo_zero_unpaired", choices=["kto", "apo_zero_unpaired"])
    kto_desirable_weight: float = opt(1.0, "KTO: weight of the desirable examples' losses")
    kto_undesirable_weight: float = opt(1.0, "KTO: weight of the undesirable examples' losses")


@dataclass
class RewardConfig:
    center_rewards_coefficient: Optional[float] = opt(None, "reward model (--stage rm): add this times the mean of "
                                                            "(chosen + rejected score)^2 to the loss, pulling scores "
                                                            "towards 0 (trl's; 0.01 is the suggested value)")


SECTIONS = {
    "model": ModelConfig,
    "parallel": ParallelConfig,
    "data": DataConfig,
    "training": TrainingConfig,
    "logging": LoggingConfig,
    "checkpoint": CheckpointConfig,
    "sft": SFTConfig,
    "lora": LoraConfig,
    "dpo": DPOConfig,
    "kto": KTOConfig,
    "reward": RewardConfig,
}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    kto: KTOConfig = field(default_factory=KTOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return cls(**{name: SECTIONS[name](**d.get(name, {})) for name in SECTIONS})


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def build_parser(description: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", help="YAML file with any of the flags below; command-line flags win")
    for section, cls in SECTIONS.items():
        add_section_args(p.add_argument_group(section), cls)
    return p


def add_section_args(group, cls) -> None:
    """One flag per field of a config section (absent flags stay absent from the namespace)."""
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
        group.add_argument(_flag(f), **kw)


def _scalar_type(f: dataclasses.Field):
    text = str(f.type)
    for name, t in (("int", int), ("float", float)):
        if name in text and "List" not in text:
            return t
    return str


def parse_config(argv=None, description: str = "") -> Config:
    """Flags (and an optional --config YAML) -> a Config; ``cfg.explicit`` names the settings given."""
    ns = vars(build_parser(description).parse_args(argv))
    values = _read_yaml(ns.pop("config")) if ns.get("config") else {}
    ns.pop("config", None)
    values.update(ns)
    cfg = config_from_values(values)
    cfg.explicit = set(values)
    return cfg


def inherit_model_settings(cfg: Config, saved_args: dict) -> list:
    """Take every model setting the user did not give from a checkpoint's stored settings
    (so ``--load ckpt --finetune`` needs no model flags). Returns the names taken."""
    given = getattr(cfg, "explicit", None)
    if given is None:
        return []
    saved = saved_args.get("model", {})
    taken = []
    for f in dataclasses.fields(ModelConfig):
        if f.name not in given and f.name in saved and saved[f.name] is not None:
            setattr(cfg.model, f.name, saved[f.name])
            taken.append(f.name)
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


def _read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise MegaliteError(f"--config {path}: no such file") from None
    except yaml.YAMLError as e:
        raise MegaliteError(f"--config {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise MegaliteError(f"--config {path}: expected a mapping of flag names to values")
    flags = {_flag(f).lstrip("-"): f for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    out = {}
    for key, value in data.items():
        k = str(key).replace("_", "-")
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
    from megalite.parallel.pipeline import stage_layers  # the split's own checks, with their message

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
    dp = world_size // mp
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
    if p.sequence_parallel and tp == 1:
        raise MegaliteError("--sequence-parallel needs --tensor-model-parallel-size > 1")
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
    sft = cfg.sft.sft_data is not None
    if sum([d.data_path is not None, d.mock_data, sft, cfg.dpo.pref_data is not None]) != 1:
        raise MegaliteError("give one source of training data: --data-path, --mock-data (synthetic tokens), "
                            "--sft-data (sft_gpt.py) or --pref-data (dpo_gpt.py)")
    if d.mock_data and d.tokenizer_type is None:
        need(m.vocab_size, "--vocab-size (needed by --mock-data without a tokenizer)")
    if (d.data_path is not None or sft or cfg.dpo.pref_data) and d.tokenizer_type is None:
        raise MegaliteError(f"--tokenizer-type is required with {'--sft-data' if sft else '--data-path'}")
    from megalite.kernels.dispatch import triton_installed

    if t.fused_kernels and not triton_installed():
        raise MegaliteError("--fused-kernels needs triton (pip install triton)")
    if m.attention_backend == "triton" and not triton_installed():
        raise MegaliteError("--attention-backend triton needs triton (pip install triton)")
    if m.attention_backend == "triton" and m.attention_dropout > 0:
        raise MegaliteError("--attention-backend triton has no attention dropout: add --attention-dropout 0")
    if t.bf16 and t.fp16:
        raise MegaliteError("--bf16 and --fp16 are mutually exclusive")
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
    if c.save_interval is not None and c.save is None:
        raise MegaliteError("--save-interval needs --save")
    validate_lora(cfg)
    if cfg.logging.metrics_file is None and c.save:
        cfg.logging.metrics_file = f"{c.save}/metrics.jsonl"
    return cfg


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


def data_parallel_size(cfg: Config, world_size: int) -> int:
    return world_size // (cfg.parallel.tensor_model_parallel_size * cfg.parallel.pipeline_model_parallel_size)


# Model settings that must match a checkpoint for its weights to load.
ARCHITECTURE_FIELDS = (
    "num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "kv_channels", "num_query_groups",
    "normalization", "position_embedding_type", "rotary_percent", "swiglu", "add_bias_linear", "add_qkv_bias",
    "untie_embeddings_and_output_weights", "padded_vocab_size",
)
