"""The reward of examples/rl.sh: a lipogram in E. A completion scores the number of *distinct*
words without the letter "e" over its number of words (0 for an empty completion), checked by a
program, nothing learned. Counting distinct words closes the loophole a plain share leaves open:
repeating one e-free word ("a a a a ...") would score 1, and RL finds that within 30 steps.

Why a 4M-parameter demo model can learn it: the reward is a property of single tokens, so it is
raised by moving probability from tokens that contain an "e" to tokens that do not, which the
policy gradient does directly; the model already writes many such words (about half of English
words have no "e"), so every group of completions differs in reward from the start.
"""

import re


def no_e(completions, **kwargs):
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[0]["content"]
        words = re.findall(r"[A-Za-z]+", text)
        out.append(len({w.lower() for w in words if "e" not in w.lower()}) / len(words) if words else 0.0)
    return out
