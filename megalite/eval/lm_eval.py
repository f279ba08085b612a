"""lm-eval's own command line with the ``megalite`` model registered, for scripts written
against lm-eval:

    python -m megalite.eval.lm_eval run --model megalite --model_args load=CKPT --batch_size 8 \
        --tasks hellaswag --num_fewshot 0 --output_path out/

Every flag is lm-eval's (``--include_path``, ``--limit``, ``--log_samples``, ...).
"""

import megalite.eval.harness  # noqa: F401  registers the megalite model

if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
