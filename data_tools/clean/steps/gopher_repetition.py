"""Gopher's repetition filter (Rae et al. 2021, table A1), with FineWeb's thresholds.

Removes documents whose lines or paragraphs repeat, whose most frequent 2/3/4-gram covers too
much of the text, or whose repeated 5..10-grams do. Other languages' documents get their own
words and thresholds (``data_tools.clean.languages``).
"""

import re
from typing import Dict, Optional

from data_tools.clean.steps.base import FROM_LANGUAGE, LanguageAware, step_params
from data_tools.clean.textstats import NGramRepetition, duplicates

_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
L = FROM_LANGUAGE


class GopherRepetition(LanguageAware):
    """Thresholds are maximum fractions; a ``None`` threshold turns that check off.

    ``top_n_grams`` / ``dup_n_grams`` map n to the largest fraction of the text's characters
    that the top n-gram (all its occurrences) / the repeated n-grams may cover.
    """

    name = "gopher_repetition"
    rules_table = "gopher_repetition"

    def __init__(self, dup_line_frac: Optional[float] = L, dup_para_frac: Optional[float] = L,
                 dup_line_char_frac: Optional[float] = L, dup_para_char_frac: Optional[float] = L,
                 top_n_grams: Optional[Dict[int, float]] = L, dup_n_grams: Optional[Dict[int, float]] = L,
                 language: Optional[str] = None):
        super().__init__(language, step_params(locals()))

    def prepare(self, values):
        top, dup = sorted((values["top_n_grams"] or {}).items()), sorted((values["dup_n_grams"] or {}).items())
        if top and dup and top[-1][0] >= dup[0][0]:
            raise ValueError("gopher_repetition: every top_n_grams n must be below every dup_n_grams n")
        return dict(values, top_n_grams=top, dup_n_grams=dup)

    def process(self, doc) -> Optional[str]:
        s = self.settings(doc)
        text = doc.text
        if not text:
            return "empty"
        blank_lines = "\n\n" in text
        paragraphs = _PARAGRAPHS.split(text.strip()) if blank_lines else [text.strip()]
        n_dup, dup_chars = duplicates(paragraphs)
        if s.dup_para_frac is not None and n_dup / len(paragraphs) > s.dup_para_frac:
            return "dup_para_frac"
        if s.dup_para_char_frac is not None and dup_chars / len(text) > s.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = _LINES.split(text) if blank_lines else text.split("\n")
        n_dup, dup_chars = duplicates(lines)
        if s.dup_line_frac is not None and n_dup / len(lines) > s.dup_line_frac:
            return "dup_line_frac"
        if s.dup_line_char_frac is not None and dup_chars / len(text) > s.dup_line_char_frac:
            return "dup_line_char_frac"

        view = doc.view_for(s.rules.splitter)
        ngrams = NGramRepetition(view.prop("random"), view.prop("length"))
        for n, frac in s.top_n_grams:
            if ngrams.top_chars(n) / len(text) > frac:
                return f"top_{n}_gram"
        if s.dup_n_grams:
            first, last = s.dup_n_grams[0][0], s.dup_n_grams[-1][0]
            cover = ngrams.repeat_cover_chars(first, last)
            if all(cover / len(text) <= frac for _, frac in s.dup_n_grams):
                return None  # not even a generous bound on any of them is too high
        for n, frac in s.dup_n_grams:
            too_many = lambda chars: chars / len(text) > frac  # noqa: E731
            if too_many(ngrams.greedy_duplicate_chars(n, too_many)):
                return f"duplicated_{n}_n_grams"
        return None
