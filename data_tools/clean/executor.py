"""Runs a plan's stages: this task's share of each stage's units, locally in ``workers``
processes, waiting between stages until every task has finished the previous one.

Tasks coordinate only through the output folder: a unit is done when its marker exists, so
any scheduler (SLURM arrays, Kubernetes jobs, plain shell loops) can start the W tasks on
any machines that share the folder, in any order, and re-running resumes.
"""

import json
import multiprocessing as mp
import os
import sys
import time
from typing import List, Optional

from data_tools.clean.config import PipelineConfig, parse_config
from data_tools.clean.plan import Plan, Stage
from data_tools.clean.stages import run_unit
from megalite.errors import MegaliteError
from megalite.utils.atomic import atomic_write
from megalite.utils.progress import Progress

_worker = {}  # per worker process: its plan and the shared progress counters


def _init_worker(config: dict, counted_bytes, counted_docs) -> None:
    _worker.update(plan=Plan(parse_config(config)), bytes=counted_bytes, docs=counted_docs)


def _count(nbytes: int, docs: int) -> None:
    with _worker["bytes"].get_lock():
        _worker["bytes"].value += nbytes
    with _worker["docs"].get_lock():
        _worker["docs"].value += docs


def _run_in_worker(stage_name: str, unit: str) -> None:
    plan = _worker["plan"]
    run_unit(plan, plan.stage(stage_name), unit, _count)


def check_run_file(plan: Plan) -> None:
    """Record the config and shards on first use; refuse to mix runs of different configs."""
    record = {"config": plan.config.to_dict(), "shards": dict(zip(plan.shards, plan.files))}
    path = plan.layout.run_file
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != json.loads(json.dumps(record)):
            raise MegaliteError(f"{plan.config.output} holds a run with another config or other inputs "
                                f"(see {path}); use a new output folder or delete that one")
        return
    os.makedirs(plan.config.output, exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(record, f, indent=1)


def missing_units(plan: Plan, stage: Stage) -> List[str]:
    return [u for u in stage.units if not os.path.exists(plan.layout.done(stage.name, u))]


def wait_for(plan: Plan, stage: Stage, poll: float, log) -> None:
    """Block until every unit of ``stage`` is done (by any task)."""
    last_log = 0.0
    while True:
        missing = missing_units(plan, stage)
        if not missing:
            return
        if time.monotonic() - last_log > 60:
            log(f"waiting for other tasks: {len(missing)} of {len(stage.units)} units of stage {stage.name}")
            last_log = time.monotonic()
        time.sleep(poll)


class _Runner:
    """Runs units of stages in this process or in a pool that lives across stages."""

    def __init__(self, plan: Plan, workers: int):
        self.plan, self.workers = plan, workers
        self.pool = None
        self.bytes = self.docs = None

    def run(self, stage: Stage, units: List[str]) -> None:
        progress = Progress(f"{stage.name} ({len(units)} units)")
        try:
            if self.workers <= 1 or len(units) <= 1:
                for unit in units:
                    run_unit(self.plan, stage, unit, lambda nbytes, docs: progress.update(nbytes, docs=docs))
                    progress.update(0, units=1)
            else:
                self._run_pool(stage, units, progress)
        finally:
            progress.close()

    def _run_pool(self, stage: Stage, units: List[str], progress: Progress) -> None:
        if self.pool is None:
            ctx = mp.get_context("spawn")
            self.bytes, self.docs = ctx.Value("q", 0), ctx.Value("q", 0)
            self.pool = ctx.Pool(self.workers, _init_worker, (self.plan.config.to_dict(), self.bytes, self.docs))
        seen_bytes, seen_docs = self.bytes.value, self.docs.value
        results = [self.pool.apply_async(_run_in_worker, (stage.name, u)) for u in units]
        done = 0
        while done < len(results):
            time.sleep(0.2)
            now_done = sum(r.ready() for r in results)
            b, d = self.bytes.value, self.docs.value
            progress.update(b - seen_bytes, docs=d - seen_docs, units=now_done - done)
            seen_bytes, seen_docs, done = b, d, now_done
        for r in results:
            r.get()  # re-raises a worker's error here

    def close(self, failed: bool) -> None:
        """Stop the pool: let it finish, or, after a failure, end its work now."""
        if self.pool is not None:
            if failed:
                self.pool.terminate()
            else:
                self.pool.close()
            self.pool.join()


def run_pipeline(config: PipelineConfig, tasks: int = 1, task_id: int = 0, workers: int = 1,
                 stage: Optional[str] = None, poll: float = 5.0, log=None) -> Plan:
    """Run this task's units of every stage (or of one ``stage``); returns the plan."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if tasks < 1 or not 0 <= task_id < tasks:
        raise MegaliteError(f"--task-id {task_id} must be in [0, --tasks {tasks})")
    if workers < 1:
        raise MegaliteError(f"--workers {workers} must be at least 1")
    plan = Plan(config)
    check_run_file(plan)
    chosen = plan.stages if stage is None else [plan.stage(stage)]
    runner = _Runner(plan, workers)
    failed = True
    try:
        for s in chosen:
            i = plan.stages.index(s)
            if i > 0:
                before = plan.stages[i - 1]
                if stage is None:
                    wait_for(plan, before, poll, log)
                elif missing_units(plan, before):
                    raise MegaliteError(f"--stage {s.name} needs stage {before.name} finished first "
                                        f"({len(missing_units(plan, before))} of {len(before.units)} units left)")
            mine = [u for j, u in enumerate(s.units) if j % tasks == task_id]
            missing = set(missing_units(plan, s))
            todo = [u for u in mine if u in missing]
            if len(todo) < len(mine):
                log(f"{s.name}: {len(mine) - len(todo)} of {len(mine)} units already done, skipped")
            if todo:
                runner.run(s, todo)
        failed = False
    finally:
        runner.close(failed)
    return plan
