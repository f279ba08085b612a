"""The pipeline's steps by config name, and user steps by import path."""

import importlib
import inspect
from typing import Any, Dict

from data_tools.clean.steps import (  # noqa: F401
    c4,
    dedup,
    extract,
    fineweb,
    gopher_quality,
    gopher_repetition,
    language,
    length,
    normalize,
    pii,
    url_filter,
)
from data_tools.clean.steps.base import REGISTRY, Step
from megalite.errors import MegaliteError


def step_class(name: str) -> type:
    """A built-in step by name, or a user's ``package.module:ClassName`` (a ``Step`` subclass)."""
    if ":" in name:
        module_name, _, class_name = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as e:
            raise MegaliteError(f"step {name}: cannot import it ({e})") from e
        if not (isinstance(cls, type) and issubclass(cls, Step)):
            raise MegaliteError(f"step {name}: not a subclass of data_tools.clean.steps.base.Step")
        return cls
    if name not in REGISTRY:
        raise MegaliteError(f"unknown step {name!r}; built-in steps: {', '.join(sorted(REGISTRY))}, "
                            "or give a user step as package.module:ClassName")
    return REGISTRY[name]


def build_step(name: str, params: Dict[str, Any]) -> Step:
    cls = step_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(params) - set(accepted) - {"self"})
        if unknown:
            known = ", ".join(p for p in accepted if p != "self")
            raise MegaliteError(f"step {name}: unknown parameter(s) {', '.join(unknown)}; it takes: {known}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:
        raise MegaliteError(f"step {name}: {e}") from e
