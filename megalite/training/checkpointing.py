"""Checkpoints in Megatron's layout, written atomically, resumed exactly.

    <save>/latest_checkpointed_iteration.txt      the last complete iteration, written last
    <save>/iter_0000100/mp_rank_00/model_optim_rng.pt

One file per model-parallel rank (``mp_rank_TT`` or ``mp_rank_TT_PPP`` with pipelining),
written by its data-parallel rank 0. It holds the model, the optimizer (fp32 masters, Adam
moments, loss scaler), the random states of every data-parallel rank, the iteration,
consumed samples/tokens and the run's settings. With the distributed optimizer each
data-parallel rank writes its own shard of the optimizer beside it, ``distrib_optim_DDD.pt``
(pieces named by parameter and flat range), and loading reassembles whatever pieces the new
layout needs, so a run may resume with a different data-parallel size. Everything goes to a temporary folder that
is renamed into place once all ranks have written and fsynced (swapped with the folder of the
same iteration in one step, if there is one), then the tracker file is replaced, so an
interrupted save never damages the previous checkpoint. ``checksums.json`` in each iteration
folder records every file's size and SHA-256, checked when the file is loaded.
"""

import glob
import hashlib
import json
import os
import random
import shutil
import sys
import threading
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from megalite.config import ARCHITECTURE_FIELDS, Config
from megalite.errors import MegaliteError
from megalite.parallel import state
from megalite.parallel.random import get_tp_rng_state, set_tp_rng_state
from megalite.utils.atomic import atomic_write, recover_folder, replace_folder, writing

TRACKER = "latest_checkpointed_iteration.txt"
CHECKSUMS = "checksums.json"
FORMAT_VERSION = 2  # 2: optimizer state as pieces (name, flat range)


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def rank_file(folder: str) -> str:
    s = state.get()
    name = f"mp_rank_{s.tp_rank:02d}" + (f"_{s.pp_rank:03d}" if s.pp_size > 1 else "")
    return os.path.join(folder, name, "model_optim_rng.pt")


def rng_state() -> Dict:
    """This process's random states as plain Python values (safe to gather and to load)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state().tolist()
    tp = get_tp_rng_state()
    if tp is not None:
        out["tp_stream"] = {k: v.tolist() for k, v in tp.items()}
    return out


def set_rng_state(sd: Dict) -> None:
    random.setstate(_to_tuple(sd["python"]))
    name, keys, pos, has_gauss, cached = sd["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(sd["torch"], dtype=torch.uint8))
    if "cuda" in sd and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(sd["cuda"], dtype=torch.uint8))
    if "tp_stream" in sd:
        set_tp_rng_state({k: torch.tensor(v, dtype=torch.uint8) for k, v in sd["tp_stream"].items()})


def _to_tuple(x):
    return tuple(_to_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def split_metadata(model) -> Dict:
    """How each saved tensor is split over tensor-parallel ranks: {name: {dim, parts}};
    tensors absent from it are whole on every rank."""
    parts = state.get().tp_size
    out = {}
    for name, p in model.named_parameters():
        if getattr(p, "tp_dim", None) is not None:
            out[name] = {"dim": p.tp_dim, "parts": parts}
            if getattr(p, "kv_replicas", 1) > 1:  # QKV rows: own query heads + a shared key/value head
                out[name]["kv_head_replicas"] = p.kv_replicas
            if getattr(p, "tp_replicas", 1) > 1:  # runs of this many ranks hold the same part
                out[name]["replicas"] = p.tp_replicas
    return out


def save_checkpoint(root: str, iteration: int, model, optimizer, cfg: Config, consumed_samples: int,
                    consumed_tokens: int, keep_last: Optional[int] = None, asynchronous: bool = False,
                    snapshot_buffers: Optional[Dict] = None) -> "PendingSave":
    """Write this rank's files for ``iteration``. Synchronous: returns once the checkpoint is
    complete and tracked. ``asynchronous``: the state is copied to CPU memory now and written
    by a background thread; the returned PendingSave is completed by ``finish()`` (which every
    rank calls, e.g. before the next save), and only then is the tracker moved. Passing the
    same ``snapshot_buffers`` dict to every save reuses the CPU copies' memory."""
    s = state.get()
    tmp = os.path.join(root, f".tmp_iter_{iteration:07d}")
    if s.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # an interrupted save's
        with writing(tmp):
            os.makedirs(tmp)
    _barrier()
    rngs = [None] * s.dp_size
    if s.dp_group is not None:
        dist.all_gather_object(rngs, rng_state(), group=s.dp_group)
    else:
        rngs = [rng_state()]
    path = rank_file(tmp)
    files = {}
    optim = optimizer.state_dict()
    if optimizer.buffer.distributed:  # every rank's own pieces, in a file of its own
        own = os.path.join(os.path.dirname(path), f"distrib_optim_{s.dp_rank:03d}.pt")
        files[own] = {"pieces": optim.pop("pieces")}
        optim["pieces"] = []
    if s.dp_rank == 0:
        files[path] = {
            "format_version": FORMAT_VERSION,
            "iteration": iteration,
            "consumed_samples": consumed_samples,
            "consumed_tokens": consumed_tokens,
            "args": cfg.to_dict(),
            "model": model.state_dict(),
            "optimizer": optim,
            "rng": rngs,
            "parallel": {"tp_size": s.tp_size, "pp_size": s.pp_size, "dp_size": s.dp_size},
            "tensor_parallel": split_metadata(model),
            "layers": sorted({int(k.split(".")[1]) for k in model.state_dict() if k.startswith("layers.")}),
        }
    pending = PendingSave(root, iteration, tmp, keep_last)
    if asynchronous:
        buffers = snapshot_buffers if snapshot_buffers is not None else {}
        snapshot = {f: _snapshot(obj, buffers, os.path.basename(f)) for f, obj in files.items()}
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the non-blocking device-to-host copies have landed
        pending.start(snapshot)
    else:
        pending.write(files)
        pending.finish()
    return pending


def _snapshot(obj, buffers: Dict, key: str = ""):
    """A copy of ``obj`` whose tensors live in CPU memory of their own (training may change
    the originals while a background thread writes the copy). Tensors are copied into
    ``buffers`` kept from the previous save when shapes match (pinned on CUDA machines), so
    repeated saves neither allocate nor fault in fresh pages."""
    if isinstance(obj, torch.Tensor):
        buf = buffers.get(key)
        if buf is None or buf.shape != obj.shape or buf.dtype != obj.dtype:
            buf = torch.empty(obj.shape, dtype=obj.dtype, pin_memory=obj.is_cuda)
            buffers[key] = buf
        return buf.copy_(obj.detach(), non_blocking=obj.is_cuda)
    if isinstance(obj, dict):
        return {k: _snapshot(v, buffers, f"{key}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v, buffers, f"{key}/{i}") for i, v in enumerate(obj))
    return obj


class PendingSave:
    """One checkpoint on its way to disk: this rank's files, then (``finish``, on every rank)
    the checksums of all ranks' files, the rename into place and the tracker update."""

    def __init__(self, root: str, iteration: int, tmp: str, keep_last: Optional[int]):
        self.root, self.iteration, self.tmp, self.keep_last = root, iteration, tmp, keep_last
        self.final = iteration_dir(root, iteration)
        self.digests: Dict[str, Dict] = {}
        self.error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None

    def write(self, files: Dict[str, Dict]) -> None:
        for path, obj in files.items():
            with writing(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                _save(obj, path)
            self.digests[os.path.relpath(path, self.tmp)] = _file_digest(path)

    def start(self, files: Dict[str, Dict]) -> None:
        def run():
            try:
                self.write(files)
            except BaseException as e:  # re-raised by finish() on the main thread
                self.error = e

        self._thread = threading.Thread(target=run, name=f"save-iter-{self.iteration}", daemon=True)
        self._thread.start()

    def written(self) -> bool:
        """Whether this rank's files are on disk (no communication)."""
        return self._thread is None or not self._thread.is_alive()

    def finish(self) -> str:
        """Wait for this rank's files, then make the checkpoint complete and tracked."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.error is not None:
            raise self.error
        everyone = [self.digests]
        if dist.is_available() and dist.is_initialized():
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, self.digests)
        if state.get().rank == 0:
            merged = {k: v for d in everyone for k, v in d.items()}
            with atomic_write(os.path.join(self.tmp, CHECKSUMS), "w") as f:
                json.dump(dict(sorted(merged.items())), f, indent=1)
            with writing(self.final, self.tmp):
                replace_folder(self.tmp, self.final)
            with atomic_write(os.path.join(self.root, TRACKER), "w") as f:
                f.write(str(self.iteration))
            if self.keep_last:
                _remove_old_checkpoints(self.root, self.keep_last, self.iteration)
        _barrier()
        return self.final


class _NotedWrites:
    """A file object for torch.save that keeps the OSError of a failed write: torch reports it
    as an unrelated RuntimeError ("unexpected pos ...")."""

    def __init__(self, f):
        self.f, self.name, self.error = f, f.name, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self.f.flush()


def _save(obj, path: str) -> None:
    """torch.save to ``path``, flushed to disk; a failed write raises its OSError."""
    with open(path, "wb") as f:
        noted = _NotedWrites(f)
        try:
            torch.save(obj, noted)
        except RuntimeError:
            if noted.error is not None:
                raise noted.error from None
            raise
        f.flush()
        os.fsync(f.fileno())


def _file_digest(path: str) -> Dict:
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
    if _file_digest(path)["sha256"] != expected["sha256"]:
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


def _remove_old_checkpoints(root: str, keep: int, current: int) -> None:
    """Keep ``current`` (just written and tracked) and the newest ``keep - 1`` folders before it;
    folders of later iterations are not this run's to judge and stay."""
    older = [i for i in saved_iterations(root) if i < current]
    for i in older[:max(len(older) - (keep - 1), 0)]:
        shutil.rmtree(iteration_dir(root, i), ignore_errors=True)


def refuse_later_checkpoints(save: str, iteration: int) -> None:
    """A run at ``iteration`` must not write into a --save holding later iterations: its saves
    would move the tracker backwards and retention would judge the wrong folders."""
    later = [i for i in saved_iterations(save) if i > iteration]
    tracker = os.path.join(save, TRACKER)
    if os.path.isfile(tracker):
        with open(tracker) as f:
            tracked = f.read().strip()
        if tracked.isdigit() and int(tracked) > iteration:
            later.append(int(tracked))
    if later:
        raise MegaliteError(f"--save {save} already holds iteration {max(later)}, later than this run's "
                            f"iteration {iteration}: resume that run with --load {save} (without --finetune), "
                            "or choose another --save")


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


def saved_settings(load: str) -> Optional[Dict]:
    """The settings stored in the checkpoint ``load`` names (None when there is none yet)."""
    folder = find_checkpoint(load)
    if folder is None:
        return None
    first = sorted(glob.glob(os.path.join(folder, "mp_rank_*", "model_optim_rng.pt")))
    if not first:
        raise MegaliteError(f"{folder}: no mp_rank_*/model_optim_rng.pt files")
    return load_file(first[0])["args"]


def load_file(path: str) -> Dict:
    """One checkpoint file, checked against its recorded checksum and memory-mapped."""
    verify_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated or corrupt files raise a zoo of exception types
        raise MegaliteError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None


def read_checkpoint(folder: str) -> Dict:
    path = rank_file(folder)
    if not os.path.isfile(path):
        raise MegaliteError(f"{path}: missing (was the checkpoint saved with another parallel layout?)")
    return load_file(path)


def check_architecture(saved_args: Dict, cfg: Config, where: str) -> None:
    saved = saved_args.get("model", {})
    diffs = [f"--{k.replace('_', '-')} {saved.get(k)!r} in the checkpoint vs {getattr(cfg.model, k)!r}"
             for k in ARCHITECTURE_FIELDS if saved.get(k) != getattr(cfg.model, k)]
    if diffs:
        raise MegaliteError(f"{where}: model does not match the checkpoint: " + "; ".join(diffs))


def load_model_state(model, sd: Dict, where: str, fit=None) -> None:
    """``fit``: what the weights go through first (a reward model started from a language model's)."""
    try:
        model.load_state_dict(fit(sd["model"]) if fit else sd["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise MegaliteError(f"{where}: weights do not fit this model ({first[0].strip()})") from None


LAYOUT_FIELDS = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "num_layers_per_virtual_pipeline_stage",
                 "decoder_first_pipeline_num_layers", "decoder_last_pipeline_num_layers")


def _same_layout(saved_args: Dict, cfg: Config) -> bool:
    """Whether this rank's model file holds exactly this rank's parameters (any DP size does)."""
    saved = saved_args.get("parallel", {})
    return all(saved.get(k) == getattr(cfg.parallel, k) for k in LAYOUT_FIELDS)


def _shard_pieces(folder: str):
    """The distributed-optimizer pieces saved beside this rank's model file (any DP size)."""
    for path in sorted(glob.glob(os.path.join(os.path.dirname(rank_file(folder)), "distrib_optim_*.pt"))):
        yield from load_file(path)["pieces"]


def load_checkpoint(cfg: Config, model, optimizer, fit=None):
    """Restore what --load names. Returns (iteration, consumed_samples, consumed_tokens).
    ``fit``: what the weights go through first (the stage's: a reward model started from a
    language model's)."""
    c = cfg.checkpoint
    folder = find_checkpoint(c.load)
    if folder is None:
        if state.get().rank == 0:
            print(f"no checkpoint in {c.load}; starting from scratch", flush=True)
        return 0, 0, 0
    saved = saved_settings(folder)
    check_architecture(saved, cfg, folder)
    load_optim = not (c.finetune or c.no_load_optim)
    if _same_layout(saved, cfg):
        sd = read_checkpoint(folder)
        load_model_state(model, sd, folder, fit)
        optimizer.masters_from_model()
        if load_optim:  # exact fp32 masters and moments
            optimizer.load_state_dict(sd["optimizer"], _shard_pieces(folder))
    else:  # saved with other tensor / pipeline sizes: gather and re-cut (reshard imports this module)
        from megalite.training.reshard import load_resharded

        sd = load_resharded(folder, model, optimizer, load_optim, fit)
    if c.finetune:
        return 0, 0, 0
    if not c.no_load_rng:
        rngs = sd["rng"]
        s = state.get()
        set_rng_state(rngs[s.dp_rank] if s.dp_rank < len(rngs) else rngs[0])
    if state.get().rank == 0:
        print(f"loaded {folder} (iteration {sd['iteration']})", flush=True)
    return sd["iteration"], sd["consumed_samples"], sd["consumed_tokens"]
