"""The one exception type for bad user input (paths, flags, files).

`main.py` prints it as a single line instead of a traceback; everything else is a bug and
keeps its traceback.
"""


class UsageError(Exception):
    """Bad input from the user: a missing file, a corrupt image, an invalid flag value."""


def one_line(error):
    """The user-facing line of a UsageError, also when a DataLoader worker re-raised it
    (the worker wraps the message in a traceback whose last line is the original)."""
    last = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
    return last.split('UsageError: ', 1)[-1]
