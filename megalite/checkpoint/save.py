"""Writing checkpoints atomically, in the background if asked, and keeping the newest few.

Rank files (megalite.checkpoint.layout) are written by each model-parallel rank's
data-parallel rank 0: the model, the optimizer (fp32 masters, Adam moments, loss scaler),
the random states of every data-parallel rank, the iteration, consumed samples/tokens and
the run's settings. With the distributed optimizer each data-parallel rank writes its own
shard of the optimizer beside it, ``distrib_optim_DDD.pt`` (pieces named by parameter and
flat range), so a run may resume with another data-parallel size. Everything goes to a
temporary folder that is renamed into place once all ranks have written and fsynced
(swapped with the folder of the same iteration in one step, if there is one), then the
tracker file is replaced, so an interrupted save never damages the previous checkpoint.
``checksums.json`` records every file's size and SHA-256.
"""

import json
import os
import shutil
import threading
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from megalite.checkpoint.layout import (
    CHECKSUMS,
    FORMAT_VERSION,
    TRACKER,
    file_digest,
    iteration_dir,
    rank_file,
    saved_iterations,
)
from megalite.checkpoint.rng import rng_state
from megalite.config import Config
from megalite.errors import MegaliteError
from megalite.parallel import state
from megalite.utils.atomic import atomic_write, replace_folder, writing


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


def saved_layers(weights: Dict) -> List[int]:
    """The global layer numbers a rank file's weights hold."""
    return sorted({int(k.split(".")[1]) for k in weights if k.startswith("layers.")})


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
    rngs = [None] * s.dp_cp_size  # context-parallel ranks' own streams differ, their weights do not
    if s.dp_cp_group is not None:
        dist.all_gather_object(rngs, rng_state(), group=s.dp_cp_group)
    else:
        rngs = [rng_state()]
    path = rank_file(tmp)
    files = {}
    optim = optimizer.state_dict()
    if optimizer.buffer.distributed:  # every rank's own pieces, in a file of its own
        own = os.path.join(os.path.dirname(path), f"distrib_optim_{s.dp_cp_rank:03d}.pt")
        files[own] = {"pieces": optim.pop("pieces")}
        optim["pieces"] = []
    if s.dp_cp_rank == 0:
        weights = model.state_dict()
        files[path] = {
            "format_version": FORMAT_VERSION,
            "iteration": iteration,
            "consumed_samples": consumed_samples,
            "consumed_tokens": consumed_tokens,
            "args": cfg.to_dict(),
            "model": weights,
            "optimizer": optim,
            "rng": rngs,
            "parallel": {"tp_size": s.tp_size, "pp_size": s.pp_size, "dp_size": s.dp_size, "cp_size": s.cp_size},
            "tensor_parallel": split_metadata(model),
            "layers": saved_layers(weights),
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
            self.digests[os.path.relpath(path, self.tmp)] = file_digest(path)

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
