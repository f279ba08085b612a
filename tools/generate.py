"""Continue prompts with a trained checkpoint (KV cache; greedy unless --temperature > 0).

    python tools/generate.py --load ckpt/ --prompt "To be, or not to be" --max-new-tokens 50
    python tools/generate.py --load ckpt/ --prompt-file prompts.txt --temperature 0.8 --top-p 0.9 --seed 1
    python tools/generate.py --load ckpt/ --chat [--chat-template chatml]

--chat reads user turns from standard input and answers each, keeping the conversation,
formatted with the chat template the checkpoint was fine-tuned with (sft_gpt.py stores it),
else the tokenizer's own (or --chat-template).

A checkpoint saved with tensor / pipeline parallelism T x P decodes in one process, or spread
as it was trained (rank 0 reads and prints):

    torchrun --nproc-per-node 4 tools/generate.py --load ckpt_tp2_pp2/ --prompt "Hello"

Prompts come from --prompt (repeatable) or --prompt-file (one per line) and are decoded as a
batch. The tokenizer is the one the checkpoint was trained with unless --tokenizer-* say otherwise.
"""

import argparse
import sys

import torch.distributed as dist

from megalite.data.chat import chat_template_for, render_chat, turn_end_strings
from megalite.data.tokenizer import TOKENIZER_TYPES, build_tokenizer
from megalite.errors import MegaliteError
from megalite.eval.generate import generate
from megalite.eval.loading import load_model
from megalite.eval.sampling import Sampling, trim_stop_string
from megalite.utils.cli import run_tool


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="megalite checkpoint folder (or one iter_XXXXXXX folder), or a "
                   "Hugging Face model folder")
    p.add_argument("--prompt", action="append", default=[], help="may be given several times")
    p.add_argument("--prompt-file", help="one prompt per line")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chat", action="store_true", help="interactive chat on standard input")
    p.add_argument("--chat-template", help="a built-in name or a Jinja template file (default: the one the "
                                           "checkpoint was fine-tuned with, else the tokenizer's)")
    p.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES)
    p.add_argument("--tokenizer-model")
    p.add_argument("--vocab-file")
    p.add_argument("--merge-file")
    a = p.parse_args(argv)
    prompts = list(a.prompt)
    if a.prompt_file:
        prompts += [line.rstrip("\n") for line in open(a.prompt_file, encoding="utf-8") if line.strip()]
    if not prompts and not a.chat:
        raise MegaliteError("give --prompt, --prompt-file or --chat")
    model, cfg = load_model(a.load)
    try:
        return run(model, cfg, prompts, a)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(model, cfg, prompts, a):
    d = cfg.data
    tok = build_tokenizer(a.tokenizer_type or d.tokenizer_type, a.tokenizer_model or d.tokenizer_model,
                          a.vocab_file or d.vocab_file, a.merge_file or d.merge_file)
    sampling = Sampling(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                        repetition_penalty=a.repetition_penalty, stop_ids=[tok.eod], stop_strings=a.stop,
                        seed=a.seed)
    if a.chat:
        return chat(model, tok, sampling, a, cfg.chat.chat_template)
    outs = generate(model, [tok.encode(x) for x in prompts], a.max_new_tokens, sampling,
                    pad_id=tok.pad if tok.pad is not None else tok.eod, decode=tok.decode)
    for prompt, ids in zip(prompts, outs if _rank() == 0 else []):
        ids = [i for i in ids if i != tok.eod]
        print(f"--- {prompt!r} ->")
        print(prompt + trim_stop_string(tok.decode(ids), a.stop))


def chat(model, tok, sampling: Sampling, a, trained_template=None) -> int:
    """``trained_template``: the one a fine-tuning run stored (sft_gpt.py), else the tokenizer's."""
    template = chat_template_for(a.chat_template, trained_template, tok)
    sampling.stop_strings = list(sampling.stop_strings) + turn_end_strings(template)
    pad = tok.pad if tok.pad is not None else tok.eod
    messages = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive and _rank() == 0:
            print("user> ", end="", flush=True)
        line = _read_line()
        if not line:
            return 0
        messages.append({"role": "user", "content": line.rstrip("\n")})
        prompt = render_chat(template, messages, add_generation_prompt=True, **tok.special_tokens)
        ids = generate(model, [tok.encode(prompt)], a.max_new_tokens, sampling, pad_id=pad, decode=tok.decode)[0]
        reply = trim_stop_string(tok.decode([i for i in ids if i != tok.eod]), sampling.stop_strings).strip()
        messages.append({"role": "assistant", "content": reply})
        if _rank() == 0:
            print(f"assistant> {reply}", flush=True)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _read_line() -> str:
    """A line of standard input, read by rank 0 and shared with the other ranks."""
    line = [sys.stdin.readline() if _rank() == 0 else None]
    if dist.is_initialized():
        dist.broadcast_object_list(line, src=0)
    return line[0]


if __name__ == "__main__":
    run_tool(main)
