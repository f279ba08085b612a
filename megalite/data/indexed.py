"""Megatron's memory-mapped token format: a raw ``.bin`` of token ids and an ``.idx`` index.

Layout of the ``.idx`` file (all little-endian), byte-compatible with Megatron-LM's
``IndexedDataset`` (the ``MMIDIDX`` format):

    9 bytes   magic b"MMIDIDX\\x00\\x00"
    u64       version (1)
    u8        dtype code of the tokens in .bin (Megatron's codes, below)
    u64       sequence count S
    u64       document count D + 1
    i32[S]    sequence lengths, in tokens
    i64[S]    sequence pointers, byte offsets into .bin
    i64[D+1]  document indices: sequence index where each document starts, then S

A document may hold several sequences (sentence splitting); our preprocessing writes one
sequence per document. Readers validate everything they can cheaply, so a truncated, corrupt
or mismatched pair fails with one message naming the file instead of reading garbage.
"""

import os
import shutil
import struct
from typing import List, Optional, Sequence

import numpy as np

from megalite.errors import MegaliteError
from megalite.utils.atomic import publish, remove_quietly, temp_name

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count

DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_CODE_OF = {np.dtype(t): c for c, t in DTYPE_CODES.items()}


def best_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (Megatron's threshold), int32 otherwise."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


def idx_path(prefix: str) -> str:
    return prefix + ".idx"


def bin_path(prefix: str) -> str:
    return prefix + ".bin"


def exists(prefix: str) -> bool:
    return os.path.isfile(idx_path(prefix)) and os.path.isfile(bin_path(prefix))


class IndexedDataset:
    """Random access to the sequences of a ``.bin/.idx`` pair without reading it whole; with
    ``mmap=False`` the ``.bin`` is read into memory when opened (in each data-loader worker too)."""

    def __init__(self, path_prefix: str, mmap: bool = True):
        self.path_prefix, self.mmap = path_prefix, mmap
        self._open()

    def _open(self) -> None:
        ipath, bpath = idx_path(self.path_prefix), bin_path(self.path_prefix)
        for p in (ipath, bpath):
            if not os.path.isfile(p):
                raise MegaliteError(f"{p}: no such file")
        self._index = _read_index(ipath)
        self.dtype = self._index.dtype
        self.sequence_lengths = self._index.lengths
        self.sequence_pointers = self._index.pointers
        self.document_indices = self._index.doc_idx
        expected = self._index.bin_bytes
        actual = os.path.getsize(bpath)
        if actual != expected:
            raise MegaliteError(
                f"{bpath}: holds {actual} bytes but {ipath} describes {expected}; the file is "
                "truncated or the .bin/.idx pair comes from different runs"
            )
        # np.memmap cannot map an empty file; an empty dataset simply has no tokens.
        if not actual:
            self._bin = np.empty(0, dtype=self.dtype)
        elif self.mmap:
            self._bin = np.memmap(bpath, dtype=self.dtype, mode="r")
        else:
            self._bin = np.fromfile(bpath, dtype=self.dtype)

    def __getstate__(self):
        return self.path_prefix, self.mmap

    def __setstate__(self, state):
        self.path_prefix, self.mmap = state if isinstance(state, tuple) else (state, True)
        self._open()

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    def get(self, i: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of sequence ``i`` (a view into the mapped file)."""
        n = int(self.sequence_lengths[i])
        if length is None:
            length = n - offset
        if offset < 0 or length < 0 or offset + length > n:
            raise IndexError(f"sequence {i} has {n} tokens; asked for [{offset}, {offset + length})")
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize + offset
        return self._bin[start : start + length]

    def document(self, d: int) -> np.ndarray:
        """All tokens of document ``d`` (its sequences concatenated)."""
        lo, hi = int(self.document_indices[d]), int(self.document_indices[d + 1])
        if hi - lo == 1:
            return self.get(lo)
        return np.concatenate([self.get(i) for i in range(lo, hi)] or [np.empty(0, self.dtype)])  # may be empty


class _Index:
    """The parsed arrays of one ``.idx`` file, views into its memory map."""

    def __init__(self, dtype, lengths, pointers, doc_idx):
        self.dtype, self.lengths, self.pointers, self.doc_idx = dtype, lengths, pointers, doc_idx

    @property
    def bin_bytes(self) -> int:
        if len(self.lengths) == 0:
            return 0
        return int(self.pointers[-1]) + int(self.lengths[-1]) * self.dtype.itemsize


def _read_index(path: str) -> _Index:
    size = os.path.getsize(path)
    if size < _HEADER.size:
        raise MegaliteError(f"{path}: only {size} bytes, too short for an MMIDIDX index header")
    with open(path, "rb") as f:
        magic, version, code, n_seq, n_doc = _HEADER.unpack(f.read(_HEADER.size))
    if magic != MAGIC:
        raise MegaliteError(f"{path}: not an MMIDIDX index (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise MegaliteError(f"{path}: index version {version} is not supported (expected {VERSION})")
    if code not in DTYPE_CODES:
        raise MegaliteError(f"{path}: unknown token dtype code {code}")
    dtype = np.dtype(DTYPE_CODES[code])
    body = n_seq * (4 + 8) + n_doc * 8
    # Megatron's multimodal variant appends one int8 mode per sequence; accept and ignore it.
    if size not in (_HEADER.size + body, _HEADER.size + body + n_seq):
        raise MegaliteError(
            f"{path}: {size} bytes, but its header announces {n_seq} sequences and "
            f"{n_doc} document indices ({_HEADER.size + body} bytes); the index is truncated or corrupt"
        )
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    off = _HEADER.size
    lengths = np.frombuffer(mm, dtype=np.int32, count=n_seq, offset=off)
    pointers = np.frombuffer(mm, dtype=np.int64, count=n_seq, offset=off + 4 * n_seq)
    doc_idx = np.frombuffer(mm, dtype=np.int64, count=n_doc, offset=off + 12 * n_seq)
    _check_consistent(path, dtype, lengths, pointers, doc_idx)
    return _Index(dtype, lengths, pointers, doc_idx)


def _check_consistent(path, dtype, lengths, pointers, doc_idx) -> None:
    """Vectorised sanity checks: cheap even for millions of sequences."""
    if len(doc_idx) == 0 or doc_idx[0] != 0 or doc_idx[-1] != len(lengths):
        raise MegaliteError(f"{path}: document indices must run from 0 to the sequence count")
    if np.any(np.diff(doc_idx) < 0):
        raise MegaliteError(f"{path}: document indices are not increasing")
    if len(lengths) == 0:
        return
    if lengths.min() < 0:
        raise MegaliteError(f"{path}: negative sequence length")
    expected = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], dtype=np.int64, out=expected[1:])
    expected *= dtype.itemsize
    if not np.array_equal(expected, pointers):
        bad = int(np.argmax(expected != pointers))
        raise MegaliteError(
            f"{path}: sequence pointer {bad} is {int(pointers[bad])}, expected {int(expected[bad])}; "
            "the index is corrupt"
        )


def write_index(path: str, dtype, lengths: np.ndarray, doc_idx: np.ndarray) -> None:
    """Write an ``.idx`` file for tokens of ``dtype`` laid out back to back in the ``.bin``."""
    dtype = np.dtype(dtype)
    lengths = np.asarray(lengths)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
    pointers *= dtype.itemsize
    with open(path, "wb") as f:
        f.write(_HEADER.pack(MAGIC, VERSION, _CODE_OF[dtype], len(lengths), len(doc_idx)))
        f.write(lengths.astype("<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(np.asarray(doc_idx).astype("<i8").tobytes())


class IndexedDatasetBuilder:
    """Appends documents to a new ``.bin/.idx`` pair; files appear only on ``finalize``.

    Use as a context manager (or call ``abort``) so a failure removes the partial files.
    """

    def __init__(self, path_prefix: str, dtype=np.int32):
        self.path_prefix = path_prefix
        self.dtype = np.dtype(dtype)
        if self.dtype not in _CODE_OF:
            raise MegaliteError(f"{path_prefix}: dtype {self.dtype} has no MMIDIDX code")
        self._bin_tmp = temp_name(bin_path(path_prefix))
        self._idx_tmp = temp_name(idx_path(path_prefix))
        os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
        self._bin = open(self._bin_tmp, "wb")
        self._lengths: List[np.ndarray] = []  # chunks of int32 sequence lengths
        self._doc_starts: List[np.ndarray] = []  # chunks of int64 document start indices
        self._n_seq = 0
        self._open_doc_start = 0  # first sequence of the document being built by add_item
        self._limit = np.iinfo(self.dtype).max if self.dtype.kind in "iu" else None
        self._closed = False

    @property
    def num_sequences(self) -> int:
        return self._n_seq

    # -- appending -------------------------------------------------------------------------
    def _write_tokens(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        if tokens.size and self._limit is not None and tokens.dtype != self.dtype:
            lo, hi = tokens.min(), tokens.max()
            if lo < 0 or hi > self._limit:
                raise MegaliteError(
                    f"{self.path_prefix}: token id {hi if hi > self._limit else lo} does not fit "
                    f"in {self.dtype}; use a wider dtype"
                )
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())

    def add_item(self, tokens: Sequence[int]) -> None:
        """Append one sequence to the open document (close it with ``end_document``)."""
        tokens = np.asarray(tokens)
        self._write_tokens(tokens)
        self._lengths.append(np.array([tokens.size], dtype=np.int32))
        self._n_seq += 1

    def end_document(self) -> None:
        self._doc_starts.append(np.array([self._open_doc_start], dtype=np.int64))
        self._open_doc_start = self._n_seq

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append many one-sequence documents at once: ``tokens`` is their concatenation."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != np.asarray(tokens).size:
            raise ValueError("document lengths do not add up to the number of tokens")
        if self._open_doc_start != self._n_seq:
            raise ValueError("add_documents called while a document from add_item is open")
        self._write_tokens(tokens)
        self._lengths.append(lengths.astype(np.int32))
        self._doc_starts.append(np.arange(self._n_seq, self._n_seq + len(lengths), dtype=np.int64))
        self._n_seq += len(lengths)
        self._open_doc_start = self._n_seq

    def add_index(self, path_prefix: str) -> None:
        """Append every document of an existing pair (used to merge shards)."""
        other = IndexedDataset(path_prefix)
        if other.dtype != self.dtype:
            raise MegaliteError(
                f"{idx_path(path_prefix)}: tokens are {other.dtype}, the merged output is {self.dtype}"
            )
        if self._open_doc_start != self._n_seq:
            raise ValueError("add_index called while a document from add_item is open")
        with open(bin_path(path_prefix), "rb") as f:
            shutil.copyfileobj(f, self._bin, length=16 << 20)
        self._lengths.append(np.array(other.sequence_lengths, dtype=np.int32))
        self._doc_starts.append(np.asarray(other.document_indices[:-1], dtype=np.int64) + self._n_seq)
        self._n_seq += len(other)
        self._open_doc_start = self._n_seq

    # -- finishing -------------------------------------------------------------------------
    def finalize(self) -> None:
        """Write the index and move both files into place."""
        if self._open_doc_start != self._n_seq:
            self.end_document()
        self._bin.close()
        self._closed = True
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        doc_idx = np.concatenate(self._doc_starts + [np.array([self._n_seq], dtype=np.int64)])
        write_index(self._idx_tmp, self.dtype, lengths, doc_idx)
        # .bin first: if we die between the two renames the old .idx no longer matches the
        # new .bin's size, and readers say so instead of reading garbage.
        publish(self._bin_tmp, bin_path(self.path_prefix))
        publish(self._idx_tmp, idx_path(self.path_prefix))

    def abort(self) -> None:
        self._bin.close()
        self._closed = True
        remove_quietly(self._bin_tmp)
        remove_quietly(self._idx_tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._closed:
            return False
        if exc_type is None:
            self.finalize()
        else:
            self.abort()
        return False
