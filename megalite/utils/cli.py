"""The top of every command-line tool: user errors (MegaliteError, and OSError: permissions, a
full disk) become one ``error: ...`` line and exit 1."""

import sys
from typing import Callable, Optional, Sequence

from megalite.errors import MegaliteError


def run_tool(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv=None) -> None:
    try:
        code = main(argv)
    except MegaliteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # a missing file, permissions, a read-only or full filesystem, a file for a folder
        print(f"error: {_os_error_line(e)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def _os_error_line(e: OSError) -> str:
    """'path: reason' ('a -> b: reason' for a rename); the bare reason when no file is named."""
    reason = "no such file" if isinstance(e, FileNotFoundError) else e.strerror or str(e)
    if e.filename is None:
        return reason
    return f"{e.filename}{f' -> {e.filename2}' if e.filename2 else ''}: {reason}"
