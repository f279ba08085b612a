"""Run a function on N gloo processes, the CPU stand-in for N GPUs."""

import gc
import os
import socket
import sys
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world_size, port, fn, args, errors):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # N processes share the machine's cores, as torchrun's OMP_NUM_THREADS=1 does
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        dist.barrier()  # no rank tears its connections down while a peer still talks to it
    except BaseException:
        errors.put((rank, traceback.format_exc()))
        raise
    finally:
        dist.destroy_process_group()
    # Leave without interpreter finalization: objects that still hold a gloo group (in
    # reference cycles) were once torn down with live gloo threads, aborting the rank.
    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(fn, world_size: int, *args):
    """Call ``fn(rank, world_size, *args)`` on every rank; re-raise the first failure."""
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    try:
        mp.start_processes(_entry, args=(world_size, free_port(), fn, args, errors),
                           nprocs=world_size, start_method="spawn")
    except Exception as e:
        detail = errors.get() if not errors.empty() else (None, str(e))
        raise AssertionError(f"rank {detail[0]} failed:\n{detail[1]}") from None
