"""Local instruction / chat files -> conversations (lists of ``{role, content}`` messages).

Three layouts, detected per file from its first record or named in a LLaMA-Factory
``dataset_info.json``:

- alpaca: ``instruction``, ``input``, ``output``, optional ``system`` and ``history``
  ([[user, assistant], ...] turns before this one); the user turn is instruction and input
  joined by a newline.
- sharegpt: ``conversations``: [{from: human|gpt|system|observation|function_call, value}];
  ``observation`` becomes a ``tool`` turn and ``function_call`` an ``assistant`` turn.
- messages (OpenAI): ``messages``: [{role: system|user|assistant|tool, content}].

Files are ``.json`` (a list of records, or JSON lines), ``.jsonl`` or ``.parquet``, or a
folder of them. Every conversation is checked: an optional system message first, then turns
alternating between the prompt side (user, tool) and the assistant, ending with a non-empty
assistant turn. A bad record stops with one error naming the file and the record index.
"""

import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from megalite.errors import MegaliteError

EXTENSIONS = (".json", ".jsonl", ".parquet")
DATASET_INFO = "dataset_info.json"

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                  "history": "history"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system"}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
OPENAI_COLUMNS = {"messages": "messages", "system": "system"}
OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
               "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system"}
ROLE_OF_TAG = {"user_tag": "user", "assistant_tag": "assistant", "observation_tag": "tool",
                "function_tag": "assistant", "system_tag": "system"}

Message = Dict[str, str]


@dataclass(frozen=True)
class SFTSource:
    """One data set: a file or folder, its layout (None = detect) and mixing weight (None = as is)."""
    path: str
    formatting: Optional[str] = None  # "alpaca" | "sharegpt"
    columns: Dict[str, str] = field(default_factory=dict)
    tags: Dict[str, str] = field(default_factory=dict)
    weight: Optional[float] = None

    def files(self) -> List[str]:
        if os.path.isdir(self.path):
            found = sorted(os.path.join(self.path, f) for f in os.listdir(self.path) if f.endswith(EXTENSIONS))
            if not found:
                raise MegaliteError(f"{self.path}: folder holds no {'/'.join(EXTENSIONS)} files")
            return found
        if not os.path.isfile(self.path):
            raise MegaliteError(f"{self.path}: no such file")
        return [self.path]

    def description(self) -> dict:
        """Everything that shapes this source's conversations (a cache key part)."""
        return {"files": [[os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in self.files()],
                "formatting": self.formatting, "columns": self.columns, "tags": self.tags}


# -- which files ---------------------------------------------------------------------------------
def parse_data_spec(spec: str, flag: str = "--sft-data") -> List[Tuple[Optional[float], str]]:
    """``"a.jsonl,b.jsonl"`` or ``"0.7 a.jsonl 0.3 b.jsonl"`` (commas or spaces) -> [(weight, name)]."""
    parts = [p for p in re.split(r"[,\s]+", spec or "") if p]
    if not parts:
        raise MegaliteError(f"{flag} is empty")
    if not _is_number(parts[0]):
        if any(_is_number(p) for p in parts):
            raise MegaliteError(f"{flag} {spec!r}: give a weight before every data set or before none")
        return [(None, p) for p in parts]
    if len(parts) % 2 or not all(_is_number(w) and not _is_number(n) for w, n in zip(parts[::2], parts[1::2])):
        raise MegaliteError(f"{flag} {spec!r}: expected WEIGHT NAME pairs, e.g. '0.7 a.jsonl 0.3 b.jsonl'")
    pairs = [(float(w), n) for w, n in zip(parts[::2], parts[1::2])]
    if any(w <= 0 for w, _ in pairs):
        raise MegaliteError(f"{flag} {spec!r}: weights must be positive")
    return pairs


def resolve_sources(spec: str, dataset_dir: Optional[str] = None, flag: str = "--sft-data",
                    ranking: bool = False) -> List[SFTSource]:
    """The sources of a data flag: names from ``<dataset_dir>/dataset_info.json``, or paths (relative
    ones are looked up in ``dataset_dir`` first). ``ranking``: preference data sets (DPO) are wanted."""
    info = _read_dataset_info(dataset_dir) if dataset_dir else {}
    sources = []
    for weight, name in parse_data_spec(spec, flag):
        if name in info:
            sources.append(_source_from_info(name, info[name], dataset_dir, weight, ranking, flag))
            continue
        path = name
        if dataset_dir and not os.path.isabs(name) and os.path.exists(os.path.join(dataset_dir, name)):
            path = os.path.join(dataset_dir, name)
        if not os.path.exists(path):
            where = f" and no data set in {os.path.join(dataset_dir, DATASET_INFO)}" if dataset_dir else ""
            raise MegaliteError(f"{flag}: {name!r}: no such file{where}")
        sources.append(SFTSource(path, weight=weight))
    return sources


def _read_dataset_info(dataset_dir: str) -> dict:
    path = os.path.join(dataset_dir, DATASET_INFO)
    if not os.path.isfile(path):
        if not os.path.isdir(dataset_dir):
            raise MegaliteError(f"--sft-dataset-dir {dataset_dir}: no such folder")
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise MegaliteError(f"{path}: unreadable ({e})") from None
    if not isinstance(info, dict):
        raise MegaliteError(f"{path}: expected an object of data set names")
    return info


def _source_from_info(name: str, entry: dict, dataset_dir: str, weight, ranking: bool = False,
                      flag: str = "--sft-data") -> SFTSource:
    where = f"{os.path.join(dataset_dir, DATASET_INFO)}: data set {name!r}"
    if not isinstance(entry, dict) or "file_name" not in entry:
        raise MegaliteError(f"{where}: needs a local 'file_name' (hub and script data sets are not supported)")
    if bool(entry.get("ranking")) != ranking:
        raise MegaliteError(f"{where}: is a ranking (preference) data set, not SFT data" if not ranking else
                            f"{where}: is not a ranking (preference) data set (it needs \"ranking\": true)")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise MegaliteError(f"{where}: formatting {formatting!r} is not alpaca or sharegpt")
    columns, tags = entry.get("columns") or {}, entry.get("tags") or {}
    if not isinstance(columns, dict) or not isinstance(tags, dict):
        raise MegaliteError(f"{where}: 'columns' and 'tags' must be objects")
    return SFTSource(_inside(dataset_dir, entry["file_name"], where, flag), formatting, dict(columns), dict(tags),
                     weight)


def _inside(dataset_dir: str, file_name, where: str, flag: str) -> str:
    """``file_name`` of a dataset_info.json entry as a path inside ``dataset_dir``. The file may
    come from anyone, and its caches are written beside the data: ``../..`` or an absolute path
    would read, and write next to, files outside the folder. A file named on the command line
    (``flag``) may be anywhere."""
    if not isinstance(file_name, str) or not file_name:
        raise MegaliteError(f"{where}: 'file_name' must be a non-empty string")
    root = os.path.abspath(dataset_dir)
    path = os.path.normpath(os.path.join(root, file_name))
    if os.path.isabs(file_name) or os.path.commonpath([root, path]) != root or path == root:
        raise MegaliteError(f"{where}: file_name {file_name!r} is not inside {dataset_dir}; a dataset_info.json may "
                            f"only name files in its own folder (give a file elsewhere to {flag} by its path)")
    return os.path.join(dataset_dir, file_name)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# -- reading ---------------------------------------------------------------------------------
def read_records(path: str) -> List[dict]:
    """All records of one file (JSON list, JSON lines or Parquet)."""
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq

            records = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises many types for corrupt files
            raise MegaliteError(f"{path}: not a readable Parquet file ({e})") from None
    elif path.endswith((".json", ".jsonl")):
        records = _read_json_records(path)
    else:
        raise MegaliteError(f"{path}: unsupported file type (expected {', '.join(EXTENSIONS)})")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise MegaliteError(f"{path}: record {i}: expected an object, got {type(r).__name__}")
    return records


def _read_json_records(path: str) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise MegaliteError(f"{path}: unreadable ({e})") from None
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise MegaliteError(f"{path}: not valid JSON ({e})") from None
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise MegaliteError(f"{path}: line {n}: not valid JSON ({e})") from None
    return records


def load_conversations(source: SFTSource) -> Iterator[Tuple[str, int, List[Message]]]:
    """(file, record index, validated messages) for every record of the source."""
    for path in source.files():
        records = read_records(path)
        if not records:
            raise MegaliteError(f"{path}: holds no records")
        formatting, columns, tags = _layout(source, path, records)
        convert = from_alpaca if formatting == "alpaca" else from_sharegpt
        for i, record in enumerate(records):
            try:
                messages = convert(record, columns, tags)
                check_conversation(messages)
            except MegaliteError as e:
                raise MegaliteError(f"{path}: record {i}: {e}") from None
            yield path, i, messages


def _layout(source: SFTSource, path: str, records: List[dict]):
    formatting = source.formatting
    if formatting is None:
        keys = set(records[0]) if records else set()
        if "conversations" in keys:
            formatting = "sharegpt"
        elif "messages" in keys:
            return "sharegpt", {**OPENAI_COLUMNS, **source.columns}, {**OPENAI_TAGS, **source.tags}
        elif "instruction" in keys:
            formatting = "alpaca"
        else:
            raise MegaliteError(f"{path}: cannot tell the format from the first record's keys {sorted(keys)}; "
                                "expected 'instruction'/'output' (alpaca), 'conversations' (sharegpt) or "
                                "'messages' (OpenAI), or describe it in a dataset_info.json")
    if formatting == "alpaca":
        return formatting, {**ALPACA_COLUMNS, **source.columns}, {}
    return formatting, {**SHAREGPT_COLUMNS, **source.columns}, {**SHAREGPT_TAGS, **source.tags}


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise MegaliteError(f"{what} must be a string, got {type(value).__name__}")
    return value


def from_alpaca(record: dict, columns: Dict[str, str], tags) -> List[Message]:
    for key in ("prompt", "response"):
        if columns[key] not in record:
            raise MegaliteError(f"missing column {columns[key]!r}")
    messages = []
    system = record.get(columns["system"])
    if system:
        messages.append({"role": "system", "content": _text(system, f"column {columns['system']!r}")})
    for turn in record.get(columns["history"]) or []:
        if not isinstance(turn, (list, tuple)) or len(turn) != 2:
            raise MegaliteError(f"column {columns['history']!r}: every turn must be a [user, assistant] pair")
        messages += [{"role": "user", "content": _text(turn[0], "history user turn")},
                     {"role": "assistant", "content": _text(turn[1], "history assistant turn")}]
    prompt = _text(record[columns["prompt"]], f"column {columns['prompt']!r}")
    query = record.get(columns["query"])
    if query:
        prompt += "\n" + _text(query, f"column {columns['query']!r}")
    response = _text(record[columns["response"]], f"column {columns['response']!r}")
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return messages


def from_sharegpt(record: dict, columns: Dict[str, str], tags: Dict[str, str]) -> List[Message]:
    turns = record.get(columns["messages"])
    if turns is None:
        raise MegaliteError(f"missing column {columns['messages']!r}")
    if not isinstance(turns, list):
        raise MegaliteError(f"column {columns['messages']!r} must be a list of messages")
    roles = {tags[t]: role for t, role in ROLE_OF_TAG.items() if tags.get(t)}
    messages = []
    system = record.get(columns.get("system", ""))
    if system:
        messages.append({"role": "system", "content": _text(system, f"column {columns['system']!r}")})
    role_key, content_key = tags["role_tag"], tags["content_tag"]
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn:
            raise MegaliteError(f"message {j} has no {role_key!r}")
        if not isinstance(turn[role_key], str) or turn[role_key] not in roles:
            raise MegaliteError(f"message {j}: unknown role {turn[role_key]!r} (known: {', '.join(roles)})")
        messages.append({"role": roles[turn[role_key]],
                         "content": _text(turn.get(content_key), f"message {j} {content_key!r}")})
    return messages


def check_conversation(messages: List[Message]) -> None:
    """Optional system first, then prompt-side (user/tool) and assistant turns alternating, ending
    with the assistant; no assistant turn empty."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        raise MegaliteError("no user/assistant turns")
    for j, m in enumerate(body):
        want_assistant = j % 2 == 1
        if (m["role"] == "assistant") != want_assistant or m["role"] == "system":
            raise MegaliteError(f"turn {j} is {m['role']!r}, but turns must alternate user (or tool) / assistant "
                                "after an optional first system message")
        if want_assistant and not m["content"].strip():
            raise MegaliteError(f"turn {j}: empty assistant turn")
    if body[-1]["role"] != "assistant":
        raise MegaliteError("the conversation must end with an assistant turn")
