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

# The commonest chunks: an ASCII word or a number like 1,000.5, maybe after "$", maybe before
# one of , ; : ! ? . (the split is [$] word [mark], except "A." which stays whole).
_PLAIN = re.compile(r"(\$?)([A-Za-z]+|[0-9]+(?:[.,][0-9]+)*)([,;:!?.]?)").fullmatch


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
        # Special cases whose text the affix rules would cut up: after splitting, a run of tokens
        # equal to such a cutting is put back together as the special case says (spaCy's
        # "special matcher"). Keyed by the run's first token.
        self._runs: Dict[str, List[Tuple[Tuple[str, ...], Tuple[str, ...]]]] = {}
        for text, pieces in self.specials.items():
            if self._prefix(text) or self._suffix(text) or next(self._infixes(text), None) or " " in text:
                cut = tuple(self._split(text, with_specials=False))
                self._runs.setdefault(cut[0], []).append((cut, pieces))

    def split(self, chunk: str) -> List[str]:
        tokens = self.specials.get(chunk)
        if tokens is not None:
            return list(tokens)
        m = _PLAIN(chunk)
        if m:  # a word or a number, a leading $ and a trailing mark at most: no rule cuts more
            dollar, core, mark = m.groups()
            if not mark or core[-1] not in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" or mark != ".":
                if not (core in self.specials or core + mark in self.specials or dollar + core in self.specials):
                    tokens = [core] if not dollar else [dollar, core]
                    if not mark:
                        return tokens
                    tokens.append(mark)
                    return self._join_runs(tokens)
        tokens = self._split(chunk, with_specials=True)
        return self._join_runs(tokens) if len(tokens) > 1 else tokens

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

    def _join_runs(self, tokens: List[str]) -> List[str]:
        """Put runs of tokens that spell a special case back together (longest run first,
        then leftmost; a run whose first or last token is taken already is skipped)."""
        found = []
        for i, t in enumerate(tokens):
            for cut, pieces in self._runs.get(t, ()):
                if tuple(tokens[i:i + len(cut)]) == cut:
                    found.append((len(cut), i, pieces))
        if not found:
            return tokens
        taken, chosen = set(), {}
        for n, i, pieces in sorted(found, key=lambda f: (-f[0], f[1])):
            if i not in taken and i + n - 1 not in taken:
                chosen[i] = (n, pieces)
            taken.update(range(i, i + n))
        out, i = [], 0
        while i < len(tokens):
            if i in chosen:
                n, pieces = chosen[i]
                out.extend(pieces)
                i += n
            else:
                out.append(tokens[i])
                i += 1
        return out


def load() -> EnglishTokenizer:
    from data_tools.clean.english_tokenizer_tables import TABLES

    return EnglishTokenizer(TABLES)
