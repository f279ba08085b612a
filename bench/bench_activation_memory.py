"""Activation memory per transformer layer under tensor, sequence and context parallelism (gloo, CPU).

    python bench/bench_activation_memory.py [--seq 1024] [--hidden 1024] [--heads 16] [--cp 1,2,4]

For TP in {1, 2, 4}, with and without --sequence-parallel, and for each context-parallel size
in --cp (alone, and CP=2 with TP=2 + SP), runs one layer's forward on each rank and counts
the bytes autograd saves for backward (distinct storages, weights excluded), then prints one
line per layout: per-rank bytes and the ratio to TP=1. Megatron's estimate for a layer is
s*b*h*(34 + 5*a*s/h) bytes in 16-bit; without SP only the attention/MLP internals shrink with
TP, with SP everything does; CP splits every activation, expected close to 1/C.
"""

import argparse
import os

import torch
import torch.multiprocessing as mp


def measure(rank, world, args, tp, sequence_parallel, cp, out):
    import torch.distributed as dist

    from megalite.config import ModelConfig
    from megalite.model.gpt import TransformerLayer
    from megalite.parallel import state
    from megalite.parallel.init import initialize
    from megalite.parallel.memory import saved_activation_bytes
    from megalite.parallel.random import seed_tp_rng

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    state.initialize(tp=tp, sequence_parallel=sequence_parallel, cp=cp)
    seed_tp_rng(0)
    cfg = ModelConfig(num_layers=1, hidden_size=args.hidden, num_attention_heads=args.heads,
                      ffn_hidden_size=4 * args.hidden,
                      kv_channels=args.hidden // args.heads, num_query_groups=args.heads, normalization="LayerNorm",
                      hidden_dropout=0.1, attention_dropout=0.0, padded_vocab_size=128)
    layer = TransformerLayer(cfg)
    initialize(layer, 0)
    seq = args.seq // cp // (tp if sequence_parallel else 1)
    x = torch.randn(seq, args.batch, args.hidden, requires_grad=True)
    n = saved_activation_bytes(lambda: layer(x), layer.parameters())
    if rank == 0:
        out.put(n)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--port", type=int, default=29533)
    p.add_argument("--cp", default="1", help="context-parallel sizes, comma-separated (e.g. 1,2,4)")
    p.add_argument("--tp", default="1,2,4", help="tensor-parallel sizes, comma-separated")
    a = p.parse_args()
    cps = [int(c) for c in a.cp.split(",")]
    layouts = [(tp, sp, 1) for tp in map(int, a.tp.split(",")) for sp in ((False,) if tp == 1 else (False, True))]
    layouts += [(1, False, cp) for cp in cps if cp > 1] + ([(2, True, 2)] if 2 in cps else [])
    results = {}
    ctx = mp.get_context("spawn")
    for tp, sp, cp in [(1, False, 1)] + [x for x in layouts if x != (1, False, 1)]:
        q = ctx.SimpleQueue()
        mp.start_processes(measure, args=(tp * cp, a, tp, sp, cp, q), nprocs=tp * cp, start_method="spawn")
        results[(tp, sp, cp)] = q.get()
        a.port += 1
    base = results[(1, False, 1)]
    for (tp, sp, cp), n in results.items():
        print(f"bench_activation_memory: seq {a.seq} x batch {a.batch} x hidden {a.hidden}, fp32 | TP={tp} "
              f"SP={'on ' if sp else 'off'} CP={cp} | {n / 2**20:.1f} MiB per layer per rank | {n / base:.3f} of "
              "TP=1")


if __name__ == "__main__":
    main()
