"""``eval_gpt.py``: evaluate a megalite checkpoint without exporting it.

    python eval_gpt.py --load CKPT --perplexity --data-path PREFIX [--eval-stride 256]
    python eval_gpt.py --load CKPT --perplexity --text-file held_out.jsonl
    python eval_gpt.py --load CKPT --tasks hellaswag,arc_easy --num-fewshot 0 --output-path out/
    python eval_gpt.py --load CKPT --task mmlu_test --task-dir data/mmlu --n-shot 5
    python eval_gpt.py --load CKPT --predict-with-generate --text-file sft_test.jsonl --output-path out/

Under ``torchrun`` with the checkpoint's T x P ranks each rank holds its shard; every rank
computes the same results and rank 0 alone prints and writes them.
"""

import argparse
import json
import os
from typing import Dict, Optional

import torch.distributed as dist

from megalite.data.chat import load_template
from megalite.data.tokenizer import TOKENIZER_TYPES, Tokenizer
from megalite.errors import MegaliteError
from megalite.eval.exams import run_exam
from megalite.eval.loading import checkpoint_tokenizer, default_device, load_model
from megalite.eval.perplexity import load_sources, perplexity
from megalite.eval.predict import generation_metrics, predict, read_sft_examples
from megalite.utils.atomic import atomic_write


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="megalite checkpoint folder (or one iter_XXXXXXX folder), or a "
                   "Hugging Face model folder")
    p.add_argument("--output-path", help="folder for the results (or a .json file for one result)")
    p.add_argument("--batch-size", type=int, default=8, help="windows / requests per forward pass")
    p.add_argument("--limit", type=int, help="at most this many documents / examples per dataset or task")
    p.add_argument("--seed", type=int, default=1234)
    g = p.add_argument_group("perplexity")
    g.add_argument("--perplexity", action="store_true", help="loss, perplexity and bits per byte")
    g.add_argument("--data-path", nargs="+", help="PREFIX ... or WEIGHT PREFIX ... (.bin/.idx datasets)")
    g.add_argument("--text-file", action="append", default=[], help="JSONL (see --json-key) or plain text; "
                   "repeatable. With --predict-with-generate: the SFT file")
    g.add_argument("--json-key", default="text", help="the text field of JSONL records")
    g.add_argument("--seq-length", type=int, help="window length (default: the checkpoint's --seq-length)")
    g.add_argument("--eval-stride", type=int, help="sliding windows: start one every this many tokens "
                   "(default: the window length, i.e. fixed windows)")
    g = p.add_argument_group("lm-evaluation-harness")
    g.add_argument("--tasks", help="comma-separated lm-eval task names")
    g.add_argument("--num-fewshot", type=int)
    g.add_argument("--include-path", help="folder of extra task YAMLs (e.g. examples/eval_tasks)")
    g.add_argument("--log-samples", action="store_true", help="also write every request and response")
    g.add_argument("--apply-chat-template", action="store_true",
                   help="render prompts with the chat template (--chat-template or the tokenizer's)")
    g.add_argument("--bootstrap-iters", type=int, default=100000,
                   help="resamples for the standard error of non-mean metrics (0 = none)")
    g = p.add_argument_group("MMLU-style exams")
    g.add_argument("--task", help="mmlu / ceval / cmmlu, optionally with a split: mmlu_test, ceval_validation")
    g.add_argument("--task-dir", help="folder with dev/ and test/ (or val/) CSVs per subject")
    g.add_argument("--n-shot", type=int, default=5, help="dev examples before each question")
    g = p.add_argument_group("generation")
    g.add_argument("--predict-with-generate", action="store_true", help="generate answers for an SFT file "
                   "(--text-file) and score them with BLEU-4 and ROUGE")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--chat-template", help="'chatml' or a Jinja file (default: the tokenizer's); for "
                   "--predict-with-generate and --apply-chat-template")
    g = p.add_argument_group("tokenizer (default: the checkpoint's)")
    g.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES)
    g.add_argument("--tokenizer-model")
    g.add_argument("--vocab-file")
    g.add_argument("--merge-file")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    modes = [m for m in ("perplexity", "tasks", "task", "predict_with_generate") if getattr(a, m)]
    if len(modes) != 1:
        raise MegaliteError("choose exactly one of --perplexity, --tasks, --task and --predict-with-generate")
    if modes[0] in ("tasks", "predict_with_generate") and (a.output_path or "").endswith(".json"):
        raise MegaliteError(f"--output-path {a.output_path}: this mode writes several files; give a folder")
    model, cfg = load_model(a.load, default_device())
    try:
        tok = checkpoint_tokenizer(cfg, a)
        result = _run(modes[0], model, cfg, tok, a)
        if _rank() == 0:
            _report(modes[0], result, a.output_path)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _run(mode: str, model, cfg, tok: Tokenizer, a) -> Dict:
    pad = tok.pad if tok.pad is not None else tok.eod
    if mode == "perplexity":
        sources, weights = load_sources(tok, a.data_path, a.text_file, a.json_key, a.limit)
        seq_length = a.seq_length or cfg.data.seq_length
        if seq_length is None:
            raise MegaliteError(f"--load {a.load} records no --seq-length: pass --seq-length (the window length)")
        return perplexity(model, sources, seq_length, a.eval_stride, a.batch_size, weights, pad)
    if mode == "tasks":
        from megalite.eval.harness import run_harness_tasks  # needs lm_eval, an optional dependency

        return run_harness_tasks(model, a.tasks, a.num_fewshot, a.batch_size, a.limit, a.include_path,
                                 a.log_samples, tokenizer=tok, seed=a.seed, bootstrap_iters=a.bootstrap_iters,
                                 apply_chat_template=a.apply_chat_template, chat_template=a.chat_template)
    if mode == "task":
        if not a.task_dir:
            raise MegaliteError("--task needs --task-dir (a folder with dev/ and test/ CSVs per subject)")
        return run_exam(model, tok, a.task_dir, a.task, a.n_shot, a.batch_size, a.limit)
    if mode == "predict_with_generate":
        if len(a.text_file) != 1:
            raise MegaliteError("--predict-with-generate needs one --text-file (alpaca or messages JSONL)")
        examples = read_sft_examples(a.text_file[0])[: a.limit]
        template = load_template(a.chat_template) if a.chat_template else tok.chat_template
        rows = predict(model, tok, examples, template, a.max_new_tokens, a.batch_size)
        metrics = generation_metrics([r["predict"] for r in rows], [r["label"] for r in rows])
        return {"metrics": metrics, "predictions": rows}
    raise AssertionError(mode)


def _report(mode: str, result: Dict, output_path: Optional[str]) -> None:
    """Print ``result`` and write it under --output-path (rank 0 only)."""
    REPORTERS[mode](result, output_path)


def _report_perplexity(result: Dict, output_path: Optional[str]) -> None:
    for name, r in list(result["datasets"].items()) + [("overall", result["overall"])]:
        print(f"{name}: loss {r['loss']:.4f} | perplexity {r['perplexity']:.3f} | "
              f"bits per byte {r['bits_per_byte']:.4f} | {r['tokens']} tokens", flush=True)
    if output_path:
        write_json(_result_file(output_path, "perplexity.json"), result)


def _report_exam(result: Dict, output_path: Optional[str]) -> None:
    for subject, r in result["subjects"].items():
        print(f"{subject:>40}: {r['accuracy']:.2f} ({r['correct']}/{r['total']})")
    for category, acc in result["categories"].items():
        print(f"{category:>40}: {acc:.2f}")
    print(f"{'Average':>40}: {result['average']:.2f}", flush=True)
    if output_path:
        write_json(_result_file(output_path, f"{result['task']}.json"), result)


def _report_harness(result: Dict, output_path: Optional[str]) -> None:
    """lm-eval's table; results.json and one samples_<task>.jsonl per task (--log-samples)."""
    from lm_eval.utils import handle_non_serializable, make_table  # lm_eval is optional: only --tasks needs it

    samples = result.pop("samples", None) or {}
    print(make_table(result), flush=True)
    if output_path:
        for task, rows in samples.items():
            write_jsonl(_folder_file(output_path, f"samples_{task}.jsonl"), rows, handle_non_serializable)
        write_json(_folder_file(output_path, "results.json"), result, handle_non_serializable)


def _report_predictions(result: Dict, output_path: Optional[str]) -> None:
    """Metrics; generated_predictions.jsonl and predict_results.json, as LLaMA-Factory names them."""
    print(" | ".join(f"{k} {v:.2f}" for k, v in result["metrics"].items() if k != "examples"), flush=True)
    if output_path:
        write_jsonl(_folder_file(output_path, "generated_predictions.jsonl"), result["predictions"])
        write_json(_folder_file(output_path, "predict_results.json"), result["metrics"])


REPORTERS = {"perplexity": _report_perplexity, "task": _report_exam, "tasks": _report_harness,
             "predict_with_generate": _report_predictions}


def _result_file(output_path: str, name: str) -> str:
    """--output-path names the result file itself (.json) or the folder to hold ``name``."""
    if output_path.endswith(".json"):
        os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
        return output_path
    return _folder_file(output_path, name)


def _folder_file(output_path: str, name: str) -> str:
    os.makedirs(output_path, exist_ok=True)
    return os.path.join(output_path, name)


def write_jsonl(path: str, rows, default=str) -> None:
    with atomic_write(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, default=default, ensure_ascii=False) + "\n")


def write_json(path: str, obj, default=str) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=default)
        f.write("\n")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0
