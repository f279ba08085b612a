"""Continuous batching: one decode loop, on its own thread, serves every open request.

Each request owns a slot of a preallocated KV-cache pool (SlotKVCache) from its prefill to its
last token. Before each decode step the loop prefills the requests that arrived, several prompts
in one forward (a ragged step: each row its own length) and a long prompt a chunk per step, so
the running batch is never held up long; a request joins the decode batch once its prompt is in.
Requests that finished or were cancelled leave at once, so a long one never holds the others
back. Waiting requests sit in a bounded queue; ``submit`` refuses with QueueFull when it is full.

Tokens are chosen per request (its own temperature, top-p and seeded generator; greedy rows
together) with megalite.eval.sampling, and handed to the request's ``emit`` callback from the
loop's thread: Token for each new token, then one Finished.

Under tensor parallelism rank 0 runs this loop and hands every forward to ``followers``
(megalite.serve.tp), which has the other ranks run the same one.
"""

import heapq
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

import torch

from megalite.eval.sampling import Sampling, hit_stop_string, next_tokens
from megalite.model.decoding import decode_step, new_cache, slot_mask
from megalite.model.kv_cache import SlotKVCache
from megalite.parallel.pipeline import model_chunks


@dataclass
class Token:
    id: int
    logprob: Optional[float] = None  # log-probability under the model (before temperature)
    top: List[Tuple[int, float]] = field(default_factory=list)  # the most likely alternatives


@dataclass
class Finished:
    reason: str  # "stop" (end token or stop string), "length", "cancelled" or "error"
    message: str = ""


@dataclass
class Request:
    prompt: List[int]
    max_tokens: int
    emit: Callable[[object], None]  # receives Token and Finished events, on the loop's thread
    sampling: Sampling = field(default_factory=Sampling)
    logprobs: Optional[int] = None  # None: no log-probabilities; k: the chosen token's and the top k
    tokens: List[int] = field(default_factory=list)
    cancelled: bool = False
    generator: Optional[torch.Generator] = None
    prefilled: int = 0  # prompt tokens in the KV cache so far


KEEPALIVE_S = 60.0  # an idle loop still talks to its followers this often (collectives time out)


class QueueFull(Exception):
    pass


class Engine:
    """``decode``: ids -> text, for stop strings. ``vocab_size``: the tokenizer's (ids past it, in the
    model's padded vocabulary, are never chosen). ``max_queue``: requests that may wait for a slot.
    ``max_prefill_tokens``: prompt tokens (rows x the longest chunk) one prefill step takes.
    ``followers``: the other tensor-parallel ranks' channel (megalite.serve.tp.Leader), or None."""

    def __init__(self, model, decode: Callable[[Sequence[int]], str], max_batch_size: int, max_model_len: int,
                 max_queue: int = 64, vocab_size: Optional[int] = None, max_prefill_tokens: int = 512,
                 followers=None):
        self.model, self.decode, self.vocab_size = model, decode, vocab_size
        self.max_prefill_tokens, self.followers = max_prefill_tokens, followers
        self.device = next(model.parameters()).device
        self.vocab = model_chunks(model)[0].cfg.padded_vocab_size  # token ids a prompt may hold
        self.max_model_len, self.max_queue = max_model_len, max_queue
        self.cache: SlotKVCache = new_cache(model, max_batch_size, max_model_len, self.device, kind=SlotKVCache)
        self.free: List[int] = list(range(max_batch_size))  # a heap: the lowest slot first keeps the batch
        # in neighbouring slots, whose cache rows a step reads without copying
        self.active: Dict[int, Request] = {}
        self.prefilling: List[int] = []  # slots whose prompts are not all in the cache yet, oldest first
        self.pending: Deque[Request] = deque()
        self.batch_sizes: Counter = Counter()  # decode steps run at each batch size
        self.finished: Counter = Counter()  # requests ended, by reason
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="megalite-decode", daemon=True)

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def submit(self, requests: Sequence[Request]) -> None:
        """Queue ``requests`` together, or none of them (QueueFull)."""
        with self._wake:
            if len(self.pending) + len(requests) > self.max_queue:
                raise QueueFull(f"{len(self.pending)} requests are waiting (--max-queue {self.max_queue})")
            self.pending.extend(requests)
            self._wake.notify()

    def cancel(self, request: Request) -> None:
        """Stop decoding ``request``; its slot is freed before the next step."""
        with self._wake:
            request.cancelled = True
            self._wake.notify()

    @property
    def open_slots(self) -> int:
        return len(self.active)

    @property
    def waiting(self) -> int:
        return len(self.pending)

    def _loop(self) -> None:
        with torch.no_grad():
            while True:
                with self._wake:
                    while not (self._stopping or self.pending or self.active):
                        if not self._wake.wait(KEEPALIVE_S) and self.followers is not None:
                            self.followers.keepalive()
                    if self._stopping:
                        break
                    admitted = []
                    while self.pending and self.free:
                        admitted.append((self.pending.popleft(), heapq.heappop(self.free)))
                for request, slot in admitted:
                    self.active[slot] = request
                    self.prefilling.append(slot)
                    if request.sampling.seed is not None:
                        request.generator = torch.Generator(device=self.device).manual_seed(request.sampling.seed)
                for slot in [s for s, r in self.active.items() if r.cancelled]:
                    self._finish(slot, Finished("cancelled"))
                if self.prefilling:
                    rows = self._prefill_rows()
                    self._guard(rows, self._prefill, rows)
                decoding = [s for s in sorted(self.active) if s not in self.prefilling]
                if decoding:
                    self._guard(decoding, self._step, decoding)
            for slot in list(self.active):
                self._finish(slot, Finished("cancelled", "the server is shutting down"))
            for request in self.pending:
                request.emit(Finished("cancelled", "the server is shutting down"))
            if self.followers is not None:
                self.followers.stop()

    def _guard(self, slots: List[int], fn, *args) -> None:
        """Run a step; if it fails, its requests end with the error and everyone else goes on."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 (one bad step must not stop the server)
            for slot in slots:
                if slot in self.active:
                    self._finish(slot, Finished("error", f"{type(e).__name__}: {e}"))

    def _prefill_rows(self) -> List[int]:
        """The waiting prompts prefilled together next, oldest first: each row takes up to
        ``max_prefill_tokens`` of its prompt, and rows x the longest chunk stay within it too."""
        rows, width = [], 0
        for slot in self.prefilling:
            r = self.active[slot]
            w = max(width, min(len(r.prompt) - r.prefilled, self.max_prefill_tokens))
            fits = all(self.active[s].prefilled + w <= self.max_model_len for s in (*rows, slot))  # padding too
            if rows and (w * (len(rows) + 1) > self.max_prefill_tokens or not fits):
                break
            rows.append(slot)
            width = w
        return sorted(rows)

    def _prefill(self, slots: List[int]) -> None:
        """The next chunk of each row's prompt; a row whose prompt is then all in gets its first token."""
        requests = [self.active[s] for s in slots]
        counts = [min(len(r.prompt) - r.prefilled, self.max_prefill_tokens) for r in requests]
        tokens = torch.zeros(len(slots), max(counts), dtype=torch.long)
        for i, (r, n) in enumerate(zip(requests, counts)):
            tokens[i, :n] = torch.tensor(r.prompt[r.prefilled : r.prefilled + n])
            r.prefilled += n
        done = [i for i, r in enumerate(requests) if r.prefilled == len(r.prompt)]
        for i in done:
            self.prefilling.remove(slots[i])
        self._run(slots, tokens, counts, done)

    def _step(self, slots: List[int]) -> None:
        self.batch_sizes[len(slots)] += 1
        self._run(slots, torch.tensor([[self.active[s].tokens[-1]] for s in slots]), 1)

    def _run(self, slots: List[int], tokens: torch.Tensor, counts, ready: Optional[List[int]] = None) -> None:
        """One forward of ``tokens`` on those slots (the other ranks run the same one), then the next
        token of the rows ``ready`` (default: all)."""
        if self.followers is not None:
            self.followers.send(slots, tokens, counts, self.cache.lengths[slots].tolist())
        logits = forward_slots(self.model, self.cache, slots, tokens.to(self.device), counts).float()
        if ready is not None:
            logits, slots = logits[ready], [slots[i] for i in ready]
        if self.vocab_size is not None:
            logits[:, self.vocab_size:] = float("-inf")
        for slot, chosen in zip(slots, self._choose(slots, logits)):
            self._deliver(slot, chosen)

    def _choose(self, slots: List[int], logits: torch.Tensor) -> List[Token]:
        requests = [self.active[s] for s in slots]
        ids = logits.argmax(-1).tolist()  # greedy rows
        for i, r in enumerate(requests):
            if r.sampling.temperature > 0:
                none = torch.zeros((1, 0), dtype=torch.long, device=self.device)
                ids[i] = int(next_tokens(logits[i : i + 1], none, r.sampling, r.generator)[0])
        out = [Token(t) for t in ids]
        want = [i for i, r in enumerate(requests) if r.logprobs is not None]
        if want:
            logp = logits[want].log_softmax(-1)
            k = max(requests[i].logprobs for i in want)
            top_lp, top_ids = logp.topk(k, -1) if k else (logp[:, :0], logp[:, :0].long())
            chosen = logp.gather(1, torch.tensor([[ids[i]] for i in want], device=self.device))[:, 0].tolist()
            for j, i in enumerate(want):
                n = requests[i].logprobs
                out[i] = Token(ids[i], chosen[j], list(zip(top_ids[j, :n].tolist(), top_lp[j, :n].tolist())))
        return out

    def _deliver(self, slot: int, token: Token) -> None:
        r = self.active[slot]
        if r.cancelled:
            return
        if token.id in r.sampling.stop_ids:
            self._finish(slot, Finished("stop"))
            return
        r.tokens.append(token.id)
        r.emit(token)
        if r.sampling.stop_strings and hit_stop_string(self.decode(r.tokens), r.sampling.stop_strings):
            self._finish(slot, Finished("stop"))
        elif len(r.tokens) >= r.max_tokens or len(r.prompt) + len(r.tokens) - 1 >= self.max_model_len:
            self._finish(slot, Finished("length"))

    def _finish(self, slot: int, event: Finished) -> None:
        r = self.active.pop(slot)
        if slot in self.prefilling:
            self.prefilling.remove(slot)
        self.cache.free(slot)
        self.finished[event.reason] += 1
        with self._wake:
            heapq.heappush(self.free, slot)
        r.emit(event)


def forward_slots(model, cache: SlotKVCache, slots: List[int], tokens: torch.Tensor, counts) -> Optional[torch.Tensor]:
    """One forward of ``tokens`` [rows, width] on the cache slots ``slots`` (ascending), ``counts``
    real tokens in each row (an int: all of them), the rest padding: the logits after each row's
    last real token [rows, vocab]."""
    width = tokens.shape[1]
    before = cache.select(slots, counts)
    positions = before[:, None] + torch.arange(width, device=tokens.device)[None, :]
    last = None if isinstance(counts, int) else torch.tensor(counts, device=tokens.device) - 1
    return decode_step(model, tokens, positions, cache, slot_mask(cache, before, width), last=last)
