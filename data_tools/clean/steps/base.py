"""What every pipeline step is: one job, parameters from the YAML config, a verdict per document."""

from collections import Counter
from types import SimpleNamespace
from typing import ClassVar, Dict, Optional, Type

from data_tools.clean.document import Document
from data_tools.clean.languages import ENGLISH, rules_for

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


class _FromLanguage:
    def __repr__(self):
        return "<the language's>"


FROM_LANGUAGE = _FromLanguage()  # a parameter's default: the document language's value


def step_params(local_vars: Dict) -> Dict:
    """A step's parameters from its ``__init__``'s ``locals()`` (less self and language)."""
    return {k: v for k, v in local_vars.items() if k not in ("self", "language", "__class__")}


class LanguageAware(Step):
    """A step whose thresholds (the ``FROM_LANGUAGE`` defaults) come from the rules of each
    document's language (``data_tools.clean.languages``): the step's ``language`` parameter,
    else the document's detected ``language``. Parameters the config gives override them.
    ``settings(doc)`` also counts which rules it applied (``rules=zh``) for the report."""

    rules_table: ClassVar[str] = ""  # the LanguageRules field holding this step's values

    def __init__(self, language: Optional[str], params: Dict):
        super().__init__()
        self.language = language
        self.explicit = {k: v for k, v in params.items() if v is not FROM_LANGUAGE}
        self._by_language: Dict[str, SimpleNamespace] = {}
        self.settings_for(language or "en")  # a bad parameter fails now, not on the first document

    def settings_for(self, code: Optional[str]) -> SimpleNamespace:
        s = self._by_language.get(code)
        if s is None:
            rules = rules_for(code)
            values = {**getattr(ENGLISH, self.rules_table), **getattr(rules, self.rules_table), **self.explicit}
            s = self._by_language[code] = SimpleNamespace(rules=rules, **self.prepare(values))
        return s

    def settings(self, doc: Document) -> SimpleNamespace:
        s = self.settings_for(self.language or doc.record.get("language"))
        self.count(f"rules={s.rules.code}")
        return s

    def prepare(self, values: Dict) -> Dict:
        """Check and convert the merged values (raise ValueError on a bad one)."""
        return values
