"""Output folders a tool fills: folders holding files we did not write are refused, never
emptied; an earlier export of ours (it carries a marker file) is replaced whole, in one step."""

import contextlib
import json
import os
import secrets
import shutil

from megalite.errors import MegaliteError
from megalite.utils.atomic import replace_folder, writing

EXPORT_MARKER = ".megalite_export.json"


def contents(path: str, shown: int = 3) -> str:
    """What a folder holds, in a few words: 'config.txt, notes/ and 2 more'."""
    names = sorted(n + ("/" if os.path.isdir(os.path.join(path, n)) else "") for n in os.listdir(path))
    text = ", ".join(names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def require_empty(path: str, flag: str, holds: str = "is not empty (it holds {});") -> None:
    """Refuse ``path`` unless it is missing or an empty folder."""
    if os.path.isdir(path) and os.listdir(path):
        raise MegaliteError(f"{flag} {path} {holds.format(contents(path))} choose a new or empty folder")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise MegaliteError(f"{flag} {path} is a file, not a folder")


def refuse_foreign(out_dir: str, flag: str = "--save") -> None:
    """Refuse an export target holding anything but an earlier export (call it before the work)."""
    if not os.path.isfile(os.path.join(out_dir, EXPORT_MARKER)):
        require_empty(out_dir, flag, "holds files that are not an earlier megalite export ({});")


@contextlib.contextmanager
def export_folder(out_dir: str, source: str, flag: str = "--save"):
    """``with export_folder(d, load) as tmp:`` fill ``tmp``; on success it becomes ``d``,
    replacing an earlier export (nothing else: a non-empty ``d`` without our marker is refused
    before anything is written). On failure only ``tmp`` goes."""
    out_dir = os.path.normpath(out_dir)
    refuse_foreign(out_dir, flag)
    parent, name = os.path.split(os.path.abspath(out_dir))
    tmp = os.path.join(parent, f".{name}.tmp-{secrets.token_hex(4)}")  # ours alone
    with writing(out_dir, tmp):
        os.makedirs(tmp)
    try:
        yield tmp
        with writing(out_dir, tmp):
            with open(os.path.join(tmp, EXPORT_MARKER), "w") as f:
                json.dump({"source": os.path.abspath(source)}, f)
            replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
