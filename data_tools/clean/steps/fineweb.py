"""FineWeb's own quality filter (Penedo et al. 2024).

Removes documents where under 12% of lines end in terminal punctuation, over 67% of lines
are 30 characters or shorter, over 1% of characters sit in repeated lines, or there are more
than 0.3 newlines per word (lists).
"""

from typing import Optional

from data_tools.clean.steps.base import Step
from data_tools.clean.textstats import duplicates, lines_with
from data_tools.clean.words import TERMINAL_PUNCTUATION


class FineWebQuality(Step):
    name = "fineweb"

    def __init__(self, line_punct_thr: float = 0.12, line_punct_exclude_zero: bool = False,
                 short_line_thr: float = 0.67, short_line_length: int = 30, char_duplicates_ratio: float = 0.01,
                 new_line_ratio: float = 0.3):
        super().__init__()
        self.line_punct_thr, self.line_punct_exclude_zero = line_punct_thr, line_punct_exclude_zero
        self.short_line_thr, self.short_line_length = short_line_thr, short_line_length
        self.char_duplicates_ratio, self.new_line_ratio = char_duplicates_ratio, new_line_ratio

    def process(self, doc) -> Optional[str]:
        text = doc.text
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return "empty"
        ratio = lines_with(lines, TERMINAL_PUNCTUATION) / len(lines)
        if ratio < self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
            return "line_punct_ratio"
        if sum(1 for line in lines if len(line) <= self.short_line_length) / len(lines) > self.short_line_thr:
            return "short_line_ratio"
        if duplicates(lines)[1] / (len(text) - text.count("\n")) > self.char_duplicates_ratio:
            return "char_dup_ratio"
        if text.count("\n") / doc.view.n_words > self.new_line_ratio:
            return "list_ratio"
        return None
