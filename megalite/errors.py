"""One exception type for problems a user can fix (bad input, bad flags, corrupt files).

Tools catch it at the top and print a single ``error: ...`` line instead of a traceback;
anything else escaping is a bug in megalite and keeps its traceback.
"""


class MegaliteError(Exception):
    """A user-facing error whose message names the offending file or flag."""
