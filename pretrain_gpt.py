"""Pretrain a GPT / Llama-style model: `torchrun --nproc_per_node N pretrain_gpt.py <flags>`.

Flags follow Megatron-LM's names (see `python pretrain_gpt.py --help`); `--config x.yaml`
may hold any of them. A single process without torchrun works too. `--load BASE --finetune`
takes a megalite checkpoint or a local Hugging Face model folder, and with it the model,
tokenizer and --seq-length settings (flags given win).
"""

from megalite.config import parse_config
from megalite.eval.during_training import evaluators
from megalite.hf.source import import_load
from megalite.posttrain.lora_io import LoRA
from megalite.training.stage import Stage
from megalite.training.trainer import pretrain
from megalite.utils.cli import run_tool


def main(argv=None):
    cfg = parse_config(argv, __doc__, "pretrain_gpt.py")
    import_load(cfg)  # a Hugging Face folder as --load: its import, fine-tuned
    pretrain(cfg, Stage([LoRA()]), evaluators(cfg))


if __name__ == "__main__":
    run_tool(main)
