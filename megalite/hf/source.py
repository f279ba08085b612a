"""The megalite checkpoint a tool's ``--load`` stands for: the checkpoint itself, or a Hugging Face
model folder imported once (megalite.checkpoint.layout.load_kind decides which it is).

Every tool takes either: training (pretrain_gpt.py --finetune, sft_gpt.py, dpo_gpt.py) imports a
folder into ``<save>/hf_base``, tools without --save (eval_gpt.py, generate.py, serve.py,
convert_checkpoint.py) into ``<folder>/.megalite_base``. The import records the folder's tokenizer
and context length, so the tools need no model, tokenizer or sequence flags either way.
"""

import hashlib
import json
import os
import time
from typing import Optional

from megalite.checkpoint.layout import load_kind
from megalite.config import Config
from megalite.errors import MegaliteError
from megalite.hf.convert import import_hf

IMPORT_CACHE = ".megalite_base"  # where an HF folder's import goes without --save: inside the folder


def megalite_checkpoint(load: str, save: Optional[str] = None) -> str:
    """``load`` itself when it is a megalite checkpoint; a HF folder's import (into ``<save>/hf_base``,
    or into the folder without ``save``); an error naming the path otherwise."""
    if load_kind(load) != "hf":
        return load
    return import_hf_once(load, os.path.join(save, "hf_base") if save else os.path.join(load, IMPORT_CACHE))


def import_load(cfg: Config) -> None:
    """A training run's --load: a HF folder becomes its import (weights only: a fresh run from them, as
    with --finetune); a typo is an error here, before any other setting is looked at."""
    c = cfg.checkpoint
    if c.load and load_kind(c.load, c.save, c.finetune) == "hf":
        c.load, c.finetune = megalite_checkpoint(c.load, c.save), True


def _fingerprint(hf_dir: str) -> str:
    """Changes when any file of the folder does (name, size, modification time); our own import
    cache inside it does not count, or writing it would make the next run import again."""
    h = hashlib.sha1()
    for name in sorted(set(os.listdir(hf_dir)) - {IMPORT_CACHE}):
        st = os.stat(os.path.join(hf_dir, name))
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def import_hf_once(hf_dir: str, dest: str, timeout_s: float = 3600.0) -> str:
    """A megalite checkpoint of the HF folder at ``dest``, converted by rank 0 the first time
    (and again if the folder changed); the other ranks wait for it."""
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
