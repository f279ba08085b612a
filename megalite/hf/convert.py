"""megalite checkpoint <-> Hugging Face folder (config.json + safetensors), tensor by tensor.

Checkpoint files are memory-mapped and HF shards read lazily, so peak memory stays near one
copy of the model. Tensor-parallel checkpoints are gathered with the split metadata they
carry. See megalite/hf/layout.py for the name and layout mapping.
"""

import json
import os
import shutil
from typing import Dict, Optional, Tuple

import torch

from megalite.checkpoint.layout import FORMAT_VERSION, TRACKER, iteration_dir
from megalite.config import Config, DataConfig, ModelConfig
from megalite.data.reward import pad_id_of
from megalite.data.tokenizer import Tokenizer, build_tokenizer
from megalite.errors import MegaliteError
from megalite.hf.config import hf_config, is_gpt2_style, model_config, reward_model_config
from megalite.hf.layout import from_hf, gpt2_from_hf, gpt2_to_hf, to_hf
from megalite.hf.tokenizer import export_tokenizer
from megalite.model import GPTModel
from megalite.parallel import state as pstate
from megalite.posttrain.lora_io import full_model_state
from megalite.utils.atomic import atomic_write
from megalite.utils.folders import export_folder, refuse_foreign
from megalite.utils.progress import Progress

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def export_hf(load: str, out_dir: str, dtype: str = "bf16", max_shard_bytes: int = 5 * 2**30,
              tokenizer: Optional[Tokenizer] = None, chat_template: Optional[str] = None) -> str:
    """Write the HF folder; ``tokenizer`` defaults to the one the checkpoint was trained with.
    A LoRA checkpoint exports its base with the adapters merged in; a reward model (``--pref-method rm``)
    a ``...ForSequenceClassification`` with one label and the pad token its scores are read by.
    A non-empty ``out_dir`` is refused unless it is an earlier export (see megalite.utils.folders)."""
    refuse_foreign(out_dir)
    state, args = full_model_state(load)
    run = Config.from_dict(args)
    cfg = run.model
    if cfg.apply_layernorm_1p:  # zero-centred norm weights (scale - 1): HF stores the scale, 1 + w in fp32 (bf16 is
        state = {k: v.float() + 1 if k.endswith("norm.weight") else v for k, v in state.items()}  # too coarse near 1)
    d = run.data
    if tokenizer is None and d.tokenizer_type:
        tokenizer = build_tokenizer(d.tokenizer_type, d.tokenizer_model, d.vocab_file, d.merge_file)
    config = hf_config(cfg, DTYPE_NAMES[dtype])
    if run.dpo.pref_method == "rm":
        if tokenizer is None:
            raise MegaliteError(f"{load}: a reward model's export needs its tokenizer (its pad token places the score)")
        config = reward_model_config(config, pad_id_of(tokenizer))
    with export_folder(out_dir, load) as tmp:
        _write_export(tmp, state, cfg, dtype, max_shard_bytes, config, tokenizer,
                      chat_template or run.chat.chat_template)
    return out_dir


def _write_export(tmp: str, state, cfg: ModelConfig, dtype: str, max_shard_bytes: int, config: Dict,
                  tokenizer: Optional[Tokenizer], chat_template: Optional[str]) -> None:
    from safetensors.torch import save_file

    # Shards are written as they fill (one in memory at a time) and named once their count is known.
    written, current, size, total = [], {}, 0, 0
    progress = Progress("export")

    def flush():
        path = os.path.join(tmp, f"part-{len(written):05d}.safetensors")
        save_file(current, path, metadata={"format": "pt"})
        written.append((path, list(current)))

    for name, t in (gpt2_to_hf if is_gpt2_style(cfg) else to_hf)(state, cfg):
        t = t.to(DTYPES[dtype]).contiguous()
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_shard_bytes:
            flush()
            current, size = {}, 0
        current[name] = t
        size += nbytes
        total += nbytes
        progress.update(nbytes, tensors=1)
    flush()
    progress.close()
    index = {}
    for i, (path, names) in enumerate(written):
        fname = "model.safetensors" if len(written) == 1 else f"model-{i + 1:05d}-of-{len(written):05d}.safetensors"
        os.replace(path, os.path.join(tmp, fname))
        index.update({name: fname for name in names})
    if len(written) > 1:
        _write_json(os.path.join(tmp, "model.safetensors.index.json"), {"metadata": {"total_size": total},
                                                                          "weight_map": index})
    _write_json(os.path.join(tmp, "config.json"), config)
    if tokenizer is not None:
        # the template fine-tuning used (sft_gpt.py stores its text), else the tokenizer's own
        ids = export_tokenizer(tokenizer, tmp, chat_template or tokenizer.chat_template)
        _write_json(os.path.join(tmp, "generation_config.json"),
                    {k: v for k, v in ids.items() if v is not None})


def _write_json(path: str, obj) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)


class _LazyTensors:
    """Reads tensors from a folder's safetensors files one at a time."""

    def __init__(self, folder: str):
        from safetensors import safe_open

        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.isfile(index):
            weight_map = json.load(open(index))["weight_map"]
        elif os.path.isfile(os.path.join(folder, "model.safetensors")):
            weight_map = None
        else:
            raise MegaliteError(f"{folder}: no model.safetensors or model.safetensors.index.json")
        self.folder, self.weight_map, self._open, self._safe_open = folder, weight_map, {}, safe_open
        self.used = set()

    def _file(self, name: str) -> Optional[str]:
        if self.weight_map is None:
            return "model.safetensors"
        return self.weight_map.get(name)

    def __call__(self, name: str) -> Optional[torch.Tensor]:
        fname = self._file(name)
        if fname is None:
            return None
        if fname not in self._open:
            self._open[fname] = self._safe_open(os.path.join(self.folder, fname), framework="pt")
        f = self._open[fname]
        if name not in f.keys():
            return None
        self.used.add(name)
        return f.get_tensor(name)

    def unused(self) -> list:
        """The folder's tensors no one asked for (rotary buffers, which we recompute, aside)."""
        if self.weight_map is None:
            with self._safe_open(os.path.join(self.folder, "model.safetensors"), framework="pt") as f:
                names = set(f.keys())
        else:
            names = set(self.weight_map)
        return sorted(n for n in names - self.used if not n.endswith("rotary_emb.inv_freq"))


def import_hf(hf_dir: str, save: str, dtype: str = "fp32") -> ModelConfig:
    """Write a megalite checkpoint (iteration 0) from a HF Llama / Qwen2 / Qwen3 / Mistral / GPT-2 folder,
    with the folder's tokenizer and a default sequence length (``_data_settings``)."""
    state, cfg = read_hf(hf_dir, dtype)
    write_iteration0(save, state, Config(model=cfg, data=DataConfig(**_data_settings(hf_dir, save, cfg))))
    return cfg


def write_iteration0(save: str, state: Dict[str, torch.Tensor], run: Config) -> None:
    """A one-process checkpoint of ``state`` (iteration 0, no optimizer) that every tool loads."""
    payload = {"format_version": FORMAT_VERSION, "iteration": 0, "consumed_samples": 0, "consumed_tokens": 0,
               "args": run.to_dict(), "model": state, "optimizer": None, "rng": [],
               "parallel": {"tp_size": 1, "pp_size": 1, "dp_size": 1}, "tensor_parallel": {}}
    folder = iteration_dir(save, 0)
    os.makedirs(os.path.join(folder, "mp_rank_00"), exist_ok=True)
    with atomic_write(os.path.join(folder, "mp_rank_00", "model_optim_rng.pt")) as f:
        torch.save(payload, f)
    with atomic_write(os.path.join(save, TRACKER), "w") as f:
        f.write("0")


def is_hf_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def read_hf(hf_dir: str, dtype: str = "fp32") -> Tuple[Dict[str, torch.Tensor], ModelConfig]:
    """(our state dict, our model settings) of a HF Llama / Qwen2 / Qwen3 / Mistral / GPT-2 folder."""
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_path):
        raise MegaliteError(f"{config_path}: no such file")
    cfg = model_config(json.load(open(config_path)))
    get = _LazyTensors(hf_dir)
    state: Dict[str, torch.Tensor] = {}
    progress = Progress("import")
    for name, t in (gpt2_from_hf if is_gpt2_style(cfg) else from_hf)(get, cfg):
        if t is None:
            raise MegaliteError(f"{hf_dir}: a tensor needed for {name} is missing")
        state[name] = t.to(DTYPES[dtype])
        progress.update(t.numel() * t.element_size(), tensors=1)
    progress.close()
    unused = get.unused()
    if unused:
        raise MegaliteError(f"{hf_dir}: {len(unused)} tensors are not part of the model config.json describes "
                            f"(first: {unused[0]})")
    _check_shapes(state, cfg, hf_dir)
    return state, cfg


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
DEFAULT_SEQ_LENGTH_CAP = 8192


def _data_settings(hf_dir: str, save: str, cfg: ModelConfig) -> Dict:
    """What an imported checkpoint records so that evaluation and generation need no flags: the
    folder's tokenizer, copied to ``<save>/tokenizer`` (so the checkpoint outlives the download),
    and as --seq-length the context the model was pretrained with, at most 8192 tokens (a long-context
    model's 128k positions would make every default perplexity window that long)."""
    out = {"seq_length": min(cfg.original_max_position_embeddings or cfg.max_position_embeddings,
                             DEFAULT_SEQ_LENGTH_CAP)}
    if os.path.isfile(os.path.join(hf_dir, "tokenizer.json")):
        dest = os.path.join(save, "tokenizer")
        os.makedirs(dest, exist_ok=True)
        for name in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(hf_dir, name)):
                with open(os.path.join(hf_dir, name), "rb") as src, atomic_write(os.path.join(dest, name)) as f:
                    shutil.copyfileobj(src, f)
        out.update(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=os.path.abspath(dest))
    return out


def _check_shapes(state: Dict[str, torch.Tensor], cfg: ModelConfig, where: str) -> None:
    pstate.initialize()
    with torch.device("meta"):
        model = GPTModel(cfg)
    for name, p in model.named_parameters():
        if name not in state:
            raise MegaliteError(f"{where}: no tensor for {name}")
        if tuple(state[name].shape) != tuple(p.shape):
            raise MegaliteError(f"{where}: {name} has shape {tuple(state[name].shape)}, the config implies "
                                f"{tuple(p.shape)}")
