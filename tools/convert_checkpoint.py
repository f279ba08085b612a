"""Convert between megalite checkpoints and Hugging Face model folders.

    python tools/convert_checkpoint.py --to-hf --load ckpt/ --save hf_model/ [--dtype bf16]
    python tools/convert_checkpoint.py --from-hf --load hf_model/ --save ckpt/
    python tools/convert_checkpoint.py --to-peft --load lora_ckpt/ --save adapter/
    python tools/convert_checkpoint.py --to-gguf --load ckpt_or_hf_dir/ --save model.gguf [--gguf-type q8_0]
    python tools/convert_checkpoint.py --reshard --load ckpt/ --save ckpt_tp4/ --target-tensor-parallel-size 4 \
        [--target-pipeline-parallel-size 2 --target-num-layers-per-virtual-pipeline-stage 2]

--to-hf writes config.json and safetensors (sharded above --max-shard-size) that
transformers' AutoModelForCausalLM loads as Llama (or Qwen2 with a QKV bias). --from-hf
reads a local Llama / Qwen2 / Mistral folder and writes an iteration-0 checkpoint.
On a LoRA checkpoint (--lora-rank), --to-hf writes the base with the adapters merged in and
--to-peft writes the adapters alone as a peft adapter folder (adapter_config.json +
adapter_model.safetensors) for the HF export of the base.
A reward model (dpo_gpt.py --pref-method rm) exports as a ...ForSequenceClassification (score.weight, one
label, pad_token_id), which AutoModelForSequenceClassification loads.
--to-gguf writes one GGUF file that llama.cpp (llama-cli, llama-server, llama-cpp-python) runs:
llama architecture, the tokenizer (sentencepiece BPE or byte-level BPE) with its special tokens
and chat template, weights as f16, q8_0 or q4_0 (--gguf-type); see docs/serving.md.
--reshard writes the checkpoint (weights and optimizer state) for another tensor / pipeline
layout, one target rank at a time; training also loads any layout directly (--load), so
this is for moving checkpoints around, not a required step.

--from-hf and --reshard write a new checkpoint folder: --save must be empty or missing.
--to-hf and --to-peft refuse a --save that holds anything but an earlier export of theirs
(marked by .megalite_export.json), which they replace whole; nothing else is ever deleted.
"""

import argparse
import sys

from megalite.checkpoint.rewrite import reshard_offline
from megalite.data.chat import load_template
from megalite.hf.convert import export_hf, import_hf
from megalite.hf.gguf import GGUF_TYPES, export_gguf
from megalite.posttrain.lora_io import export_peft
from megalite.posttrain.runs import checkpointed_model
from megalite.utils.cli import run_tool
from megalite.utils.folders import require_empty


def parse_size(text: str) -> int:
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30}
    for u, m in units.items():
        if text.upper().endswith(u):
            return int(float(text[:-2]) * m)
    return int(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--to-hf", action="store_true")
    way.add_argument("--from-hf", action="store_true")
    way.add_argument("--to-peft", action="store_true")
    way.add_argument("--reshard", action="store_true")
    way.add_argument("--to-gguf", action="store_true")
    p.add_argument("--load", required=True, help="checkpoint folder (or iter_ folder), or the HF folder")
    p.add_argument("--save", required=True)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                   help="weights dtype (default bf16 for --to-hf, fp32 for --from-hf)")
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--gguf-type", choices=GGUF_TYPES, default="f16", help="--to-gguf: how matrices are stored")
    p.add_argument("--gguf-no-space-prefix", dest="gguf_space_prefix", action="store_false",
                   help="--to-gguf of a sentencepiece tokenizer: llama.cpp adds no dummy prefix, so prompts that "
                        "start with a special token (chat templates) tokenize as in megalite; plain prompts lose "
                        "the prefix of their first word")
    p.add_argument("--chat-template", help="'chatml' or a file with a Jinja chat template for the exported tokenizer")
    p.add_argument("--target-tensor-parallel-size", type=int, default=1)
    p.add_argument("--target-pipeline-parallel-size", type=int, default=1)
    p.add_argument("--target-num-layers-per-virtual-pipeline-stage", type=int, default=None)
    a = p.parse_args(argv)
    if a.from_hf or a.reshard:
        require_empty(a.save, "--save")
    if a.reshard:
        out = reshard_offline(a.load, a.save, a.target_tensor_parallel_size, a.target_pipeline_parallel_size,
                              a.target_num_layers_per_virtual_pipeline_stage, checkpointed_model=checkpointed_model)
        print(f"wrote {out}")
    elif a.to_gguf:
        out = export_gguf(a.load, a.save, a.gguf_type, load_template(a.chat_template) if a.chat_template else None,
                          a.gguf_space_prefix)
        for note in out["notes"]:
            print(f"note: {note}", file=sys.stderr)
        print(f"wrote {a.save}")
    elif a.to_peft:
        print(f"wrote {export_peft(a.load, a.save)}")
    elif a.to_hf:
        out = export_hf(a.load, a.save, a.dtype or "bf16", parse_size(a.max_shard_size),
                        chat_template=load_template(a.chat_template) if a.chat_template else None)
        print(f"wrote {out}")
    else:
        cfg = import_hf(a.load, a.save, a.dtype or "fp32")
        print(f"wrote {a.save} ({cfg.num_layers} layers, hidden {cfg.hidden_size}); "
              f"train from it with pretrain_gpt.py --load {a.save} --finetune")


if __name__ == "__main__":
    run_tool(main)
