"""Gopher's quality filter (Rae et al. 2021), with FineWeb's thresholds.

Keeps documents of 50-100,000 words whose mean word length is 3-10 characters, with few
``#`` and ellipses, not mostly bullet lines or lines ending in an ellipsis, with >= 80% of
words holding a letter and at least two English stop words. "Words" exclude tokens made only
of symbols; the ratios divide by all tokens, as FineWeb does. Other languages' documents get
their own words, stop words and thresholds (``data_tools.clean.languages``).
"""

from typing import Optional, Sequence

from data_tools.clean.steps.base import FROM_LANGUAGE, LanguageAware, step_params

L = FROM_LANGUAGE


class GopherQuality(LanguageAware):
    """Each threshold may be ``None`` to turn its check off; unset ones are the document
    language's (``data_tools.clean.languages``)."""

    name = "gopher_quality"
    rules_table = "gopher_quality"

    def __init__(self, min_doc_words: Optional[int] = L, max_doc_words: Optional[int] = L,
                 min_avg_word_length: Optional[float] = L, max_avg_word_length: Optional[float] = L,
                 max_symbol_word_ratio: Optional[float] = L, max_bullet_lines_ratio: Optional[float] = L,
                 max_ellipsis_lines_ratio: Optional[float] = L, min_alpha_words_ratio: Optional[float] = L,
                 min_stop_words: Optional[int] = L, stop_words: Sequence[str] = L, language: Optional[str] = None):
        super().__init__(language, step_params(locals()))

    def prepare(self, values):
        return dict(values, stop_words=sorted(set(values["stop_words"])))

    def process(self, doc) -> Optional[str]:
        s = self.settings(doc)
        text, view = doc.text, doc.view_for(s.rules.splitter)
        is_word = view.prop("is_word")
        n_tokens, n_words = len(is_word), int(is_word.sum())
        if s.min_doc_words is not None and n_words < s.min_doc_words:
            return "gopher_short_doc"
        if s.max_doc_words is not None and n_words > s.max_doc_words:
            return "gopher_long_doc"
        if n_words == 0:
            return "gopher_short_doc"
        mean_length = view.prop("length")[is_word].mean()
        if s.min_avg_word_length is not None and mean_length < s.min_avg_word_length:
            return "gopher_below_avg_threshold"
        if s.max_avg_word_length is not None and mean_length > s.max_avg_word_length:
            return "gopher_above_avg_threshold"
        if s.max_symbol_word_ratio is not None:
            if text.count("#") / n_tokens > s.max_symbol_word_ratio:
                return "gopher_too_many_hashes"
            if (text.count("...") + text.count("…")) / n_tokens > s.max_symbol_word_ratio:
                return "gopher_too_many_ellipsis"
        lines = view.lines
        if s.max_bullet_lines_ratio is not None and ("•" in text or "-" in text):
            bullets = sum(1 for line in lines if line.lstrip().startswith(("•", "-")))
            if bullets / len(lines) > s.max_bullet_lines_ratio:
                return "gopher_too_many_bullets"
        if s.max_ellipsis_lines_ratio is not None and ("..." in text or "…" in text):
            trailing = sum(1 for line in lines if line.rstrip().endswith(("...", "…")))
            if trailing / len(lines) > s.max_ellipsis_lines_ratio:
                return "gopher_too_many_end_ellipsis"
        if s.min_alpha_words_ratio is not None and \
                view.prop("has_alpha").sum() / n_tokens < s.min_alpha_words_ratio:
            return "gopher_below_alpha_threshold"
        if s.min_stop_words is not None and self._stop_words_in(view, s) < s.min_stop_words:
            return "gopher_enough_stop_words"
        return None

    @staticmethod
    def _stop_words_in(view, s) -> int:
        """How many different stop words occur (counting stops at ``min_stop_words``)."""
        ids, found = view.prop("id"), 0
        for word in s.stop_words:
            if (ids == view.vocab.token_id(word)).any():
                found += 1
                if found >= s.min_stop_words:
                    break
        return found
