"""Direct preference optimisation: `torchrun --nproc_per_node N dpo_gpt.py --load BASE --pref-data pairs.jsonl <flags>`.

The pretraining flags (parallel sizes, batch sizes in pairs, optimizer, schedule, --bf16,
--save/--load, logging) plus the DPO flags (`python dpo_gpt.py --help`). --load takes a megalite
checkpoint or a local Hugging Face model folder; its weights are also the reference model unless
--ref-load names another (with --lora-rank: the policy with its adapters disabled). The same
command resumes the run from --save.
"""

from megalite.config import parse_config
from megalite.eval.during_training import evaluators
from megalite.posttrain.lora_io import LoRA
from megalite.posttrain.runs import PREFERENCE_STAGES
from megalite.training.trainer import pretrain
from megalite.utils.cli import run_tool


def main(argv=None):
    cfg = parse_config(argv, __doc__, "dpo_gpt.py")
    pretrain(cfg, PREFERENCE_STAGES[cfg.dpo.pref_method]([LoRA()]), evaluators(cfg))


if __name__ == "__main__":
    run_tool(main)
