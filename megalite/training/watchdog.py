"""A per-step watchdog: a rank stuck in one training step (a hung collective, a dead peer
that the backend has not noticed) prints where every one of its threads is and exits
non-zero, so torchrun restarts the group instead of the job idling until its time limit."""

import faulthandler
import os
import sys
import threading
import time
from typing import Optional


class StepWatchdog:
    def __init__(self, timeout_s: float, rank: int):
        self.timeout_s, self.rank = timeout_s, rank
        self._timer: Optional[threading.Timer] = None
        self._what, self._since = "", 0.0

    def arm(self, what: str) -> None:
        """Start timing ``what`` (e.g. "iteration 12"); ``disarm`` when it is done."""
        self.disarm()
        self._what, self._since = what, time.time()
        self._timer = threading.Timer(self.timeout_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        print(f"[rank {self.rank}] watchdog: {self._what} has not finished after {time.time() - self._since:.0f} s "
              f"(--distributed-timeout-minutes); stacks of all threads follow, then exit 1", file=sys.stderr,
              flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(1)
