"""The top of every command-line tool: user errors become one ``error: ...`` line and exit 1."""

import sys
from typing import Callable, Optional, Sequence

from megalite.errors import MegaliteError


def run_tool(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv=None) -> None:
    try:
        code = main(argv)
    except MegaliteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except FileNotFoundError as e:
        print(f"error: {e.filename}: no such file", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
