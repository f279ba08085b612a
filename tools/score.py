"""Score JSONL records with a trained reward model.

    python tools/score.py --load rm_ckpt/ --input pairs.jsonl --output scored.jsonl [--batch-size 16]

--load: a megalite reward-model checkpoint (dpo_gpt.py --pref-method rm; a LoRA run's adapters are merged in)
or its Hugging Face export (a ...ForSequenceClassification folder). Records: ``prompt`` + ``completion``
(strings or message lists) or ``text`` -> ``score``; preference pairs ``prompt`` / ``chosen`` /
``rejected`` -> ``score_chosen``, ``score_rejected``, ``chosen_wins``, and the pairs' accuracy is printed.
Sequences are tokenized as training did (EOS appended to text completions, the run's chat template for
messages); see megalite/eval/reward_scores.py.
"""

import argparse

from megalite.eval.reward_scores import score_file
from megalite.utils.cli import run_tool


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="reward-model checkpoint folder, or its HF export")
    p.add_argument("--input", required=True, help="records to score (.jsonl, .json or .parquet)")
    p.add_argument("--output", required=True, help="JSONL: the records with their scores")
    p.add_argument("--batch-size", type=int, default=16)
    a = p.parse_args(argv)
    out = score_file(a.load, a.input, a.output, a.batch_size)
    print(f"scored {out['records']} records -> {a.output}")
    if out["accuracy"] is not None:
        print(f"pair accuracy {out['accuracy']:.4f} ({round(out['accuracy'] * out['pairs'])} of {out['pairs']} pairs "
              "score chosen above rejected)")


if __name__ == "__main__":
    run_tool(main)
