"""A document moving through the pipeline, and the shared analysis of its text.

Every quality filter needs the same splits of a text (lines, words, per-word properties).
``TextView`` computes each once, when first asked, and the document keeps it until its text
changes, so four filters in a row tokenise a document once.
"""

from itertools import chain
from typing import Any, Dict, List, Optional

import numpy as np

from data_tools.clean.words import vocabulary


class TextView:
    """The splits of one text that filters share, computed once when first asked: ``lines``
    (``str.splitlines``), per-line counts of whitespace-separated words, and per-token
    properties in token order with the line of each token. Tokens never cross a line break.
    ``splitter`` names the word splitter (``words.vocabulary``) a language's rules chose."""

    def __init__(self, text: str, splitter: str = "english"):
        self.text, self.splitter = text, splitter
        self.vocab = vocabulary(splitter)
        self._lines: Optional[List[str]] = None
        self._line_chunks: Optional[List[List[str]]] = None
        self._props: Optional[Dict[str, np.ndarray]] = None
        self._generation = -1  # the vocabulary generation the token ids belong to

    @property
    def lines(self) -> List[str]:
        if self._lines is None:
            self._lines = self.text.splitlines()
        return self._lines

    @property
    def line_chunks(self) -> List[List[str]]:
        """Each line's whitespace-separated words (``line.split()``)."""
        if self._line_chunks is None:
            self._line_chunks = [line.split() for line in self.lines]
        return self._line_chunks

    def prop(self, name: str) -> np.ndarray:
        """A per-token array: a ``Vocabulary`` property (see ``Vocabulary.prop``), ``id`` (token ids),
        ``line`` (line index of each token) or, per line, ``line_chunks`` (whitespace words)."""
        if self._generation != self.vocab.generation:
            self._analyse()
        return self._props[name]

    @property
    def n_words(self) -> int:
        """Number of tokens (words and punctuation)."""
        return len(self.prop("length"))

    def _analyse(self) -> None:
        line_chunks = self.line_chunks
        vocab = self.vocab
        ids, tokens_per_chunk = vocab.token_ids(self.text, list(chain.from_iterable(line_chunks)))
        chunks_per_line = np.fromiter(map(len, line_chunks), np.int64, len(line_chunks))
        line_of_chunk = np.repeat(np.arange(len(line_chunks)), chunks_per_line)
        self._props = {k: vocab.prop(k)[ids] for k in vocab.PROPS}
        self._props.update(id=ids, line=np.repeat(line_of_chunk, tokens_per_chunk), line_chunks=chunks_per_line)
        self._generation = vocab.generation

    def keep_lines(self, keep: np.ndarray, lines: List[str]) -> "TextView":
        """The view of the text made of the lines ``keep`` (a mask over ``self.lines``), which
        are ``lines`` after stripping (stripping changes no token)."""
        tokens = keep[self.prop("line")]
        view = TextView("\n".join(lines), self.splitter)
        view._lines = lines
        view._props = {k: v[tokens] for k, v in self._props.items() if k not in ("line", "line_chunks")}
        view._props["line"] = (np.cumsum(keep) - 1)[self._props["line"][tokens]]
        view._props["line_chunks"] = self._props["line_chunks"][keep]
        view._generation = self._generation
        return view


class Document:
    """A record from the input: its text, an id, and every other field (kept and written out)."""

    __slots__ = ("record", "text_key", "id", "_view")

    def __init__(self, record: Dict[str, Any], text_key: str, doc_id: str):
        self.record = record
        self.text_key = text_key
        self.id = doc_id
        self._view: Optional[TextView] = None

    @property
    def text(self) -> str:
        return self.record[self.text_key]

    def set_text(self, text: str, view: Optional[TextView] = None) -> None:
        """Replace the text; ``view`` may carry splits the caller already knows for it."""
        self.record[self.text_key] = text
        self._view = view

    @property
    def view(self) -> TextView:
        """The text's splits with English words."""
        return self.view_for("english")

    def view_for(self, splitter: str) -> TextView:
        """The text's splits with the words of ``splitter`` (one kept at a time)."""
        view = self._view
        if view is None or view.text is not self.text or view.splitter != splitter:
            view = self._view = TextView(self.text, splitter)
        return view
