"""Run a function on N gloo processes, the CPU stand-in for N GPUs.

The ranks are a pool of worker processes kept for the whole test session: starting N
Python processes that import torch costs seconds on a small machine, more than most of
the tests run. Each call is a fresh process group (new port, new world size) on the first
N workers, with the caller's environment and working directory; a failure anywhere ends
the pool (peers may be stuck in a collective) and the next call starts a new one. The
entrypoints' own start-up is still covered by the tests that launch them under torchrun."""

import atexit
import gc
import os
import socket
import sys
import traceback
from multiprocessing.connection import wait

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_task(rank, world_size, port, fn, args, environ, cwd):
    os.environ.clear()
    os.environ.update(environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    os.chdir(cwd)
    torch.set_num_threads(1)  # N processes share the machine's cores, as torchrun's OMP_NUM_THREADS=1 does
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        dist.barrier()  # no rank tears its connections down while a peer still talks to it
    finally:
        if "megalite.parallel.state" in sys.modules:  # groups a fn left behind
            sys.modules["megalite.parallel.state"].destroy()
        if dist.is_initialized():
            dist.destroy_process_group()
        # Free objects that still hold a gloo group (in reference cycles) now: left alive, their
        # threads were once torn down at interpreter exit and aborted the rank.
        gc.collect()
        sys.stdout.flush()
        sys.stderr.flush()


def _worker(rank, conn):
    while True:
        task = conn.recv()
        if task is None:
            break
        try:
            _run_task(rank, *task)
        except BaseException:
            conn.send(traceback.format_exc())
            break
        conn.send(None)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter finalization with gloo threads around (see above)


class _Pool:
    """Worker processes 0..n-1, each with a pipe for its tasks and results."""

    def __init__(self):
        self.ctx = mp.get_context("spawn")
        self.workers = []  # (process, connection)

    def grow(self, n):
        while len(self.workers) < n:
            mine, theirs = self.ctx.Pipe()
            proc = self.ctx.Process(target=_worker, args=(len(self.workers), theirs))
            proc.start()
            theirs.close()
            self.workers.append((proc, mine))

    def run(self, fn, world_size, args):
        """None, or (rank, what went wrong) for the first failure."""
        self.grow(world_size)
        task = (world_size, free_port(), fn, args, dict(os.environ), os.getcwd())
        for _, conn in self.workers[:world_size]:
            conn.send(task)
        waiting = dict(enumerate(self.workers[:world_size]))
        while waiting:
            ready = wait([conn for _, conn in waiting.values()] + [proc.sentinel for proc, _ in waiting.values()])
            for rank, (proc, conn) in list(waiting.items()):
                if conn in ready or conn.poll():
                    error = conn.recv()
                    if error is not None:
                        return rank, error
                    del waiting[rank]
                elif proc.sentinel in ready:  # exited without a word: killed or crashed
                    return rank, f"process exited with code {proc.exitcode}"
        return None

    def close(self, kill=False):
        for proc, conn in self.workers:
            if kill:
                proc.kill()
            elif proc.is_alive():
                conn.send(None)
        for proc, conn in self.workers:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()


_pool = None


def _end_pool():
    global _pool
    if _pool is not None:
        _pool.close(kill=True)
        _pool = None


def _close_pool():
    if _pool is not None:
        _pool.close()


atexit.register(_close_pool)


TWO_RANKS = {  # the layouts a stage's training is compared with one process in (``parametrize("layout", ...)``)
    "dp2": {"world": 2, "micro_batch_size": 2},
    "tp2_sp": {"world": 2, "tensor_model_parallel_size": 2, "sequence_parallel": True},
    "pp2": {"world": 2, "pipeline_model_parallel_size": 2, "micro_batch_size": 2},
}


def run_distributed(fn, world_size: int, *args):
    """Call ``fn(rank, world_size, *args)`` on every rank; re-raise the first failure. One rank runs
    in this process (the one-process reference a layout is compared with)."""
    global _pool
    if world_size == 1:
        return fn(0, 1, *args)
    if _pool is None:
        _pool = _Pool()
    try:
        failure = _pool.run(fn, world_size, args)
    except BaseException:  # interrupted, or the task could not be sent: the ranks are in an unknown state
        _end_pool()
        raise
    if failure is not None:
        _end_pool()
        raise AssertionError(f"rank {failure[0]} failed:\n{failure[1]}")
