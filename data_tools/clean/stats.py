"""Per-step counts: documents and characters in and out, removal reasons, step counters."""

from collections import Counter
from typing import Dict


class StepStats:
    def __init__(self):
        self.docs_in = self.docs_out = self.chars_in = self.chars_out = 0
        self.reasons: Counter = Counter()
        self.counters: Counter = Counter()

    def seen(self, chars: int) -> None:
        self.docs_in += 1
        self.chars_in += chars

    def kept(self, chars: int) -> None:
        self.docs_out += 1
        self.chars_out += chars

    def to_dict(self) -> Dict:
        return {"docs_in": self.docs_in, "docs_out": self.docs_out, "chars_in": self.chars_in,
                "chars_out": self.chars_out, "reasons": dict(self.reasons), "counters": dict(self.counters)}

    def merge(self, d: Dict) -> None:
        for k in ("docs_in", "docs_out", "chars_in", "chars_out"):
            setattr(self, k, getattr(self, k) + d[k])
        self.reasons.update(d["reasons"])
        self.counters.update(d["counters"])
