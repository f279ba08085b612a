"""JSONL shard writers (plain, .gz or .zst) that publish a file only when it is complete.

A writer opens its temp file on the first record and, on ``commit``, flushes, fsyncs and
renames it into place; ``abort`` removes it. So a crashed task leaves no partial output
under a final name, and re-running it rewrites the same files.
"""

import gzip
import io
import json
import os
from typing import Optional

from megalite.utils.atomic import publish, remove_quietly, temp_name


def _open(tmp: str, final: str) -> io.TextIOBase:
    """``tmp`` opened for text, compressed as ``final``'s suffix says."""
    if final.endswith(".gz"):
        return gzip.open(tmp, "wt", encoding="utf-8", compresslevel=3)
    if final.endswith(".zst"):
        import zstandard

        raw = open(tmp, "wb")
        return io.TextIOWrapper(zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=True), encoding="utf-8")
    return open(tmp, "w", encoding="utf-8")


class JsonlWriter:
    def __init__(self, path: str):
        self.path = path
        self.tmp = temp_name(path)
        self._f: Optional[io.TextIOBase] = None
        self.count = 0

    def write(self, record: dict) -> None:
        if self._f is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._f = _open(self.tmp, self.path)
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    def commit(self, create_empty: bool = False) -> None:
        """Publish the file; with no records, publish an empty one only if ``create_empty``."""
        if self._f is None:
            if not create_empty:
                return
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._f = _open(self.tmp, self.path)
        self._f.close()
        self._f = None
        publish(self.tmp, self.path)

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        remove_quietly(self.tmp)
