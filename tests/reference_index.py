"""Plain-Python definitions of the GPT sample and blending indices, for testing the C++ ones.

They state *what* the indices mean, with none of the C++ bookkeeping: sample k covers tokens
[k * seq_length, k * seq_length + seq_length + extra) of the documents laid end to end.
"""

import math


def sample_starts(sizes, document_index, seq_length, drop_last, extra):
    """Global token position where each sample starts, plus the end marker."""
    total = sum(int(sizes[d]) for d in document_index)
    usable = total - extra
    n = usable // seq_length if drop_last else math.ceil(usable / seq_length)
    return [min(k * seq_length, total - extra) for k in range(n + 1)]


def sample_tokens(docs, document_index, seq_length, k, extra):
    stream = [t for d in document_index for t in docs[d]]
    return stream[k * seq_length : k * seq_length + seq_length + extra]


def blending(weights, size):
    """Sample i goes to the dataset furthest below weight * max(i, 1); ties to the lowest id."""
    taken = [0] * len(weights)
    which, local = [], []
    for i in range(size):
        errors = [w * max(i, 1) - t for w, t in zip(weights, taken)]
        d = errors.index(max(errors))
        which.append(d)
        local.append(taken[d])
        taken[d] += 1
    return which, local
