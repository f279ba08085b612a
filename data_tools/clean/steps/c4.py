"""C4's quality rules (Raffel et al. 2020) as FineWeb applies them.

Works line by line: drops lines with a word over 1,000 characters, with fewer than 3 words,
mentioning javascript or a cookie/terms policy, and (if ``filter_no_terminal_punct``) lines
not ending in terminal punctuation; removes Wikipedia-style citation marks; then removes the
whole document if a kept line holds "lorem ipsum" or a curly bracket, or if the kept lines
hold fewer than 5 sentences. The kept lines (stripped) become the document's text.
FineWeb runs it with ``filter_no_terminal_punct: false``, the default here.

For languages written without spaces (``data_tools.clean.languages``: Chinese, Japanese) a
line's words are its language's words rather than whitespace chunks, and with
``cjk_sentence_ends`` a line ends in terminal punctuation by CJK rules (``cjk``).
"""

import re
from itertools import chain
from typing import Optional

import numpy as np

from data_tools.clean.cjk import ends_chinese_sentence
from data_tools.clean.document import TextView
from data_tools.clean.steps.base import FROM_LANGUAGE, LanguageAware
from data_tools.clean.textstats import sentences_per_line

_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                     "use cookies")


def sentences(view: TextView) -> np.ndarray:
    """Sentences in each line of ``view``."""
    return sentences_per_line(view.prop("line"), view.prop("is_punct"), view.prop("ends_sentence"),
                              len(view.lines))


def line_words(view: TextView) -> np.ndarray:
    """Words in each line: whitespace chunks, or the language's words where it has no spaces."""
    if view.splitter == "english":
        return view.prop("line_chunks")
    return np.bincount(view.prop("line")[view.prop("is_word")], minlength=len(view.lines))


def longest_word(view: TextView) -> np.ndarray:
    """The length of each line's longest word (as ``line_words`` counts words)."""
    if view.splitter == "english":
        return np.array([max(map(len, chunks), default=0) for chunks in view.line_chunks], np.int64)
    out = np.zeros(len(view.lines), np.int64)
    np.maximum.at(out, view.prop("line"), view.prop("length"))
    return out


class C4Quality(LanguageAware):
    """Set a count to -1 (or a flag to false) to turn its rule off."""

    name = "c4"
    rules_table = "c4"

    def __init__(self, filter_no_terminal_punct: bool = False, remove_citations: bool = True,
                 min_num_sentences: int = 5, min_words_per_line: int = 3, max_word_length: int = 1000,
                 filter_lorem_ipsum: bool = True, filter_javascript: bool = True,
                 filter_curly_bracket: bool = True, filter_policy: bool = True,
                 cjk_sentence_ends: bool = FROM_LANGUAGE, language: Optional[str] = None):
        super().__init__(language, {"cjk_sentence_ends": cjk_sentence_ends})
        self.filter_no_terminal_punct, self.remove_citations = filter_no_terminal_punct, remove_citations
        self.min_num_sentences, self.min_words_per_line = min_num_sentences, min_words_per_line
        self.max_word_length = max_word_length
        self.filter_lorem_ipsum, self.filter_javascript = filter_lorem_ipsum, filter_javascript
        self.filter_curly_bracket, self.filter_policy = filter_curly_bracket, filter_policy

    def process(self, doc) -> Optional[str]:
        s = self.settings(doc)
        self.cjk_sentence_ends = s.cjk_sentence_ends
        view = doc.view_for(s.rules.splitter)
        if self._only_short_lines_matter(view):
            keep = line_words(view) >= self.min_words_per_line
            if not keep.all():
                self.count("line-filter-too_few_words", int(len(keep) - keep.sum()))
            kept = [line.strip() for line, k in zip(view.lines, keep.tolist()) if k]
            if self.min_num_sentences != -1 and sentences(view)[keep].sum() < self.min_num_sentences:
                return "too_few_sentences"
            edited = False
        else:
            verdict = self._line_by_line(view)
            if isinstance(verdict, str):
                return verdict
            kept, keep, edited = verdict
        # the lines are stripped, but removing a citation mark can leave a space at an end
        text = "\n".join(kept).strip()
        if text != doc.text:
            doc.set_text(text, None if edited else view.keep_lines(keep, kept))
        return None

    def _only_short_lines_matter(self, view: TextView) -> bool:
        """True when no rule but "too few words" can touch any line (most documents): then
        the lines are judged all at once."""
        text = view.text
        lower = text.lower()
        return not (
            self.filter_no_terminal_punct
            or (self.remove_citations and "[" in text)
            or (self.filter_curly_bracket and "{" in text)
            or (self.filter_lorem_ipsum and "lorem ipsum" in lower)
            or (self.filter_javascript and "javascript" in lower)
            or (self.filter_policy and any(p in lower for p in POLICY_SUBSTRINGS))
            or (self.max_word_length != -1 and len(text) > self.max_word_length
                and (max(map(len, chain.from_iterable(view.line_chunks)), default=0) if view.splitter == "english"
                     else view.prop("length").max(initial=0)) > self.max_word_length)
        )

    def _line_by_line(self, view: TextView):
        """Every rule, line by line: a removal reason, or (kept lines, mask of kept lines,
        whether a kept line lost a citation mark)."""
        lines = view.lines
        words_in = line_words(view)
        longest = longest_word(view) if self.max_word_length != -1 else None
        per_line = None  # sentences per line, computed on first need
        n_sentences = 0
        kept, keep = [], np.zeros(len(lines), bool)
        edited = False
        for i, raw in enumerate(lines):
            line = raw.strip()
            if longest is not None and longest[i] > self.max_word_length:
                self.count("line-filter-too_long_word")
                continue
            cited = False
            if self.remove_citations and "[" in line:
                cleaned = _CITATION.sub("", line)
                cited, line = cleaned != line, cleaned
            if self.filter_no_terminal_punct and not self._ends_sentence(line):
                self.count("line-filter-no_terminal_punc")
                continue
            if words_in[i] < self.min_words_per_line:
                self.count("line-filter-too_few_words")
                continue
            lower = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lower:
                return "lorem_ipsum"
            if self.filter_javascript and "javascript" in lower:
                self.count("line-filter-javascript")
                continue
            if self.filter_curly_bracket and "{" in line:
                return "curly_bracket"
            if self.filter_policy and any(p in lower for p in POLICY_SUBSTRINGS):
                self.count("line-filter-policy")
                continue
            if self.min_num_sentences != -1:
                if cited:  # split the edited line afresh
                    n_sentences += int(sentences(TextView(line, view.splitter))[0]) if line else 1
                else:
                    if per_line is None:
                        per_line = sentences(view)
                    n_sentences += int(per_line[i])
            edited |= cited
            kept.append(line)
            keep[i] = True
        if n_sentences < self.min_num_sentences:
            return "too_few_sentences"
        return kept, keep, edited

    def _ends_sentence(self, line: str) -> bool:
        if self.cjk_sentence_ends:
            return ends_chinese_sentence(line)
        return line.endswith(_END_PUNCTUATION) and not line.endswith("...")
