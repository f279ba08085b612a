"""Where training metrics go: the console, a JSON-lines file, and the scalar trackers
(TensorBoard, Weights & Biases), all from rank 0 only."""

import json
import netrc
import os
import socket
import time
from typing import Dict, List, Optional
from urllib.parse import urlparse

from megalite.config import Config
from megalite.errors import MegaliteError
from megalite.utils.atomic import atomic_write
from megalite.utils.packages import installed

WANDB_ID_FILE = "wandb_run_id.txt"  # in --save: the W&B run a restart continues


def scalars(metrics: Dict) -> Dict[str, float]:
    """The tracker tags of one record: ``train/lm_loss``, ``valid/ppl``, ``tasks/<task>/acc``."""
    prefix = metrics.get("split", "train") + (f"/{metrics['task']}" if "task" in metrics else "")
    return {f"{prefix}/{k}": v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "iteration"}


class MetricsLog:
    def __init__(self, enabled: bool, cfg: Config, resumed_at: int = 0):
        """Every file continues across restarts: metrics lines are appended (after a restart from
        an older checkpoint the re-run iterations appear again; the later line wins), TensorBoard
        drops the events logged after ``resumed_at`` by the run that died, and W&B continues the
        run whose id --save holds."""
        lg = cfg.logging
        if lg.wandb_project and not installed("wandb"):  # every rank checks, so none waits for a failed one
            raise MegaliteError("--wandb-project needs the wandb package: pip install 'megalite[wandb]'")
        self.enabled = enabled
        self._file = None
        self._sinks: List = []
        if not enabled:
            return
        if lg.metrics_file:
            os.makedirs(os.path.dirname(os.path.abspath(lg.metrics_file)), exist_ok=True)
            self._file = open(lg.metrics_file, "a", buffering=1)
        if lg.tensorboard_dir:
            self._sinks.append(TensorBoardSink(lg.tensorboard_dir, resumed_at))
        if lg.wandb_project:
            sink = WandbSink.start(cfg)
            if sink:
                self._sinks.append(sink)

    def record(self, metrics: Dict, console: Optional[str] = None) -> None:
        if not self.enabled:
            return
        if console:
            print(console, flush=True)
        if self._file:
            self._file.write(json.dumps({"time": round(time.time(), 3), **metrics}) + "\n")
        values = scalars(metrics)
        for sink in self._sinks:
            sink.add(metrics["iteration"], values)

    def close(self) -> None:
        if self._file:
            self._file.close()
        for sink in self._sinks:
            sink.close()


class TensorBoardSink:
    def __init__(self, log_dir: str, resumed_at: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=log_dir, purge_step=resumed_at + 1 if resumed_at else None)

    def add(self, step: int, values: Dict[str, float]) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One W&B run per --save folder, charted against ``iteration`` (so the iterations re-run
    after a restart from an older checkpoint are logged again, as in metrics.jsonl). W&B must
    never stop or stall training: without an API key or a reachable server it logs offline
    (``wandb sync`` uploads later), and if even that fails, or logging fails later, the run
    goes on without it after one line saying so."""

    def __init__(self, run):
        self.run = run

    @classmethod
    def start(cls, cfg: Config) -> Optional["WandbSink"]:
        import wandb

        lg, save = cfg.logging, cfg.checkpoint.save
        save_dir = lg.wandb_save_dir or save  # W&B writes into <dir>/wandb/
        id_file = os.path.join(save, WANDB_ID_FILE) if save else None
        run_id = _read_id(id_file)
        mode, why = _wandb_mode()
        if save_dir:
            os.makedirs(save_dir, exist_ok=True)
        try:
            settings = wandb.Settings(init_timeout=60, finish_timeout=60)
        except Exception:  # a wandb without finish_timeout
            settings = wandb.Settings(init_timeout=60)
        kwargs = dict(project=lg.wandb_project, entity=lg.wandb_entity, name=lg.wandb_exp_name, dir=save_dir,
                      config=cfg.to_dict(), id=run_id, resume="allow" if run_id else None, settings=settings)
        run = None
        for attempt in ([mode, "offline"] if mode == "online" else [mode]):
            try:
                run = wandb.init(mode=attempt, **kwargs)
                break
            except Exception as e:  # wandb raises many kinds (auth, network, timeouts)
                why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if run is None:
            print(f"W&B: not logging ({why})", flush=True)
            return None
        if run.settings.mode == "offline":
            print(f"W&B: logging offline ({why}); `wandb sync {os.path.dirname(run.dir)}` uploads it", flush=True)
        if id_file and run_id != run.id:
            os.makedirs(save, exist_ok=True)
            with atomic_write(id_file, "w") as f:
                f.write(run.id + "\n")
        run.define_metric("iteration")
        run.define_metric("*", step_metric="iteration")
        return cls(run)

    def add(self, step: int, values: Dict[str, float]) -> None:
        if self.run is None:
            return
        try:
            self.run.log({"iteration": step, **values})
        except Exception as e:
            print(f"W&B: logging stopped ({type(e).__name__}: {e}); training goes on", flush=True)
            self.run = None

    def close(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as e:
                print(f"W&B: could not finish the run ({type(e).__name__}: {e})", flush=True)
            self.run = None


def _read_id(path: Optional[str]) -> Optional[str]:
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def _wandb_mode():
    """(mode, why): the user's WANDB_MODE; else online only with an API key and a server that
    answers within 3 seconds."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], "WANDB_MODE"
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host, port = url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
    if not (os.environ.get("WANDB_API_KEY") or _netrc_has(host)):
        return "offline", "no API key: set WANDB_API_KEY or run `wandb login`"
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        return "offline", f"{host}:{port} unreachable: {e}"
    return "online", ""


def _netrc_has(host: str) -> bool:
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
