"""PPO's math (megalite.posttrain.rl.ppo and the clipped surrogate) against plain Python written
from the formulas in docs/rl.md, on small cases whose numbers are also worked out by hand."""

import math
import random

import pytest
import torch

from megalite.posttrain.rl import ppo
from megalite.posttrain.rl.objective import clipped_surrogate


# -- plain-Python references, one per formula of docs/rl.md ("PPO") ----------------------------------
def ref_token_rewards(score, kl, mask, beta):
    out = []
    for s, k_row, m_row in zip(score, kl, mask):
        row = [-beta * k * m for k, m in zip(k_row, m_row)]
        last = max((t for t, m in enumerate(m_row) if m), default=None)
        if last is not None:
            row[last] += s
        out.append(row)
    return out


def ref_gae(rewards, values, mask, gamma, lam):
    advantages, returns = [], []
    for r_row, v_row, m_row in zip(rewards, values, mask):
        steps = [t for t, m in enumerate(m_row) if m]  # the completion's positions, in order
        a_row, ret_row = [0.0] * len(m_row), [0.0] * len(m_row)
        following = 0.0
        for i in reversed(range(len(steps))):
            t = steps[i]
            next_value = v_row[steps[i + 1]] if i + 1 < len(steps) else 0.0
            delta = r_row[t] + gamma * next_value - v_row[t]
            following = delta + gamma * lam * following
            a_row[t], ret_row[t] = following, following + v_row[t]
        advantages.append(a_row)
        returns.append(ret_row)
    return advantages, returns


def ref_whiten(x, mask):
    values = [v for row, m_row in zip(x, mask) for v, m in zip(row, m_row) if m]
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return [[(v - mean) / math.sqrt(var + 1e-8) if m else 0.0 for v, m in zip(row, m_row)]
            for row, m_row in zip(x, mask)]


def ref_value_loss(values, old, returns, mask, clip):
    terms = []
    for v_row, o_row, r_row, m_row in zip(values, old, returns, mask):
        for v, o, r, m in zip(v_row, o_row, r_row, m_row):
            if m:
                clipped = o + min(max(v - o, -clip), clip)
                terms.append(0.5 * max((v - r) ** 2, (clipped - r) ** 2))
    return sum(terms) / len(terms)


def ref_policy_loss(ratio, advantages, mask, eps_low, eps_high):
    terms = [max(-a * r, -a * min(max(r, 1 - eps_low), 1 + eps_high))
             for r_row, a_row, m_row in zip(ratio, advantages, mask) for r, a, m in zip(r_row, a_row, m_row) if m]
    return sum(terms) / len(terms)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def flat(rows):
    """A tensor's or a list of lists' numbers, in one list (what pytest.approx compares)."""
    rows = rows.tolist() if isinstance(rows, torch.Tensor) else rows
    return [x for row in rows for x in row]


# -- hand-checked cases -------------------------------------------------------------------------------
def test_gae_by_hand():
    """One completion of 3 tokens after a 1-token prompt position, a trailing pad; gamma 1, lambda 0.95:
    delta = [0 + .6 - .5, 0 + .7 - .6, 1 - .7] = [.1, .1, .3]; A_2 = .3, A_1 = .1 + .95 * .3 = .385,
    A_0 = .1 + .95 * .385 = .46575; returns = A + V = [.96575, .985, 1.0]."""
    mask = t([[0, 1, 1, 1, 0]])
    rewards = t([[9, 0, 0, 1, 9]])  # 9: outside the completion, must not count
    values = t([[9, .5, .6, .7, 9]])
    a, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert flat(a) == pytest.approx([0, .46575, .385, .3, 0], abs=1e-12)
    assert flat(ret) == pytest.approx([0, .96575, .985, 1.0, 0], abs=1e-12)
    # gamma 0.5, lambda 1: A_2 = 1 - .7 = .3; A_1 = (.5 * .7 - .6) + .5 * .3 = -.1; A_0 = (.5 * .6 - .5) + .5 * -.1
    a, _ = ppo.gae(rewards, values, mask, gamma=0.5, lam=1.0)
    assert flat(a) == pytest.approx([0, -.25, -.1, .3, 0], abs=1e-12)


def test_token_rewards_by_hand():
    """The KL penalty at every completion token, the score added at the last one; a row whose
    completion is masked out entirely gets nothing."""
    mask = t([[0, 1, 1, 0], [0, 0, 0, 0]])
    kl = t([[5, .2, -.4, 5], [1, 1, 1, 1]])
    out = ppo.token_rewards(t([2.0, 3.0]), kl * mask, mask, beta=0.1)
    assert flat(out) == pytest.approx([0, -.02, .04 + 2.0, 0, 0, 0, 0, 0], abs=1e-12)


def test_value_loss_by_hand():
    """Returns 1, old values 0, clip .2: V = .5 and V = 1.5 are both clipped to .2, whose (.2 - 1)^2 = .64
    beats the unclipped .25; V = .1 is inside the range (.81 either way): 0.5 * (.64 + .64 + .81) / 3, and
    the clipped term was the larger at 2 of 3 tokens."""
    values, old, returns, mask = t([[.5, 1.5, .1]]), t([[0, 0, 0]]), t([[1, 1, 1]]), t([[1, 1, 1]])
    loss, clipped = ppo.value_loss(values, old, returns, mask, clip=0.2, tokens=3.0)
    assert loss.item() == pytest.approx(0.5 * (.64 + .64 + .81) / 3, abs=1e-12)
    assert clipped.item() == pytest.approx(2 / 3)


def test_policy_loss_by_hand():
    """eps .2: r = 1.5, A = 1 -> -min(1.5, 1.2) = -1.2; r = .5, A = -1 -> -min(-.5, -.8) = .8;
    r = 1.1, A = 2 -> -2.2; mean -0.8667."""
    ratio, a, mask = t([[1.5, .5, 1.1]]), t([[1, -1, 2]]), t([[1, 1, 1]])
    loss = (clipped_surrogate(ratio, a, .2, .2) * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx((-1.2 + .8 - 2.2) / 3, abs=1e-12)


# -- random cases against the references --------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_formulas_equal_plain_python(seed):
    rng = random.Random(seed)
    rows, width = 4, 9
    mask = []
    for _ in range(rows):  # a prompt, a completion, padding
        start, length = rng.randint(0, 3), rng.randint(1, 5)
        mask.append([1.0 if start <= i < start + length else 0.0 for i in range(width)])
    kl = [[rng.uniform(-1, 1) for _ in range(width)] for _ in range(rows)]
    values = [[rng.uniform(-2, 2) for _ in range(width)] for _ in range(rows)]
    score = [rng.uniform(-3, 3) for _ in range(rows)]
    gamma, lam, beta = rng.choice([1.0, 0.9]), rng.choice([0.95, 0.5]), 0.05
    m = t(mask)
    rewards = ppo.token_rewards(t(score), t(kl) * m, m, beta)
    ref_r = ref_token_rewards(score, kl, mask, beta)
    assert flat(rewards) == pytest.approx(flat(ref_r), abs=1e-12)
    a, ret = ppo.gae(rewards, t(values), m, gamma, lam)
    ref_a, ref_ret = ref_gae(ref_r, values, mask, gamma, lam)
    assert flat(a) == pytest.approx(flat(ref_a), abs=1e-12)
    assert flat(ret) == pytest.approx(flat(ref_ret), abs=1e-12)
    w = ppo.whiten(a, m)
    assert flat(w) == pytest.approx(flat(ref_whiten(ref_a, mask)), abs=1e-9)
    new_values = [[v + rng.uniform(-.5, .5) for v in row] for row in values]
    loss, _ = ppo.value_loss(t(new_values), t(values), ret, m, 0.2, float(m.sum()))
    assert loss.item() == pytest.approx(ref_value_loss(new_values, values, ref_ret, mask, 0.2), abs=1e-12)
    ratio = [[math.exp(rng.uniform(-.4, .4)) for _ in range(width)] for _ in range(rows)]
    loss = (clipped_surrogate(t(ratio), w, .2, .28) * m).sum() / m.sum()
    assert loss.item() == pytest.approx(ref_policy_loss(ratio, w.tolist(), mask, .2, .28), abs=1e-12)
