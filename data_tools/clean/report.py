"""The run's report: per step, documents and characters in and out and why documents went.

Written as ``report.json`` (machine-readable) and ``report.txt`` (the table printed at the
end of a run), from the counts each unit recorded when it finished.
"""

import json
import os
from typing import Dict, List

from data_tools.clean.stats import StepStats
from megalite.utils.atomic import atomic_write
from megalite.utils.progress import human


def merge_steps(plan, done: Dict[str, List[dict]]) -> List[dict]:
    """One row per step in config order (``00-read`` first), summed over shards."""
    merged: Dict[str, StepStats] = {}
    for stage in plan.stages:
        if stage.kind != "filter":
            continue
        for unit in done.get(stage.name, []):
            for label, d in unit["steps"].items():
                merged.setdefault(label, StepStats()).merge(d)
    clusters = {s.dedup[0]: done[s.name][0] for s in plan.stages if s.kind == "clusters" and done.get(s.name)}
    rows = []
    for label in plan.labels:
        if label not in merged:
            continue
        row = {"step": label, **merged[label].to_dict()}
        row["removed"] = row["docs_in"] - row["docs_out"]
        if label in clusters:
            row["clusters"] = clusters[label]
        rows.append(row)
    return rows


def table(rows: List[dict]) -> str:
    lines = [f"{'step':<24}{'docs in':>12}{'docs out':>12}{'removed':>9}{'chars in':>11}{'chars out':>11}  "
             "removed because"]
    for r in rows:
        share = f"{r['removed'] / r['docs_in']:.1%}" if r["docs_in"] else "-"
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1]))
        lines.append(f"{r['step']:<24}{r['docs_in']:>12,}{r['docs_out']:>12,}{share:>9}"
                     f"{human(r['chars_in']):>11}{human(r['chars_out']):>11}  {reasons}")
        extra = {k: v for k, v in dict(r["counters"], **r.get("clusters", {})).items() if v}
        if extra:
            lines.append(" " * 26 + ", ".join(f"{k}: {v:,}" for k, v in sorted(extra.items())))
    return "\n".join(lines) + "\n"


def write_report(plan, done: Dict[str, List[dict]]) -> dict:
    rows = merge_steps(plan, done)
    last = rows[-1] if rows else {"docs_out": 0, "chars_out": 0}
    report = {"input_files": len(plan.files), "output": os.path.join(plan.config.output, "data"),
              "documents_out": last["docs_out"], "chars_out": last["chars_out"], "steps": rows}
    with atomic_write(os.path.join(plan.config.output, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with atomic_write(os.path.join(plan.config.output, "report.txt"), "w") as f:
        f.write(table(rows))
    return {"documents_out": report["documents_out"]}
