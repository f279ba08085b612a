"""Progress for long jobs: a live bar on a terminal, a plain line every few seconds in logs."""

import sys
import time
from typing import Dict, Optional

from tqdm import tqdm


def human(n: float) -> str:
    for unit in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{n:.0f}"
        n /= 1000.0
    return f"{n:.1f}P"


class Progress:
    """Tracks a byte total plus named counters and shows their rates."""

    def __init__(self, desc: str, total_bytes: Optional[int] = None, stream=None, interval: float = 10.0):
        self.desc = desc
        self.stream = stream or sys.stderr
        self.interval = interval
        self.counts: Dict[str, float] = {}
        self.start = self._last_print = time.perf_counter()
        self._bar = None
        if hasattr(self.stream, "isatty") and self.stream.isatty():
            self._bar = tqdm(total=total_bytes, desc=desc, unit="B", unit_scale=True, file=self.stream)

    def update(self, nbytes: int = 0, **counts: float) -> None:
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        now = time.perf_counter()
        if self._bar is not None:
            self._bar.set_postfix_str(self._rates(now), refresh=False)
            self._bar.update(nbytes)
        elif now - self._last_print >= self.interval:
            self._last_print = now
            print(f"{self.desc}: {self._rates(now)}", file=self.stream, flush=True)

    def _rates(self, now: float) -> str:
        dt = max(now - self.start, 1e-9)
        return ", ".join(f"{human(v)} {k} ({human(v / dt)}/s)" for k, v in self.counts.items())

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
