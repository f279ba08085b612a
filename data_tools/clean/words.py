"""Word splitting shared by the quality filters, and per-token properties as numpy arrays.

FineWeb's filters (datatrove) split words with spaCy's English tokenizer, which is what
makes them slow. ``WORD_RE`` reproduces spaCy's rules for English on each whitespace-
separated chunk (spaCy also works chunk by chunk): punctuation split off words, contractions
split (``do`` ``n't``, ``it`` ``'s``), abbreviations kept whole (``U.S.``, ``Mr.``,
``e.g.``), hyphens split between letters and kept in ``COVID-19``, numbers kept whole
(``1,000.5``, ``10/20``), URLs and e-mails kept whole. Tokens never cross whitespace, so a
text's tokens are its lines' tokens.

``Vocabulary`` tokenises each distinct chunk once per process, gives each token an id and
keeps the properties filters ask about (is it a word or only symbols, does it hold a letter,
its length, does it end a sentence) in arrays indexed by id, so a filter asks them of a whole
document with one numpy indexing operation instead of a Python loop over its words.
"""

import re
import unicodedata
from typing import Iterable, List, Tuple

import numpy as np

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

# Abbreviations spaCy's English exceptions keep whole with their period.
_ABBREVIATIONS = (
    "Adm Ak Ala Apr Ariz Ark Aug Bros Calif Co Colo Conn Corp Dec Del Dr Feb Fla Ga Gen Gov Ia Id "
    "Ill Inc Ind Jan Jr Jul Jun Kan Kans Ky La Ltd Mar Mass Md Messrs Mich Minn Miss Mo Mont Mr Mrs "
    "Ms Mt Neb Nebr Nev Nov Oct Okla Ore Pa Prof Rep Rev Sen Sep Sept St Tenn Va Wash Wis co vs"
).split()
# Units spaCy splits off a number ("5km" -> "5" "km"), and the clock suffixes its exceptions split.
_UNITS = "km|cm|mm|m|kg|mg|g|lb|oz|ft|yd|mph|kmh|ha|am|pm|a\\.m\\.|p\\.m\\.|GB|MB|KB|TB|%"

_L = r"[^\W\d_]"  # a letter
_A = r"[^\W_]"  # a letter or digit
_CLITIC = r"['’](?:[sSmMdD]|re|RE|ve|VE|ll|LL)(?![^\W_])"
_JOIN = (  # what may join two alphanumeric runs inside one token
    rf"['’](?!(?:[sSmMdD]|re|RE|ve|VE|ll|LL)(?!{_A}))|[@&\[(]|\.?_+|(?<![a-z])\.(?!\.)|\.(?![A-Z.])"
    rf"|(?<=\d)[,:/.](?=\d)|(?<=\d)-(?={_L})|(?<={_L})-(?=\d)"
)
WORD_RE = re.compile(
    r"(?:https?://|www\.)\S+?(?=[.,;:!?)\]\"'”’]*(?:\s|$))"  # URL; trailing punctuation split off
    rf"|(?:{_L}\.){{2,}}"  # U.S.  e.g.  a.m.
    rf"|(?<!{_A})(?:{'|'.join(_ABBREVIATIONS)}|{_L})\.(?![\w.])"  # Mr.  Jan.  initials "J."
    rf"|\d+(?=(?:{_UNITS})(?!{_A}))"  # 5|km  3|pm
    rf"|{_A}+?(?=n['’]t(?!{_A}))|n['’]t(?!{_A})|(?<!{_A})[Cc]an(?=not(?!{_A}))"  # do|n't  ca|n't  can|not
    rf"|{_CLITIC}"  # 's 're 've 'll 'd 'm
    rf"|(?:(?<![\w.-])[-.](?={_A}))?{_A}+(?:(?:{_JOIN}){_A}+)*(?:-(?!\S))?"  # words, numbers, -1, O'Neill, built-
    r"|\.{2,}|-{2,}|\S"  # ellipses, dashes, any other single character
)


def split_chunk(chunk: str) -> List[str]:
    """The tokens of one whitespace-free piece of text (how spaCy tokenises, too)."""
    return WORD_RE.findall(chunk)


def split_words(text: str) -> List[str]:
    """The tokens of ``text``: words and punctuation, in order."""
    return [t for chunk in text.split() for t in WORD_RE.findall(chunk)]


def _is_punct(token: str) -> bool:
    """spaCy's ``is_punct``: every character is Unicode punctuation (category P*)."""
    return all(unicodedata.category(c)[0] == "P" for c in token)


class _ChunkIds(dict):
    """Whitespace-separated chunk -> tuple of its token ids, tokenising each chunk once."""

    def __init__(self, vocab: "Vocabulary"):
        super().__init__()
        self.vocab = vocab

    def __missing__(self, chunk: str):
        ids = tuple(map(self.vocab.token_id, split_chunk(chunk)))
        self[chunk] = ids
        return ids


class Vocabulary:
    """Token -> id for this process, with per-token properties in arrays indexed by id.

    Text is split on whitespace and each distinct chunk tokenised once (web text repeats its
    chunks: "the", "said.", "U.S."), so a document costs a dictionary lookup per chunk; the
    properties of new tokens are computed in one batch when next asked for. Starts afresh
    past ``max_size`` chunks or tokens (web text has an unbounded vocabulary); ids are valid
    while ``generation`` stays the same.
    """

    PROPS = ("is_word", "has_alpha", "length", "is_punct", "ends_sentence", "random")

    def __init__(self, max_size: int = 1 << 19):
        self.max_size = max_size
        self.generation = -1  # bumped at each reset: ids from an older generation are void
        self._reset()

    def _reset(self) -> None:
        self.generation += 1
        self.index = {}
        self.chunks = _ChunkIds(self)
        self._new: List[str] = []  # tokens with ids but no properties yet
        self._arrays = {k: np.zeros(1 << 14, np.uint64 if k == "random" else np.int64 if k == "length" else bool)
                        for k in self.PROPS}

    def chunk_ids(self, chunks: Iterable[str]) -> List[Tuple[int, ...]]:
        """The token ids of each whitespace-separated chunk of a text."""
        if len(self.chunks) > self.max_size or len(self.index) > self.max_size:
            self._reset()
        return list(map(self.chunks.__getitem__, chunks))

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
            size = max(end, 2 * len(self._arrays["length"]))
            for k, old in self._arrays.items():
                self._arrays[k] = np.zeros(size, old.dtype)
                self._arrays[k][: len(old)] = old
        a = self._arrays
        a["is_word"][start:end] = [bool(t.strip(_SYMBOL_CHARS)) for t in new]
        a["has_alpha"][start:end] = [any(c.isalpha() for c in t) for t in new]
        a["length"][start:end] = [len(t) for t in new]
        a["is_punct"][start:end] = [_is_punct(t) for t in new]
        a["ends_sentence"][start:end] = [t in TERMINAL_PUNCTUATION for t in new]
        a["random"][start:end] = [hash(t) & 0xFFFFFFFFFFFFFFFF for t in new]  # str hashes are salted per process


VOCAB = Vocabulary()
