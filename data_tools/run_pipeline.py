"""Clean and deduplicate a raw corpus with a pipeline defined in YAML (see docs/cleaning.md).

    python data_tools/run_pipeline.py --config clean.yaml [--workers 8]
    python data_tools/run_pipeline.py --config clean.yaml --tasks 64 --task-id $SLURM_ARRAY_TASK_ID

writes <output>/data/*.jsonl.gz (the kept documents), <output>/rejected/<step>/ (every removed
document with its reason) and <output>/report.{json,txt}. Re-running skips finished work.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_tools.clean.config import load_config  # noqa: E402
from data_tools.clean.executor import run_pipeline  # noqa: E402
from megalite.utils.cli import run_tool  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the pipeline's YAML file")
    p.add_argument("--input", nargs="+", help="override the config's input")
    p.add_argument("--output", help="override the config's output folder")
    p.add_argument("--workers", type=int, default=1, help="local processes for this task's units")
    p.add_argument("--tasks", type=int, default=1, help="number of tasks sharing the work (e.g. a job array)")
    p.add_argument("--task-id", type=int, default=0, help="this task's index in [0, --tasks)")
    p.add_argument("--stage", help="run only this stage (name or number; see --list-stages)")
    p.add_argument("--list-stages", action="store_true", help="print the stages and their units, then exit")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between looks at other tasks' progress")
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    if a.input:
        cfg.input = a.input
    if a.output:
        cfg.output = a.output
    if a.list_stages:
        from data_tools.clean.plan import Plan

        for s in Plan(cfg).stages:
            print(f"{s.name}: {len(s.units)} units")
        return
    plan = run_pipeline(cfg, a.tasks, a.task_id, a.workers, a.stage, a.poll)
    report = os.path.join(cfg.output, "report.txt")
    if a.task_id == 0 and (a.stage is None or plan.stage(a.stage).kind == "report"):
        with open(report) as f:
            print(f.read(), end="")
        print(f"kept documents: {os.path.join(cfg.output, 'data')}")


if __name__ == "__main__":
    run_tool(main)
