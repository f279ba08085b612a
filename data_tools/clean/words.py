"""Word splitting shared by the quality filters, and per-token properties as numpy arrays.

One ``Vocabulary`` per word splitter: ``english`` (below), ``jieba`` for Chinese and
``japanese`` (``data_tools.clean.cjk``); a language's rules (``data_tools.clean.languages``)
name the splitter its documents get.

FineWeb's filters (datatrove) split words with spaCy's English tokenizer, which is what
makes them slow. ``english_tokenizer`` applies the same rules without spaCy, on each
whitespace-separated chunk (spaCy also works chunk by chunk): punctuation, currency and
units split off (``£`` ``3bn``, ``5`` ``km``), contractions split (``do`` ``n't``),
abbreviations kept whole (``U.S.``, ``Mr.``), hyphens split between letters, URLs kept
whole. Tokens never cross whitespace, so a text's tokens are its lines' tokens.

``Vocabulary`` tokenises each distinct chunk once per process, gives each token an id and
keeps the properties filters ask about (is it a word or only symbols, does it hold a letter,
its length, does it end a sentence) in arrays indexed by id, so a filter asks them of a whole
document with one numpy indexing operation instead of a Python loop over its words.
"""

import unicodedata
from typing import Dict, List, Tuple

import numpy as np

from data_tools.clean import english_tokenizer

# Characters that do not make a word (datatrove's PUNCTUATION_SET, which FineWeb's Gopher
# filter uses: a token made only of these is a symbol, not a word).
PUNCTUATION = (
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
    + "".join(map(chr, [*range(0, 9), *range(11, 32), *range(127, 160)]))
)
# Sentence-ending characters of all scripts (Unicode's Sentence_Terminal set, as datatrove
# and spaCy's sentencizer use it). All are single characters.
TERMINAL_PUNCTUATION = frozenset(
    "!.?։؝؞؟۔܀܁܂߹࠷࠹࠽࠾।॥၊။።፧፨᙮᜵᜶។៕៖៙៚᠃᠉᥄᥅᪨᪩᪪᪫\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1c3b"
    "\u1c3c\u1c7e\u1c7f‼‽⁇⁈⁉⸮⸼⹓⹔\u3002\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877\ua8ce\ua8cf\ua92f"
    "\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1\uabeb\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61"
    "\U00010a56\U00010a57\U00010f55\U00010f56\U00010f57\U00010f58\U00010f59\U00010f86\U00010f87"
    "\U00010f88\U00010f89\U00011047\U00011048\U000110be\U000110bf\U000110c0\U000110c1\U00011141"
    "\U00011142\U00011143\U000111c5\U000111c6\U000111cd\U000111de\U000111df\U00011238\U00011239"
    "\U0001123b\U0001123c\U000112a9\U0001144b\U0001144c\U000115c2\U000115c3\U000115c9\U000115ca"
    "\U000115cb\U000115cc\U000115cd\U000115ce\U000115cf\U000115d0\U000115d1\U000115d2\U000115d3"
    "\U000115d4\U000115d5\U000115d6\U000115d7\U00011641\U00011642\U0001173c\U0001173d\U0001173e"
    "\U00011944\U00011946\U00011a42\U00011a43\U00011a9b\U00011a9c\U00011c41\U00011c42\U00011ef7"
    "\U00011ef8\U00011f43\U00011f44\U00016a6e\U00016a6f\U00016af5\U00016b37\U00016b38\U00016b44"
    "\U00016e98\U0001bc9f\U0001da88"
)
_SYMBOLS = frozenset(PUNCTUATION) | TERMINAL_PUNCTUATION
_SYMBOL_CHARS = "".join(_SYMBOLS)

_ENGLISH = english_tokenizer.load()


def split_chunk(chunk: str) -> List[str]:
    """The tokens of one whitespace-free piece of text (how spaCy tokenises, too)."""
    return _ENGLISH.split(chunk)


def split_words(text: str) -> List[str]:
    """The tokens of ``text``: words and punctuation, in order."""
    return [t for tokens in _ENGLISH.split_text(text) for t in tokens]


def _is_punct(token: str) -> bool:
    """spaCy's ``is_punct``: every character is Unicode punctuation (category P*)."""
    return all(unicodedata.category(c)[0] == "P" for c in token)


class _Unsegmented:
    """A splitter whose tokens depend on each chunk alone (``split(chunk)``)."""

    def __init__(self, split):
        self.split = split

    def needs_context(self, text: str, chunks: List[str]) -> bool:
        return False


class _ChunkIds(dict):
    """Whitespace-separated chunk -> chunk id, tokenising each new chunk once (its token ids
    go to the vocabulary's chunk table)."""

    def __init__(self, vocab: "Vocabulary"):
        super().__init__()
        self.vocab = vocab

    def __missing__(self, chunk: str) -> int:
        i = self[chunk] = len(self)
        self.vocab._new_chunks.append(tuple(map(self.vocab.token_id, self.vocab.splitter.split(chunk))))
        return i


def _grown(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` copied into a zeroed array of at least ``size`` (doubling)."""
    out = np.zeros(max(size, 2 * len(array)), array.dtype)
    out[: len(array)] = array
    return out


class Vocabulary:
    """Token -> id for this process, with per-token properties in arrays indexed by id.

    Text is split on whitespace and each distinct chunk tokenised once (web text repeats its
    chunks: "the", "said.", "U.S."), so a document costs a dictionary lookup per chunk and a
    gather from the chunk table (each chunk's token ids, end to end); the properties of new
    tokens are computed in one batch when next asked for. Starts afresh past ``max_size``
    chunks or tokens (web text has an unbounded vocabulary); ids are valid while
    ``generation`` stays the same.
    """

    PROPS = ("is_word", "has_alpha", "length", "is_punct", "ends_sentence", "random")

    def __init__(self, max_size: int = 1 << 19, splitter=_ENGLISH):
        self.max_size, self.splitter = max_size, splitter
        self.generation = -1  # bumped at each reset: ids from an older generation are void
        self._reset()

    def _reset(self) -> None:
        self.generation += 1
        self.index = {}
        self.chunks = _ChunkIds(self)
        self._new: List[str] = []  # tokens with ids but no properties yet
        self._arrays = {k: np.zeros(1 << 14, np.uint64 if k == "random" else np.int64 if k == "length" else bool)
                        for k in self.PROPS}
        self._new_chunks: List[Tuple[int, ...]] = []  # token ids of chunks not yet in the table
        self._n_chunks = self._n_chunk_tokens = 0
        self._chunk_start = np.zeros(1 << 14, np.int64)  # chunk id -> its first token's place in _chunk_tokens
        self._chunk_len = np.zeros(1 << 14, np.int64)
        self._chunk_tokens = np.zeros(1 << 15, np.int64)

    def token_ids(self, text: str, chunks: List[str]) -> Tuple[np.ndarray, np.ndarray]:
        """The token ids of ``text``, whose whitespace-separated chunks are ``chunks``, and the
        number of tokens of each chunk."""
        if len(self.chunks) > self.max_size or len(self.index) > self.max_size:
            self._reset()
        chunk_ids = np.fromiter(map(self.chunks.__getitem__, chunks), np.int64, len(chunks))
        if self.splitter.needs_context(text, chunks):
            # rare: a chunk's tokens depend on its neighbours (EnglishTokenizer.split_in_context)
            tokens = self.splitter.split_in_context(text, chunks)
            return (np.fromiter((self.token_id(t) for ts in tokens for t in ts), np.int64),
                    np.fromiter(map(len, tokens), np.int64, len(tokens)))
        if self._new_chunks:
            self._add_chunks()
        lengths, starts = self._chunk_len[chunk_ids], self._chunk_start[chunk_ids]
        n = int(lengths.sum())
        if n == len(chunk_ids):  # every chunk one token (no chunk has none)
            return self._chunk_tokens[starts], lengths
        places = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(n)
        return self._chunk_tokens[places], lengths

    def _add_chunks(self) -> None:
        new, self._new_chunks = self._new_chunks, []
        first, end = self._n_chunks, self._n_chunks + len(new)
        lengths = np.fromiter(map(len, new), np.int64, len(new))
        tokens = np.fromiter((t for ts in new for t in ts), np.int64, int(lengths.sum()))
        if end > len(self._chunk_len):
            self._chunk_len, self._chunk_start = _grown(self._chunk_len, end), _grown(self._chunk_start, end)
        token_end = self._n_chunk_tokens + len(tokens)
        if token_end > len(self._chunk_tokens):
            self._chunk_tokens = _grown(self._chunk_tokens, token_end)
        self._chunk_len[first:end] = lengths
        self._chunk_start[first:end] = self._n_chunk_tokens + np.cumsum(lengths) - lengths
        self._chunk_tokens[self._n_chunk_tokens:token_end] = tokens
        self._n_chunks, self._n_chunk_tokens = end, token_end

    def token_id(self, token: str) -> int:
        i = self.index.get(token)
        if i is None:
            i = self.index[token] = len(self.index)
            self._new.append(token)
        return i

    def prop(self, name: str) -> np.ndarray:
        """The property array ``name`` (see ``PROPS``), indexed by token id: ``is_word`` (holds
        a character that is not a symbol), ``has_alpha``, ``length``, ``is_punct`` (spaCy's:
        all characters are punctuation), ``ends_sentence`` (one sentence terminal) and
        ``random`` (a random 64-bit value per token, for n-gram hashing)."""
        if self._new:
            self._add_properties()
        return self._arrays[name]

    def _add_properties(self) -> None:
        new, self._new = self._new, []
        end = len(self.index)
        start = end - len(new)
        if end > len(self._arrays["length"]):
            self._arrays = {k: _grown(old, end) for k, old in self._arrays.items()}
        a = self._arrays
        a["is_word"][start:end] = [bool(t.strip(_SYMBOL_CHARS)) for t in new]
        a["has_alpha"][start:end] = [any(c.isalpha() for c in t) for t in new]
        a["length"][start:end] = [len(t) for t in new]
        a["is_punct"][start:end] = [_is_punct(t) for t in new]
        a["ends_sentence"][start:end] = [t in TERMINAL_PUNCTUATION for t in new]
        a["random"][start:end] = [hash(t) & 0xFFFFFFFFFFFFFFFF for t in new]  # str hashes are salted per process


VOCAB = Vocabulary()
_VOCABS: Dict[str, Vocabulary] = {"english": VOCAB}


def vocabulary(splitter: str) -> Vocabulary:
    """The process's vocabulary for a word splitter named by a language's rules."""
    if splitter not in _VOCABS:
        from data_tools.clean import cjk

        _VOCABS[splitter] = Vocabulary(splitter=_Unsegmented(cjk.SPLITTERS[splitter]()))
    return _VOCABS[splitter]
