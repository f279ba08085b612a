"""Counting helpers the quality filters share: duplicates, n-gram repetition, sentences.

They compute exactly what FineWeb's (datatrove's) filters compute, but over whole arrays:
n-grams are 64-bit keys built from per-word random values (a collision between two
different n-grams has probability ~2^-64), counted with one sort instead of a Counter of
joined strings.
"""

from typing import Callable, List, Sequence, Tuple

import numpy as np

_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd, so key * _MULT loses no bits


def duplicates(items: Sequence[str]) -> Tuple[int, int]:
    """(number of items equal to an earlier item, their total length)."""
    unique = set(items)
    return len(items) - len(unique), sum(map(len, items)) - sum(map(len, unique))


class NGramRepetition:
    """How much of a token sequence its repeated n-grams cover, asked for n = 2, 3, ... in
    increasing order (as Gopher's filter asks).

    An n-gram is a 64-bit key built from per-token random keys (two different n-grams collide
    with probability ~2^-64). An (n+1)-gram can only repeat where its n-gram prefix repeats,
    so after each n only positions in repeated groups are carried on: the work shrinks fast.
    """

    def __init__(self, token_keys: np.ndarray, token_lengths: np.ndarray):
        self.token_keys = token_keys
        self.ends = np.concatenate(([0], np.cumsum(token_lengths)))  # chars before each token
        self.n = 1
        self.pos = np.arange(len(token_keys))  # positions whose n-gram may repeat, ascending
        self.keys = token_keys  # their n-gram keys

    def _advance(self, n: int) -> None:
        m = len(self.token_keys)
        while self.n < n:
            self.n += 1
            if len(self.pos) == m - self.n + 2:  # still every position: slices, not gathers
                self.pos = self.pos[: m - self.n + 1]
                self.keys = self.keys[: m - self.n + 1] * _MULT + self.token_keys[self.n - 1:]
            else:
                self.pos = self.pos[self.pos <= m - self.n]
                self.keys = self.keys[: len(self.pos)] * _MULT + self.token_keys[self.pos + self.n - 1]

    def _groups(self):
        """Sort the current n-grams into groups of equal keys: (order, group starts in it,
        group sizes); ``order[start]`` is the first position of each group."""
        order = np.argsort(self.keys, kind="stable")
        sorted_keys = self.keys[order]
        new = np.empty(len(order), bool)
        new[:1] = True
        np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        sizes = np.diff(np.append(starts, len(order)))
        return order, starts, sizes, new

    def _keep_repeated(self, order, starts, sizes) -> None:
        repeated = np.repeat(sizes >= 2, sizes)  # per sorted element
        keep = np.sort(order[repeated])
        self.pos, self.keys = self.pos[keep], self.keys[keep]

    def chars(self, positions: np.ndarray) -> np.ndarray:
        """Characters of the n-grams at ``positions`` (tokens only, no separators)."""
        return self.ends[positions + self.n] - self.ends[positions]

    def top_chars(self, n: int) -> int:
        """Characters covered by all occurrences of the most frequent n-gram, written with
        single spaces; ties go to the n-gram seen first (as ``Counter.most_common``)."""
        self._advance(n)
        if len(self.token_keys) < n:
            return 0
        top, first = 1, 0  # when nothing repeats, every n-gram counts once: the first one wins
        if len(self.pos):
            order, starts, sizes, _ = self._groups()
            if sizes.max() >= 2:
                top = int(sizes.max())
                first = int(self.pos[order[starts[sizes == top]]].min())
            self._keep_repeated(order, starts, sizes)
        return top * (int(self.chars(np.array([first]))[0]) + n - 1)

    def repeat_cover_chars(self, n: int, span: int) -> int:
        """Characters of the tokens within ``span`` tokens from any position whose n-gram
        repeats an earlier one: a bound on the repeated-m-gram characters for every m in
        ``n..span`` (the greedy count takes disjoint m-token runs at such positions)."""
        self._advance(n)
        if len(self.pos) == 0:
            return 0
        order, starts, sizes, new = self._groups()
        first_of = np.empty(len(self.pos), np.int64)
        first_of[order] = self.pos[order[starts]][np.cumsum(new) - 1]
        repeats = self.pos[first_of < self.pos]
        if len(repeats) == 0:
            return 0
        m = len(self.token_keys)
        depth = np.zeros(m + span + 1, np.int64)
        np.add.at(depth, repeats, 1)
        np.add.at(depth, repeats + span, -1)
        covered = np.cumsum(depth[:m]) > 0
        return int((self.ends[1:] - self.ends[:-1])[covered].sum())

    def greedy_duplicate_chars(self, n: int, too_many: Callable[[int], bool] = lambda c: True) -> int:
        """Characters in n-grams that repeat an earlier n-gram, scanning left to right and
        jumping past each repeat (Gopher's rule: overlapping repeats count once).

        Returns an upper bound instead when ``too_many(bound)`` is false, which is all a
        filter needs to know; only the repeats are visited in Python.
        """
        self._advance(n)
        if len(self.pos) == 0:
            return 0
        pos, keys = self.pos, self.keys
        order, starts, sizes, new = self._groups()
        first_of = np.empty(len(pos), np.int64)  # position of the first occurrence of each n-gram
        first_of[order] = pos[order[starts]][np.cumsum(new) - 1]
        self._keep_repeated(order, starts, sizes)
        repeats = np.flatnonzero(first_of < pos)
        if len(repeats) == 0:
            return 0
        rep_pos = pos[repeats]
        chars = self.chars(rep_pos)
        bound = int(chars.sum())
        if not too_many(bound):
            return bound
        # A visited repeat counts if an earlier occurrence was visited: its first occurrence
        # (visited unless a jump skipped it) or an earlier visited repeat of the same n-gram.
        skipped = np.zeros(len(self.token_keys), bool)
        seen, total, next_pos = set(), 0, 0
        for p, k, f, c in zip(rep_pos.tolist(), keys[repeats].tolist(), first_of[repeats].tolist(), chars.tolist()):
            if p < next_pos:
                continue
            if k in seen or not skipped[f]:
                total += c
                skipped[p + 1: p + n] = True
                next_pos = p + n
            else:
                next_pos = p + 1
            seen.add(k)
        return total


def sentences_per_line(line_of_word: np.ndarray, is_punct: np.ndarray, ends_sentence: np.ndarray,
                       n_lines: int) -> np.ndarray:
    """Sentences in each line as spaCy's sentencizer splits them: a new sentence starts at the
    first non-punctuation word after a sentence terminal. Lines without words count 1."""
    regular = ~is_punct & ~ends_sentence
    positions = np.flatnonzero(regular)
    starts = np.ones(n_lines, np.int64)
    if len(positions) == 0:
        return starts
    terminals_before = np.concatenate(([0], np.cumsum(ends_sentence)))[positions]
    lines = line_of_word[positions]
    # terminals since the previous regular word of the same line (or the line's start)
    prev_terminals = np.empty_like(terminals_before)
    prev_terminals[1:] = terminals_before[:-1]
    new_line = np.ones(len(positions), bool)
    new_line[1:] = lines[1:] != lines[:-1]
    if new_line.any():
        line_start_word = np.searchsorted(line_of_word, lines[new_line])
        line_start_terminals = np.concatenate(([0], np.cumsum(ends_sentence)))[line_start_word]
        prev_terminals[new_line] = line_start_terminals
    boundary = terminals_before > prev_terminals
    starts += np.bincount(lines[boundary], minlength=n_lines)
    return starts


def lines_with(lines: List[str], endings: frozenset) -> int:
    """Lines whose last character is in ``endings`` (all single characters)."""
    return sum(1 for line in lines if line[-1:] in endings)
