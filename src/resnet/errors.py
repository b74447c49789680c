"""The package's exceptions: one base, ``UsageError``, for everything a user can fix, with the kinds below it that a
library caller may want to tell apart. The command line prints any of them as one line and exits 2."""


class UsageError(Exception):
    """Bad input from the user (unknown name, impossible option, missing or corrupt data). The message names the
    problem and the fix."""


class DataError(UsageError):
    """Data that is missing, corrupt or laid out in a way the readers do not accept (a file, a folder, an archive)."""


class CheckpointError(UsageError):
    """A checkpoint that is missing, unsafe, damaged or cannot be written."""


class Divergence(UsageError):
    """A training run whose loss became non-finite (it stops without saving)."""


def choices(values) -> str:
    return ", ".join(str(v) for v in values)
