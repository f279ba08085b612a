"""lm-evaluation-harness on megalite checkpoints: the ``megalite`` model and ``run_harness_tasks``.

``MegaliteLM`` answers lm-eval's three request types on our own model core, so a checkpoint is
evaluated as it is (any tensor / pipeline layout, under torchrun each rank holding its shard)
with no HF export:

* ``loglikelihood``: context and continuation tokenized the way lm-eval's ``hf`` model does
  (its ``TemplateLM`` base), inputs longer than ``max_length`` cut from the left, requests
  sorted longest first and scored ``batch_size`` at a time;
* ``loglikelihood_rolling``: lm-eval's disjoint rolling windows of ``max_length`` tokens;
* ``generate_until``: batched KV-cache generation (greedy unless the task samples) that stops
  at the end-of-document token or any of the task's stop strings, cut at the first of them.

Every rank computes every request (the ranks hold one model between them), so lm-eval sees a
world of one; only rank 0 should write what it returns.
"""

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import lm_eval.models  # noqa: F401  the stock models first: lm-eval fills only an empty registry with them
import torch
import yaml
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from megalite.data.chat import load_template, render_chat
from megalite.data.tokenizer import Tokenizer
from megalite.errors import MegaliteError
from megalite.eval.generate import generate
from megalite.eval.loading import checkpoint_tokenizer, default_device, load_model
from megalite.eval.sampling import Sampling, trim_stop_string
from megalite.eval.scoring import model_positions, token_logprobs
from megalite.eval.task_data import load_task, stock_task_folders, use_hub_or_cache


@register_model("megalite")
class MegaliteLM(TemplateLM):
    """``--model megalite --model_args load=CKPT[,max_length=N,max_gen_toks=256,chat_template=chatml]
    --batch_size 8``, or ``MegaliteLM(model=..., tokenizer=...)`` around a model already in memory."""

    def __init__(self, load: Optional[str] = None, model=None, tokenizer: Optional[Tokenizer] = None,
                 batch_size: Union[int, str] = 8, max_length: Optional[int] = None, max_gen_toks: int = 256,
                 seed: int = 1234, device: Optional[str] = None, chat_template: Optional[str] = None,
                 **_ignored):  # and lm-eval's max_batch_size
        super().__init__()
        if model is None:
            if not load:
                raise MegaliteError("the megalite model needs model_args load=CHECKPOINT")
            # lm-eval's command line asks for "cuda" by default; without a GPU that means the CPU
            usable = device and (not str(device).startswith("cuda") or torch.cuda.is_available())
            model, cfg = load_model(str(load), torch.device(device) if usable else default_device())
            tokenizer = tokenizer or checkpoint_tokenizer(cfg)
        if tokenizer is None:
            raise MegaliteError("MegaliteLM(model=...) needs the tokenizer too")
        self.model, self.tok = model.eval(), tokenizer
        try:
            self.batch_size = int(batch_size)
        except ValueError:
            raise MegaliteError(f"batch_size {batch_size!r}: the megalite model needs a number") from None
        self.max_length = int(max_length) if max_length else model_positions(model)
        self.max_gen_toks, self.seed = int(max_gen_toks), int(seed)
        self.pad_id = tokenizer.pad if tokenizer.pad is not None else tokenizer.eod
        self.template = load_template(chat_template) if chat_template else tokenizer.chat_template

    # -- tokenization (what TemplateLM's loglikelihood builds requests with) ------------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eod

    @property
    def prefix_token_id(self) -> int:
        """Stands in for an empty context: beginning of sequence if the vocabulary has one."""
        return self.tok.bos if self.tok.bos is not None else self.tok.eod

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> List[int]:
        return self.tok.encode(string)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids without special tokens (as lm-eval's ``hf`` model decodes) or ids
        of the padded vocabulary (no text; an undertrained model may still pick them)."""
        special = self.tok.special_ids
        return self.tok.decode([t for t in ids if t not in special and t < self.tok.vocab_size])

    @property
    def tokenizer_name(self) -> str:
        return type(self.tok).__name__

    # -- chat (lm-eval's --apply_chat_template) ----------------------------------------------------
    def chat_template(self, chat_template: Union[bool, str] = False) -> Optional[str]:
        return self.template if chat_template else None

    def apply_chat_template(self, chat_history: List[Dict[str, str]], add_generation_prompt: bool = True) -> str:
        if self.template is None:
            raise MegaliteError("the tokenizer has no chat template: pass chat_template=chatml (or a Jinja file) in "
                                "model_args, or --chat-template to eval_gpt.py")
        return render_chat(self.template, chat_history, add_generation_prompt, **self.tok.special_tokens)

    # -- requests ---------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests: Sequence[Tuple], disable_tqdm: bool = False,
                              **kwargs) -> List[Tuple[float, bool]]:
        """(log-probability of the continuation, was it the greedy continuation) per
        (cache key, context tokens, continuation tokens) request."""
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: List[Optional[Tuple[float, bool]]] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for i in batch:
                if len(requests[i][2]) > self.max_length:
                    raise MegaliteError(f"a continuation of {len(requests[i][2])} tokens is longer than the model's "
                                        f"{self.max_length} positions (model_args max_length)")
            sequences = [(requests[i][1] + requests[i][2])[-(self.max_length + 1) :] for i in batch]
            for i, (logprobs, greedy) in zip(batch, token_logprobs(self.model, sequences, self.pad_id)):
                n = len(requests[i][2])
                results[i] = (float(logprobs[-n:].sum()), bool(greedy[-n:].all()))
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        windows, owners = [], []
        for r, (text,) in enumerate(req.args for req in requests):
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owners.append(r)
        totals = [0.0] * len(requests)
        for r, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[r] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        results: List[Optional[str]] = [None] * len(requests)
        groups: Dict[str, List[int]] = {}
        for i, req in enumerate(requests):  # one batch never mixes generation settings
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        for members in groups.values():
            gen_kwargs = dict(requests[members[0]].args[1])
            until, sampling, max_new = self._generation_settings(gen_kwargs)
            prompts = {i: self.tok_encode(requests[i].args[0])[-max(self.max_length - max_new, 1):] for i in members}
            members.sort(key=lambda i: -len(prompts[i]))
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                outs = generate(self.model, [prompts[i] for i in batch], max_new, sampling, self.pad_id,
                                decode=self.decode)
                for i, ids in zip(batch, outs):
                    results[i] = trim_stop_string(self.decode(ids), until)
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
        return results

    def _generation_settings(self, kw: Dict) -> Tuple[List[str], Sampling, int]:
        until = kw.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kw.pop("max_gen_toks", kw.pop("max_new_tokens", self.max_gen_toks)))
        do_sample = bool(kw.pop("do_sample", False))
        temperature = float(kw.pop("temperature", 0.0)) if do_sample else 0.0
        sampling = Sampling(temperature=temperature, top_k=int(kw.pop("top_k", 0) or 0),
                            top_p=float(kw.pop("top_p", 1.0) or 1.0), stop_ids=[self.tok.eod],
                            stop_strings=[u for u in until if u], seed=self.seed)
        return until, sampling, max_new


def run_harness_tasks(model_or_ckpt, tasks: Union[str, Sequence[str]], num_fewshot: Optional[int] = None,
                      batch_size: int = 8, limit: Optional[float] = None, include_path: Optional[str] = None,
                      log_samples: bool = False, tokenizer: Optional[Tokenizer] = None, seed: int = 1234,
                      bootstrap_iters: int = 100000, apply_chat_template: bool = False, **model_args) -> Dict:
    """lm-eval's results dict for ``tasks`` on a checkpoint folder, a MegaliteLM, or an in-memory
    model (with ``tokenizer``). Callable from the trainer between iterations. Under torchrun
    every rank must call it; lm-eval returns the results on the first rank of each node (its
    LOCAL_RANK 0) and None elsewhere. ``bootstrap_iters`` (lm-eval's default) resamples for the
    standard errors of non-mean metrics such as perplexity; 0 skips them. ``apply_chat_template``
    renders each prompt (few-shot examples as turns) with the chat template."""
    from lm_eval import simple_evaluate  # optional dependency; its evaluator takes a second to import

    if isinstance(model_or_ckpt, MegaliteLM):
        lm = model_or_ckpt
    elif isinstance(model_or_ckpt, str):
        lm = MegaliteLM(load=model_or_ckpt, tokenizer=tokenizer, batch_size=batch_size, seed=seed, **model_args)
    else:
        lm = MegaliteLM(model=model_or_ckpt, tokenizer=tokenizer, batch_size=batch_size, seed=seed, **model_args)
    names = [t.strip() for t in tasks.split(",") if t.strip()] if isinstance(tasks, str) else list(tasks)
    manager = task_manager(names, include_path)
    tasks = [task for name in names for task in load_task(manager, name)]
    return simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                           log_samples=log_samples, bootstrap_iters=bootstrap_iters, random_seed=seed,
                           numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                           apply_chat_template=apply_chat_template, fewshot_as_multiturn=apply_chat_template)


def task_manager(names: Sequence[str], include_path: Optional[str] = None):
    """lm-eval's task index holding ``names``. Indexing lm-eval's own ~14k task files takes
    half a minute, so only --include-path is indexed when it holds every task asked for, and
    only the stock tasks' own folders when a quick scan finds each. Before a stock task can
    download its data, the hub is tried once (task_data.use_hub_or_cache)."""
    from lm_eval.tasks import TaskManager  # optional dependency; a second to import, only when tasks are looked up

    local = None
    if include_path:
        check_task_files(include_path)
        local = TaskManager(include_path=include_path, include_defaults=False)
        if names and all(n in local.all_tasks for n in names):
            return local
    stock = [n for n in names if local is None or n not in local.all_tasks]
    folders = stock_task_folders(stock)
    if folders is None:
        manager = TaskManager(include_path=include_path)
    else:
        manager = TaskManager(include_path=folders + ([include_path] if include_path else []), include_defaults=False)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown or not names:
        where = f" or in {include_path}" if include_path else " (add --include-path DIR for local task YAMLs)"
        raise MegaliteError(f"unknown lm-eval task {', '.join(unknown) or '(none given)'}: not among lm-eval's "
                            f"tasks{where}")
    use_hub_or_cache()
    return manager


def check_task_files(include_path: str) -> None:
    """Every task YAML under ``include_path`` parses, and its ``!function`` references import
    (lm-eval would skip a broken file silently and then call its task unknown)."""
    from lm_eval.tasks._yaml_loader import load_yaml  # optional dependency; a second to import (lm_eval.tasks)

    if not os.path.isdir(include_path):
        raise MegaliteError(f"--include-path {include_path}: no such folder")
    for root, _, files in sorted(os.walk(include_path)):
        for name in sorted(files):
            if name.endswith((".yaml", ".yml")):
                path = os.path.join(root, name)
                try:
                    load_yaml(path)
                except (yaml.YAMLError, ValueError, ImportError, AttributeError, OSError) as e:
                    detail = " ".join(str(e).split())
                    raise MegaliteError(f"{path}: not a valid lm-eval task file ({detail})") from None
