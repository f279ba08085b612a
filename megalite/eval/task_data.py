"""Finding lm-eval's stock tasks and their data without waiting: a quick scan for a task's YAML
instead of indexing all ~14k files, and one short request to the Hugging Face hub before any
download, so that a machine without network reads the local datasets cache (offline mode) and a
task whose data is not there fails at once with one line naming it, instead of a minute of retries."""

import functools
import os
import re
from typing import List, Optional, Sequence

from megalite.errors import MegaliteError

HUB_TIMEOUT_S = 3.0
LOCAL_DATA = ("copy its data once and point a task YAML under --include-path at the local files (docs/eval.md, "
              "'Stock tasks on local data')")


def stock_task_folders(names: Sequence[str]) -> Optional[List[str]]:
    """The folders of lm-eval's own tasks holding each of ``names`` as a ``task:`` (one file each),
    or None when any is not found that way (a group, a tag, an ambiguous name): then the whole
    index is needed."""
    import lm_eval  # optional dependency: only --tasks needs it

    root = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    wanted = {n: re.compile(rf"^task:\s*['\"]?{re.escape(n)}['\"]?\s*$", re.M) for n in names}
    found = {n: [] for n in names}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith((".yaml", ".yml")):
                with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                    text = f.read()
                for task, pattern in wanted.items():
                    if pattern.search(text):
                        found[task].append(folder)
    if not names or any(len(folders) != 1 for folders in found.values()):
        return None
    return sorted({folders[0] for folders in found.values()})


@functools.lru_cache(maxsize=1)
def use_hub_or_cache() -> bool:
    """Whether the hub answers one request within a few seconds (proxies from the environment
    honoured). When it does not, datasets and huggingface_hub are switched to offline mode for
    this process: cached data still loads, and missing data fails at once rather than after
    retries. Returns whether the hub is used."""
    import datasets  # optional dependencies of lm-eval
    import httpx
    from huggingface_hub import constants

    if datasets.config.HF_HUB_OFFLINE or constants.is_offline_mode():
        return False
    try:
        httpx.head(constants.ENDPOINT, timeout=HUB_TIMEOUT_S)
        return True
    except httpx.HTTPError:
        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
        constants.HF_HUB_OFFLINE = True
        return False


def load_task(manager, name: str):
    """lm-eval's task (or group) ``name``, built on its own so that data it cannot get names it."""
    import httpx

    try:
        loaded = manager.load([name])
    except (ConnectionError, httpx.HTTPError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise MegaliteError(f"lm-eval task {name}: its data is not in the local datasets cache and the Hugging Face "
                            f"hub cannot be reached ({reason}); {LOCAL_DATA}") from None
    top = loaded["groups"].get(name) or loaded["tasks"].get(name)
    return [top] if top is not None else list(loaded["tasks"].values())  # a tag: its tasks
