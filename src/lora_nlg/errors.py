"""Errors that a user causes and can fix; each message names the file (and line) or the flag."""


class FormatError(ValueError):
    """A file whose content is not what its format says: ``file:line: field: what was expected``."""
