"""Reading evaluation text: JSONL records (one field holds the text) or a plain text file."""

import json
from typing import Dict, Iterator, List, Tuple

from megalite.errors import MegaliteError


def read_jsonl(path: str) -> Iterator[Tuple[int, Dict]]:
    """(line number, record) for every non-blank line; a line that is not a JSON object is an
    error naming the file and line."""
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise MegaliteError(f"{path}: no such file") from None
    with f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise MegaliteError(f"{path} line {number}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise MegaliteError(f"{path} line {number}: expected a JSON object")
            yield number, record


def read_documents(path: str, key: str = "text") -> List[str]:
    """The documents of ``path``: the ``key`` field of each record of a .jsonl / .json file, or
    the whole file as one document otherwise."""
    if not path.endswith((".jsonl", ".json")):
        try:
            with open(path, encoding="utf-8") as f:
                return [f.read()]
        except FileNotFoundError:
            raise MegaliteError(f"{path}: no such file") from None
    docs = []
    for number, record in read_jsonl(path):
        text = record.get(key)
        if not isinstance(text, str):
            raise MegaliteError(f"{path} line {number}: no text field {key!r} (fields: {', '.join(record) or 'none'}); "
                                "choose the field with --json-key")
        docs.append(text)
    if not docs:
        raise MegaliteError(f"{path}: no documents")
    return docs
