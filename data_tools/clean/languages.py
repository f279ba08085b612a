"""Per-language rules of the quality filters, as data with their sources.

A quality step judges each document by the rules of the language the ``language`` step
detected (its ``language`` field), unless the step's ``language`` parameter names one; a
language without rules here gets English's. Parameters given in the config override the
rules' values. Each step counts the rules it applied (``rules=zh``) in the report.

English is FineWeb's (datatrove's defaults, as before). Chinese and Japanese are FineWeb-2's:
its per-language filter settings (configs/cmn_Hani.yml and configs/jpn_Jpan.yml of
github.com/huggingface/fineweb-2: stop words, word-length range, alpha-word ratio, repeated
lines and n-grams, terminal-punctuation lines, newlines per word) and the settings its
pipeline (fineweb-2-pipeline.py) applies to every language: paragraph and character
repetition rules off, the short-line rule off, at most 10% of characters in repeated lines
instead of 1%, and no C4 step. FineWeb-2 did not run C4; here a Chinese or Japanese document
through ``c4`` counts words, not whitespace chunks, per line, with CJK sentence ends.
Each language's minimum language-ID score (``language_score``: the yml's, 0.65 for English as
FineWeb) is what the ``language`` step applies with ``threshold: per_language``. FineWeb-2's
scores are GlotLID's, and the step runs fastText's lid.176, so that is a choice, not the default.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping

ENGLISH_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


@dataclass(frozen=True)
class LanguageRules:
    code: str
    source: str
    splitter: str = "english"  # words.vocabulary: english, jieba, japanese
    gopher_quality: Mapping[str, Any] = field(default_factory=dict)
    gopher_repetition: Mapping[str, Any] = field(default_factory=dict)
    fineweb: Mapping[str, Any] = field(default_factory=dict)
    c4: Mapping[str, Any] = field(default_factory=dict)
    language_score: float = 0.65  # the language step's minimum with ``threshold: per_language``


ENGLISH = LanguageRules(
    "en", "FineWeb (datatrove's filter defaults)",
    gopher_quality=dict(min_doc_words=50, max_doc_words=100_000, min_avg_word_length=3, max_avg_word_length=10,
                        max_symbol_word_ratio=0.1, max_bullet_lines_ratio=0.9, max_ellipsis_lines_ratio=0.3,
                        min_alpha_words_ratio=0.8, min_stop_words=2, stop_words=ENGLISH_STOP_WORDS),
    gopher_repetition=dict(dup_line_frac=0.3, dup_para_frac=0.3, dup_line_char_frac=0.2, dup_para_char_frac=0.2,
                           top_n_grams={2: 0.20, 3: 0.18, 4: 0.16},
                           dup_n_grams={5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}),
    fineweb=dict(line_punct_thr=0.12, short_line_thr=0.67, char_duplicates_ratio=0.01, new_line_ratio=0.3,
                 cjk_sentence_ends=False),
    c4=dict(cjk_sentence_ends=False),
    language_score=0.65,  # FineWeb's LanguageFilter threshold, with the same lid.176 model
)

# What fineweb-2-pipeline.py sets for every language.
_FINEWEB2_REPETITION = dict(dup_para_frac=None, dup_line_char_frac=None, dup_para_char_frac=None)
_FINEWEB2_FINEWEB = dict(short_line_thr=None, char_duplicates_ratio=0.1)


def _fineweb2(code: str, config: str, splitter: str, c: Dict[str, Any]) -> LanguageRules:
    """Rules from one FineWeb-2 config (the yml's keys; ``max_non_alpha_words_ratio`` is a
    minimum, named ``min_alpha_words_ratio`` here)."""
    return LanguageRules(
        code, f"FineWeb-2 configs/{config}.yml and fineweb-2-pipeline.py", splitter,
        gopher_quality=dict(min_avg_word_length=c["min_avg_word_length"], max_avg_word_length=c["max_avg_word_length"],
                            min_alpha_words_ratio=c["max_non_alpha_words_ratio"], stop_words=tuple(c["stopwords"])),
        gopher_repetition=dict(_FINEWEB2_REPETITION, dup_line_frac=c["dup_line_frac"],
                               top_n_grams=dict(c["top_n_grams"]), dup_n_grams=dict(c["dup_n_grams"])),
        fineweb=dict(_FINEWEB2_FINEWEB, line_punct_thr=c["line_punct_thr"], new_line_ratio=c["new_line_ratio"],
                     cjk_sentence_ends=True),
        c4=dict(cjk_sentence_ends=True),
        language_score=c["language_score"],
    )


RULES: Dict[str, LanguageRules] = {
    "en": ENGLISH,
    # configs/cmn_Hani.yml (FineWeb-2 uses it for Chinese in both scripts)
    "zh": _fineweb2("zh", "cmn_Hani", "jieba", dict(
        dup_line_frac=0.287, dup_n_grams=[(5, 0.198), (6, 0.182), (7, 0.167), (8, 0.154), (9, 0.14), (10, 0.127)],
        language_score=0.692, line_punct_thr=0.106, max_avg_word_length=5, max_non_alpha_words_ratio=0.735,
        min_avg_word_length=1, new_line_ratio=0.178, top_n_grams=[(2, 0.256), (3, 0.201), (4, 0.171)],
        stopwords=["的", "年", "在", "月", "是", "和", "日", "了", "於", "·", "為", "有", "被", "人", "中", "为", "他",
                   "與", "後", "也", "而", "由"])),
    # configs/jpn_Jpan.yml
    "ja": _fineweb2("ja", "jpn_Jpan", "japanese", dict(
        dup_line_frac=0.375, dup_n_grams=[(5, 0.307), (6, 0.283), (7, 0.264), (8, 0.248), (9, 0.234), (10, 0.223)],
        language_score=0.886, line_punct_thr=0.167, max_avg_word_length=5, max_non_alpha_words_ratio=0.759,
        min_avg_word_length=1, new_line_ratio=0.162, top_n_grams=[(2, 0.121), (3, 0.129), (4, 0.145)],
        stopwords=["の", "に", "を", "は", "た", "て", "が", "と", "で", "年", "し", "・", "月", "れ", "さ"])),
}


def rules_for(code) -> LanguageRules:
    """The rules of a language code (``zh``, ``zh-Hant``, ``cmn_Hani``), English's if none."""
    if not code:
        return ENGLISH
    code = str(code).replace("-", "_").split("_")[0].lower()
    return RULES.get({"cmn": "zh", "zho": "zh", "jpn": "ja", "eng": "en"}.get(code, code), ENGLISH)
