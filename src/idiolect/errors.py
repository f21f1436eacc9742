"""Errors that the CLI turns into one clean line on stderr (no traceback)."""


class IdiolectError(Exception):
    """A user-facing error: the message names the file or thing and the problem."""

    exit_code = 1


class InputError(IdiolectError):
    """Bad input data: a file that cannot be read, parsed, or is empty."""

    exit_code = 2


class NotFound(IdiolectError):
    """An unknown user, base, adapter or run."""

    exit_code = 3


class GateRefused(IdiolectError):
    """A candidate adapter did not pass the gate."""

    exit_code = 4


class Incompatible(IdiolectError):
    """An adapter cannot be transported onto a base."""

    exit_code = 5
