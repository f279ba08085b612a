"""Supervised fine-tuning: `torchrun --nproc_per_node N sft_gpt.py --load BASE --sft-data a.jsonl <flags>`.

The pretraining flags (parallel sizes, batch sizes, optimizer, schedule, --bf16, --save/--load,
logging) plus the SFT flags (`python sft_gpt.py --help`). --load takes a megalite checkpoint or
a local Hugging Face model folder; the same command resumes the run from --save.
"""

from megalite.config import parse_config
from megalite.eval.during_training import evaluators
from megalite.posttrain.lora_io import LoRA
from megalite.posttrain.sft import SFTStage
from megalite.training.trainer import pretrain
from megalite.utils.cli import run_tool


def main(argv=None):
    cfg = parse_config(argv, __doc__, "sft_gpt.py")
    pretrain(cfg, SFTStage([LoRA()]), evaluators(cfg))


if __name__ == "__main__":
    run_tool(main)
