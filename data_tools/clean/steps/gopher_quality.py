"""Gopher's quality filter (Rae et al. 2021), with FineWeb's thresholds.

Keeps documents of 50-100,000 words whose mean word length is 3-10 characters, with few
``#`` and ellipses, not mostly bullet lines or lines ending in an ellipsis, with >= 80% of
words holding a letter and at least two English stop words. "Words" exclude tokens made only
of symbols; the ratios divide by all tokens, as FineWeb does.
"""

from typing import Optional, Sequence

import numpy as np

from data_tools.clean.steps.base import Step
from data_tools.clean.words import VOCAB

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


class GopherQuality(Step):
    """Each threshold may be ``None`` to turn its check off."""

    name = "gopher_quality"

    def __init__(self, min_doc_words: Optional[int] = 50, max_doc_words: Optional[int] = 100_000,
                 min_avg_word_length: Optional[float] = 3, max_avg_word_length: Optional[float] = 10,
                 max_symbol_word_ratio: Optional[float] = 0.1, max_bullet_lines_ratio: Optional[float] = 0.9,
                 max_ellipsis_lines_ratio: Optional[float] = 0.3, min_alpha_words_ratio: Optional[float] = 0.8,
                 min_stop_words: Optional[int] = 2, stop_words: Sequence[str] = STOP_WORDS):
        super().__init__()
        self.min_doc_words, self.max_doc_words = min_doc_words, max_doc_words
        self.min_avg_word_length, self.max_avg_word_length = min_avg_word_length, max_avg_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio, self.max_ellipsis_lines_ratio = max_bullet_lines_ratio, max_ellipsis_lines_ratio
        self.min_alpha_words_ratio = min_alpha_words_ratio
        self.min_stop_words, self.stop_words = min_stop_words, sorted(set(stop_words))

    def process(self, doc) -> Optional[str]:
        text, view = doc.text, doc.view
        is_word = view.prop("is_word")
        n_tokens, n_words = len(is_word), int(is_word.sum())
        if self.min_doc_words is not None and n_words < self.min_doc_words:
            return "gopher_short_doc"
        if self.max_doc_words is not None and n_words > self.max_doc_words:
            return "gopher_long_doc"
        if n_words == 0:
            return "gopher_short_doc"
        mean_length = view.prop("length")[is_word].mean()
        if self.min_avg_word_length is not None and mean_length < self.min_avg_word_length:
            return "gopher_below_avg_threshold"
        if self.max_avg_word_length is not None and mean_length > self.max_avg_word_length:
            return "gopher_above_avg_threshold"
        if self.max_symbol_word_ratio is not None:
            if text.count("#") / n_tokens > self.max_symbol_word_ratio:
                return "gopher_too_many_hashes"
            if (text.count("...") + text.count("…")) / n_tokens > self.max_symbol_word_ratio:
                return "gopher_too_many_ellipsis"
        lines = view.lines
        if self.max_bullet_lines_ratio is not None and ("•" in text or "-" in text):
            bullets = sum(1 for s in lines if s.lstrip().startswith(("•", "-")))
            if bullets / len(lines) > self.max_bullet_lines_ratio:
                return "gopher_too_many_bullets"
        if self.max_ellipsis_lines_ratio is not None and ("..." in text or "…" in text):
            trailing = sum(1 for s in lines if s.rstrip().endswith(("...", "…")))
            if trailing / len(lines) > self.max_ellipsis_lines_ratio:
                return "gopher_too_many_end_ellipsis"
        if self.min_alpha_words_ratio is not None and \
                view.prop("has_alpha").sum() / n_tokens < self.min_alpha_words_ratio:
            return "gopher_below_alpha_threshold"
        if self.min_stop_words is not None and self._stop_words_in(view.prop("id")) < self.min_stop_words:
            return "gopher_enough_stop_words"
        return None

    def _stop_words_in(self, ids: np.ndarray) -> int:
        """How many different stop words occur (counting stops at ``min_stop_words``)."""
        found = 0
        for word in self.stop_words:
            if (ids == VOCAB.token_id(word)).any():
                found += 1
                if found >= self.min_stop_words:
                    break
        return found
