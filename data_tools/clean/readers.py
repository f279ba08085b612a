"""Documents from one input shard, in batches, with malformed records kept for the report.

JSONL (plain, .gz, .zst), parquet, arrow / `datasets` folders and .txt files are read by
``megalite.data.corpus`` (a .txt file is one document); WARC files (.warc, .warc.gz) by
warcio, keeping HTML responses (the ``extract`` step turns them into text) with their URL,
date and record id. Records that are not JSON objects with a string under the text key are
returned as ``Malformed``: counted and written to the rejected stream, never fatal.
"""

import gzip
import os
from dataclasses import dataclass
from typing import Iterator, List, Tuple, Union

from data_tools.clean.document import Document
from megalite.data.corpus import parse_record, read_batches
from megalite.errors import MegaliteError

WARC_SUFFIXES = (".warc", ".warc.gz")
_HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass
class Malformed:
    """An input record that is not a document: where it was, why, and its raw text."""

    source: str
    line: int
    reason: str
    raw: str

    def as_record(self) -> dict:
        return {"source": self.source, "line": self.line, "reason": self.reason, "raw": self.raw}


Item = Union[Document, Malformed]


def read_shard(path: str, shard: str, text_key: str, id_key: str, batch_bytes: int = 1 << 20
               ) -> Iterator[Tuple[List[Item], int]]:
    """Yield (documents and malformed records, input bytes covered) batch by batch."""
    if path.endswith(WARC_SUFFIXES):
        yield from _warc_batches(path, shard, text_key, id_key, batch_bytes)
        return
    for batch in read_batches([path], batch_bytes):
        items: List[Item] = []
        for line, raw in zip(batch.line_numbers, batch.records):
            if isinstance(raw, bytes) and not raw.strip():
                continue  # blank lines hold nothing
            if path.endswith(".txt"):
                raw = {text_key: raw["text"]}
            try:
                record = parse_record(raw, text_key)
            except ValueError as e:
                text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else repr(raw)
                items.append(Malformed(path, line, str(e), text.rstrip("\n")))
                continue
            items.append(_document(record, text_key, id_key, shard, line, path))
        yield items, batch.nbytes


def _document(record: dict, text_key: str, id_key: str, shard: str, line: int, path: str) -> Document:
    if record.get(id_key) is None:
        record[id_key] = os.path.basename(path) if path.endswith(".txt") else f"{shard}/{line}"
    return Document(record, text_key, str(record[id_key]))


def _warc_batches(path: str, shard: str, text_key: str, id_key: str, batch_bytes: int):
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    items: List[Item] = []
    size = done = 0
    rec = None
    try:
        with open(path, "rb") as f:
            for n, rec in enumerate(ArchiveIterator(f), 1):
                html = _html_of(rec)
                if html is None:
                    continue
                headers = rec.rec_headers
                record = {id_key: headers.get_header("WARC-Record-ID"), "url": headers.get_header("WARC-Target-URI"),
                          "date": headers.get_header("WARC-Date"), text_key: html}
                items.append(_document(record, text_key, id_key, shard, n, path))
                size += len(html)
                if size >= batch_bytes:
                    position = f.tell()
                    yield items, position - done
                    items, size, done = [], 0, position
            if rec is not None:
                rec.raw_stream.read()
            if (rec is not None and rec.raw_stream.limit > 0) or not _gzip_complete(path):
                raise EOFError("the last record is cut short")
            yield items, f.tell() - done
    except (ArchiveLoadFailed, OSError, EOFError) as e:
        raise MegaliteError(f"{path}: cannot read WARC ({e}); the file is truncated or corrupt") from e


def _gzip_complete(path: str) -> bool:
    """warcio stops quietly at a cut gzip stream; reading it through with gzip notices."""
    if not path.endswith(".gz"):
        return True
    try:
        with gzip.open(path, "rb") as g:
            while g.read(1 << 22):
                pass
    except (EOFError, OSError):
        return False
    return True


def _html_of(rec) -> Union[str, None]:
    """The decoded HTML of a response record, or None for other records (requests,
    metadata, images, ...)."""
    if rec.rec_type not in ("response", "conversion"):
        return None
    content_type = (rec.http_headers.get_header("Content-Type") if rec.http_headers else None) \
        or rec.rec_headers.get_header("WARC-Identified-Payload-Type") or ""
    if not content_type.lower().startswith(_HTML_TYPES):
        return None
    payload = rec.content_stream().read()
    charset = "utf-8"
    if "charset=" in content_type.lower():
        charset = content_type.lower().split("charset=")[1].split(";")[0].strip().strip('"') or "utf-8"
    try:
        return payload.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return payload.decode("utf-8", "replace")
