"""Streams raw documents out of JSONL (plain, .gz, .zst), parquet and `datasets` folders.

Readers yield *batches* of records so consumers pay per-batch, not per-document, costs.
A JSONL record is still the raw line (bytes): parsing happens wherever the batch is
consumed, which for preprocessing is a worker process, so the reading process stays light.
Columnar sources yield dicts. Every record carries ``(source, line number)`` so bad input
can be reported precisely.

A line longer than ``max_line_bytes`` is never held whole: it is read past in pieces and
stands as an ``OversizedLine`` record, which parsing reports as a bad record with its line
number (tokenizing costs about 45 bytes of memory per byte of text, so one huge line would
otherwise decide a worker's memory).

``rank`` / ``world_size`` select records ``i`` with ``i % world_size == rank``, counting over
all inputs in order: a deterministic share for each job of a SLURM array.
"""

import glob
import gzip
import io
import json
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from megalite.errors import MegaliteError

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
COLUMNAR_SUFFIXES = (".parquet", ".arrow")
TEXT_SUFFIXES = (".txt",)


@dataclass(frozen=True)
class OversizedLine:
    """Stands for a line (or ``.txt`` file) of ``nbytes`` that was not read because it exceeds ``limit``."""

    nbytes: int
    limit: int


@dataclass
class RecordBatch:
    """A run of records from one source file."""

    source: str
    line_numbers: List[int]
    records: List[Union[bytes, dict, OversizedLine]]
    nbytes: int = 0  # bytes of (uncompressed) input this batch covers, for progress

    def __len__(self) -> int:
        return len(self.records)


def expand_inputs(spec: Union[str, Sequence[str]], extra_suffixes: Sequence[str] = ()) -> List[str]:
    """Files named by a path, a folder (searched recursively), a glob, or a list of those;
    ``extra_suffixes`` are formats the caller reads itself (e.g. ``.warc.gz``)."""
    suffixes = JSONL_SUFFIXES + COLUMNAR_SUFFIXES + TEXT_SUFFIXES + tuple(extra_suffixes)
    specs = [spec] if isinstance(spec, str) else list(spec)
    files: List[str] = []
    for s in specs:
        if _is_saved_dataset(s):
            files.extend(sorted(glob.glob(os.path.join(s, "**", "*.arrow"), recursive=True)))
        elif os.path.isdir(s):
            found = [
                p
                for p in sorted(glob.glob(os.path.join(s, "**", "*"), recursive=True))
                if os.path.isfile(p) and p.endswith(suffixes)
            ]
            if not found:
                raise MegaliteError(f"--input {s}: the folder holds no {'/'.join(suffixes)} files")
            files.extend(found)
        elif os.path.isfile(s):
            files.append(s)
        else:
            matches = sorted(p for p in glob.glob(s, recursive=True) if os.path.isfile(p))
            if not matches:
                raise MegaliteError(f"--input {s}: no such file, folder or glob match")
            files.extend(matches)
    for f in files:
        if not f.endswith(suffixes):
            raise MegaliteError(f"--input {f}: unsupported format; expected one of " + ", ".join(suffixes))
    return files


def _is_saved_dataset(path: str) -> bool:
    """A folder written by ``datasets.Dataset.save_to_disk`` (or a DatasetDict of them)."""
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "state.json"))
        or os.path.isfile(os.path.join(path, "dataset_dict.json"))
    )


def total_bytes(files: Sequence[str]) -> Optional[int]:
    """Input size for a progress bar; unknown (None) when some input is compressed."""
    if any(f.endswith((".gz", ".zst")) for f in files):
        return None
    return sum(os.path.getsize(f) for f in files)


def read_batches(
    files: Sequence[str],
    batch_bytes: int = 1 << 20,
    rank: int = 0,
    world_size: int = 1,
    max_line_bytes: Optional[int] = None,
) -> Iterator[RecordBatch]:
    """Yield batches of about ``batch_bytes`` of input, keeping records of this rank only; lines
    (and ``.txt`` files) over ``max_line_bytes`` come as ``OversizedLine`` records."""
    if not 0 <= rank < world_size:
        raise MegaliteError(f"--rank {rank} must be in [0, --world-size {world_size})")
    counter = _RankFilter(rank, world_size)
    for path in files:
        if path.endswith(COLUMNAR_SUFFIXES):
            yield from _columnar_batches(path, counter)
        else:
            yield from _line_batches(path, batch_bytes, counter, max_line_bytes)


class _RankFilter:
    """Counts records across all files and keeps every ``world_size``-th, from ``rank``."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size, self.seen = rank, world_size, 0

    def keep(self, n: int) -> range:
        """Indices (0..n-1) within the next n records that belong to this rank."""
        first = (self.rank - self.seen) % self.world_size
        self.seen += n
        return range(first, n, self.world_size)


def _open_binary(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError as e:
            raise MegaliteError(f"{path}: reading .zst needs the zstandard package (pip install megalite[data])") from e
        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True), 1 << 20)
    return open(path, "rb", buffering=1 << 20)


def _line_batches(path: str, batch_bytes: int, counter: _RankFilter,
                  max_line_bytes: Optional[int] = None) -> Iterator[RecordBatch]:
    """JSONL records (raw lines), or for .txt files the whole file as one text record."""
    if path.endswith(TEXT_SUFFIXES):
        size = os.path.getsize(path)
        if not counter.keep(1):
            return
        if max_line_bytes and size > max_line_bytes:
            record = OversizedLine(size, max_line_bytes)
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                record = {"text": f.read()}
        yield RecordBatch(path, [1], [record], nbytes=size)
        return
    line_no = 0
    try:
        with _open_binary(path) as f:
            while True:
                lines, nbytes = _read_lines(f, batch_bytes, max_line_bytes)
                if not lines:
                    break
                keep = counter.keep(len(lines))
                nums = [line_no + 1 + i for i in keep]
                line_no += len(lines)
                yield RecordBatch(path, nums, [lines[i] for i in keep], nbytes=nbytes)
    except (OSError, EOFError) as e:
        raise MegaliteError(f"{path}: cannot read ({e}); the file is truncated or corrupt") from e
    except Exception as e:  # zstandard raises its own ZstdError
        if type(e).__name__ == "ZstdError":
            raise MegaliteError(f"{path}: cannot decompress ({e}); the file is truncated or corrupt") from e
        raise


def _read_lines(f, batch_bytes: int, max_line_bytes: Optional[int]) -> Tuple[list, int]:
    """(lines, bytes read): whole lines up to about ``batch_bytes``, a line longer than
    ``max_line_bytes`` (its newline not counted) read past in 1 MiB pieces and kept as an
    ``OversizedLine``."""
    lines, nbytes = [], 0
    while nbytes < batch_bytes:
        line = f.readline(max_line_bytes + 1) if max_line_bytes else f.readline()
        if not line:
            break
        n = len(line)
        if max_line_bytes and n - line.endswith(b"\n") > max_line_bytes:
            while not line.endswith(b"\n"):
                line = f.readline(1 << 20)
                if not line:
                    break
                n += len(line)
            line = OversizedLine(n - line.endswith(b"\n"), max_line_bytes)
        lines.append(line)
        nbytes += n
    return lines, nbytes


def _columnar_batches(path: str, counter: _RankFilter) -> Iterator[RecordBatch]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MegaliteError(f"{path}: reading parquet/arrow needs pyarrow (pip install megalite[data])") from e
    try:
        if path.endswith(".parquet"):
            pf = pq.ParquetFile(path)
            tables = (pf.read_row_group(i) for i in range(pf.num_row_groups))
        else:
            tables = _arrow_tables(path, pa)
        row = 0
        remaining = os.path.getsize(path)  # spread the file size over its batches, for progress
        for table in tables:
            rows = table.to_pylist()
            keep = counter.keep(len(rows))
            nbytes = min(table.nbytes, remaining)
            remaining -= nbytes
            yield RecordBatch(path, [row + 1 + i for i in keep], [rows[i] for i in keep], nbytes=nbytes)
            row += len(rows)
    except (pa.ArrowException, OSError) as e:
        raise MegaliteError(f"{path}: cannot read ({e})") from e


def _arrow_tables(path: str, pa):
    """Arrow files as `datasets` writes them (IPC stream), or the IPC file format."""
    with pa.memory_map(path) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                yield pa.Table.from_batches([reader.get_batch(i)])
            return
        for batch in reader:
            yield pa.Table.from_batches([batch])


def parse_record(record: Union[bytes, dict], key: str) -> dict:
    """The record as a dict holding a string under ``key``; raises ValueError with a short
    reason for malformed records."""
    if isinstance(record, OversizedLine):
        raise ValueError(f"{record.nbytes} bytes, over --max-line-bytes {record.limit}")
    if isinstance(record, (bytes, str)):
        try:
            record = json.loads(record)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"bad JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object ({type(record).__name__})")
    if key not in record:
        raise ValueError(f"missing key {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"key {key!r} is {type(value).__name__}, not a string")
    return record


def extract_text(record: Union[bytes, dict], key: str) -> str:
    """The string under ``key``; raises ValueError with a short reason for malformed records."""
    return parse_record(record, key)[key]


def iter_texts(files: Sequence[str], key: str = "text", limit_bytes: Optional[int] = None) -> Iterator[str]:
    """Texts of well-formed records, silently skipping bad ones (for tokenizer training)."""
    seen = 0
    for batch in read_batches(files):
        for record in batch.records:
            try:
                text = extract_text(record, key)
            except ValueError:
                continue
            yield text
            seen += len(text)
            if limit_bytes is not None and seen >= limit_bytes:
                return
