"""Evaluate a megalite checkpoint (or a Hugging Face model folder): perplexity / bits per byte,
lm-evaluation-harness tasks, MMLU-style exams, generation metrics. `python eval_gpt.py --help`;
torchrun works too."""

from megalite.eval.cli import main
from megalite.utils.cli import run_tool

if __name__ == "__main__":
    run_tool(main)
