"""Errors a user can cause and fix, kept apart from bugs.

Library code raises these with a message that names the file, line, flag or field at fault and
says what to do. The command-line tools print such a message on one line and exit non-zero;
any other exception is a bug and keeps its traceback.
"""


class UserInputError(Exception):
    """Base class: bad input that the user can correct."""


class InvalidInputError(UserInputError, ValueError):
    """A value, file content or combination of settings is not usable."""


class InputNotFoundError(UserInputError, FileNotFoundError):
    """A path the user gave does not exist or is not the kind of path expected."""


class TrainingDivergedError(UserInputError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
