"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong setting, an unusable dataset.

    The message must name the file or key and the reason in one line; the CLI prints it without a
    traceback and exits with code 2.
    """

    exit_code = 2
