"""The one exception for a user's mistake: the CLI prints it as one line and exits 2, never a traceback.

Raise `UserError` (or a subclass: `ConfigError`, `CheckpointError`) where a wrong family, a bad path or a bad
value is detected, saying what is wrong and what to pass instead. Anything else that escapes a command is a
bug and keeps its traceback. It subclasses ValueError so library callers that catch ValueError keep working.
"""


class UserError(ValueError):
    """Bad input from the person running vlm (a file, a field, an option), not a bug in vlm."""
