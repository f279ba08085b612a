"""How a config becomes stages of independent units, and where each unit's files go.

The steps are cut at each dedup step into segments. Segment k runs as a ``filter`` stage,
one unit per input shard: it reads the shard (raw input, or the previous segment's output),
removes the previous dedup step's duplicates, runs its steps, and writes either the final
output or, before a dedup step, its documents and their dedup keys. A dedup step adds a
``pairs`` stage (one unit per band and hash range: documents sharing a key) and a
``clusters`` stage (one unit: pairs joined into clusters, all but the first member of each
marked for removal). A last ``report`` stage merges every unit's counts.

Units of a stage are independent, so W tasks split them (unit j goes to task j % W) and
any task can run on any machine that sees the output folder. A unit writes its outputs
atomically and then a marker under ``work/done/``; a unit with a marker is skipped.
"""

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from data_tools.clean.config import PipelineConfig
from data_tools.clean.readers import WARC_SUFFIXES
from data_tools.clean.steps import build_step
from data_tools.clean.steps.base import Step
from data_tools.clean.steps.dedup import DedupStep
from megalite.data.corpus import expand_inputs
from megalite.errors import MegaliteError

READ_LABEL = "00-read"


@dataclass
class Segment:
    index: int
    steps: List[Tuple[str, Step]]  # (label, step) in order; labels are "03-gopher_quality"
    dedup_in: Optional[Tuple[str, DedupStep]] = None  # whose duplicates are removed first
    dedup_out: Optional[Tuple[str, DedupStep]] = None  # whose keys are written at the end


@dataclass
class Stage:
    name: str  # "2-minhash_dedup-pairs"
    kind: str  # filter | pairs | clusters | report
    units: List[str]
    segment: Optional[Segment] = None
    dedup: Optional[Tuple[str, DedupStep]] = None


@dataclass
class Layout:
    """Paths under the output folder."""

    root: str
    ext: str

    def data(self, shard: str) -> str:
        return os.path.join(self.root, "data", f"{shard}.{self.ext}")

    def rejected(self, label: str, shard: str) -> str:
        return os.path.join(self.root, "rejected", label, f"{shard}.{self.ext}")

    def segment_dir(self, segment: int) -> str:
        return os.path.join(self.root, "work", f"segment-{segment}")

    def segment_output(self, segment: int, shard: str) -> str:
        return os.path.join(self.segment_dir(segment), f"{shard}.{self.ext}")

    def dedup_dir(self, label: str, what: str) -> str:
        return os.path.join(self.root, "work", label, what)

    def done(self, stage: str, unit: str) -> str:
        return os.path.join(self.root, "work", "done", stage, f"{unit}.json")

    @property
    def run_file(self) -> str:
        return os.path.join(self.root, "run.json")


def shard_names(files: List[str]) -> List[str]:
    """A stable, readable, unique name per input file: its index and its file stem."""
    names = []
    for i, path in enumerate(files):
        stem = os.path.basename(path).split(".")[0]
        names.append(f"{i:05d}-" + re.sub(r"[^A-Za-z0-9_-]+", "_", stem)[:60])
    return names


class Plan:
    """A config's steps (built), segments and stages, input files and their shard names."""

    def __init__(self, config: PipelineConfig):
        self.config = cfg = config
        self.layout = Layout(cfg.output, cfg.output_format)
        self.labels = [READ_LABEL] + [f"{i:02d}-{name.split(':')[-1]}" for i, (name, _) in enumerate(cfg.steps, 1)]
        segment = Segment(0, [])
        self.segments = [segment]
        for label, (name, params) in zip(self.labels[1:], cfg.steps):
            step = build_step(name, params)
            if isinstance(step, DedupStep):
                segment.dedup_out = (label, step)
                segment = Segment(len(self.segments), [], dedup_in=(label, step))
                self.segments.append(segment)
            else:
                segment.steps.append((label, step))
        # inputs after the steps, so a bad step is reported before a missing file
        self.files = expand_inputs(cfg.input, extra_suffixes=WARC_SUFFIXES)
        self.shards = shard_names(self.files)
        self.stages: List[Stage] = []
        for seg in self.segments:
            if seg.dedup_in is not None:
                label, step = seg.dedup_in
                units = [f"{b:03d}-{r:03d}" for b in range(step.bands) for r in range(step.hash_ranges)]
                self._add("pairs", units, dedup=seg.dedup_in, name=f"{label.split('-', 1)[1]}-pairs")
                self._add("clusters", ["all"], dedup=seg.dedup_in, name=f"{label.split('-', 1)[1]}-clusters")
            self._add("filter", list(self.shards), segment=seg, name="filter")
        self._add("report", ["all"], name="report")

    def _add(self, kind, units, name, segment=None, dedup=None):
        self.stages.append(Stage(f"{len(self.stages) + 1}-{name}", kind, units, segment, dedup))

    def stage(self, name: str) -> Stage:
        """A stage by full name or by number."""
        for s in self.stages:
            if name in (s.name, s.name.split("-")[0]):
                return s
        raise MegaliteError(f"--stage {name}: no such stage; stages: {', '.join(s.name for s in self.stages)}")

    def input_of(self, segment: Segment, shard_index: int) -> str:
        if segment.index == 0:
            return self.files[shard_index]
        return self.layout.segment_output(segment.index - 1, self.shards[shard_index])

    def output_of(self, segment: Segment, shard: str) -> str:
        if segment.dedup_out is None:
            return self.layout.data(shard)
        return self.layout.segment_output(segment.index, shard)
