"""LoRA runs on disk: adapter-only checkpoints, the merged model, peft's adapter format.

A LoRA run's checkpoints hold only the adapters and their optimizer state; the frozen base
is referenced by path and iteration in the stored settings (``lora_base``,
``lora_base_iteration``, recorded from ``--load BASE --finetune``). Loading one loads the
base first, then the adapters. peft's format is ``adapter_config.json`` plus
``adapter_model.safetensors`` with keys such as
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``.
"""

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Dict, Tuple

import torch

from megalite.checkpoint.layout import find_checkpoint, iteration_dir, saved_settings
from megalite.checkpoint.load import load_checkpoint, load_model_state
from megalite.checkpoint.reshard import load_full_state
from megalite.config import Config, LoraConfig, lora_targets
from megalite.errors import MegaliteError
from megalite.hf.config import hf_config, is_gpt2_style
from megalite.hf.layout import fuse_qkv
from megalite.parallel import state
from megalite.parallel.init import full_shape, shard_like
from megalite.posttrain.lora import (
    ADAPTER_NAME,
    TARGET_LAYERS,
    TRAINED_IN_FULL,
    ParameterSubset,
    adapter_name,
    adapter_parameters,
    add_adapters,
    lora_scale,
    peft_name,
)
from megalite.utils.atomic import atomic_write
from megalite.utils.folders import export_folder, refuse_foreign

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def is_lora_run(args: Dict) -> bool:
    return bool((args or {}).get("lora", {}).get("lora_rank"))


def _base_folder(lo: Dict) -> str:
    return iteration_dir(lo["lora_base"], lo["lora_base_iteration"])


def load_lora_run(cfg: Config, model, optimizer, fit_for=None) -> Tuple[int, int, int]:
    """What --load names for a LoRA run: a full checkpoint (with --finetune) becomes the frozen
    base; a LoRA checkpoint loads its base, then its adapters (and, unless --finetune, its
    optimizer state, random states and position); otherwise --load-adapter, if given, fills
    the adapters. Records the base in ``cfg.lora``. ``fit_for``: as load_checkpoint's, given
    each part. Returns (iteration, consumed_samples, consumed_tokens)."""
    c, lo = cfg.checkpoint, cfg.lora
    folder = find_checkpoint(c.load)
    if folder is None:
        raise MegaliteError(f"--load {c.load}: no checkpoint; a LoRA run needs the base model's checkpoint")
    saved = saved_settings(folder)
    own = is_lora_run(saved)
    if own:
        base = _base_folder(saved["lora"])
        if not os.path.isdir(base):
            raise MegaliteError(f"{folder} holds LoRA adapters on the base checkpoint {base}, which does not exist")
    elif not c.finetune:
        raise MegaliteError(f"--load {c.load} is a full checkpoint: with --lora-rank it is the frozen base, loaded "
                            "with --finetune (weights only, from iteration 0)")
    else:
        base = folder
    base = os.path.normpath(base)
    lo.lora_base, lo.lora_base_iteration = os.path.abspath(os.path.dirname(base)), int(os.path.basename(base)[5:])
    weights_only = dataclasses.replace(c, load=base, finetune=True)
    load_checkpoint(dataclasses.replace(cfg, checkpoint=weights_only), ParameterSubset(model, False), optimizer,
                    fit_for)
    position = (0, 0, 0)
    if own:
        position = load_checkpoint(cfg, ParameterSubset(model, True), optimizer, fit_for)
    if lo.load_adapter and not own:  # a LoRA checkpoint (resume, rollback) brings its own adapters
        read_peft_adapter(lo.load_adapter, model)
        optimizer.masters_from_model()
    if state.get().rank == 0:
        print(f"LoRA: frozen base {base}" + (f", adapters from {folder}" if own else "")
              + (f", adapters from {lo.load_adapter}" if lo.load_adapter and not own else ""), flush=True)
    return position


class LoRA:
    """--lora-rank as a model transform (training.stage.ModelTransform): adapters added to the
    freshly built model and trained, the base frozen; checkpoints hold the adapters (and what
    else trains, a reward model's score head) and load over their base (``load_lora_run``)."""

    def prepare(self, cfg: Config) -> None:
        inherit_lora_settings(cfg, saved_settings(cfg.checkpoint.load) if cfg.checkpoint.load else None)

    def active(self, cfg: Config) -> bool:
        return cfg.lora.lora_rank > 0

    def apply(self, model, cfg: Config) -> None:
        add_adapters(model, cfg)

    def checkpointed(self, model, cfg: Config):
        return ParameterSubset(model, trainable=True)

    load = staticmethod(load_lora_run)


def inherit_lora_settings(cfg: Config, saved_args) -> None:
    """Take the adapter settings the user did not give from a LoRA checkpoint being resumed
    (``saved_args``), then from --load-adapter's adapter_config.json."""
    given = getattr(cfg, "explicit", set())
    if is_lora_run(saved_args):
        for f in dataclasses.fields(LoraConfig):
            if f.name not in given and f.name != "load_adapter" and f.name in saved_args["lora"]:
                setattr(cfg.lora, f.name, saved_args["lora"][f.name])
    elif cfg.lora.load_adapter:
        for name, value in read_adapter_config(cfg.lora.load_adapter).items():
            if name not in given:
                setattr(cfg.lora, name, value)


def read_adapter_config(folder: str) -> Dict:
    """peft's adapter_config.json -> our LoRA settings; refuses what our adapters cannot hold."""
    path = os.path.join(folder, ADAPTER_CONFIG)
    if not os.path.isfile(path):
        raise MegaliteError(f"--load-adapter {folder}: no {ADAPTER_CONFIG}")
    try:
        conf = json.load(open(path))
    except json.JSONDecodeError as e:
        raise MegaliteError(f"{path}: not valid JSON ({e})") from None
    if conf.get("peft_type", "LORA") != "LORA":
        raise MegaliteError(f"{path}: peft_type {conf.get('peft_type')!r}, only LORA adapters load")
    for key in ("bias", "use_dora", "fan_in_fan_out", "modules_to_save", "layers_to_transform", "rank_pattern",
                "alpha_pattern"):
        if conf.get(key) not in (None, False, "none", {}, []):
            raise MegaliteError(f"{path}: {key} = {conf[key]!r} is not supported (only plain LoRA on linear layers)")
    if not isinstance(conf.get("r"), int) or conf["r"] < 1:
        raise MegaliteError(f"{path}: r (the adapter rank) is {conf.get('r')!r}, expected a positive integer")
    targets = conf.get("target_modules")
    if isinstance(targets, (list, tuple)):
        targets = ",".join(sorted(targets))
    return {"lora_rank": conf["r"], "lora_alpha": float(conf.get("lora_alpha", 8)),
            "lora_dropout": float(conf.get("lora_dropout", 0.0)), "lora_target": targets or "all-linear",
            "use_rslora": bool(conf.get("use_rslora", False))}


@torch.no_grad()
def read_peft_adapter(folder: str, model) -> None:
    """Copy a peft adapter's weights into ``model``'s adapters, cut for this rank."""
    from safetensors import safe_open

    path = os.path.join(folder, ADAPTER_WEIGHTS)
    if not os.path.isfile(path):
        raise MegaliteError(f"--load-adapter {folder}: no {ADAPTER_WEIGHTS} (only safetensors adapters load)")
    with safe_open(path, framework="pt") as f:
        keys = set(f.keys())
        ours = dict(adapter_parameters(model))
        for name, p in ours.items():
            key = peft_name(name)
            if key not in keys:
                raise MegaliteError(f"{path}: no {key} (the adapter's targets or layers differ from this run's)")
            full = f.get_tensor(key)
            if list(full.shape) != full_shape(p):
                raise MegaliteError(f"{path}: {key} has shape {tuple(full.shape)}, this model's adapter needs "
                                    f"{tuple(full_shape(p))} (another rank or base model?)")
            p.copy_(shard_like(p, full))


class MergedWeights(Mapping):
    """A LoRA run's model weights by name: the base's, each targeted weight plus
    scale * B A (its q / k / v parts placed in the fused QKV rows), computed on access in fp32;
    a weight trained in full beside the adapters (a reward model's score head) as saved."""

    def __init__(self, base: Mapping, adapters: Mapping, cfg: Config):
        self.base, self.adapters, self.cfg = base, adapters, cfg
        self.scale = lora_scale(cfg.lora.lora_alpha, cfg.lora.lora_rank, cfg.lora.use_rslora)
        self.targets: Dict[str, Dict[str, int]] = {}  # base weight -> {target: layer}
        self.full = [name for name in adapters if name in TRAINED_IN_FULL]
        for name in adapters:
            match = ADAPTER_NAME.match(name)
            if match is None and name in self.full:
                continue
            if match is None:
                raise MegaliteError(f"LoRA checkpoint holds {name}, which is not an adapter")
            layer, block, base_layer, target, _ = match.groups()
            self.targets.setdefault(f"layers.{layer}.{block}.{base_layer}.weight", {})[target] = int(layer)

    def _delta(self, target: str, layer: int) -> torch.Tensor:
        a = self.adapters[adapter_name(layer, target, "A")].float()
        b = self.adapters[adapter_name(layer, target, "B")].float()
        return b @ a

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.full:
            return self.adapters[name]
        w = self.base[name]
        if name not in self.targets:
            return w
        found = self.targets[name]
        layer = next(iter(found.values()))
        if TARGET_LAYERS[next(iter(found))][1] == "qkv":
            m = self.cfg.model
            rows = {"q_proj": m.num_attention_heads * m.kv_channels, "k_proj": m.num_query_groups * m.kv_channels,
                    "v_proj": m.num_query_groups * m.kv_channels}
            parts = [self._delta(t, layer) if t in found else w.new_zeros(rows[t], w.shape[1], dtype=torch.float32)
                     for t in ("q_proj", "k_proj", "v_proj")]
            delta = fuse_qkv(*parts, m)
        else:
            delta = self._delta(next(iter(found)), layer)
        return (w.float() + self.scale * delta).to(w.dtype)

    def __iter__(self):
        yield from self.base
        yield from self.full

    def __len__(self) -> int:
        return len(self.base) + len(self.full)


def full_model_state(load: str):
    """(model weights by name, settings) of any checkpoint: a LoRA run's is its base with the
    adapters merged in (what --to-hf exports)."""
    weights, args = load_full_state(load)
    if not is_lora_run(args):
        return weights, args
    base = _base_folder(args["lora"])
    if not os.path.isdir(base):
        raise MegaliteError(f"{load} holds LoRA adapters on the base checkpoint {base}, which does not exist")
    base_weights, _ = load_full_state(base)
    return MergedWeights(base_weights, weights, Config.from_dict(args)), args


def load_lora_weights(model, cfg: Config, adapters: Mapping, where: str) -> None:
    """Give the whole (one-process) ``model`` its LoRA adapters, the base weights of the run
    ``cfg`` describes and the gathered ``adapters`` (for inference with unmerged adapters)."""
    add_adapters(model, cfg)
    base = _base_folder(dataclasses.asdict(cfg.lora))
    base_weights, _ = load_full_state(base)
    load_model_state(ParameterSubset(model, False), {"model": dict(base_weights)}, base)
    load_model_state(ParameterSubset(model, True), {"model": dict(adapters)}, where)


def export_peft(load: str, out_dir: str) -> str:
    """Write a LoRA checkpoint's adapters (tensor-parallel shards gathered) as a peft adapter
    folder, loadable with peft.PeftModel.from_pretrained onto the HF export of its base."""
    from safetensors.torch import save_file

    refuse_foreign(out_dir)
    weights, args = load_full_state(load)
    if not is_lora_run(args):
        raise MegaliteError(f"{load}: not a LoRA checkpoint (trained without --lora-rank); nothing to export as peft")
    cfg = Config.from_dict(args)
    if cfg.dpo.pref_method == "rm":
        raise MegaliteError(f"{load}: a reward model's LoRA run trains its score head in full; export it merged "
                            "with --to-hf (a SequenceClassification folder)")
    if is_gpt2_style(cfg.model):
        raise MegaliteError(f"{load}: a GPT-2-style model has no q_proj / k_proj / ... modules for a peft adapter; "
                            "export it merged with --to-hf")
    hf_config(cfg.model, "float32")  # refuses, with its message, a model with no HF equivalent
    lo = cfg.lora
    tensors = {peft_name(name): weights[name].contiguous() for name in weights}
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lo.lora_rank, "lora_alpha": lo.lora_alpha,
              "lora_dropout": lo.lora_dropout, "target_modules": lora_targets(cfg), "use_rslora": lo.use_rslora,
              "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
              "modules_to_save": None, "base_model_name_or_path": None}
    with export_folder(out_dir, load) as tmp:
        save_file(tensors, os.path.join(tmp, ADAPTER_WEIGHTS), metadata={"format": "pt"})
        with atomic_write(os.path.join(tmp, ADAPTER_CONFIG), "w") as f:
            json.dump(config, f, indent=2)
    return out_dir
