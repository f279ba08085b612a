"""Continuous batching: one decode loop, on its own thread, serves every open request.

Each request owns a slot of a preallocated KV-cache pool (SlotKVCache) from its prefill to its
last token. Between two decode steps the loop prefills the requests that arrived (they join the
batch at the next step) and drops the ones that finished or were cancelled, so a short request
leaves at once and a long one never holds the others back. Waiting requests sit in a bounded
queue; ``submit`` refuses with QueueFull when it is full.

Tokens are chosen per request (its own temperature, top-p and seeded generator; greedy rows
together) with megalite.eval.sampling, and handed to the request's ``emit`` callback from the
loop's thread: Token for each new token, then one Finished.
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


class QueueFull(Exception):
    pass


class Engine:
    """``decode``: ids -> text, for stop strings. ``vocab_size``: the tokenizer's (ids past it, in the
    model's padded vocabulary, are never chosen). ``max_queue``: requests that may wait for a slot."""

    def __init__(self, model, decode: Callable[[Sequence[int]], str], max_batch_size: int, max_model_len: int,
                 max_queue: int = 64, vocab_size: Optional[int] = None):
        self.model, self.decode, self.vocab_size = model, decode, vocab_size
        self.device = next(model.parameters()).device
        self.vocab = model_chunks(model)[0].cfg.padded_vocab_size  # token ids a prompt may hold
        self.max_model_len, self.max_queue = max_model_len, max_queue
        self.cache: SlotKVCache = new_cache(model, max_batch_size, max_model_len, self.device, kind=SlotKVCache)
        self.free: List[int] = list(range(max_batch_size))  # a heap: the lowest slot first keeps the batch
        # in neighbouring slots, whose cache rows a step reads without copying
        self.active: Dict[int, Request] = {}
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
                        self._wake.wait()
                    if self._stopping:
                        break
                    admitted = []
                    while self.pending and self.free:
                        admitted.append((self.pending.popleft(), heapq.heappop(self.free)))
                for request, slot in admitted:
                    self.active[slot] = request
                    self._guard([slot], self._prefill, request, slot)
                for slot in [s for s, r in self.active.items() if r.cancelled]:
                    self._finish(slot, Finished("cancelled"))
                if self.active:
                    self._guard(list(self.active), self._step)
            for slot in list(self.active):
                self._finish(slot, Finished("cancelled", "the server is shutting down"))
            for request in self.pending:
                request.emit(Finished("cancelled", "the server is shutting down"))

    def _guard(self, slots: List[int], fn, *args) -> None:
        """Run a step; if it fails, its requests end with the error and everyone else goes on."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 (one bad step must not stop the server)
            for slot in slots:
                if slot in self.active:
                    self._finish(slot, Finished("error", f"{type(e).__name__}: {e}"))

    def _prefill(self, r: Request, slot: int) -> None:
        if r.cancelled:
            return
        if r.sampling.seed is not None:
            r.generator = torch.Generator(device=self.device).manual_seed(r.sampling.seed)
        self._run([slot], torch.tensor([r.prompt], device=self.device))

    def _step(self) -> None:
        slots = sorted(self.active)
        self.batch_sizes[len(slots)] += 1
        self._run(slots, torch.tensor([[self.active[s].tokens[-1]] for s in slots], device=self.device))

    def _run(self, slots: List[int], tokens: torch.Tensor) -> None:
        """One forward of ``tokens`` [slots, new] on those slots, then the next token of each."""
        new = tokens.shape[1]
        before = self.cache.select(slots, new)
        positions = before[:, None] + torch.arange(new, device=self.device)[None, :]
        logits = decode_step(self.model, tokens, positions, self.cache, slot_mask(self.cache, before, new)).float()
        if self.vocab_size is not None:
            logits[:, self.vocab_size:] = float("-inf")
        lengths = (before + new).tolist()
        for i, chosen in enumerate(self._choose(slots, logits)):
            self._deliver(slots[i], chosen, lengths[i])

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

    def _deliver(self, slot: int, token: Token, length: int) -> None:
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
        elif len(r.tokens) >= r.max_tokens or length >= self.max_model_len:
            self._finish(slot, Finished("length"))

    def _finish(self, slot: int, event: Finished) -> None:
        r = self.active.pop(slot)
        self.cache.free(slot)
        self.finished[event.reason] += 1
        with self._wake:
            heapq.heappush(self.free, slot)
        r.emit(event)
