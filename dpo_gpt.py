"""Direct preference optimisation: `torchrun --nproc_per_node N dpo_gpt.py --load BASE --pref-data pairs.jsonl <flags>`.

The pretraining flags (parallel sizes, batch sizes in pairs, optimizer, schedule, --bf16,
--save/--load, logging) plus the DPO flags (`python dpo_gpt.py --help`). --load takes a megalite
checkpoint or a local Hugging Face model folder; its weights are also the reference model unless
--ref-load names another (with --lora-rank: the policy with its adapters disabled). The same
command resumes the run from --save.
"""

from megalite.config import parse_config
from megalite.eval.during_training import evaluators
from megalite.posttrain.dpo import DPOStage
from megalite.posttrain.kto import KTOStage
from megalite.posttrain.reward import RewardStage
from megalite.training.trainer import pretrain
from megalite.utils.cli import run_tool

STAGES = {"dpo": DPOStage, "kto": KTOStage, "rm": RewardStage}


def main(argv=None):
    cfg = parse_config(argv, __doc__)
    pretrain(cfg, STAGES[cfg.dpo.stage](), evaluators(cfg))


if __name__ == "__main__":
    run_tool(main)
