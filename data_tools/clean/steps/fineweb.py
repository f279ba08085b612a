"""FineWeb's own quality filter (Penedo et al. 2024).

Removes documents where under 12% of lines end in terminal punctuation, over 67% of lines
are 30 characters or shorter, over 1% of characters sit in repeated lines, or there are more
than 0.3 newlines per word (lists). Chinese and Japanese documents get FineWeb-2's
thresholds, their own words, and lines ending a sentence by CJK rules (``cjk_sentence_ends``,
``cjk.ends_chinese_sentence``: an ellipsis ends one, and closing quotes may follow the 。);
``None`` turns a rule off.
"""

from typing import Optional

from data_tools.clean.cjk import ends_chinese_sentence
from data_tools.clean.steps.base import FROM_LANGUAGE, LanguageAware, step_params
from data_tools.clean.textstats import duplicates, lines_with
from data_tools.clean.words import TERMINAL_PUNCTUATION

L = FROM_LANGUAGE


class FineWebQuality(LanguageAware):
    name = "fineweb"
    rules_table = "fineweb"

    def __init__(self, line_punct_thr: Optional[float] = L, line_punct_exclude_zero: bool = False,
                 short_line_thr: Optional[float] = L, short_line_length: int = 30,
                 char_duplicates_ratio: Optional[float] = L, new_line_ratio: Optional[float] = L,
                 cjk_sentence_ends: bool = L, language: Optional[str] = None):
        super().__init__(language, step_params(locals()))

    def process(self, doc) -> Optional[str]:
        s = self.settings(doc)
        text = doc.text
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return "empty"
        if s.line_punct_thr is not None:
            ends = (sum(map(ends_chinese_sentence, lines)) if s.cjk_sentence_ends
                    else lines_with(lines, TERMINAL_PUNCTUATION))
            ratio = ends / len(lines)
            if ratio < s.line_punct_thr and not (ratio == 0 and s.line_punct_exclude_zero):
                return "line_punct_ratio"
        if s.short_line_thr is not None and \
                sum(1 for line in lines if len(line) <= s.short_line_length) / len(lines) > s.short_line_thr:
            return "short_line_ratio"
        if s.char_duplicates_ratio is not None and \
                duplicates(lines)[1] / (len(text) - text.count("\n")) > s.char_duplicates_ratio:
            return "char_dup_ratio"
        if s.new_line_ratio is not None and \
                text.count("\n") / doc.view_for(s.rules.splitter).n_words > s.new_line_ratio:
            return "list_ratio"
        return None
