"""One exception type for every mistake a user can make; the command line prints it as one line and exits 2."""


class UsageError(Exception):
    """Bad input from the user (unknown name, impossible option, missing or corrupt data). The message names the
    problem and the fix."""


def choices(values) -> str:
    return ", ".join(str(v) for v in values)
