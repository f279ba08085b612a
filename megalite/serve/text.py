"""Turning one choice's tokens into text as they arrive: the whole text so far is decoded again
each time (so multi-token characters and word pieces come out right), stop strings are cut off,
and while decoding goes on the tail that might still become a stop string, or an unfinished
UTF-8 character, is held back. The streamed pieces therefore add up to the final text."""

from typing import Callable, List, Sequence

from megalite.eval.sampling import trim_stop_string


class ChoiceText:
    def __init__(self, decode: Callable[[Sequence[int]], str], stops: Sequence[str]):
        self.decode, self.stops = decode, list(stops)
        self.ids: List[int] = []
        self.sent = ""

    def add(self, token_id: int) -> None:
        self.ids.append(token_id)

    def text(self) -> str:
        return trim_stop_string(self.decode(self.ids), self.stops)

    def delta(self, final: bool = False) -> str:
        """The text not handed out yet that is safe to hand out now (all of it when ``final``)."""
        text = self.text()
        if not final:
            text = text.rstrip("\ufffd")
            text = text[: len(text) - self._held(text)]
        if not text.startswith(self.sent):  # a decoder that rewrote earlier text: keep what was sent
            return ""
        out, self.sent = text[len(self.sent):], max(text, self.sent, key=len)
        return out

    def _held(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        return max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
