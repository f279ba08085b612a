"""Where a checkpoint's files are and how one is read, verified against its checksums.

    <save>/latest_checkpointed_iteration.txt      the last complete iteration, written last
    <save>/iter_0000100/checksums.json            every file's size and SHA-256
    <save>/iter_0000100/mp_rank_00/model_optim_rng.pt

One model file per model-parallel rank (``mp_rank_TT`` or ``mp_rank_TT_PPP`` with
pipelining), with the distributed optimizer one ``distrib_optim_DDD.pt`` per data-parallel
rank beside it. Imports no other module of the package.
"""

import glob
import hashlib
import json
import os
import sys
from typing import Dict, List, Optional

import torch

from megalite.errors import MegaliteError
from megalite.parallel import state
from megalite.utils.atomic import recover_folder

TRACKER = "latest_checkpointed_iteration.txt"
CHECKSUMS = "checksums.json"
FORMAT_VERSION = 2  # 2: optimizer state as pieces (name, flat range)


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def rank_file(folder: str) -> str:
    s = state.get()
    name = f"mp_rank_{s.tp_rank:02d}" + (f"_{s.pp_rank:03d}" if s.pp_size > 1 else "")
    return os.path.join(folder, name, "model_optim_rng.pt")


def model_files(folder: str) -> List[str]:
    """Every rank's model file in an iteration folder, in name order (refused when none)."""
    files = sorted(glob.glob(os.path.join(folder, "mp_rank_*", "model_optim_rng.pt")))
    if not files:
        raise MegaliteError(f"{folder}: no mp_rank_*/model_optim_rng.pt files")
    return files


def optimizer_shards(model_file: str) -> List[str]:
    """The distributed-optimizer shards saved beside a model file (one per saved data-parallel rank)."""
    return sorted(glob.glob(os.path.join(os.path.dirname(model_file), "distrib_optim_*.pt")))


def file_digest(path: str) -> Dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return {"bytes": os.path.getsize(path), "sha256": h.hexdigest()}


_verified = set()  # (path, size, mtime) already checked by this process
_unverified = set()  # folders without checksums, already warned about


def verify_file(path: str) -> None:
    """Refuse a checkpoint file whose size or digest differs from what its save recorded."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return
    folder = os.path.dirname(os.path.dirname(path))
    index = os.path.join(folder, CHECKSUMS)
    if not os.path.isfile(index):  # written before checksums existed, or by another tool
        if folder not in _unverified:
            _unverified.add(folder)
            print(f"warning: {folder} has no {CHECKSUMS}; its files are loaded unverified", file=sys.stderr,
                  flush=True)
        return
    expected = _read_checksums(index).get(os.path.relpath(path, folder))
    if expected is None:
        raise MegaliteError(f"{path}: not listed in {index} (a file from another save?)")
    size = os.path.getsize(path)
    if size != expected["bytes"]:
        raise MegaliteError(f"{path}: {size} bytes, but the save wrote {expected['bytes']} (truncated or replaced)")
    if file_digest(path)["sha256"] != expected["sha256"]:
        raise MegaliteError(f"{path}: contents differ from what the save wrote (corrupted); checksum mismatch")
    _verified.add(key)


def _read_checksums(index: str) -> Dict:
    try:
        with open(index) as f:
            table = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise MegaliteError(f"{index}: corrupt, not JSON ({e}); the checkpoint's files cannot be verified") from None
    if not isinstance(table, dict) or not all(
            isinstance(v, dict) and {"bytes", "sha256"} <= v.keys() for v in table.values()):
        raise MegaliteError(f"{index}: corrupt, not a table of files with bytes and sha256; the checkpoint's "
                            "files cannot be verified")
    return table


def saved_iterations(root: str) -> List[int]:
    """The iterations of the complete iteration folders in ``root``, in order."""
    if not os.path.isdir(root):
        return []
    return sorted(int(d[5:]) for d in os.listdir(root) if d.startswith("iter_") and d[5:].isdigit())


def find_checkpoint(load: str) -> Optional[str]:
    """The iteration folder to load: ``load`` itself if it is one, else the tracker's."""
    if os.path.basename(os.path.normpath(load)).startswith("iter_"):
        if not os.path.isdir(load):
            raise MegaliteError(f"--load {load}: no such checkpoint folder")
        return load
    tracker = os.path.join(load, TRACKER)
    if not os.path.isfile(tracker):
        return None
    text = open(tracker).read().strip()
    try:
        iteration = int(text)
    except ValueError:
        raise MegaliteError(f"{tracker}: expected an iteration number, found {text[:40]!r}") from None
    folder = iteration_dir(load, iteration)
    if recover_folder(folder):
        print(f"recovered {folder}: a save was interrupted while replacing it", file=sys.stderr, flush=True)
    if not os.path.isdir(folder):
        raise MegaliteError(f"{tracker} names iteration {iteration} but {folder} does not exist")
    return folder


HF_CONFIG = "config.json"  # what marks a Hugging Face model folder


def load_kind(load: str, save: Optional[str] = None, finetune: bool = False) -> str:
    """What ``--load`` names, decided in one place for every tool: ``"megalite"`` (a checkpoint, or one
    iteration folder of one), ``"hf"`` (a Hugging Face model folder: config.json and weights) or
    ``"empty"`` (no checkpoint yet in the folder that is also ``save``: Megatron's resume-or-start
    ``--save D --load D``, whose first launch starts from scratch). Anything else is an error naming
    the path: one that does not exist (a typo), a folder holding neither, and with ``finetune`` a
    folder with nothing to fine-tune from."""
    if find_checkpoint(load) is not None:
        return "megalite"
    if os.path.isfile(os.path.join(load, HF_CONFIG)):
        return "hf"
    resume_or_start = save is not None and os.path.abspath(load) == os.path.abspath(save)
    if finetune and (resume_or_start or os.path.isdir(load)):
        raise MegaliteError(f"--load {load} --finetune: no checkpoint to fine-tune from (no {TRACKER}, no {HF_CONFIG})")
    if resume_or_start and not os.path.isfile(load):
        return "empty"
    if not os.path.exists(load):
        raise MegaliteError(f"--load {load}: no checkpoint found: no such file or folder (expected a megalite "
                            f"checkpoint, or a Hugging Face model folder with {HF_CONFIG})")
    raise MegaliteError(f"--load {load}: no checkpoint found: neither a megalite checkpoint (no {TRACKER}) nor a "
                        f"Hugging Face model folder (no {HF_CONFIG}); a folder without a checkpoint starts a run "
                        "from scratch only when it is also --save")


def saved_settings(load: str) -> Optional[Dict]:
    """The settings stored in the checkpoint ``load`` names (None when there is none yet)."""
    folder = find_checkpoint(load)
    if folder is None:
        return None
    return load_file(model_files(folder)[0])["args"]


def load_file(path: str) -> Dict:
    """One checkpoint file, checked against its recorded checksum and memory-mapped."""
    verify_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated or corrupt files raise a zoo of exception types
        raise MegaliteError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None


def read_checkpoint(folder: str) -> Dict:
    """This rank's model file of an iteration folder."""
    path = rank_file(folder)
    if not os.path.isfile(path):
        raise MegaliteError(f"{path}: missing (was the checkpoint saved with another parallel layout?)")
    return load_file(path)
