"""The reward functions of an online RL run (rl_gpt.py ``--reward-funcs``, ``--reward-model``,
``--reward-weights``): one column of rewards per function, for the stage to weight and sum.

Functions are trl's: called as trl 1.16's GRPOTrainer calls them, ``fn(prompts=, completions=,
completion_ids=, **columns)`` with every other field of the prompt records as a list aligned with the
completions, returning one float (or None: NaN, "no opinion") per completion. trl's extra keyword
arguments ``trainer_state``, ``log_extra``, ``log_metric`` and ``environments`` are not passed: megalite
has no HF TrainerState, logs no completions table and runs no environments (a function that needs them
must default them). Built-ins: ``accuracy`` (math-verify against the ``solution`` column, as trl's
``accuracy_reward``) and ``format`` (``--format-pattern``). A learned reward model, a megalite
``--pref-method rm`` checkpoint or an HF ``...ForSequenceClassification`` folder, is scored on this process
with megalite.eval.reward_scores (prompt + completion re-tokenized with its own tokenizer and template);
its column comes after the functions'. docs/rl.md ("Rewards") is the user's view.
"""

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import numbers
import os
import re
import sys
import threading
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from megalite.errors import MegaliteError
from megalite.eval.reward_scores import RewardScorer, score_records

SPEC_FORMS = "pkg.module:function, path/to/file.py:function, 'accuracy' or 'format'"


def _one_line(e: BaseException) -> str:
    """An exception as one line: its type and message, whitespace folded."""
    return " ".join(f"{type(e).__name__}: {e}".split())


def completion_text(completion) -> str:
    """A completion's text: the string itself, or the content of its (one) assistant message."""
    return completion if isinstance(completion, str) else completion[0]["content"]


def accuracy(completions, solution=None, **columns) -> List[Optional[float]]:
    """1.0 when the completion's first LaTeX answer (``\\boxed{}`` tried first) equals the parsed
    ``solution``, else 0.0; None when the solution does not parse. trl's ``accuracy_reward`` settings."""
    if solution is None:
        have = ", ".join(k for k in columns if k not in ("prompts", "completion_ids")) or "none"
        raise MegaliteError(f"the prompt records have no 'solution' column to check answers against (columns: {have})")
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify

    # math-verify's timeouts use signal.alarm, which works only in the main thread
    main = threading.current_thread() is threading.main_thread()
    parse_s, verify_s = (10, 5) if main else (None, None)
    answer_config = [LatexExtractionConfig(normalization_config=NormalizationConfig(units=True),
                                           boxed_match_priority=0, try_extract_without_anchor=False)]
    out = []
    for completion, gold in zip(completions, solution):
        gold = parse(str(gold), parsing_timeout=parse_s)
        if not gold:
            out.append(None)
            continue
        answer = parse(completion_text(completion), extraction_config=answer_config, extraction_mode="first_match",
                       parsing_timeout=parse_s)
        out.append(float(verify(gold, answer, timeout_seconds=verify_s)))
    return out


def format_reward(completions, pattern: re.Pattern, **_) -> List[float]:
    """1.0 when the whole completion matches ``pattern`` (compiled with DOTALL), else 0.0."""
    return [1.0 if pattern.fullmatch(completion_text(c)) else 0.0 for c in completions]


def _import(spec: str, where: str):
    """The module ``where`` of ``--reward-funcs spec``: a dotted name, or a .py file by path."""
    if not where.endswith(".py"):
        return importlib.import_module(where)
    if not os.path.isfile(where):
        raise MegaliteError(f"--reward-funcs {spec}: no file {where}")
    name = "megalite_reward_funcs_" + hashlib.md5(os.path.abspath(where).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(name, where)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look a function's module up by name
    module_spec.loader.exec_module(module)
    return module


def load_function(spec: str, format_pattern: Optional[str]) -> Tuple[str, Callable]:
    """(trl's name, function) for one ``--reward-funcs`` entry."""
    if spec == "accuracy":
        if importlib.util.find_spec("math_verify") is None:
            raise MegaliteError("--reward-funcs accuracy: needs the math-verify package (pip install 'megalite[rl]')")
        return "accuracy", accuracy
    if spec == "format":
        if not format_pattern:
            raise MegaliteError("--reward-funcs format: give the completions' pattern with --format-pattern REGEX")
        try:
            pattern = re.compile(format_pattern, re.DOTALL)
        except re.error as e:
            raise MegaliteError(f"--format-pattern {format_pattern!r}: not a regular expression ({e})") from None
        return "format", lambda completions, **_: format_reward(completions, pattern)
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise MegaliteError(f"--reward-funcs {spec}: expected {SPEC_FORMS}")
    try:
        module = _import(spec, where)
    except MegaliteError:
        raise
    except Exception as e:  # a user's module: anything may go wrong in it
        raise MegaliteError(f"--reward-funcs {spec}: cannot import {where}: {_one_line(e)}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise MegaliteError(f"--reward-funcs {spec}: {where} has no function {attr!r}")
    return _callable_name(fn), fn


def _callable_name(fn) -> str:
    """trl's name of a reward function: ``__name__``, a partial's wrapped function's, or the class name."""
    inner = fn
    while hasattr(inner, "func") and not hasattr(inner, "__name__"):
        inner = inner.func
    return getattr(inner, "__name__", type(inner).__name__)


def _column(spec: str, out, n: int) -> List[float]:
    """A function's return value checked and made a list of floats (None: NaN)."""
    if hasattr(out, "tolist"):  # a tensor or an array
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise MegaliteError(f"--reward-funcs {spec}: returned {type(out).__name__}, not a list of rewards")
    if len(out) != n:
        raise MegaliteError(f"--reward-funcs {spec}: returned {len(out)} rewards for {n} completions (one each)")
    out = [r.item() if isinstance(r, torch.Tensor) and r.numel() == 1 else r for r in out]  # trl takes these too
    bad = [r for r in out if r is not None and not isinstance(r, numbers.Real)]
    if bad:
        raise MegaliteError(f"--reward-funcs {spec}: returned {bad[0]!r} ({type(bad[0]).__name__}); a reward is a "
                            "number or None")
    return [float("nan") if r is None else float(r) for r in out]


def same_vocabulary(a, b) -> bool:
    """Do two megalite tokenizers map every id to the same token?"""
    return a.vocab_size == b.vocab_size and all(a.id_to_token(i) == b.id_to_token(i) for i in range(a.vocab_size))


def _say(line: str) -> None:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        print(line, file=sys.stderr, flush=True)


class Rewards:
    """The run's reward functions and their weights."""

    def __init__(self, specs: Optional[List[str]], weights: Optional[List[float]], format_pattern: Optional[str] = None,
                 reward_model: Optional[str] = None, policy_tokenizer=None, device=None):
        self.specs = list(specs or [])
        named = [load_function(spec, format_pattern) for spec in self.specs]
        self.names: List[str] = [name for name, _ in named]
        self._funcs = [fn for _, fn in named]
        self.device = torch.device(device or "cpu")
        self._model, self._model_where = None, None
        if reward_model:
            self._model = RewardScorer(reward_model, device=self.device)
            self._model_where = f"--reward-model {reward_model}"
            self.names.append(os.path.basename(os.path.abspath(reward_model)) or "reward_model")
            if policy_tokenizer is not None and not same_vocabulary(policy_tokenizer, self._model.tokenizer):
                _say(f"note: {self._model_where}: its tokenizer differs from the policy's; completions are scored as "
                     "text, re-tokenized with the reward model's tokenizer and chat template")
        if not self.names:
            raise MegaliteError("no reward: give --reward-funcs and/or --reward-model")
        if weights is None:
            self.weights = torch.ones(len(self.names), dtype=torch.float32)
        elif len(weights) != len(self.names):
            raise MegaliteError(f"--reward-weights: {len(weights)} weights for {len(self.names)} rewards "
                                f"({', '.join(self.names)})")
        else:
            self.weights = torch.tensor(weights, dtype=torch.float32)

    def __call__(self, prompts: list, completions: list, completion_ids: List[List[int]],
                 columns: Dict[str, list]) -> torch.Tensor:
        """[len(completions), n_funcs] float32; None from a function -> NaN."""
        n = len(completions)
        out = torch.empty(n, len(self.names), dtype=torch.float32)
        for j, (spec, fn) in enumerate(zip(self.specs, self._funcs)):
            try:
                result = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
                if inspect.iscoroutine(result):  # an async function (trl runs those too)
                    result = asyncio.run(result)
            except MegaliteError as e:  # a built-in's own message
                raise MegaliteError(f"--reward-funcs {spec}: {' '.join(str(e).split())}") from None
            except Exception as e:  # a user's function: anything may go wrong in it
                raise MegaliteError(f"--reward-funcs {spec}: raised {_one_line(e)}") from None
            out[:, j] = torch.tensor(_column(spec, result, n), dtype=torch.float32)
        if self._model is not None:
            records = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]
            scored, _ = score_records(self._model, records, self._model_where)
            out[:, -1] = torch.tensor([r["score"] for r in scored], dtype=torch.float32)
        return out.to(self.device)
