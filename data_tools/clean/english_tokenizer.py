"""spaCy's English word splitting (what datatrove's filters count words with), without spaCy.

datatrove splits English text with ``spacy.blank("en")``: no model, only the tokenizer's
rules. Those rules are facts this module carries over as data (``english_tokenizer_tables.py``:
which characters are letters, lower case, upper case or symbols; the quote, punctuation,
currency, unit and hyphen lists; the special cases such as ``don't`` -> ``do`` ``n't``),
and an algorithm written here: each whitespace-free chunk is looked up among the special
cases, then prefixes and suffixes are peeled off until a special case or nothing is left,
the middle is kept whole if it is a URL or split at infixes, and finally a sequence of
tokens that together spell a special case is replaced by it.
tests/test_clean_datatrove.py checks the tables and the splits against spaCy itself.
"""

import re
from typing import Dict, List, Tuple

# The commonest chunks: a word (letters only) or a number like 1,000.5, maybe after an opening
# bracket or quote and "$", maybe before up to two closing marks (said." or 4.5bn),"). spaCy
# peels each of those off as a token, unless a special case or ".." ends the peeling, or a "."
# follows a letter its rules do not call lower case (checked in _cut).
_PLAIN = re.compile(r"([(\[“‘\"«]?\$?)([^\W\d_]+|[0-9]+(?:[.,][0-9]+)*)([,;:!?.)\]”\"»]{0,2})").fullmatch
_LOWER_OR_DIGIT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _char_class(ranges: List[List[int]]) -> str:
    """Inside of a regex character class for inclusive code point ranges."""
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


class EnglishTokenizer:
    """``split(chunk)``: the tokens spaCy's English tokenizer makes of one whitespace-free chunk."""

    def __init__(self, tables: Dict):
        alpha, lower, upper, icons = (_char_class(tables[k]) for k in ("alpha", "lower", "upper", "icons"))
        quotes, punct, currency = tables["quotes"], tables["punct"], tables["currency"]
        units, hyphens = "|".join(tables["units"]), "|".join(tables["hyphens"])
        concat_quotes = "".join(quotes).replace("\\", "")  # spaCy joins the plain characters
        ellipses, icon = [r"\.\.+", "…"], [f"[{icons}]"]
        prefixes = (["§", "%", "=", "—", "–", r"\+(?![0-9])"] + punct + ellipses + quotes + currency + icon)
        suffixes = (punct + ellipses + quotes + icon + ["'s", "'S", "’s", "’S", "—", "–"] + [
            r"(?<=[0-9])\+",
            r"(?<=°[FfCcKk])\.",
            rf"(?<=[0-9])(?:{'|'.join(currency)})",
            rf"(?<=[0-9])(?:{units})",
            rf"(?<=[0-9{lower}%²\-\+{'|'.join(punct)}(?:{re.escape(concat_quotes)})])\.",
            rf"(?<=[{upper}][{upper}])\.",
        ])
        infixes = ellipses + icon + [
            r"(?<=[0-9])[+\-\*^](?=[0-9-])",
            rf"(?<=[{lower}{re.escape(concat_quotes)}])\.(?=[{upper}{re.escape(concat_quotes)}])",
            rf"(?<=[{alpha}]),(?=[{alpha}])",
            rf"(?<=[{alpha}0-9])(?:{hyphens})(?=[{alpha}])",
            rf"(?<=[{alpha}0-9])[:<>=/](?=[{alpha}])",
        ]
        self._prefix = re.compile("|".join("^" + p for p in prefixes if p.strip())).search
        self._suffix = re.compile("|".join(p + "$" for p in suffixes if p.strip())).search
        self._infixes = re.compile("|".join(p for p in infixes if p.strip())).finditer
        self._url = re.compile(tables["url"]).match
        self.specials: Dict[str, Tuple[str, ...]] = {k: tuple(v) for k, v in tables["exceptions"].items()}
        # chunk -> (can a run from the chunk before reach it, can one into the next chunk)
        self.context_chunks: Dict[str, Tuple[bool, bool]] = {}
        self._cuts: Dict[str, List[str]] = {}  # chunk -> its tokens before joining, for split_in_context
        # Special cases whose text the affix rules would cut up: after splitting, a run of tokens
        # equal to such a cutting is put back together as the special case says (spaCy's
        # "special matcher"). Keyed by the run's first token.
        self._runs: Dict[str, List[Tuple[Tuple[str, ...], Tuple[str, ...]]]] = {}
        for text, pieces in self.specials.items():
            if self._prefix(text) or self._suffix(text) or next(self._infixes(text), None) or " " in text:
                cut = tuple(self._split(text, with_specials=False))
                if len(cut) > 1 or cut != pieces:  # one token left as it is: no run to claim or join
                    self._runs.setdefault(cut[0], []).append((cut, pieces))
        # tokens a run can continue from / into: only a chunk that starts with the one or ends
        # with the other can be reached by a run from a neighbour
        self._run_inner_ends = {t for cuts in self._runs.values() for cut, _ in cuts for t in cut[:-1]}
        self._run_inner_starts = {t for cuts in self._runs.values() for cut, _ in cuts for t in cut[1:]}
        self._run_pairs = {pair for cuts in self._runs.values() for cut, _ in cuts for pair in zip(cut, cut[1:])}

    def split(self, chunk: str) -> List[str]:
        """The tokens of one whitespace-free chunk, on its own. Remembers in ``context_chunks``
        the (rare) chunks whose tokens can depend on a neighbour (see ``split_in_context``)."""
        tokens = self._cut(chunk)
        if len(tokens) < 2:
            return tokens
        joined, found = self._join_runs([tokens], [False])
        if found:
            # a run from the chunk before can reach its first token, one into the next its last
            sides = (tokens[0] in self._run_inner_starts, tokens[-1] in self._run_inner_ends)
            if any(sides):
                self.context_chunks[chunk] = sides
        return joined[0]

    def split_text(self, text: str) -> List[List[str]]:
        """The tokens of each chunk of ``text.split()``."""
        chunks = text.split()
        tokens = [self.split(c) for c in chunks]
        return self.split_in_context(text, chunks) if self.needs_context(text, chunks) else tokens

    def needs_context(self, text: str, chunks: List[str]) -> bool:
        """Whether a chunk of ``chunks`` (``text.split()``, each split once already) may split
        differently beside its neighbours: it is in ``context_chunks`` and one space from a
        neighbour on a side where a run can reach it (cheaply judged: the two chunks with a
        space between occur somewhere in the text)."""
        context = self.context_chunks
        if not context or context.keys().isdisjoint(chunks):
            return False
        for k, chunk in enumerate(chunks):
            sides = context.get(chunk)
            if not sides:
                continue
            if sides[0] and k and (self._cut_of(chunks[k - 1])[-1], self._cut_of(chunk)[0]) in self._run_pairs \
                    and f"{chunks[k - 1]} {chunk}" in text:
                return True
            if sides[1] and k + 1 < len(chunks) and (self._cut_of(chunk)[-1], self._cut_of(chunks[k + 1])[0]) \
                    in self._run_pairs and f"{chunk} {chunks[k + 1]}" in text:
                return True
        return False

    def split_in_context(self, text: str, chunks: List[str]) -> List[List[str]]:
        """The tokens of each of ``chunks`` (``text.split()``) as spaCy splits the whole text.

        spaCy looks for special-case runs in the whole text's tokens, where chunks one space
        apart are adjacent: a run across that space is never joined (no special case holds a
        space) but still claims its tokens, so a run inside a chunk that shares its first or
        last token with it is not joined either ("e.ga' ''w": ``'`` ``'`` ``'``, not ``'`` ``''``).
        """
        pos, adjacent = 0, []
        for chunk in chunks:
            start = text.index(chunk, pos)
            adjacent.append(pos > 0 and text[pos:start] == " ")
            pos = start + len(chunk)
        return self._join_runs(list(map(self._cut_of, chunks)), adjacent)[0]

    def _cut_of(self, chunk: str) -> List[str]:
        """``_cut``, remembered (for the texts ``split_in_context`` looks at)."""
        cut = self._cuts.get(chunk)
        if cut is None:
            if len(self._cuts) > 1 << 16:
                self._cuts.clear()
            cut = self._cuts[chunk] = self._cut(chunk)
        return cut

    def _cut(self, chunk: str) -> List[str]:
        """The tokens of a chunk before special-case runs are joined."""
        tokens = self.specials.get(chunk)
        if tokens is not None:
            return list(tokens)
        m = _PLAIN(chunk)
        if m:
            opening, core, marks = m.groups()
            # "." splits off after a lower-case letter, a digit or another mark, and ".." is one token
            if (core.isalpha() or core[0] in _LOWER_OR_DIGIT) \
                    and (marks[:1] != "." or core[-1] in _LOWER_OR_DIGIT and marks != ".."):
                if not any(opening[i:] + core + marks[:j] in self.specials
                           for i in range(len(opening) + 1) for j in range(len(marks) + 1)):
                    return list(opening) + [core] + list(marks)
        return self._split(chunk, with_specials=True)

    def _split(self, chunk: str, with_specials: bool) -> List[str]:
        specials = self.specials if with_specials else {}
        prefixes, suffixes = [], []
        s, last = chunk, -1
        while s and len(s) != last:  # peel affixes
            if s in specials:
                break
            last = len(s)
            m = self._prefix(s)
            pre = m.end() if m else 0
            if pre and s[pre:] and s[pre:] in specials:
                prefixes.append(s[:pre])
                s = s[pre:]
                break
            m = self._suffix(s[pre:])
            suf = len(s) - pre - m.start() if m else 0
            if suf and s[:-suf] and s[:-suf] in specials:
                suffixes.append(s[-suf:])
                s = s[:-suf]
                break
            if pre and suf and pre + suf <= len(s):
                prefixes.append(s[:pre])
                suffixes.append(s[-suf:])
                s = s[pre:-suf]
            elif pre:
                prefixes.append(s[:pre])
                s = s[pre:]
            elif suf:
                suffixes.append(s[-suf:])
                s = s[:-suf]
        middle: List[str] = []
        if s:
            if s in specials:
                middle = list(specials[s])
            elif self._url(s):
                middle = [s]
            else:
                start = 0
                for m in self._infixes(s):
                    if m.start() == 0:
                        continue
                    if m.start() != start:
                        middle.append(s[start:m.start()])
                    if m.start() != m.end():
                        middle.append(m.group())
                    start = m.end()
                if s[start:]:
                    middle.append(s[start:])
        return prefixes + middle + suffixes[::-1]

    def _join_runs(self, cuts: List[List[str]], adjacent: List[bool]) -> Tuple[List[List[str]], bool]:
        """Join runs of tokens that spell a special case, in the tokens of consecutive chunks
        (``adjacent[k]``: chunk k follows chunk k-1 after one space). Runs are taken longest
        first, then leftmost, skipping one whose first or last token is claimed already; only
        a run inside one chunk is joined. Returns each chunk's tokens, and whether any run
        matched."""
        flat: List[str] = []
        chunk_of: List[int] = []
        segment_of: List[int] = []  # chunks joined by single spaces form one segment
        segment = -1
        for k, (tokens, adj) in enumerate(zip(cuts, adjacent)):
            segment += not adj
            flat += tokens
            chunk_of += [k] * len(tokens)
            segment_of += [segment] * len(tokens)
        found = []
        for i, t in enumerate(flat):
            for cut, pieces in self._runs.get(t, ()):
                n = len(cut)
                if tuple(flat[i:i + n]) == cut and segment_of[i] == segment_of[i + n - 1]:
                    found.append((n, i, pieces))
        if not found:
            return cuts, False
        claimed, chosen = set(), {}
        for n, i, pieces in sorted(found, key=lambda f: (-f[0], f[1])):
            if i not in claimed and i + n - 1 not in claimed and chunk_of[i] == chunk_of[i + n - 1]:
                chosen[i] = (n, pieces)
            claimed.update(range(i, i + n))
        out: List[List[str]] = [[] for _ in cuts]
        i = 0
        while i < len(flat):
            n, pieces = chosen.get(i, (1, (flat[i],)))
            out[chunk_of[i]].extend(pieces)
            i += n
        return out, True


def load() -> EnglishTokenizer:
    from data_tools.clean.english_tokenizer_tables import TABLES

    return EnglishTokenizer(TABLES)
