"""Joining torchrun's process group and picking this rank's device: what every entrypoint
(training, evaluation, generation) does before it builds process groups (state.py)."""

import datetime
import os
from typing import Optional

import torch
import torch.distributed as dist


def setup_distributed(backend: Optional[str], timeout_minutes: float = 10.0) -> torch.device:
    """Join torchrun's process group if launched by it; pick this rank's device.

    The rendezvous keys are kept per torchrun restart attempt: after a worker dies and
    torchrun restarts the group (--max-restarts), the new workers must not find the dead
    ones' addresses in the store."""
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        backend = backend or ("nccl" if cuda else "gloo")
        kwargs = {"device_id": device} if backend == "nccl" else {}
        timeout = datetime.timedelta(minutes=timeout_minutes)
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if attempt is not None and "MASTER_ADDR" in os.environ:
            agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                  is_master=not agent_store and rank == 0, timeout=timeout)
            kwargs["store"] = dist.PrefixStore(f"megalite/attempt_{attempt}", store)
            kwargs.update(rank=rank, world_size=world)
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    return device
