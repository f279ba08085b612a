"""MinHash signatures and LSH band keys, vectorised with numpy.

A document's shingles are its word n-grams (5 by default) after ``dedup_words``. Each
shingle gets a 64-bit key: words are hashed once per process (xxh64, so every machine
agrees), n-gram keys combine them and a splitmix64 finaliser mixes the result. The
signature holds, for each of ``bands * rows`` hash functions ``h(x) = a*x + b (mod 2^64)``
(``a`` odd, so each is a permutation of the 64-bit keys), the minimum over the shingles.
Two documents with Jaccard similarity s share a band's ``rows`` values with probability
s^rows, and at least one band with probability 1 - (1 - s^rows)^bands: for 14 x 8, 0.5 at
s = 0.69 and 0.92 at s = 0.8 (FineWeb's setting).
"""

from typing import List, Sequence

import numpy as np

from data_tools.clean.dedup.normalize import dedup_words

_MULT = np.uint64(0x9E3779B97F4A7C15)
_BLOCK = 2048  # shingles per matrix block, to bound memory on very long documents


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit mixer (Steele et al.'s SplitMix64 finaliser), applied in place."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


class _WordHashes(dict):
    """Word (bytes) -> 64-bit xxh64, computed once per word; cleared past ``limit`` words."""

    def __init__(self, limit: int = 1 << 19):
        super().__init__()
        self.limit = limit

    def __missing__(self, word: bytes) -> int:
        import xxhash

        if len(self) >= self.limit:
            self.clear()
        value = self[word] = xxhash.xxh64_intdigest(word)
        return value

    def keys_of(self, words: Sequence[bytes]) -> np.ndarray:
        return np.fromiter(map(self.__getitem__, words), np.uint64, len(words))


class MinHasher:
    """Signatures of ``bands * rows`` min-hashes over word ``n_grams``; ``seed`` picks the hash
    functions (every task of one dedup run must use the same)."""

    def __init__(self, n_grams: int = 5, bands: int = 14, rows: int = 8, seed: int = 1):
        self.n_grams, self.bands, self.rows = n_grams, bands, rows
        rng = np.random.default_rng(seed)
        n = bands * rows
        self.a = rng.integers(0, 1 << 64, n, dtype=np.uint64, endpoint=False) | np.uint64(1)
        self.b = rng.integers(0, 1 << 64, n, dtype=np.uint64, endpoint=False)
        self._words = _WordHashes()

    def shingles(self, text: str) -> np.ndarray:
        """64-bit keys of the document's word n-grams (none if it has fewer words)."""
        word_keys = self._words.keys_of(dedup_words(text))
        n = self.n_grams
        if len(word_keys) < n:
            return np.empty(0, np.uint64)
        keys = word_keys[: len(word_keys) - n + 1].copy()
        for j in range(1, n):
            keys *= _MULT
            keys += word_keys[j: len(word_keys) - n + 1 + j]
        return splitmix64(keys)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """The ``bands * rows`` minimum hash values of a non-empty shingle set."""
        sig = np.full(len(self.a), np.iinfo(np.uint64).max, np.uint64)
        for start in range(0, len(shingles), _BLOCK):
            h = np.multiply.outer(self.a, shingles[start: start + _BLOCK])
            h += self.b[:, None]
            np.minimum(sig, h.min(axis=1), out=sig)
        return sig

    def band_keys(self, texts: Sequence[str]) -> List[np.ndarray]:
        """Per text, its ``bands`` band keys (one 64-bit key per band of ``rows`` min-hashes),
        or an empty array for texts shorter than ``n_grams`` words (they are never matched)."""
        out = []
        for text in texts:
            shingles = self.shingles(text)
            if len(shingles) == 0:
                out.append(np.empty(0, np.uint64))
                continue
            rows = self.signature(shingles).reshape(self.bands, self.rows)
            key = rows[:, 0].copy()
            for j in range(1, self.rows):
                key *= _MULT
                key += rows[:, j]
            out.append(splitmix64(key))
        return out
