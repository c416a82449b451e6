"""The one exception type a user can cause: it becomes one line on stderr and a non-zero exit."""


class UserError(Exception):
    """A problem with the user's input (flags, data files, output directory), not a bug.

    `sim.py` prints ``error: <message>`` and exits with status 2; no traceback.
    """
