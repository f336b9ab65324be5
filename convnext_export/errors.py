"""Errors a user can act on. The CLI prints their message, never a traceback."""


class ConvNeXtExportError(Exception):
    """A failure with an actionable message (exit code 1)."""

    exit_code = 1


class InputError(ConvNeXtExportError):
    """Bad input: a file, option or checkpoint that cannot be used as given (exit code 2)."""

    exit_code = 2
