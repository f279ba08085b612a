"""What every pipeline step is: one job, parameters from the YAML config, a verdict per document."""

from collections import Counter
from typing import ClassVar, Dict, Optional, Type

from data_tools.clean.document import Document

REGISTRY: Dict[str, Type["Step"]] = {}


class Step:
    """Subclasses set ``name`` (the key in the config's ``steps`` list) and implement ``process``.

    ``process`` may change the document (its text or fields) and returns ``None`` to pass it
    on, or a short reason (``"too_few_words"``) to remove it; removed documents go to the
    step's rejected stream with that reason. ``count`` adds to counters shown in the report
    (e.g. e-mails redacted) besides documents and characters in and out.
    """

    name: ClassVar[str] = ""

    def __init__(self):
        self.counters: Counter = Counter()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            REGISTRY[cls.name] = cls

    def process(self, doc: Document) -> Optional[str]:
        raise NotImplementedError

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] += n

    def take_counters(self) -> Counter:
        """The counters since the last call (one shard's worth), reset to zero."""
        out, self.counters = self.counters, Counter()
        return out
