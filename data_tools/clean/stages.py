"""What one unit of each stage does (see ``plan``): filter a shard, find duplicate pairs in
one band and hash range, cluster the pairs, write the report."""

import json
import os
import shutil
from typing import Callable, Dict, List

import numpy as np

from data_tools.clean.dedup.clusters import doc_ids, duplicates, pairs_of
from data_tools.clean.plan import READ_LABEL, Plan, Segment, Stage
from data_tools.clean.readers import Malformed, read_shard
from data_tools.clean.report import write_report
from data_tools.clean.stats import StepStats
from data_tools.clean.writers import JsonlWriter
from megalite.utils.atomic import atomic_write

Progress = Callable[[int, int], None]  # (input bytes, documents) just processed


def run_unit(plan: Plan, stage: Stage, unit: str, progress: Progress) -> None:
    """Do one unit and record it done (with its counts) under ``work/done/``."""
    if stage.kind == "filter":
        result = filter_shard(plan, stage.segment, plan.shards.index(unit), progress)
    elif stage.kind == "pairs":
        result = find_pairs(plan, stage, unit)
    elif stage.kind == "clusters":
        result = find_clusters(plan, stage)
    else:
        result = write_report(plan, read_done(plan))
        if not plan.config.keep_work:
            for seg in plan.segments[:-1]:
                shutil.rmtree(plan.layout.segment_dir(seg.index), ignore_errors=True)
    path = plan.layout.done(stage.name, unit)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(result, f)


def read_done(plan: Plan) -> Dict[str, List[dict]]:
    """Every finished unit's record, by stage name."""
    out = {}
    for stage in plan.stages:
        out[stage.name] = []
        for unit in stage.units:
            path = plan.layout.done(stage.name, unit)
            if os.path.exists(path):
                with open(path) as f:
                    out[stage.name].append(json.load(f))
    return out


def _keys_path(plan: Plan, label: str, shard: str) -> str:
    return os.path.join(plan.layout.dedup_dir(label, "keys"), f"{shard}.npy")


def _remove_path(plan: Plan, label: str, shard: str) -> str:
    return os.path.join(plan.layout.dedup_dir(label, "remove"), f"{shard}.npy")


def _save(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path) as f:
        np.save(f, array)


def filter_shard(plan: Plan, seg: Segment, shard_index: int, progress: Progress) -> dict:
    cfg, shard = plan.config, plan.shards[shard_index]
    stats: Dict[str, StepStats] = {}
    rejected: Dict[str, JsonlWriter] = {}

    def reject(label: str, record: dict, reason: str) -> None:
        stats[label].reasons[reason.split(" (")[0]] += 1
        if label not in rejected:
            rejected[label] = JsonlWriter(plan.layout.rejected(label, shard))
        rejected[label].write({**record, "rejected_by": label, "reason": reason})

    labels = ([READ_LABEL] if seg.index == 0 else []) + ([seg.dedup_in[0]] if seg.dedup_in else []) \
        + [label for label, _ in seg.steps]
    stats.update((label, StepStats()) for label in labels)
    removed = set()
    if seg.dedup_in is not None:
        removed = set(np.load(_remove_path(plan, seg.dedup_in[0], shard)).tolist())
    out = JsonlWriter(plan.output_of(seg, shard))
    key_positions: List[int] = []
    keys: List[np.ndarray] = []
    position = 0  # of the document in this segment's input, which dedup removals refer to
    try:
        for items, nbytes in read_shard(plan.input_of(seg, shard_index), shard, cfg.text_key, cfg.id_key):
            passed = []
            for item in items:
                if isinstance(item, Malformed):
                    stats[READ_LABEL].seen(len(item.raw))
                    reject(READ_LABEL, item.as_record(), item.reason)
                    continue
                doc, chars = item, len(item.text)
                if seg.index == 0:
                    stats[READ_LABEL].seen(chars)
                    stats[READ_LABEL].kept(chars)
                if seg.dedup_in is not None:
                    label = seg.dedup_in[0]
                    stats[label].seen(chars)
                    position += 1
                    if position - 1 in removed:
                        reject(label, doc.record, "duplicate")
                        continue
                    stats[label].kept(chars)
                for label, step in seg.steps:
                    stats[label].seen(chars)
                    reason = step.process(doc)
                    if reason is not None:
                        reject(label, doc.record, reason)
                        break
                    chars = len(doc.text)
                    stats[label].kept(chars)
                else:
                    out.write(doc.record)
                    passed.append((out.count - 1, doc.text))
            if seg.dedup_out is not None and passed:
                for (pos, _), k in zip(passed, seg.dedup_out[1].band_keys([t for _, t in passed])):
                    if len(k):
                        key_positions.append(pos)
                        keys.append(k)
            progress(nbytes, len(items))
        out.commit(create_empty=True)
        for w in rejected.values():
            w.commit()
    except BaseException:
        out.abort()
        for w in rejected.values():
            w.abort()
        raise
    if seg.dedup_out is not None:
        label, step = seg.dedup_out
        table = np.empty((1 + step.bands, len(keys)), np.uint64)
        table[0] = key_positions
        if keys:
            table[1:] = np.stack(keys, axis=1)
        _save(_keys_path(plan, label, shard), table)
    for label, step in seg.steps:
        stats[label].counters.update(step.take_counters())
    return {"shard": shard, "steps": {label: s.to_dict() for label, s in stats.items()}}


def find_pairs(plan: Plan, stage: Stage, unit: str) -> dict:
    """Documents sharing a key in one band, among keys in one hash range."""
    label, step = stage.dedup
    band, part = (int(x) for x in unit.split("-"))
    shift = np.uint64(64 - (step.hash_ranges.bit_length() - 1))
    all_keys, all_ids = [], []
    for i, shard in enumerate(plan.shards):
        table = np.load(_keys_path(plan, label, shard), mmap_mode="r")
        k, positions = np.asarray(table[1 + band]), np.asarray(table[0])
        if step.hash_ranges > 1:
            mine = (k >> shift) == part
            k, positions = k[mine], positions[mine]
        all_keys.append(k)
        all_ids.append(doc_ids(i, positions))
    pairs = pairs_of(np.concatenate(all_keys), np.concatenate(all_ids))
    _save(os.path.join(plan.layout.dedup_dir(label, "pairs"), f"{unit}.npy"), pairs)
    return {"pairs": len(pairs)}


def find_clusters(plan: Plan, stage: Stage) -> dict:
    label, _ = stage.dedup
    pairs_stage = next(s for s in plan.stages if s.kind == "pairs" and s.dedup == stage.dedup)
    pairs = [np.load(os.path.join(plan.layout.dedup_dir(label, "pairs"), f"{u}.npy")) for u in pairs_stage.units]
    dups, sizes = duplicates(pairs)
    shard_of = (dups >> np.uint64(32)).astype(np.int64)
    for i, shard in enumerate(plan.shards):
        _save(_remove_path(plan, label, shard), (dups[shard_of == i] & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    return {"duplicates": int(len(dups)), "clusters": int(len(sizes)),
            "largest_cluster": int(sizes.max()) if len(sizes) else 0}
