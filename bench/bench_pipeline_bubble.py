"""The 1F1B schedules' bubble: measured idle fraction per stage vs (P - 1) / (v m + P - 1).

    python bench/bench_pipeline_bubble.py [--stages 4] [--micro-batches 4 8 16] [--chunks 1 2] [--forward-ms 20]

Runs megalite's real pipeline schedule (parallel/pipeline.py, gloo point-to-point) with
stages whose forward takes --forward-ms and backward twice that, spent sleeping, so the
measurement shows the schedule itself, not the two cores of this machine being shared by
P processes. With v chunks per stage (interleaved schedule) each chunk's forward takes
--forward-ms / v. Idle fraction of a stage = 1 - busy time / step time. One line per (v, m).
"""

import argparse
import os
import time

import torch
import torch.multiprocessing as mp


class _Sleep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, seconds):
        ctx.seconds = seconds
        time.sleep(seconds)
        return x * 1.0

    @staticmethod
    def backward(ctx, g):
        time.sleep(2 * ctx.seconds)
        return g, None


def _stage(rank, world, micro, chunks, forward_s, port, out):
    import torch.distributed as dist

    from megalite.parallel import state
    from megalite.parallel.pipeline import forward_backward

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    s = state.initialize(pp=world)

    class Chunk(torch.nn.Module):
        def __init__(self, last):
            super().__init__()
            self.w, self.last = torch.nn.Parameter(torch.ones(8)), last

        def forward(self, tokens, labels=None, hidden=None):
            x = tokens.t().unsqueeze(-1).float() * self.w if hidden is None else hidden * self.w
            x = _Sleep.apply(x, forward_s / chunks)
            return x.sum(-1).t() if self.last else x

    batch = [{"tokens": torch.ones(1, 4, dtype=torch.long), "labels": torch.zeros(1, 4, dtype=torch.long)}
             for _ in range(micro)]
    stage = torch.nn.ModuleList(Chunk(s.is_last_stage and c == chunks - 1) for c in range(chunks))
    forward_backward(stage, batch[:world], lambda losses, mb: losses.sum(), (4, 1, 8), torch.float32)  # warm-up
    dist.barrier()
    t0 = time.perf_counter()
    forward_backward(stage, batch, lambda losses, mb: losses.sum(), (4, 1, 8), torch.float32)
    dist.barrier()
    total = time.perf_counter() - t0
    idle = 1 - micro * 3 * forward_s / total
    out.put((rank, idle))
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", type=int, default=4)
    p.add_argument("--micro-batches", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--chunks", type=int, nargs="+", default=[1, 2], help="model chunks per stage (v)")
    p.add_argument("--forward-ms", type=float, default=20.0)
    p.add_argument("--port", type=int, default=29571)
    a = p.parse_args()
    ctx = mp.get_context("spawn")
    runs = [(v, m) for v in a.chunks for m in a.micro_batches]
    for i, (v, m) in enumerate(runs):
        q = ctx.SimpleQueue()
        mp.start_processes(_stage, args=(a.stages, m, v, a.forward_ms / 1000, a.port + i, q), nprocs=a.stages,
                           start_method="spawn")
        idle = dict(q.get() for _ in range(a.stages))
        theory = (a.stages - 1) / (v * m + a.stages - 1)
        per_stage = " ".join(f"{idle[r]:.3f}" for r in range(a.stages))
        print(f"bench_pipeline_bubble: {'interleaved' if v > 1 else '1F1B'}, P={a.stages}, v={v}, m={m}, forward "
              f"{a.forward_ms:g} ms, backward {2 * a.forward_ms:g} ms per stage | idle per stage {per_stage} | "
              f"theory {theory:.3f}")


if __name__ == "__main__":
    main()
