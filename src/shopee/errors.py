"""The one exception type the command line turns into a one-line error message."""

import sys
from collections.abc import Callable


class ShopeeError(Exception):
    """A problem the user can fix (bad path, bad file, bad setting).

    The message is one line that names the file, row, column or setting at fault; the CLI prints it
    as ``error: <message>`` and exits non-zero, without a traceback.
    """


class DataError(ShopeeError):
    """Competition data that is missing, malformed or inconsistent."""


def exit_code(action: Callable[[], object], interrupted: str = "interrupted") -> int:
    """Run a command's ``action`` and turn what a user can fix into one ``error:`` line.

    ``ShopeeError`` and ``OSError`` (an unwritable output, a full disk: its message names the
    path) exit 2 without a traceback; Ctrl-C exits 130 with ``interrupted``.
    """
    try:
        action()
    except (ShopeeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    return 0
