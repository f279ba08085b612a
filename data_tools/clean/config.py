"""The cleaning pipeline's YAML config, validated into a ``PipelineConfig``.

    input: raw/                 # files, folders, globs, or a list of them
    output: cleaned/
    text_key: text              # the field holding the text (HTML for the extract step)
    id_key: id                  # documents without one get <shard>/<line>
    output_format: jsonl.gz     # or jsonl.zst, jsonl
    keep_work: false            # keep the intermediate documents between dedup passes
    steps:                      # in order; a name, or a name with its parameters
      - url_filter: {banned_subwords: [casino]}
      - extract
      - gopher_quality: {min_doc_words: 50}
      - minhash_dedup: {bands: 14, rows: 8}
      - my_package.steps:MyStep: {threshold: 3}
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple, Union

import yaml

from megalite.errors import MegaliteError

FORMATS = ("jsonl", "jsonl.gz", "jsonl.zst")


@dataclass
class PipelineConfig:
    input: List[str]
    output: str
    steps: List[Tuple[str, Dict[str, Any]]] = field(default_factory=list)
    text_key: str = "text"
    id_key: str = "id"
    output_format: str = "jsonl.gz"
    keep_work: bool = False

    def to_dict(self) -> Dict[str, Any]:
        """The config as plain data (what run.json records, and what worker processes get)."""
        return {"input": self.input, "output": self.output, "steps": [{n: p} for n, p in self.steps],
                "text_key": self.text_key, "id_key": self.id_key, "output_format": self.output_format,
                "keep_work": self.keep_work}


def _step(entry: Union[str, dict], where: str) -> Tuple[str, Dict[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        (name, params), = entry.items()
        if params is None:
            params = {}
        if isinstance(name, str) and isinstance(params, dict):
            return name, params
    raise MegaliteError(f"{where}: each step is a name or a one-key mapping name: {{parameters}}, got {entry!r}")


def parse_config(data: Any, where: str = "config") -> PipelineConfig:
    if not isinstance(data, dict):
        raise MegaliteError(f"{where}: expected a mapping with input, output and steps")
    known = set(PipelineConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise MegaliteError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key in ("input", "output"):
        if not data.get(key):
            raise MegaliteError(f"{where}: '{key}' is required")
    inputs = data["input"] if isinstance(data["input"], list) else [data["input"]]
    steps = data.get("steps") or []
    if not isinstance(steps, list):
        raise MegaliteError(f"{where}: 'steps' must be a list")
    cfg = PipelineConfig(input=[str(i) for i in inputs], output=str(data["output"]),
                         steps=[_step(s, f"{where}: steps[{i}]") for i, s in enumerate(steps)],
                         **{k: data[k] for k in ("text_key", "id_key", "output_format", "keep_work") if k in data})
    if cfg.output_format not in FORMATS:
        raise MegaliteError(f"{where}: output_format must be one of {', '.join(FORMATS)}, not {cfg.output_format!r}")
    return cfg


def load_config(path: str) -> PipelineConfig:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise MegaliteError(f"--config {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise MegaliteError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from e
    return parse_config(data, f"--config {path}")
