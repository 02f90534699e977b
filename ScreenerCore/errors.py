"""Exceptions that ScreenerCore raises for problems a user can fix."""


class ScreenerError(Exception):
    """Base class of all errors that ScreenerCore raises on purpose."""


class InputError(ScreenerError, ValueError):
    """An input image or folder that cannot be used; the message names it and the fix."""


class ModelPackageError(ScreenerError):
    """A model package that is missing, incomplete, corrupted or of an unknown format."""


class OperationCancelled(ScreenerError):
    """Raised when the caller's cancel flag is set while a job runs."""
