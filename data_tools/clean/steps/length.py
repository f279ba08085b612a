"""Remove documents outside a length range, in characters and in whitespace-separated words."""

from typing import Optional

from data_tools.clean.steps.base import Step


class LengthFilter(Step):
    name = "length"

    def __init__(self, min_chars: int = 0, max_chars: Optional[int] = None, min_words: int = 0,
                 max_words: Optional[int] = None):
        super().__init__()
        self.min_chars, self.max_chars, self.min_words, self.max_words = min_chars, max_chars, min_words, max_words

    def process(self, doc) -> Optional[str]:
        n = len(doc.text)
        if n < self.min_chars:
            return "too_few_chars"
        if self.max_chars is not None and n > self.max_chars:
            return "too_many_chars"
        if self.min_words or self.max_words is not None:
            words = len(doc.text.split())
            if words < self.min_words:
                return "too_few_words"
            if self.max_words is not None and words > self.max_words:
                return "too_many_words"
        return None
