"""The text that deduplication compares: case, digits, punctuation and accents ignored.

As FineWeb's MinHash (datatrove's ``simplify_text``): lower case, every number becomes
``0``, punctuation becomes space, accents are dropped, words are what remains between
whitespace. Works on UTF-8 bytes so the common case (ASCII punctuation) is one
``bytes.translate``.

Scripts written without spaces (Han, kana, Thai, Lao, Khmer, Myanmar) would make a whole
sentence one "word", so each of their characters is a word of its own: MinHash's word
n-grams are character n-grams there (and word n-grams in the Latin text between).
"""

import re
import unicodedata
from typing import List

_NUMBER = re.compile(r"\d+(?:[.,،٫⎖⎗⎘]\d+)?")
# Combining marks of the Latin, Greek and Cyrillic accents (what NFD splits off them).
_ACCENTS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_ASCII_PUNCTUATION = b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
_TO_SPACE = bytes.maketrans(_ASCII_PUNCTUATION, b" " * len(_ASCII_PUNCTUATION))
# Non-ASCII punctuation and spaces common in web text.
_UNSEGMENTED = re.compile("([\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff"
                          "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f])")
_WIDE_PUNCTUATION = re.compile("[“”‘’„«»‹›—–…•·、。，：；！？（）【】「」《》〈〉％＃＠＆\u00a0\u2009\u200b\u3000]")


def dedup_words(text: str) -> List[bytes]:
    """The words of ``text`` after normalisation, as UTF-8 bytes."""
    text = _NUMBER.sub("0", text.lower())
    if not text.isascii():
        if not unicodedata.is_normalized("NFD", text):
            text = unicodedata.normalize("NFD", text)
        if _ACCENTS.search(text):
            text = _ACCENTS.sub("", text)
        text = _WIDE_PUNCTUATION.sub(" ", text)
        text = _UNSEGMENTED.sub(r" \1 ", text)
    return text.encode("utf-8", "replace").translate(_TO_SPACE).split()


def normalized_text(text: str) -> bytes:
    """The text exact deduplication hashes: lower case, whitespace runs made one space."""
    return " ".join(text.lower().split()).encode("utf-8", "replace")
