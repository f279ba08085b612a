"""Text rules for scripts written without spaces (Chinese, Japanese): word splitters, the
full-width / half-width normalisation, and the characters that end a Chinese sentence.

Chinese words are jieba's (as FineWeb-2's filters split them: datatrove's ``cmn_Hani``
tokenizer is spaCy's Chinese with the jieba segmenter, and jieba never joins text across
whitespace, so splitting each whitespace-free chunk gives the same words). Japanese words
are a rough split by script, for want of a dictionary (datatrove uses SudachiPy): runs of
kanji, of katakana and of Latin letters and digits are words, and each hiragana is one (so
particles such as の and は are words, as FineWeb-2's Japanese stop words need).
"""

import re
import unicodedata
from typing import Callable, Dict, List

from data_tools.clean.words import TERMINAL_PUNCTUATION


def jieba_splitter() -> Callable[[str], List[str]]:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    cut = jieba.cut
    return lambda chunk: [w for w in cut(chunk) if w.strip()]


_JAPANESE_WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff々〆ヶ]+|[\u30a0-\u30ff\u31f0-\u31ffー]+"
                            r"|[A-Za-z0-9\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]+|\S")


def japanese_splitter() -> Callable[[str], List[str]]:
    return _JAPANESE_WORD.findall


SPLITTERS: Dict[str, Callable[[], Callable[[str], List[str]]]] = {
    "jieba": jieba_splitter, "japanese": japanese_splitter}

# Unicode's Sentence_Terminal characters (words.TERMINAL_PUNCTUATION) already hold 。！？;
# Chinese also ends sentences with an ellipsis (…… or …), and puts closing quotes and
# brackets after the terminal: 他说：“好。” ends a sentence.
CHINESE_TERMINALS = TERMINAL_PUNCTUATION | {"…"}
CHINESE_CLOSERS = "”’」』）)》〉】\"'"


def ends_chinese_sentence(line: str) -> bool:
    """Does ``line`` end a sentence by Chinese rules (a terminal, then any closing marks)?"""
    return line.rstrip(CHINESE_CLOSERS)[-1:] in CHINESE_TERMINALS


# Full-width ASCII letters and digits and the ideographic space become their half-width
# forms; full-width punctuation (，。！？：；（）) is how Chinese and Japanese are written and
# stays. Half-width katakana (and its half-width 。「」、・) become full-width (NFKC, which
# also joins a half-width voicing mark to its kana: ｶﾞ -> ガ).
_TO_HALF = {c: c - 0xFEE0 for c in [*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B)]}
_TO_HALF[0x3000] = 0x20
_HALF_KATAKANA = re.compile("[\uff61-\uff9f]+")
_HAS_WIDTH = re.compile("[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a\u3000\uff61-\uff9f]")


def normalize_width(text: str) -> str:
    if not _HAS_WIDTH.search(text):
        return text
    text = text.translate(_TO_HALF)
    return _HALF_KATAKANA.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
