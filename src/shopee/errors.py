"""The one exception type the command line turns into a one-line error message."""


class ShopeeError(Exception):
    """A problem the user can fix (bad path, bad file, bad setting).

    The message is one line that names the file, row, column or setting at fault; the CLI prints it
    as ``error: <message>`` and exits non-zero, without a traceback.
    """


class DataError(ShopeeError):
    """Competition data that is missing, malformed or inconsistent."""
