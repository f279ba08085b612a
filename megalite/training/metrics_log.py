"""Where training metrics go: the console, TensorBoard and a JSON-lines file (rank 0 only)."""

import json
import os
import time
from typing import Dict, Optional


class MetricsLog:
    def __init__(self, enabled: bool, metrics_file: Optional[str], tensorboard_dir: Optional[str],
                 resumed_at: int = 0):
        """Both files continue across restarts: metrics lines are appended (after a restart from
        an older checkpoint the re-run iterations appear again; the later line wins) and
        TensorBoard drops the events logged after ``resumed_at`` by the run that died."""
        self.enabled = enabled
        self._file = self._tb = None
        if not enabled:
            return
        if metrics_file:
            os.makedirs(os.path.dirname(os.path.abspath(metrics_file)), exist_ok=True)
            self._file = open(metrics_file, "a", buffering=1)
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=tensorboard_dir, purge_step=resumed_at + 1 if resumed_at else None)

    def record(self, metrics: Dict, console: Optional[str] = None) -> None:
        if not self.enabled:
            return
        if console:
            print(console, flush=True)
        if self._file:
            self._file.write(json.dumps({"time": round(time.time(), 3), **metrics}) + "\n")
        if self._tb:
            step = metrics["iteration"]
            prefix = metrics.get("split", "train") + (f"/{metrics['task']}" if "task" in metrics else "")
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k not in ("iteration",) and v is not None:
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb:
            self._tb.close()
