"""Serve a checkpoint (or a Hugging Face folder) over an OpenAI-compatible HTTP API, with a chat page.

    python tools/serve.py --load ckpt/ [--port 8000]
    python tools/serve.py --load hf_folder/ --load-adapter lora_adapter/ --max-batch-size 16
    curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"prompt": "To be, or not to be", "max_tokens": 20, "temperature": 0}'

Open http://127.0.0.1:8000/ for the chat page. Every open request shares one decode loop
(continuous batching): --max-batch-size requests decode together, each in its own KV-cache
slot of --max-model-len tokens (prompt and reply); up to --max-queue more wait for a slot, and
beyond that requests get HTTP 429 with Retry-After. See docs/serving.md.

A model too large for one device is split over N tensor-parallel ranks (a checkpoint saved in
any layout is re-cut for them); rank 0 speaks HTTP and schedules, every rank decodes:

    torchrun --nproc-per-node 2 tools/serve.py --load ckpt/ --tensor-model-parallel-size 2
"""

import argparse
import os

import torch.distributed as dist

from megalite.errors import MegaliteError
from megalite.serve.app import build_app
from megalite.serve.loading import load_served
from megalite.utils.cli import run_tool


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="checkpoint folder, one iter_XXXXXXX folder, or a HF model folder")
    p.add_argument("--load-adapter", help="a peft LoRA adapter folder applied on top of --load")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together (KV-cache slots)")
    p.add_argument("--max-model-len", type=int, help="tokens per request, prompt and reply (default: the "
                                                     "model's --max-position-embeddings)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a slot; more get 429")
    p.add_argument("--served-model-name", help="the model id clients name (default: the folder's name)")
    p.add_argument("--chat-template", help="a built-in name or a Jinja template file (default: the one the "
                                           "checkpoint was fine-tuned with, else the tokenizer's)")
    p.add_argument("--max-prefill-tokens", type=int, default=512,
                   help="prompt tokens prefilled per step (rows x the longest chunk; longer prompts go in chunks)")
    p.add_argument("--tensor-model-parallel-size", type=int, default=1,
                   help="split the model over this many ranks (torchrun --nproc-per-node N); rank 0 speaks HTTP")
    a = p.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != a.tensor_model_parallel_size:
        raise MegaliteError(f"--tensor-model-parallel-size {a.tensor_model_parallel_size} needs as many ranks: "
                            f"torchrun --nproc-per-node {a.tensor_model_parallel_size} tools/serve.py ... "
                            f"(this is {world})")
    if a.max_prefill_tokens < 1:
        raise MegaliteError("--max-prefill-tokens must be at least 1")
    try:
        import uvicorn
    except ImportError:
        raise MegaliteError("tools/serve.py needs FastAPI and uvicorn: pip install -e '.[serve]'") from None
    try:
        served = load_served(a.load, a.load_adapter, a.max_batch_size, a.max_model_len, a.max_queue,
                             a.served_model_name, a.chat_template, tensor_parallel=a.tensor_model_parallel_size,
                             max_prefill_tokens=a.max_prefill_tokens)
        if served is None:  # a tensor-parallel rank other than 0: rank 0 has stopped
            return 0
        tp = f", tensor-parallel over {world} ranks" if world > 1 else ""
        print(f"serving {served.name} on http://{a.host}:{a.port}/ (batch {a.max_batch_size}, "
              f"{served.max_model_len} tokens per request{tp})", flush=True)
        try:
            uvicorn.run(build_app(served), host=a.host, port=a.port, log_level="warning")
        finally:
            served.engine.stop()  # under tensor parallelism this also stops the other ranks
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

if __name__ == "__main__":
    run_tool(main)
