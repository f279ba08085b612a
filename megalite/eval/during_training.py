"""Evaluations the trainer runs on the model in memory (training.trainer.Evaluator), built from
the run's settings by the entrypoint: today --eval-tasks through lm-eval."""

from typing import Dict, List, Tuple

from megalite.config import Config
from megalite.eval.harness import run_harness_tasks
from megalite.training.data import build_tokenizer_from


class HarnessTasks:
    """--eval-tasks every --eval-interval: each task's metrics logged as ``{"split": "tasks",
    "task": ..., metric: value}`` (TensorBoard: tasks/). Every rank takes part (tensor and
    pipeline collectives); data-parallel replicas each score all requests, and rank 0 reports."""

    def __init__(self, cfg: Config):
        self.cfg, self.every, self.tokenizer = cfg, cfg.training.eval_interval, None

    def __call__(self, model, iteration: int) -> List[Tuple[Dict, str]]:
        t = self.cfg.training
        if self.tokenizer is None:  # the run's, once its stage has settled the settings
            self.tokenizer = build_tokenizer_from(self.cfg)
        out = run_harness_tasks(model, t.eval_tasks, num_fewshot=t.eval_tasks_num_fewshot, limit=t.eval_tasks_limit,
                                include_path=t.eval_tasks_include_path, tokenizer=self.tokenizer, seed=t.seed,
                                bootstrap_iters=0)
        rows = []
        for task, metrics in ((out or {}).get("results") or {}).items():
            scores = {k.split(",")[0]: v for k, v in metrics.items()
                      if isinstance(v, (int, float)) and "stderr" not in k}
            shown = " | ".join(f"{k} {v:.4f}" for k, v in scores.items())
            rows.append(({"iteration": iteration, "split": "tasks", "task": task, **scores},
                         f" task {task} at iteration {iteration}: {shown}"))
        return rows


def evaluators(cfg: Config) -> list:
    """The in-training evaluators the settings ask for."""
    return [HarnessTasks(cfg)] if cfg.training.eval_tasks else []
