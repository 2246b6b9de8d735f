"""The one exception type for mistakes a user can fix (bad path, bad array, bad setting).

The command line prints these as a single line and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class ScdError(ValueError):
    """A user-facing error whose message names the file, field or value at fault."""
