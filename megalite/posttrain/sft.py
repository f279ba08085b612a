"""Post-training runs (SFT, DPO): the pretraining trainer on chat data or preference pairs.

``sft_gpt.py`` and ``dpo_gpt.py`` run ``pretrain`` after deciding three things here: where the starting
weights come from (a megalite checkpoint, or a local Hugging Face folder imported once),
whether the run starts fresh from them (weights only) or resumes a run of the same stage
(everything, exactly), and which chat template is used (its text is stored in the run's settings, so the
checkpoint and its HF export carry what training used).
"""

import hashlib
import json
import os
import time

from megalite.config import Config
from megalite.data.chat import resolve_template
from megalite.errors import MegaliteError
from megalite.training.checkpointing import TRACKER, find_checkpoint, saved_settings
from megalite.training.data import build_tokenizer_from


def is_hf_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and find_checkpoint(path) is None


def _fingerprint(hf_dir: str) -> str:
    """Changes when any file of the folder does (name, size, modification time)."""
    h = hashlib.sha1()
    for name in sorted(os.listdir(hf_dir)):
        st = os.stat(os.path.join(hf_dir, name))
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def import_hf_once(hf_dir: str, dest: str, timeout_s: float = 3600.0) -> str:
    """A megalite checkpoint of the HF folder at ``dest``, converted by rank 0 the first time
    (and again if the folder changed); the other ranks wait for it."""
    from megalite.hf.convert import import_hf

    marker = os.path.join(dest, "source.json")
    want = {"hf_dir": os.path.abspath(hf_dir), "fingerprint": _fingerprint(hf_dir)}

    def ready():
        return os.path.isfile(marker) and json.load(open(marker)) == want

    if int(os.environ.get("RANK", "0")) == 0 and not ready():
        if os.path.isfile(marker):
            os.remove(marker)
        print(f"importing the Hugging Face model {hf_dir} into {dest}", flush=True)
        import_hf(hf_dir, dest, dtype="fp32")
        with open(marker + ".tmp", "w") as f:
            json.dump(want, f)
        os.replace(marker + ".tmp", marker)
    deadline = time.time() + timeout_s
    while not ready():
        if time.time() > deadline:
            raise MegaliteError(f"{dest}: rank 0 did not finish importing {hf_dir} within {timeout_s:.0f} s")
        time.sleep(1.0)
    return dest


# stage -> (config section, its data field, the flag, the entry point)
STAGES = {"sft": ("sft", "sft_data", "--sft-data", "sft_gpt.py"),
          **{k: ("dpo", "pref_data", "--pref-data", f"dpo_gpt.py --stage {k}") for k in ("dpo", "kto", "rm")}}


def is_run_of(settings, stage: str) -> bool:
    section, field, _, _ = STAGES[stage]
    saved = (settings or {}).get(section, {})
    return bool(saved.get(field)) and saved.get("stage", stage) == stage


def prepare(cfg: Config, stage: str = "sft") -> Config:
    """Resolve where the weights come from and how (in place); see the module docstring.
    DPO: the reference model is the starting weights unless --ref-load names others."""
    c, d = cfg.checkpoint, cfg.data
    section, field, flag, tool = STAGES[stage]
    if not getattr(getattr(cfg, section), field):
        raise MegaliteError(f"{tool} needs {flag} (files, or names registered in {flag[:-5]}-dataset-dir)")
    explicit = getattr(cfg, "explicit", set())
    if c.load and os.path.isdir(c.load) and is_hf_folder(c.load):
        hf_dir = c.load
        if d.tokenizer_type is None:  # the model's own tokenizer
            d.tokenizer_type, d.tokenizer_model = "HuggingFaceTokenizer", hf_dir
        dest = os.path.join(c.save, "hf_base") if c.save else os.path.join(hf_dir, ".megalite_base")
        c.load = import_hf_once(hf_dir, dest)
    from megalite.posttrain.dpo import reference_free

    needs_copy = stage == "kto" or (stage == "dpo" and not reference_free(cfg.dpo))
    if needs_copy and not cfg.dpo.ref_load and cfg.lora.lora_rank == 0:  # LoRA: the adapters disabled
        cfg.dpo.ref_load = c.load
    if c.save and os.path.isfile(os.path.join(c.save, TRACKER)) and is_run_of(saved_settings(c.save), stage):
        c.load, c.finetune = c.save, False  # the same command line resumes the run it started
    elif c.load and "finetune" not in explicit:
        c.finetune = True  # a new run from those weights (a run resumes from its --save)
    saved = saved_settings(c.load) if c.load else None
    if saved and d.tokenizer_type is None:  # the tokenizer the base model was trained with
        for name in ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file"):
            setattr(d, name, saved.get("data", {}).get(name))
    if d.tokenizer_type is not None:  # the template's text goes into every checkpoint's settings
        cfg.chat.chat_template = resolve_template(cfg.chat.chat_template, build_tokenizer_from(cfg))
    return cfg
